"""Learning-rate schedulers: the same learning rates as PyTorch's, float for float, over 50
steps (momenta and betas too for OneCycleLR), their state dicts, and compiled training steps
under each schedule: never recompiled by a new rate, the same bits as eager."""

from __future__ import annotations

import math

import numpy as np
import pytest
from compiled_runs import Run

import tracegrad as tg
from tracegrad import optim

STEPS = 50


def metric(i: int) -> float:
    """ReduceLROnPlateau's metric: improving, then flat with noise (so it reduces)."""
    return 1.0 / (i + 1) if i < 10 else 0.1 + 0.01 * math.sin(i)


SCHEDULERS = {
    "step": lambda lib, o: lib.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    "multistep": lambda lib, o: lib.optim.lr_scheduler.MultiStepLR(o, [5, 12, 12, 30], 0.3),
    "exponential": lambda lib, o: lib.optim.lr_scheduler.ExponentialLR(o, gamma=0.93),
    "cosine": lambda lib, o: lib.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=1e-3),
    "onecycle": lambda lib, o: lib.optim.lr_scheduler.OneCycleLR(
        o, max_lr=[0.5, 0.2], total_steps=STEPS
    ),
    "onecycle-linear-three-phase": lambda lib, o: lib.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.3, epochs=5, steps_per_epoch=10, anneal_strategy="linear", three_phase=True
    ),
    "lambda": lambda lib, o: lib.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + 0.1 * e)),
    "lambda-per-group": lambda lib, o: lib.optim.lr_scheduler.LambdaLR(
        o, [lambda e: 0.95**e, lambda e: 1.0 if e < 10 else 0.5]
    ),
    "plateau": lambda lib, o: lib.optim.lr_scheduler.ReduceLROnPlateau(o, patience=2, factor=0.5),
    "plateau-max-abs": lambda lib, o: lib.optim.lr_scheduler.ReduceLROnPlateau(
        o,
        mode="max",
        factor=0.7,
        threshold=0.01,
        threshold_mode="abs",
        patience=1,
        cooldown=2,
        min_lr=[0.01, 0.02],
    ),
}


def step_scheduler(scheduler, i: int) -> None:
    if "Plateau" in type(scheduler).__name__:
        value = metric(i)
        scheduler.step(-value if scheduler.mode == "max" else value)
    else:
        scheduler.step()


# --- against PyTorch -----------------------------------------------------------------------------


