"""NaN provenance: with ``debug_nans=True`` (or ``TRACEGRAD_DEBUG_NANS=1``) the first NaN/Inf a
compiled program produces raises FloatingPointError naming the op, forward or backward, and the
user's source line."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim


def at(marker: str) -> str:
    """``file:line`` of the one line of this file containing ``marker``, as a regex."""
    with open(__file__) as f:
        lines = [i for i, text in enumerate(f, 1) if marker in text.partition("#")[2]]
    assert len(lines) == 1, marker
    return re.escape(f"{__file__}:{lines[0]}")


class LogModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tg.tensor([1.0, -1.0, 2.0]))

    def forward(self, x):
        y = (self.w * x).log()  # MARK-log
        return y.sum()


class SqrtModel(nn.Module):
    """sqrt(w) at w = 0 is finite, its gradient 1 / (2 sqrt(w)) is not."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tg.tensor([1.0, 0.0, 4.0]))

    def forward(self, x):
        return (self.w.sqrt() * x).sum()  # MARK-sqrt


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.delenv("TRACEGRAD_DEBUG_NANS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's own invalid-value warnings
        yield


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_forward_nan_names_op_phase_and_line(passes):
    cm = tg.compile(LogModel(), debug_nans=True, passes=passes)
    with pytest.raises(FloatingPointError) as info:
        cm(tg.ones(3))
    message = str(info.value)
    assert "NaN" in message
    assert "log" in message
    assert "forward" in message and "backward" not in message
    assert re.search(at("MARK-log"), message)


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_backward_inf_names_grad_op_phase_and_line(passes):
    cm = tg.compile(SqrtModel(), debug_nans=True, passes=passes)
    out = cm(tg.ones(3))  # the forward is finite
    assert np.isfinite(out.item())
    with pytest.raises(FloatingPointError) as info:
        out.backward()
    message = str(info.value)
    assert "grad of sqrt" in message
    assert "backward" in message
    assert re.search(at("MARK-sqrt"), message)


def test_without_debug_nans_nan_propagates_like_eager():
    model = LogModel()
    out = tg.compile(model)(tg.ones(3))
    assert np.isnan(out.item()) and np.isnan(model(tg.ones(3)).item())
    model = SqrtModel()
    tg.compile(model)(tg.ones(3)).backward()
    assert np.isinf(model.w.grad.numpy()[1])


def test_debug_nans_does_not_change_finite_results():
    model = SqrtModel()
    with tg.no_grad():
        model.w.add_(1.0)
    cm = tg.compile(model, debug_nans=True)
    out = cm(tg.ones(3))
    out.backward()
    np.testing.assert_allclose(model.w.grad.numpy(), 0.5 / np.sqrt([2.0, 1.0, 5.0]), rtol=1e-6)
    assert "check_finite" in cm.code


def test_environment_variable_turns_it_on(monkeypatch):
    monkeypatch.setenv("TRACEGRAD_DEBUG_NANS", "1")
    with pytest.raises(FloatingPointError, match=at("MARK-log")):
        tg.compile(LogModel())(tg.ones(3))
    out = tg.compile(SqrtModel())(tg.ones(3))
    with pytest.raises(FloatingPointError, match="grad of sqrt"):
        out.backward()


def test_environment_variable_unset_leaves_it_off():
    cm = tg.compile(LogModel())
    assert np.isnan(cm(tg.ones(3)).item())
    assert "check_finite" not in cm.code


def sqrt_step():
    model = SqrtModel()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x):
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        opt.step()
        return loss

    return model, train_step


def test_whole_step_backward_inf():
    model, train_step = sqrt_step()
    before = model.w.detach().numpy().copy()
    with pytest.raises(FloatingPointError) as info:
        tg.compile(train_step, debug_nans=True)(tg.ones(3))
    message = str(info.value)
    assert "grad of sqrt" in message and "backward" in message
    assert re.search(at("MARK-sqrt"), message)
    np.testing.assert_array_equal(model.w.detach().numpy(), before)  # no update applied


def test_whole_step_environment_variable(monkeypatch):
    monkeypatch.setenv("TRACEGRAD_DEBUG_NANS", "1")
    _, train_step = sqrt_step()
    with pytest.raises(FloatingPointError, match="grad of sqrt"):
        tg.compile(train_step)(tg.ones(3))


def test_grad_transform_debug_nans(monkeypatch):
    monkeypatch.setenv("TRACEGRAD_DEBUG_NANS", "1")

    def f(x):
        return x.sqrt().sum()  # MARK-fn-sqrt

    with pytest.raises(FloatingPointError, match=at("MARK-fn-sqrt")):
        tg.grad(f)(tg.tensor([1.0, 0.0]))


def test_nan_in_the_optimizer_update_is_named_in_the_update_section():
    model = nn.Linear(3, 2)
    with tg.no_grad():
        model.weight.zero_()  # even odds: the weight's gradient is about +-50
    # (lr is an input of the step: an infinite one would be the first Inf, not the update)
    opt = optim.SGD(model.parameters(), lr=1e38)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()  # lr * grad overflows float32: the update makes the first Inf
        return loss

    step = tg.compile(train_step, debug_nans=True)
    with pytest.raises(FloatingPointError, match=r"Inf produced by mul in the update at .*test_"):
        step(tg.full((4, 3), 100.0), tg.tensor(np.array([0, 0, 0, 0])))
