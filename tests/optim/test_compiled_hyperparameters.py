"""Optimizer hyperparameters in compiled training steps: the numbers of each parameter group are
inputs read on every call (a learning-rate schedule compiles nothing, and the compiled update
uses the new value with the eager update's bits), the step is specialized only on what decides
its code (a momentum of 0 or not, switches), and the specialization cache is bounded."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from compiled_runs import Run, assert_identical

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.compiled import specializer as specialize

OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd-dampening": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.8, dampening=0.3),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "sgd-weight-decay": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5, weight_decay=0.01),
    "sgd-maximize": lambda ps: optim.SGD(ps, lr=0.1, weight_decay=0.1, maximize=True),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adam-weight-decay": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01),
}


def set_all(opt, key, value):
    for group in opt.param_groups:
        group[key] = value


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_new_learning_rate_every_step_is_used_bit_for_bit_without_recompiling(name):
    eager, compiled = Run(OPTIMIZERS[name], False), Run(OPTIMIZERS[name], True)
    for i in range(6):
        for run in (eager, compiled):
            set_all(run.opt, "lr", 0.1 / (i + 1))
        assert np.array_equal(compiled(), eager())
        assert_identical(compiled, eager, f"{name}, step {i}")
    # One: the first call is traced with the optimizer state it makes (made ahead) and
    # without the .grad its zero_grad() drops, so every later call has its signature (with
    # dampening, SGD's first step makes its momentum buffer from the gradient: the state
    # cannot be made ahead, and the second call compiles for it)
    count = 2 if name == "sgd-dampening" else 1
    assert len(compiled.step.specializations) == count, compiled.step.recompile_reasons
    assert all("lr" not in reason for reason in compiled.step.recompile_reasons)


@pytest.mark.parametrize(
    ("name", "key", "values"),
    [
        ("sgd-momentum", "momentum", [0.9, 0.5, 0.99]),
        ("sgd-dampening", "dampening", [0.3, 0.0, 0.7]),
        ("sgd-weight-decay", "weight_decay", [0.01, 0.2, 1e-4]),
        ("adam", "betas", [(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)]),
        ("adam", "eps", [1e-8, 1e-3, 0.5]),
        ("adam-weight-decay", "weight_decay", [0.1, 0.3, 1e-3]),
        ("adamw", "weight_decay", [0.01, 0.5, 0.1]),
    ],
)
def test_every_number_of_a_group_is_read_on_each_call(name, key, values):
    """A number the update reads baked in would leave the compiled step on its old value."""
    eager, compiled = Run(OPTIMIZERS[name], False), Run(OPTIMIZERS[name], True)
    for i, value in enumerate(values * 2):
        for run in (eager, compiled):
            set_all(run.opt, key, value)
        assert np.array_equal(compiled(), eager())
        assert_identical(compiled, eager, f"{name} with {key}={value}, step {i}")
    # (with dampening, SGD's first step makes its momentum buffer from the gradient: the
    # state cannot be made ahead, and the second call compiles for it)
    assert len(compiled.step.specializations) == (2 if name == "sgd-dampening" else 1)


def test_groups_have_their_own_learning_rates():
    eager, compiled = (Run(OPTIMIZERS["sgd-momentum"], c, groups=True) for c in (False, True))
    for i in range(4):
        for run in (eager, compiled):
            run.opt.param_groups[0]["lr"] = 0.1 * (i + 1)
            run.opt.param_groups[1]["lr"] = 0.01 / (i + 1)
        assert np.array_equal(compiled(), eager())
        assert_identical(compiled, eager, f"step {i}")
    assert len(compiled.step.specializations) == 1


def test_a_two_hundred_step_schedule_compiles_once():
    compiled = Run(OPTIMIZERS["sgd-momentum"], True)
    for i in range(200):
        set_all(compiled.opt, "lr", 0.1 * 0.98**i)
        compiled()
    assert len(compiled.step.specializations) == 1
    assert compiled.step.recompile_reasons == []


def test_adam_over_many_steps_equals_eager_exactly():
    """Adam's step count is state the compiled step updates, and its bias corrections are
    computed from it as the eager update does."""
    eager, compiled = Run(OPTIMIZERS["adam"], False), Run(OPTIMIZERS["adam"], True)
    for i in range(60):
        assert np.array_equal(compiled(), eager()), f"loss of step {i}"
    assert_identical(compiled, eager, "after 60 steps")
    steps = {float(s["step"].item()) for s in compiled.opt.state.values()}
    assert steps == {60.0}
    assert len(compiled.step.specializations) == 1


def step_params(code: str) -> list[str]:
    """The parameters of the generated step (its ``def`` wrapped when long)."""
    return [p.strip() for p in code.split("def step(")[1].split(")")[0].split(",")]


def test_hyperparameters_are_named_inputs_of_the_generated_step():
    compiled = Run(OPTIMIZERS["adam-weight-decay"], True)
    compiled()
    params = step_params(compiled.step.code)
    for name in ("opt_lr0", "opt_betas0_0", "opt_betas0_1", "opt_eps0", "opt_weight_decay0"):
        assert name in params
    # the learning rate is nowhere baked in (the mean's 1/96 = 0.0104... is another number)
    assert not re.search(r"(?<![\d.])0\.01(?!\d)", compiled.step.code)


def test_a_number_the_update_does_not_read_is_no_input():
    compiled = Run(OPTIMIZERS["sgd"], True)  # momentum, dampening and weight decay are 0
    compiled()
    params = step_params(compiled.step.code)
    assert "opt_lr0" in params
    for name in ("opt_momentum0", "opt_dampening0", "opt_weight_decay0"):
        assert name not in params


@pytest.mark.parametrize(
    ("name", "key", "value", "reason", "count"),
    [
        # (the momentum buffer the new code makes is made ahead: no recompile of its own)
        ("sgd", "momentum", 0.9, "optimizer opt group 0 momentum: 0.0 -> 0.9", 2),
        ("sgd-momentum", "momentum", 0.0, "optimizer opt group 0 momentum: 0.9 -> 0.0", 2),
        ("sgd", "weight_decay", 0.01, "optimizer opt group 0 weight_decay: 0.0 -> 0.01", 2),
        ("sgd-momentum", "nesterov", True, "optimizer opt group 0 nesterov: False -> True", 2),
        ("adam-amsgrad", "amsgrad", False, "optimizer opt group 0 amsgrad: True -> False", 2),
        ("adam", "maximize", True, "optimizer opt group 0 maximize: False -> True", 2),
    ],
)
def test_a_change_to_the_update_s_code_recompiles_with_a_short_reason(
    name, key, value, reason, count
):
    eager, compiled = Run(OPTIMIZERS[name], False), Run(OPTIMIZERS[name], True)
    for i in range(5):
        if i == 3:
            for run in (eager, compiled):
                set_all(run.opt, key, value)
        assert np.array_equal(compiled(), eager())
        assert_identical(compiled, eager, f"step {i}")
    (said,) = compiled.step.recompile_reasons
    assert said.startswith(reason)  # (SGD's new momentum buffers, made ahead, are named next)
    assert len(compiled.step.specializations) == count


# --- the bound on the cache ------------------------------------------------------------------


def linear_step():
    tg.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x):
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    return model, train_step


def batches(n):
    return [tg.ones(b, 4) for b in range(1, n + 1)]


def test_past_the_cache_limit_new_signatures_run_eagerly_with_one_warning():
    model, train_step = linear_step()
    eager_model, eager_step = linear_step()
    step = tg.compile(train_step)
    limit = specialize.CACHE_SIZE_LIMIT
    assert limit == 8
    xs = batches(limit + 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x in xs[:limit]:
            step(x)
            eager_step(x)
        assert not caught
        for x in xs[limit:] + xs[limit:]:  # new signatures, twice
            assert np.array_equal(step(x).detach().numpy(), eager_step(x).detach().numpy())
    assert len(step.specializations) == limit
    assert step.ran_eagerly
    assert len(caught) == 1  # once per compiled function
    assert "8 specializations" in str(caught[0].message)
    assert "run eagerly" in str(caught[0].message)
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())
    step(xs[0])  # a cached signature still runs its specialization
    assert len(step.specializations) == limit


def test_the_cache_limit_of_a_compiled_module(monkeypatch):
    monkeypatch.setattr(specialize, "CACHE_SIZE_LIMIT", 2)
    model = nn.Linear(4, 2)
    cm = tg.compile(model)
    with pytest.warns(UserWarning, match="2 specializations"):
        outs = [cm(x) for x in batches(4)]
    assert len(cm._cache) == 2
    for x, out in zip(batches(4), outs, strict=True):
        np.testing.assert_array_equal(out.detach().numpy(), model(x).detach().numpy())
    out = cm(tg.ones(4, 4))  # past the bound, still differentiable (the eager module ran)
    out.sum().backward()
    assert model.weight.grad is not None


def test_max_recompiles_stays_the_bound_when_given():
    """max_recompiles is an explicit bound: past it, an error, and up to it, compiles (even
    past the cache limit)."""
    _, train_step = linear_step()
    step = tg.compile(train_step, max_recompiles=9)
    xs = batches(11)
    for x in xs[:10]:
        step(x)
    assert len(step.specializations) == 10
    with pytest.raises(tg.RecompileError, match="max_recompiles=9"):
        step(xs[10])


def test_a_group_replaced_by_an_equal_dict_is_read_in_its_place():
    eager, compiled = Run(OPTIMIZERS["adam"], False), Run(OPTIMIZERS["adam"], True)
    for i in range(4):
        for run in (eager, compiled):
            # (a plain dict, as a user may put there: its changes are not counted)
            run.opt.param_groups[0] = {**run.opt.param_groups[0], "lr": 0.01 / (i + 1)}
        assert np.array_equal(compiled(), eager())
        assert_identical(compiled, eager, f"step {i}")
    assert len(compiled.step.specializations) == 1


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        lambda opt: optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=20),
        lambda opt: optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5),
    ],
)
def test_a_scheduler_created_after_the_step_compiled_recompiles_nothing(make_scheduler):
    eager, compiled = Run(OPTIMIZERS["sgd-momentum"], False), Run(OPTIMIZERS["sgd-momentum"], True)
    for run in (eager, compiled):
        run()
        run()
    schedulers = [make_scheduler(run.opt) for run in (eager, compiled)]
    for i in range(6):
        assert np.array_equal(compiled(), eager())
        assert_identical(compiled, eager, f"step {i}")
        for scheduler in schedulers:
            scheduler.step()
    assert len(compiled.step.specializations) == 1  # the first call's is the steady one
