"""Recompile reasons and guards in words: what changed, never raw tuples or object ids."""

import re

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

RAW = re.compile(r"\d{7,}|0x[0-9a-f]+|\(True|\(False|<absent>")  # ids, addresses, flag tuples


def _step_of(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return tg.compile(step)


def _batch(n):
    return tg.randn(n, 4), tg.tensor([i % 3 for i in range(n)])


def test_a_step_says_which_grads_and_optimizer_state_appeared():
    """A step accumulating into .grad (no zero_grad) reads the .grad its call starts with,
    and SGD with dampening makes its first momentum buffer from the gradient: the second
    call has both, which the first did not."""
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)

    @tg.compile
    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x, y = _batch(6)
    for _ in range(3):
        step(x, y)
    (reason,) = step.recompile_reasons
    assert reason == (
        "model.0.weight, model.0.bias, model.2.weight, model.2.bias: .grad now exists; "
        "optimizer opt (SGD): state for 4 parameters (momentum_buffer) now exists"
    )


def test_a_learning_rate_is_an_input_not_a_recompile_and_a_shape_is_said_as_a_change():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    step = _step_of(model, opt)
    x, y = _batch(6)
    step(x, y)
    step(x, y)
    compiles = len(step.specializations)
    opt.param_groups[0]["lr"] = 0.05
    step(x, y)
    assert len(step.specializations) == compiles  # lr: 0.1 -> 0.05 reads a new input
    step(*_batch(5))
    assert (
        step.recompile_reasons[-1] == "input 0: shape (6, 4) -> (5, 4); input 1: shape (6,) -> (5,)"
    )


def test_modes_replacements_and_requires_grad_in_words(monkeypatch, capsys):
    monkeypatch.setenv("TRACEGRAD_LOGS", "recompiles")
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    cm = tg.compile(model)
    cm(tg.randn(2, 4))
    model.eval()
    cm(tg.randn(2, 4))
    model[0] = nn.Linear(4, 3)
    cm(tg.randn(2, 4))
    cm(tg.randn(2, 4, requires_grad=True))
    reasons = cm.recompile_reasons
    assert reasons[0] == "training: train mode -> eval mode"
    assert "module 0: replaced by another Linear" in reasons[1]
    assert "training: eval mode -> 1 of 3 in train mode" in reasons[1]
    assert reasons[2] == "input 0: now requires grad"
    err = capsys.readouterr().err
    assert "[tracegrad:recompiles] recompiling Sequential: training: train mode -> eval" in err
    explained = cm.explain()
    assert "training = 1 of 3 in train mode" in explained and reasons[2] in explained
    for text in [*reasons, explained, err]:
        assert not RAW.search(text), RAW.search(text)
