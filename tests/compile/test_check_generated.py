"""check=True runs the generated code too: a wrong memory plan is named, not silent.

Passes are checked graph by graph under the interpreter; the memory plan and code generation
only show in the generated code. On the first call of a specialization, ``check=True`` runs
that code on copies of the call's arrays and compares its values, gradients and updated state
with the unoptimized program. Here the memory plan's aliasing rule is switched off (so a fused
kernel writes over a transposed view it still reads, as it once did) and the check must raise;
with the rule on, the checked and unchecked programs must agree step after step (the check
neither updates the state twice nor moves the random stream).
"""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.codegen import emit
from tracegrad.compiled.check import CheckError
from tracegrad.ir.core import FUSED
from tracegrad.passes import memory
from tracegrad.passes.pipeline import transforms


@pytest.fixture
def no_aliasing_rule(monkeypatch):
    """The memory plan and row loops without their aliasing rule (and without the plan's own
    verification, which uses the same rule): writes may land on views still read."""
    monkeypatch.setattr(memory, "clobbers", lambda *args: False)
    monkeypatch.setattr(emit, "clobbers", lambda *args: False)


def square(x):
    return ((x.T - x) ** 2).sum()


def batch():
    a = np.arange(1.0, 10.0).reshape(3, 3) / 10
    return tg.tensor(a, requires_grad=True)


def step_gradient(check: bool) -> np.ndarray:
    def step(x):
        loss = square(x)
        loss.backward()
        return loss

    x = batch()
    tg.compile(step, check=check)(x)
    return x.grad.numpy()


class Square(nn.Module):
    def forward(self, x):
        return square(x)


def test_without_the_aliasing_rule_the_gradient_is_silently_wrong(no_aliasing_rule):
    """(what the check below must catch: the plan writes over the transposed view)"""
    assert np.all(step_gradient(check=False) == 0)


def test_check_names_the_generated_code_of_a_training_step(no_aliasing_rule):
    with pytest.raises(CheckError) as info:
        step_gradient(check=True)
    message = str(info.value)
    assert "memory plan / generated code (training step)" in message
    assert "a stored .grad" in message
    assert float(message.rsplit("differs by ", 1)[1]) == pytest.approx(1.6)  # the largest error


def test_check_names_the_generated_code_of_a_compiled_module(no_aliasing_rule):
    with pytest.raises(CheckError) as info:
        tg.compile(Square(), check=True)(batch())
    message = str(info.value)
    assert "memory plan / generated code (forward and backward)" in message
    assert "gradient of x" in message


def test_the_plan_is_verified_against_the_aliasing_rule():
    """A plan written by hand, putting the difference over its first operand (which its
    second operand reads transposed), is refused by name."""
    traced = tg.trace(lambda x: x.exp() - x.exp().T, batch().detach())
    graph = tg.passes.run(traced, transforms("default"))
    kernel = next(n for n in graph.nodes if n.op in (FUSED, "sub"))
    bad = memory.MemoryPlan.of(graph, {kernel.outputs[0]: memory.InPlace(0)}, [])
    rule = "reads the memory it writes through a view"
    with pytest.raises(memory.PlanError, match=f"%{kernel.outputs[0].name} = {kernel.op} {rule}"):
        memory.verify_plan(graph, bad)


def test_check_updates_state_once_and_keeps_the_random_stream():
    results = []
    for check in (True, False):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def train_step(x, model=model, opt=opt):
            opt.zero_grad()
            loss = square(model(x))
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step, check=check)
        losses = [step(batch().detach()).item() for _ in range(3)]
        after = [p.detach().numpy() for p in model.parameters()]
        results.append((losses, after, tg.rand(2).numpy()))
    (losses, after, draw), (want_losses, want_after, want_draw) = results
    np.testing.assert_array_equal(losses, want_losses)
    for got, want in zip(after, want_after, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(draw, want_draw)
