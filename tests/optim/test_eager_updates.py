"""Eager optimizer updates run on the arrays (Adam's bias corrections on NumPy float64
scalars); traced, they are tensor ops (so a compiled step reads the step count). Both must
give the same numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import optim
from tracegrad.optim import adam, flat, sgd
from tracegrad.optim.adam import bias_corrections


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.99), (0.5, 0.95)])
def test_python_float_corrections_equal_the_tensor_formula(dtype, betas):
    lr, (beta1, beta2) = 3e-3, betas
    for count in [1, 2, 3, 10, 77, 1000, 12345]:
        step = tg.tensor(float(count))  # float32, as Adam keeps it
        step_size, bias2_sqrt = bias_corrections(step, lr, beta1, beta2, dtype)
        t = step.double()
        want_size = (lr / (1 - beta1**t)).to(dtype)
        want_sqrt = (1 - beta2**t).sqrt().to(dtype)
        assert step_size.dtype == dtype and bias2_sqrt.dtype == dtype
        np.testing.assert_array_equal(step_size.numpy(), want_size.numpy())
        np.testing.assert_array_equal(bias2_sqrt.numpy(), want_sqrt.numpy())


OPTIONS = {
    "adam": dict(),
    "weight decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
    "adamw": dict(decoupled=True, weight_decay=0.05),
}


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_eager_update_on_arrays_equals_the_tensor_ops(monkeypatch, options, dtype):
    """Adam's eager update runs its kernels on the arrays directly (from the second step on
    the flat arrays of both parameters); the tensor-op form (what a compiled step traces)
    must give the same bits, step after step."""
    options = dict(options)
    kind = optim.AdamW if options.pop("decoupled", False) else optim.Adam
    runs = []
    for arrays in (True, False):
        if not arrays:
            monkeypatch.setattr(adam, "_plain", lambda *args: False)
            monkeypatch.setattr(adam, "small_params", lambda pairs: [])
        tg.manual_seed(0)
        params = [tg.randn(3, 4, dtype=dtype, requires_grad=True), tg.randn(5, dtype=dtype)]
        params[1].requires_grad_()
        opt = kind(params, lr=0.01, **options)
        rng = np.random.default_rng(1)
        for _ in range(4):
            for p in params:
                p.grad = tg.tensor(rng.standard_normal(p.shape), dtype=dtype)
            opt.step()
        runs.append(
            [p.detach().numpy().copy() for p in params]
            + [s[k].numpy().copy() for p in params for s in [opt.state[p]] for k in sorted(s)]
        )
    for got, want in zip(*runs, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("lr", [0.1, 3])
def test_plain_sgd_on_arrays_equals_the_tensor_op(monkeypatch, lr, dtype):
    """Plain SGD's eager update on the arrays gives the bits of param.sub_(grad, alpha=lr)."""
    runs = []
    for arrays in (True, False):
        if not arrays:
            monkeypatch.setattr(sgd, "_plain", lambda *args: False)
        tg.manual_seed(0)
        params = [tg.randn(3, 4, dtype=dtype), tg.randn(5, dtype=dtype)]
        for p in params:
            p.requires_grad_()
        opt = optim.SGD(params, lr=lr)
        rng = np.random.default_rng(1)
        for _ in range(3):
            for p in params:
                p.grad = tg.tensor(rng.standard_normal(p.shape), dtype=dtype)
            opt.step()
        runs.append([p.detach().numpy().copy() for p in params])
    for got, want in zip(*runs, strict=True):
        np.testing.assert_array_equal(got, want)


# --- small parameters updated together on flat arrays (tracegrad/optim/flat.py) -------------


def small_and_large(dtype=tg.float32):
    """Three small parameters and one past flat.SMALL (updated on its own)."""
    tg.manual_seed(3)
    shapes = [(3, 4), (5,), (2, 2, 2), (flat.SMALL + 1,)]
    return [tg.randn(*shape, dtype=dtype).requires_grad_() for shape in shapes]


def run_adamw(monkeypatch, together: bool, steps: int, skip=None, between=None):
    """AdamW over ``small_and_large()`` for ``steps`` steps, with the flat update or without;
    parameter ``skip`` gets no gradient at step 2; ``between(opt, params)`` runs after each
    step. Returns the optimizer and the parameters."""
    with monkeypatch.context() as patch:
        if not together:
            patch.setattr(adam, "small_params", lambda pairs: [])
        params = small_and_large()
        opt = optim.AdamW(params, lr=0.01, weight_decay=0.1)
        rng = np.random.default_rng(4)
        for step in range(steps):
            for i, p in enumerate(params):
                g = rng.standard_normal(p.shape).astype(np.float32)
                p.grad = None if (step == 2 and i == skip) else tg.tensor(g)
            opt.step()
            if between is not None:
                between(opt, params)
    return opt, params


