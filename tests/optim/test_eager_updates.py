"""Eager optimizer updates are tensor ops writing in place (the code a compiled step traces):
they write into the parameters' and the state's own memory, count the writes, and take the
state and the parameters as they are at each step."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import optim
from tracegrad.optim import grouped
from tracegrad.optim import optimizer as optimizer_module

SHAPES = [(3, 4), (5,), (2, 2, 2), (70_000,)]


def adamw_run(steps: int, between=None):
    """AdamW over parameters of SHAPES for ``steps`` steps; ``between(opt, params)`` runs
    after each step. Returns the optimizer and the parameters."""
    tg.manual_seed(3)
    params = [tg.randn(*shape).requires_grad_() for shape in SHAPES]
    opt = optim.AdamW(params, lr=0.01, weight_decay=0.1)
    rng = np.random.default_rng(4)
    for _ in range(steps):
        for p in params:
            p.grad = tg.tensor(rng.standard_normal(p.shape).astype(np.float32))
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


@pytest.mark.parametrize("kind", [optim.Adam, optim.SGD, optim.RMSprop])
def test_an_eager_step_writes_into_the_arrays_it_updates_and_counts_the_writes(kind):
    params = [tg.randn(4, 3).requires_grad_(), tg.randn(3).requires_grad_()]
    arrays = [p.array for p in params]
    opt = kind(params, lr=0.01)
    for step in range(3):
        versions = [p.version for p in params]
        for p in params:
            p.grad = tg.ones_like(p)
        opt.step()
        assert all(p.array is a for p, a in zip(params, arrays, strict=True))
        assert all(p.version > v for p, v in zip(params, versions, strict=True))
        if step == 0:
            state = {id(t): t.array for s in opt.state.values() for t in s.values()}
    # the state tensors keep their identity and their memory
    now = {id(t): t.array for s in opt.state.values() for t in s.values()}
    assert now.keys() == state.keys() and all(now[k] is state[k] for k in now)


def test_state_replaced_between_steps_is_taken_as_it_is():
    def reload(opt, params):
        opt.load_state_dict(opt.state_dict())

    assert_same_updates(adamw_run(5, between=reload), adamw_run(5))


def test_state_the_user_holds_follows_the_updates():
    opt, params = adamw_run(1)
    held = opt.state[params[0]]["exp_avg"].numpy()
    for _ in range(2):
        for p in params:
            p.grad = tg.ones_like(p)
        opt.step()
    np.testing.assert_array_equal(held, opt.state[params[0]]["exp_avg"].numpy())


def test_a_deep_copy_of_the_optimizer_updates_its_own_state():
    opt, params = adamw_run(3)
    twin = copy.deepcopy({"opt": opt, "params": params})
    for pair in ((opt, params), (twin["opt"], twin["params"])):
        for p in pair[1]:
            p.grad = tg.ones_like(p)
        pair[0].step()
    assert_same_updates((opt, params), (twin["opt"], twin["params"]))


def test_a_parameter_given_new_data_between_steps_is_updated_there():
    def new_data(opt, params):
        if opt.state[params[1]]["step"].item() == 2.0:
            params[1].data = tg.ones(*params[1].shape)

    opt, params = adamw_run(5, between=new_data)
    assert not np.array_equal(params[1].detach().numpy(), np.ones(params[1].shape))
    assert opt.state[params[1]]["step"].item() == 5.0


# --- small parameters updated together (tracegrad/optim/grouped.py) ---------------------------

KINDS = {
    "adamw": lambda params: optim.AdamW(params, lr=0.01, weight_decay=0.1),
    "adam amsgrad": lambda params: optim.Adam(params, lr=0.01, amsgrad=True, maximize=True),
    "sgd momentum": lambda params: optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda params: optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda params: optim.Adagrad(params, lr=0.1, lr_decay=0.01),
    "adadelta": lambda params: optim.Adadelta(params, weight_decay=0.1),
}


def run_kind(monkeypatch, make, elementwise: bool, steps: int = 5):
    """Parameters of several shapes (one 0-d, one float64, one past SMALL); the first skips
    step 2, so its state falls out of step with the others'. Returns the values and the
    state, and how many parameters were updated together at each step."""
    tg.manual_seed(5)
    shapes = [(3, 4), (5,), (2, 2, 2), (), (70_000,)]
    params = [tg.randn(*shape).requires_grad_() for shape in shapes]
    params.append(tg.randn(4, dtype=tg.float64).requires_grad_())
    opt = make(params)
    together = []

    def counting(optimizer, index, pairs, group, settings):
        left = grouped.update_grouped(optimizer, index, pairs, group, settings)
        together.append(len(pairs) - len(left))
        return left

    rng = np.random.default_rng(6)
    with monkeypatch.context() as patch:
        patch.setattr(type(opt), "elementwise", elementwise)
        patch.setattr(optimizer_module, "update_grouped", counting)
        for step in range(steps):
            for i, p in enumerate(params):
                g = rng.standard_normal(p.shape)
                p.grad = None if (step == 2 and i == 0) else tg.tensor(g, dtype=p.dtype)
            opt.step()
    values = [p.detach().numpy() for p in params]
    return values + [entry.numpy() for p in params for entry in opt.state[p].values()], together


@pytest.mark.parametrize("make", KINDS.values(), ids=KINDS.keys())
def test_parameters_updated_together_get_the_bits_of_one_by_one(monkeypatch, make):
    (together, counts), (alone, _) = (run_kind(monkeypatch, make, e) for e in (True, False))
    # the small float32 ones (the first too, once its state agrees with theirs again)
    assert counts[0] == 3 and 2 in counts
    assert len(together) == len(alone)
    for got, want in zip(together, alone, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("make", KINDS.values(), ids=KINDS.keys())
def test_large_parameters_updated_in_pieces_get_the_bits_of_whole_ones(monkeypatch, make):
    """With pieces of 5,000 elements, the (70,000,) parameter is updated in 14 pieces (its
    step count counted once); values and state equal the one-by-one update's."""
    monkeypatch.setattr(grouped, "PIECE", 5_000)
    (pieces, _), (whole, _) = (run_kind(monkeypatch, make, e) for e in (True, False))
    for got, want in zip(pieces, whole, strict=True):
        np.testing.assert_array_equal(got, want)


IN_PLACE_KINDS = {
    "adamw": KINDS["adamw"],
    "sgd": lambda params: optim.SGD(params, lr=0.1),
    "sgd momentum": lambda params: optim.SGD(params, lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("make", IN_PLACE_KINDS.values(), ids=IN_PLACE_KINDS.keys())
def test_a_steady_eager_step_allocates_no_arrays(make):
    """Updates written with in-place ops only: gathered values and gradients go into arrays
    kept between steps, the state stays on its flat tensors and kernel temporaries in scratch
    arrays, so past the first steps an update allocates no more than a few small objects."""
    tg.manual_seed(7)
    params = [tg.randn(*shape).requires_grad_() for shape in SHAPES]
    opt = make(params)
    for p in params:
        p.grad = tg.ones_like(p)
    for _ in range(3):
        opt.step()
    tracemalloc.start()
    try:
        opt.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