def torch_and_tracegrad(optimizer: str):
    """(lib, optimizer) of both libraries: two parameter groups over the same weights."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 2)), rng.standard_normal(2)]
    pairs = []
    for lib in (tg, torch):
        params = [lib.nn.Parameter(lib.tensor(w)) for w in weights]
        groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.05}]
        if optimizer == "adam":
            opt = lib.optim.Adam(groups, lr=0.1)
        else:
            opt = lib.optim.SGD(groups, lr=0.1, momentum=0.9)
        pairs.append((lib, opt))
    return pairs


def snapshot(opt) -> list:
    keys = ("lr", "initial_lr", "momentum", "betas")
    return [{k: g[k] for k in keys if k in g} for g in opt.param_groups]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_learning_rates_equal_torch_exactly(name, optimizer):
    (_, opt), (torch, twin_opt) = torch_and_tracegrad(optimizer)
    scheduler = SCHEDULERS[name](tg, opt)
    twin = SCHEDULERS[name](torch, twin_opt)
    assert snapshot(opt) == snapshot(twin_opt)
    assert scheduler.last_epoch == twin.last_epoch
    rates = set()
    for i in range(STEPS - 1):  # (OneCycleLR allows total_steps - 1 steps after the first)
        for o in (opt, twin_opt):
            o.step()
        step_scheduler(scheduler, i)
        step_scheduler(twin, i)
        assert snapshot(opt) == snapshot(twin_opt), f"step {i}"
        assert scheduler.get_last_lr() == twin.get_last_lr()
        assert scheduler.last_epoch == twin.last_epoch
        rates.add(tuple(group["lr"] for group in opt.param_groups))
    assert len(rates) > 2  # the schedule moved
    state, twin_state = scheduler.state_dict(), twin.state_dict()
    # PyTorch's also holds its bookkeeping of call order (_get_lr_called_within_step, ...)
    assert set(state) <= set(twin_state)
    for key, value in state.items():
        assert value == twin_state[key], key


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_loaded_state_dict_continues_the_schedule(name):
    def two_groups(lr):
        groups = [{"params": [tg.zeros(1)]}, {"params": [tg.zeros(1)], "lr": lr / 2}]
        return optim.SGD(groups, lr=lr, momentum=0.9)

    opt = two_groups(0.1)
    scheduler = SCHEDULERS[name](tg, opt)
    for i in range(20):
        step_scheduler(scheduler, i)
    saved, saved_opt = scheduler.state_dict(), opt.state_dict()
    other = two_groups(1.0)
    resumed = SCHEDULERS[name](tg, other)
    other.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    assert resumed.last_epoch == scheduler.last_epoch
    for i in range(20, STEPS - 1):
        step_scheduler(scheduler, i)
        step_scheduler(resumed, i)
        assert snapshot(other) == snapshot(opt), f"step {i}"
        assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_initial_lr_is_set_once_and_last_epoch_counts_steps():
    opt = optim.SGD([tg.zeros(2, requires_grad=True)], lr=0.1)
    scheduler = optim.lr_scheduler.StepLR(opt, step_size=2)
    assert opt.param_groups[0]["initial_lr"] == 0.1
    assert scheduler.last_epoch == 0 and scheduler.get_last_lr() == [0.1]
    scheduler.step()
    scheduler.step()
    assert scheduler.last_epoch == 2
    assert scheduler.get_last_lr() == [0.1 * 0.1]
    assert scheduler.base_lrs == [0.1]
    with pytest.raises(KeyError, match="initial_lr"):
        optim.lr_scheduler.StepLR(optim.SGD([tg.zeros(1)], lr=0.1), 2, last_epoch=3)


def test_lambda_state_dict_keeps_callable_objects_state():
    class Warmup:
        def __init__(self, n):
            self.n = n

        def __call__(self, epoch):
            return min(1.0, (epoch + 1) / self.n)

    opt = optim.SGD([tg.zeros(1)], lr=1.0)
    scheduler = optim.lr_scheduler.LambdaLR(opt, Warmup(4))
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [{"n": 4}]
    other = optim.lr_scheduler.LambdaLR(optim.SGD([tg.zeros(1)], lr=1.0), Warmup(10))
    other.load_state_dict(state)
    assert other.lr_lambdas[0].n == 4


def test_reduce_on_plateau_takes_a_tensor_metric_and_respects_min_lr():
    opt = optim.SGD([tg.zeros(1)], lr=1.0)
    scheduler = optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, min_lr=0.3)
    for _ in range(5):
        scheduler.step(tg.tensor(1.0))
    assert opt.param_groups[0]["lr"] == 0.3
    assert scheduler.get_last_lr() == [0.3]


# --- compiled training steps under a schedule ----------------------------------------------------


class ScheduledRun(Run):
    """A compiled-runs model in two parameter groups, an optimizer and a scheduler stepped
    after each training step."""

    def __init__(self, name: str, compiled: bool, optimizer: str):
        make = {
            "sgd": lambda groups: optim.SGD(groups, lr=0.1, momentum=0.9),
            "adam": lambda groups: optim.Adam(groups, lr=0.01),
            "rmsprop": lambda groups: optim.RMSprop(groups, lr=0.01, momentum=0.9),
        }
        super().__init__(make[optimizer], compiled, groups=True)
        self.scheduler = SCHEDULERS[name](tg, self.opt)

    def __call__(self, i: int) -> np.ndarray:
        loss = super().__call__()
        step_scheduler(self.scheduler, i)
        return loss


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_schedule_never_recompiles_a_compiled_step(name, optimizer):
    eager, compiled = ScheduledRun(name, False, optimizer), ScheduledRun(name, True, optimizer)
    rates = set()
    for i in range(STEPS - 1):
        assert np.array_equal(compiled(i), eager(i)), f"loss of step {i}"
        rates.add(tuple(group["lr"] for group in compiled.opt.param_groups))
    assert len(rates) > 2  # the schedule moved
    for i, (got, want) in enumerate(zip(compiled.state(), eager.state(), strict=True)):
        assert np.array_equal(got, want), f"array {i}"
    assert len(compiled.step.specializations) <= 2
    assert all("lr" not in reason for reason in compiled.step.recompile_reasons)
