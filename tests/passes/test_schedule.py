"""The schedule pass: in an optimizer update, scalar computations (step counts, bias
corrections) run first and every other node keeps its relative order, so each parameter's
elementwise updates sit side by side."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.ir.interpreter import interpret
from tracegrad.passes.schedule import schedule


def adam_step_graph(training_step):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    opt = optim.Adam(model.parameters(), lr=0.01)
    step = tg.compile(training_step(model, opt), passes=["fold", "cse", "dce"])
    x, y = tg.randn(4, 5), tg.tensor(np.array([0, 2, 1, 0]))
    step(x, y)
    step(x, y)  # the second specialization has Adam's state: the full update
    return step.graph


def is_scalar(node) -> bool:
    return all(np.prod(v.type.shape) <= 1 for v in node.outputs)


def test_update_scalars_run_before_every_parameter_update(training_step):
    graph = adam_step_graph(training_step)
    scheduled = schedule(graph.copy())
    scheduled.lint()
    update = [n for n in scheduled.nodes if n.origin == "update"]
    first_big = next(i for i, n in enumerate(update) if not is_scalar(n))
    assert all(not is_scalar(n) for n in update[first_big:])
    assert scheduled.meta["hoisted"] > 0
    # everything else keeps its order
    others = [n.outputs[0].name for n in graph.nodes if not is_scalar(n)]
    assert [n.outputs[0].name for n in scheduled.nodes if not is_scalar(n)] == others
    # the three updates of each weight are neighbours
    ops = [n.op for n in update[first_big:]]
    for i in range(0, len(ops), 3):
        assert ops[i : i + 3] == ["lerp", "ema_square", "adam_step"]


def test_graphs_without_an_update_are_left_as_they_are():
    graph = tg.trace(lambda x: (x * 2.0).exp().sum() + x.sum(), tg.randn(3, 4))
    scheduled = schedule(graph.copy())
    assert str(scheduled) == str(graph)


def test_scheduled_program_computes_the_same_step(training_step):
    graph = adam_step_graph(training_step)
    scheduled = tg.passes.run(graph, ["schedule"])
    rng = np.random.default_rng(1)
    arrays = [
        rng.standard_normal(v.type.shape).astype(v.type.dtype.np)
        if v.type.dtype.is_floating_point
        else rng.integers(0, 3, v.type.shape)
        for v in graph.inputs
    ]
    for a, b in zip(interpret(graph, *arrays), interpret(scheduled, *arrays), strict=True):
        np.testing.assert_array_equal(a, b)
