"""Adagrad, RMSprop and Adadelta in compiled whole steps: the same bits as the eager step over
20 steps (losses, parameters, every state tensor), every number of a group read on each call
(a new value compiles nothing), the switches guarded; LBFGS with a compiled closure."""

from __future__ import annotations

import numpy as np
import pytest
from compiled_runs import Diagonal, Run, assert_identical

import tracegrad as tg
from tracegrad import nn, optim

OPTIMIZERS = {
    "adagrad": lambda ps: optim.Adagrad(ps),
    "adagrad-options": lambda ps: optim.Adagrad(
        ps, lr=0.05, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.3
    ),
    "adagrad-maximize": lambda ps: optim.Adagrad(ps, maximize=True),
    "rmsprop": lambda ps: optim.RMSprop(ps),
    "rmsprop-momentum": lambda ps: optim.RMSprop(ps, lr=0.005, momentum=0.9, weight_decay=0.01),
    "rmsprop-centered": lambda ps: optim.RMSprop(ps, lr=0.005, centered=True, momentum=0.5),
    "rmsprop-centered-plain": lambda ps: optim.RMSprop(ps, centered=True),
    "adadelta": lambda ps: optim.Adadelta(ps),
    "adadelta-options": lambda ps: optim.Adadelta(ps, lr=0.5, rho=0.8, weight_decay=0.05),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_step_equals_eager_bit_for_bit(name, dtype):
    eager, compiled = (Run(OPTIMIZERS[name], c, dtype) for c in (False, True))
    for i in range(20):
        assert np.array_equal(compiled(), eager()), f"loss of step {i}"
        assert_identical(compiled, eager, f"{name}, step {i}")
    assert len(compiled.step.specializations) <= 2
    assert compiled.state()[0].dtype == dtype


@pytest.mark.parametrize(
    ("name", "key", "values"),
    [
        ("adagrad-options", "lr", [0.05, 0.01, 0.2]),
        ("adagrad-options", "lr_decay", [0.01, 0.0, 0.5]),
        ("adagrad-options", "eps", [1e-10, 1e-3, 0.1]),
        ("adagrad-options", "weight_decay", [0.1, 0.01, 0.5]),
        ("rmsprop-centered", "alpha", [0.99, 0.9, 0.5]),
        ("rmsprop-centered", "momentum", [0.5, 0.9, 0.1]),
        ("rmsprop-momentum", "eps", [1e-8, 1e-2, 0.5]),
        ("rmsprop-momentum", "weight_decay", [0.01, 0.2, 1e-4]),
        ("adadelta-options", "rho", [0.8, 0.95, 0.5]),
        ("adadelta-options", "eps", [1e-6, 1e-3, 1e-8]),
        ("adadelta-options", "lr", [0.5, 1.0, 0.1]),
    ],
)
def test_every_number_of_a_group_is_read_on_each_call(name, key, values):
    """A number the update reads baked in would leave the compiled step on its old value."""
    eager, compiled = Run(OPTIMIZERS[name], False), Run(OPTIMIZERS[name], True)
    for i, value in enumerate(values * 2):
        for run in (eager, compiled):
            run.opt.param_groups[0][key] = value
        assert np.array_equal(compiled(), eager())
        assert_identical(compiled, eager, f"{name} with {key}={value}, step {i}")
    assert len(compiled.step.specializations) <= 2
    # (the one recompile is for .grad and the state appearing)
    assert all(f"group 0 {key}" not in reason for reason in compiled.step.recompile_reasons)


@pytest.mark.parametrize(("name", "switch"), [("rmsprop", "centered"), ("adagrad", "maximize")])
def test_a_switch_is_guarded(name, switch):
    eager, compiled = Run(OPTIMIZERS[name], False), Run(OPTIMIZERS[name], True)
    for _ in range(2):
        assert np.array_equal(compiled(), eager())
    count = len(compiled.step.specializations)
    for run in (eager, compiled):
        run.opt.param_groups[0][switch] = True
        if switch == "centered":  # (PyTorch makes the state when it first steps, as here)
            run.opt.state.clear()
    for i in range(3):
        assert np.array_equal(compiled(), eager()), f"step {i} after {switch}=True"
        assert_identical(compiled, eager, f"after {switch}=True, step {i}")
    assert len(compiled.step.specializations) > count


def lbfgs_problem(zero_grad="opt", **kwargs):
    """A model, LBFGS over it and the closure, zeroing the gradients by ``zero_grad``."""
    tg.manual_seed(0)
    model = nn.Sequential(Diagonal(5), nn.Tanh(), Diagonal(5)).double()  # (no product)
    opt = optim.LBFGS(model.parameters(), **kwargs)
    zeroed = opt if zero_grad == "opt" else model
    rng = np.random.default_rng(3)
    x, y = (tg.tensor(rng.standard_normal((12, 5))) for _ in range(2))

    def closure():
        zeroed.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    return model, opt, closure


def lbfgs_runs(steps, **kwargs):
    """(model, optimizer, losses, closure) of ``steps`` LBFGS steps, eager then compiled."""
    runs = []
    for compiled in (False, True):
        model, opt, closure = lbfgs_problem(**kwargs)
        step = tg.compile(closure) if compiled else closure
        losses = [opt.step(step).item() for _ in range(steps)]
        runs.append((model, opt, losses, step))
    return runs


@pytest.mark.parametrize("zero_grad", ["opt", "model"])
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_with_a_compiled_closure_equals_eager(line_search_fn, zero_grad):
    eager, compiled = lbfgs_runs(3, zero_grad=zero_grad, max_iter=4, line_search_fn=line_search_fn)
    (eager_model, _, eager_losses, _), (model, opt, losses, step) = eager, compiled
    assert losses == eager_losses
    assert losses[-1] < 0.8 * losses[0]  # (0.73 after three steps)
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())
    assert opt.state_dict()["state"][0]["func_evals"] > 3  # the closure ran many times
    assert len(step.specializations) <= 2


def test_lbfgs_compiled_closure_keeps_two_specializations_over_many_steps():
    eager, compiled = lbfgs_runs(10, zero_grad="model", max_iter=4)
    assert compiled[2] == eager[2]
    assert len(compiled[3].specializations) <= 2


def test_lbfgs_closure_zeroing_by_the_optimizer_does_not_recompile():
    # (an optimizer the closure only reaches, for its zero_grad, keeps its state unguarded)
    _, compiled = lbfgs_runs(4, zero_grad="opt", max_iter=4)
    assert len(compiled[3].specializations) <= 2


def test_lbfgs_inside_a_compiled_step_says_to_compile_the_closure():
    _, opt, closure = lbfgs_problem()
    step = tg.compile(lambda: opt.step(closure))
    with pytest.raises(tg.TraceError, match=r"compile the closure instead") as error:
        step()
    assert "test_compiled_optimizers.py" in str(error.value)


def test_lbfgs_resumes_from_its_state_dict():
    _, opt, closure = lbfgs_problem(max_iter=3)
    for _ in range(3):
        opt.step(closure)
    model, other, other_closure = lbfgs_problem(max_iter=3)
    for p, q in zip(model.parameters(), opt.param_groups[0]["params"], strict=True):
        p.data = q.detach().clone()
    other.load_state_dict(opt.state_dict())
    for i in range(3):
        assert opt.step(closure).item() == other.step(other_closure).item(), f"step {i}"
    assert other.state_dict()["state"][0]["n_iter"] == opt.state_dict()["state"][0]["n_iter"]
