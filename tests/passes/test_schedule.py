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
    result = tg.passes.run_pass("schedule", graph)
    scheduled = result.graph
    update = [n for n in scheduled.nodes if n.origin == "update"]
    first_big = next(i for i, n in enumerate(update) if not is_scalar(n))
    assert all(not is_scalar(n) for n in update[first_big:])
    assert any(note.kind == "hoisted" for note in result.notes)
    # every other update node keeps its order
    others = [n.outputs[0].name for n in graph.nodes if n.origin == "update" and not is_scalar(n)]
    assert [n.outputs[0].name for n in update if not is_scalar(n)] == others
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


# --- results kept for the caller run as soon as their inputs exist ----------------------------

LATE_RESULT = """graph(%x:f64[4,3], %w:f64[3,5], %g:f64[4,5]) {
  %1:f64[4,5] = matmul %x, %w
  %2:f64[4,5] = mul %1, %g
  %3:f64[4,5] = tanh %2
  %4:f64[4,5] = exp %3
  %5:f64[3,4] = permute[dims=(1, 0)] %x
  %6:f64[3,5] = matmul %5, %g
  %7:f64[5,3] = permute[dims=(1, 0)] %6
  return %4, %7
}"""


def test_a_result_kept_for_the_caller_runs_as_soon_as_its_inputs_exist():
    """The weight-gradient-like product %6 (with the view %5 it reads) moves to the start:
    its inputs are graph inputs; the rest keeps its order, and the values are the same."""
    graph = tg.ir.Graph.parse(LATE_RESULT)
    result = tg.passes.run_pass("schedule", graph)
    scheduled = result.graph
    scheduled.lint()
    names = [n.outputs[0].name for n in scheduled.nodes]
    assert names[:2] == ["5", "6"] and names[2:] == ["1", "2", "3", "4", "7"]
    assert [note.kind for note in result.notes] == ["moved", "moved"]
    assert str(schedule(scheduled.copy())) == str(scheduled)  # a second run changes nothing
    arrays = [np.random.default_rng(0).standard_normal(v.type.shape) for v in graph.inputs]
    for a, b in zip(interpret(graph, *arrays), interpret(scheduled, *arrays), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_result_read_by_the_computation_stays_where_it_is():
    """%6 is also read by %8, which is no update: it is not only for the caller."""
    text = LATE_RESULT.replace("  return %4, %7", "  %8:f64[3,5] = exp %6\n  return %4, %7, %8")
    graph = tg.ir.Graph.parse(text)
    names = [n.outputs[0].name for n in schedule(graph.copy()).nodes]
    assert names.index("6") > names.index("4")
