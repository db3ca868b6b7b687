"""A training loop compiles once: the first call of a whole step is traced with the optimizer
state its update makes (made ahead, as the update would make it) and is not specialized on the
.grad its zero_grad() drops. Each case runs eagerly and compiled side by side and compares
losses, parameters, .grad and optimizer state after every call."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01),
    "rmsprop-centered-momentum": lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=0.1),
    "adadelta": lambda ps: optim.Adadelta(ps),
}


class _WithUnusedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.head = nn.Linear(8, 2)  # requires grad, never in the loss

    def forward(self, x):
        return self.body(x)


def _model(unused_head=False):
    tg.manual_seed(0)
    if unused_head:
        return _WithUnusedHead()
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _batches(n=4):
    rng = np.random.default_rng(1)
    return [
        (
            tg.tensor(rng.standard_normal((6, 4)).astype(np.float32)),
            tg.tensor(rng.integers(0, 3, 6)),
        )
        for _ in range(n)
    ]


def _pair(make_opt, write_step, **model_kw):
    """The same program twice: eager and compiled, with their models and optimizers."""
    runs = []
    for compiled in (False, True):
        model = _model(**model_kw)
        opt = make_opt(model.parameters())
        step = write_step(model, opt)
        runs.append((model, opt, tg.compile(step) if compiled else step))
    return runs


def _standard(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _close(actual, expected, what):
    # (float32: the compiled step may order a sum or a product differently)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * scale, err_msg=what)


def _assert_same(eager, compiled, where):
    (model_e, opt_e, _), (model_c, opt_c, _) = eager, compiled
    for (name, p), q in zip(model_c.named_parameters(), model_e.parameters(), strict=True):
        _close(p.detach().numpy(), q.detach().numpy(), f"{name} {where}")
        assert (p.grad is None) == (q.grad is None), f"{name}.grad {where}"
        if p.grad is not None:
            _close(p.grad.numpy(), q.grad.numpy(), f"{name}.grad {where}")
    state_c, state_e = opt_c.state_dict()["state"], opt_e.state_dict()["state"]
    assert state_c.keys() == state_e.keys(), where
    for index, entries in state_e.items():
        assert state_c[index].keys() == entries.keys(), where
        for key, value in entries.items():
            _close(state_c[index][key].numpy(), value.numpy(), f"{key} {where}")


def _run(runs, n=4):
    for i, (x, y) in enumerate(_batches(n)):
        losses = [step(x, y).item() for _, _, step in runs]
        _close(losses[1], losses[0], f"loss of call {i}")
        _assert_same(*runs, f"after call {i}")
    return runs[1][2]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_training_loop_compiles_once_and_equals_eager(name):
    step = _run(_pair(OPTIMIZERS[name], _standard))
    assert len(step.specializations) == 1, step.recompile_reasons


def test_sgd_with_dampening_compiles_a_second_time_for_its_momentum_buffers():
    """Its first step makes the buffer from the gradient (b = g), not by its rule from a
    state made ahead (b = mu * 0 + (1 - dampening) * g): the state is made by the first call."""
    step = _run(_pair(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.5), _standard))
    (reason,) = step.recompile_reasons
    assert reason == "optimizer opt (SGD): state for 4 parameters (momentum_buffer) now exists"


def test_a_parameter_the_step_does_not_update_gets_no_state():
    """State is made ahead for every parameter requiring grad, and taken back for those the
    traced update does not read: the unused head has none, as eagerly."""
    runs = _pair(OPTIMIZERS["adam"], _standard, unused_head=True)
    step = _run(runs)
    model, opt, _ = runs[1]
    assert all(p not in opt.state for p in model.head.parameters())
    assert len(opt.state) == 4
    assert len(step.specializations) == 1, step.recompile_reasons


def test_zero_grad_at_the_end_of_the_step_leaves_no_grad():
    def at_end(model, opt):
        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return step

    runs = _pair(OPTIMIZERS["sgd-momentum"], at_end)
    step = _run(runs)
    assert all(p.grad is None for p in runs[1][0].parameters())
    assert len(step.specializations) == 1, step.recompile_reasons


def test_a_grad_made_outside_the_step_is_dropped_by_its_zero_grad():
    """A backward() run eagerly between two calls leaves a .grad; the step's zero_grad()
    drops it, so the program that never read one serves that call too."""
    runs = _pair(OPTIMIZERS["adam"], _standard)
    _run(runs, n=2)
    x, y = _batches(1)[0]
    for model, _, _ in runs:
        F.cross_entropy(model(x), y).backward()
    _run(runs, n=2)
    assert len(runs[1][2].specializations) == 1


def test_a_step_accumulating_into_grad_is_specialized_on_it():
    """Without zero_grad() the step reads the .grad its call starts with (backward adds to
    it): the second call, which has one, compiles anew."""

    def accumulating(model, opt):
        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return step

    step = _run(_pair(OPTIMIZERS["adam"], accumulating))
    (reason,) = step.recompile_reasons
    assert ".grad now exists" in reason


def test_a_step_looking_at_whether_grad_exists_is_specialized_on_it():
    """Python code that only tests ``p.grad is None`` before zero_grad() takes a branch the
    program bakes in: that .grad is part of the signature."""

    def looking(model, opt):
        def step(x, y):
            first = model[0].weight.grad is None
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y) * (2.0 if first else 1.0)
            loss.backward()
            opt.step()
            return loss

        return step

    step = _run(_pair(OPTIMIZERS["sgd-momentum"], looking))
    (reason,) = step.recompile_reasons
    assert reason == "model.0.weight: .grad now exists"


def test_a_step_that_fails_to_trace_leaves_the_optimizer_state_as_it_was():
    model = _model()
    opt = OPTIMIZERS["adam"](model.parameters())

    @tg.compile
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if loss > 0:  # a Python branch on a traced value
            return loss
        return -loss

    x, y = _batches(1)[0]
    with pytest.raises(tg.TraceError):
        step(x, y)
    assert opt.state == {}