def assert_same_updates(a, b):
    (opt_a, params_a), (opt_b, params_b) = a, b
    for p, q in zip(params_a, params_b, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())
        for key in ("step", "exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(opt_a.state[p][key].numpy(), opt_b.state[q][key].numpy())


@pytest.mark.parametrize("skip", [None, 0], ids=["every step", "a parameter skips a step"])
def test_small_parameters_updated_together_get_the_bits_of_one_by_one(monkeypatch, skip):
    """Together or one by one, the same bits; a parameter without a gradient for a step keeps
    its step count behind (as in PyTorch), and the others still go on together."""
    together = run_adamw(monkeypatch, True, 6, skip)
    assert_same_updates(together, run_adamw(monkeypatch, False, 6, skip))
    opt, params = together
    counts = [opt.state[p]["step"].item() for p in params]
    assert counts == ([5.0] if skip == 0 else [6.0]) + [6.0] * 3
    assert 0 in opt._flat  # the flat state was in use at the end


def test_updating_together_moves_only_state_nobody_else_holds(monkeypatch):
    """The state tensors keep their identity; an array of the state the user holds keeps
    following it (so that entry is not moved and its parameter is updated on its own), and
    the parameters' arrays never move."""
    params = small_and_large()
    arrays = [p._data for p in params]
    opt = optim.AdamW(params, lr=0.01)
    for p in params:
        p.grad = tg.ones_like(p)
    opt.step()
    held = opt.state[params[0]]["exp_avg"].numpy()
    tensors = {id(t) for s in opt.state.values() for t in s.values()}
    for _ in range(3):
        opt.step()
    assert {id(t) for s in opt.state.values() for t in s.values()} == tensors
    np.testing.assert_array_equal(held, opt.state[params[0]]["exp_avg"].numpy())
    assert all(p._data is a for p, a in zip(params, arrays, strict=True))
    assert 0 not in opt._flat  # an entry could not move, so none of the group's did


def test_state_replaced_between_steps_is_taken_as_it_is(monkeypatch):
    """load_state_dict (or code replacing a state tensor) between steps: the next step works
    on the new state, which is moved into new flat arrays."""

    def reload(opt, params):
        opt.load_state_dict(opt.state_dict())

    assert_same_updates(
        run_adamw(monkeypatch, True, 5, between=reload), run_adamw(monkeypatch, False, 5)
    )


def test_state_dict_of_flat_state_is_per_parameter(monkeypatch):
    opt, params = run_adamw(monkeypatch, True, 3)
    state = opt.state_dict()["state"]
    for i, p in enumerate(params):
        assert state[i]["exp_avg"].shape == p.shape
        assert state[i]["step"].shape == ()
        np.testing.assert_array_equal(state[i]["exp_avg"].numpy(), opt.state[p]["exp_avg"].numpy())


def test_a_deep_copy_of_the_optimizer_updates_its_own_state(monkeypatch):
    """copy.deepcopy copies the flat arrays and the views of them apart: the copy notices and
    builds flat state of its own, so its state tensors keep following its updates."""
    import copy

    opt, params = run_adamw(monkeypatch, True, 3)
    twin = copy.deepcopy({"opt": opt, "params": params})
    for pair in ((opt, params), (twin["opt"], twin["params"])):
        for p in pair[1]:
            p.grad = tg.ones_like(p)
        pair[0].step()
    assert_same_updates((opt, params), (twin["opt"], twin["params"]))


def test_a_parameter_given_new_data_between_steps_is_updated_there(monkeypatch):
    """p.data = ... replaces a small parameter's array: the next steps update the new array
    (together or one by one, the same bits)."""

    def new_data(opt, params):
        if params[1].grad is not None and opt.state[params[1]]["step"].item() == 2.0:
            params[1].data = tg.ones(*params[1].shape)

    assert_same_updates(
        run_adamw(monkeypatch, True, 5, between=new_data),
        run_adamw(monkeypatch, False, 5, between=new_data),
    )
