"""Sums of scatters at static indices assembled into one array (canonicalize's
``scatter-sum-assembled`` rule, tracegrad/passes/scatter_sums.py).

On IR graphs: which sums become one concatenation (any order, int indices on any axis,
slices, gaps filled with zeros), what must still add (repeated indices, a piece overlapping
another) and what stays (index tensors, strides, a scatter another reader needs); each result
equals the graph before in float64 and costs no more (operations and bytes, cost model of
passes/cost.py). On programs: gradients of unbind, index, split, chunk and of recurrent
layers' step loops, compiled (module, and a whole training step) equal eager ones, with no
scatter left, and the memory plan writes each step's gates into their place in the gathered
gradient.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_rules import arrays_for, assert_same_values

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.ir.graph import Graph
from tracegrad.ops.index import resolve
from tracegrad.passes.cost import graph_cost
from tracegrad.passes.memory import Assembled

ROOT = Path(__file__).resolve().parents[2]

# --- IR graphs ----------------------------------------------------------------------------------


def whole():
    return ("slice", None, None, None)


def rows(start, stop):
    return ("slice", start, stop, None)


def f64(shape) -> str:
    return f"f64[{','.join(map(str, shape))}]"


def scatter_sum(shape, keys, also_returned=()) -> Graph:
    """%s = the sum of %g_i scattered into zeros of ``shape`` at ``keys[i]`` (added in the
    order given); the scatters numbered in ``also_returned`` are returned too."""
    probe = np.zeros(shape)
    inputs, lines = [], []
    for i, key in enumerate(keys):
        inputs.append(f"%g{i}:{f64(probe[resolve(key, ())].shape)}")
        lines.append(f"  %p{i}:{f64(shape)} = scatter_add[key={key!r}, shape={shape}] %g{i}")
    total = "p0"
    for i in range(1, len(keys)):
        lines.append(f"  %a{i}:{f64(shape)} = add %{total}, %p{i}")
        total = f"a{i}"
    returned = ", ".join([f"%{total}", *(f"%p{i}" for i in also_returned)])
    body = "\n".join(lines)
    graph = Graph.parse(f"graph({', '.join(inputs)}) {{\n{body}\n  return {returned}\n}}")
    graph.lint()
    return graph


def optimized(graph: Graph) -> tuple[Graph, list[str]]:
    """canonicalize, then what the pipeline runs after rewrites (cse, dce); and the notes."""
    report = []
    after = tg.passes.run(graph, ["canonicalize", "cse", "dce"], report)
    after.lint()
    return after, [note.kind for result in report for note in result.notes]


# name -> (shape, keys, ops of the result: op -> count)
CASES = {
    "unbind over dim 0": ((4, 2, 3), [(("int", t),) for t in range(4)], {"cat": 1}),
    "unbind over dim 1, any order": (
        (2, 4, 3),
        [(whole(), ("int", t)) for t in (2, 0, 3, 1)],
        {"cat": 1},
    ),
    "negative indices and an ellipsis": (
        (2, 3),
        [(("ellipsis",), ("int", -1)), (("ellipsis",), ("int", 0)), (("ellipsis",), ("int", 1))],
        {"cat": 1},
    ),
    "split into slices of the last axis": (
        (2, 6),
        [(whole(), rows(4, 6)), (whole(), rows(0, 1)), (whole(), rows(1, 4))],
        {"cat": 1},
    ),
    "a new axis in the piece": (
        (3, 2),
        [(("int", t), ("none",)) for t in range(3)],
        {"cat": 1},
    ),
    "partial cover: zeros in the gaps": (
        (2, 9),
        [(whole(), rows(1, 3)), (whole(), rows(5, 7))],
        {"cat": 1, "broadcast_to": 2, "constant": 1},  # (two gaps alike: one)
    ),
    "a repeated index still adds": (
        (3, 2),
        [(("int", 1),), (("int", 0),), (("int", 1),), (("int", 2),)],
        {"cat": 1, "add": 1},
    ),
    "a piece along another axis stays a scatter, added": (
        (2, 3),
        [(("int", 0),), (whole(), ("int", 2)), (("int", 1),)],
        {"cat": 1, "scatter_add": 1, "add": 1},
    ),
    "a piece overlapping another stays a scatter, added": (
        (2, 5),
        [(whole(), rows(0, 2)), (whole(), rows(1, 3)), (whole(), rows(3, 5))],
        {"cat": 1, "broadcast_to": 1, "constant": 1, "scatter_add": 1, "add": 1},
    ),
}


def op_counts(graph: Graph) -> dict[str, int]:
    counts = graph.op_counts()
    counts.pop("reshape", None)  # (an int index's piece takes its axis back: a view)
    return counts


@pytest.mark.parametrize("name", CASES)
def test_a_sum_of_scatters_becomes_one_assembled_array(name):
    shape, keys, expected = CASES[name]
    graph = scatter_sum(shape, keys)
    after, notes = optimized(graph)
    assert "scatter-sum-assembled" in notes
    assert op_counts(after) == expected, str(after)
    assert_same_values(graph, after, arrays_for(graph))


@pytest.mark.parametrize("name", CASES)
def test_assembling_costs_no_more_operations_or_bytes(name):
    shape, keys, _ = CASES[name]
    graph = scatter_sum(shape, keys)
    before, after = graph_cost(graph), graph_cost(optimized(graph)[0])
    assert after.operations < before.operations
    assert after.bytes < before.bytes
    assert after.reduction_operations == before.reduction_operations == 0


def test_a_scatter_another_reader_needs_is_not_taken_in():
    """Assembling it would copy its piece a second time: it stays, added to the rest."""
    graph = scatter_sum((4, 2), [(("int", t),) for t in range(4)], also_returned=(2,))
    after, _ = optimized(graph)
    assert after.op_counts()["scatter_add"] == 1 and after.op_counts()["cat"] == 1
    assert graph_cost(after).bytes < graph_cost(graph).bytes
    assert_same_values(graph, after, arrays_for(graph))


LEFT_ALONE = {
    "index tensors": """graph(%a:f64[2,3], %b:f64[2,3], %i:i64[2]) {
  %1:f64[4,3] = scatter_add[key=(('tensor', 0),), shape=(4, 3)] %a, %i
  %2:f64[4,3] = scatter_add[key=(('tensor', 0),), shape=(4, 3)] %b, %i
  %3:f64[4,3] = add %1, %2
  return %3
}""",
    "blocks along different axes": """graph(%a:f64[3], %b:f64[2]) {
  %1:f64[2,3] = scatter_add[key=(('int', 0),), shape=(2, 3)] %a
  %2:f64[2,3] = scatter_add[key=(('slice', None, None, None), ('int', 1)), shape=(2, 3)] %b
  %3:f64[2,3] = add %1, %2
  return %3
}""",
    "a broadcasting sum": """graph(%a:f64[3], %b:f64[3], %c:f64[1,3]) {
  %1:f64[2,3] = scatter_add[key=(('int', 0),), shape=(2, 3)] %a
  %2:f64[2,3] = scatter_add[key=(('int', 1),), shape=(2, 3)] %b
  %3:f64[2,3] = add %1, %c
  %4:f64[2,3] = add %3, %2
  %5:f64[2,3] = add %4, %c
  return %5, %3
}""",
}


@pytest.mark.parametrize("text", LEFT_ALONE.values(), ids=LEFT_ALONE.keys())
def test_sums_it_cannot_assemble_are_left_alone(text):
    graph = Graph.parse(text)
    after, notes = optimized(graph)
    assert "scatter-sum-assembled" not in notes
    assert after.op_counts() == graph.op_counts()


# --- programs -------------------------------------------------------------------------------


class Pieces(nn.Module):
    """A weight cut into pieces by ``cut``, each piece weighted by its position, so that
    every piece's gradient differs."""

    def __init__(self, shape, cut):
        super().__init__()
        self.weight = nn.Parameter(tg.randn(*shape, dtype=tg.float64))
        self.cut = cut

    def forward(self, x):
        pieces = self.cut(self.weight)
        return sum(((p * x).tanh() * (k + 1)).sum() for k, p in enumerate(pieces))


PROGRAMS = {
    "unbind(0)": ((5, 3, 4), lambda w: w.unbind(0), (3, 4)),
    "unbind(1)": ((3, 5, 4), lambda w: w.unbind(1), (3, 4)),
    "index in any order": ((5, 4), lambda w: [w[t] for t in (3, 0, 4, 1, 2)], (4,)),
    "split": ((3, 6), lambda w: w.split([2, 1, 3], dim=1), (3, 1)),
    "chunk": ((3, 6), lambda w: w.chunk(3, dim=-1), (3, 2)),
    "x[:, t] on part of the columns": ((3, 6), lambda w: [w[:, 1], w[:, 4]], (3,)),
    "a repeated index": ((3, 4), lambda w: [w[1], w[0], w[1]], (4,)),
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_compiled_gradients_of_pieces_equal_eager_without_scatters(name):
    shape, cut, x_shape = PROGRAMS[name]
    tg.manual_seed(0)
    model = Pieces(shape, cut)
    x = tg.randn(*x_shape, dtype=tg.float64)
    model(x).backward()
    eager = model.weight.grad.numpy().copy()
    for passes in ("default", None):
        model.weight.grad = None
        compiled = tg.compile(model, passes=passes)
        compiled(x).backward()
        np.testing.assert_allclose(model.weight.grad.numpy(), eager, rtol=1e-12, atol=1e-14)
    assert "scatter_add" not in compiled_backward_ops(model, x)


def compiled_backward_ops(model, x) -> dict[str, int]:
    compiled = tg.compile(model)
    compiled(x).backward()
    return compiled.backward_graph.op_counts()


def sgd_step(model, opt, x):
    opt.zero_grad()
    out, _ = model(x)
    loss = (out * out).sum()
    loss.backward()
    opt.step()
    return loss


# name -> (layer, options, input shape, gathered gradients: one per layer and direction)
T, B, IN, H = 6, 3, 4, 5
# (LSTM layers without proj_size and GRU layers are one op each: projected LSTMs are unrolled)
RECURRENT = {
    "LSTM projected": (nn.LSTM, {"proj_size": 3}, (T, B, IN), 2),
    "LSTM projected, bidirectional, batch first": (
        nn.LSTM,
        {"proj_size": 3, "bidirectional": True, "batch_first": True},
        (B, T, IN),
        4,
    ),
}


@pytest.mark.parametrize("name", RECURRENT)
def test_a_compiled_recurrent_step_trains_as_eager_and_gathers_its_gate_gradients(name):
    """Two layers over 6 steps: losses, parameters and .grad after 3 steps equal eager; no
    scatter is left, and each step's gate gradients are written into their rows of the
    gathered gradient of the input projection (no copy of them)."""
    layer, options, shape, directions = RECURRENT[name]
    tg.manual_seed(1)
    eager_model = layer(IN, H, 2, **options).double()
    model = layer(IN, H, 2, **options).double()
    model.load_state_dict(eager_model.state_dict())
    eager_opt = optim.SGD(eager_model.parameters(), lr=0.1)
    opt = optim.SGD(model.parameters(), lr=0.1)
    step = tg.compile(sgd_step)
    for _ in range(3):
        x = tg.randn(*shape, dtype=tg.float64)
        want = sgd_step(eager_model, eager_opt, x).item()
        assert step(model, opt, x).item() == pytest.approx(want, rel=1e-12)
    for (key, p), q in zip(model.named_parameters(), eager_model.parameters(), strict=True):
        np.testing.assert_allclose(
            p.detach().numpy(), q.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=key
        )
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-10, err_msg=key)
    fn, graph = step.latest.program.parts[0]
    assert "scatter_add" not in graph.op_counts()
    gates = 4
    gathered = [
        n
        for n in graph.nodes
        if n.op == "cat"
        and n.outputs[0].type.shape == (T, B, gates * H)
        and isinstance(fn.plan.placement(n.outputs[0]), Assembled)
    ]
    assert len(gathered) == directions


def test_w5_at_reduced_size_compiles_to_eager_losses_without_scatters_per_step():
    """The benchmark's LSTM language model (tests/benchmarks checks its weights too)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import harness
    from benchmarks import workloads as W

    setup = W.make_setup(W.get_workload("W5", **harness.SMALL["W5"]), np.float64)
    losses = {}
    for key in ("eager", "step"):
        impl = W.make_implementation(key, setup)
        losses[key] = [impl.loss_value(impl.step(i)) for i in range(3)]
    assert losses["step"] == pytest.approx(losses["eager"], rel=1e-12)
    graph = impl.compiled.latest.program.parts[0][1]
    # the embedding's at its tokens, and per LSTM layer its outputs' cotangent placed in
    # the record's (no scatter per time step)
    scatters = sorted(len(n.inputs) for n in graph.nodes if n.op == "scatter_add")
    assert graph.op_counts()["lstm_sequence"] == 2 and scatters == [1, 1, 2]
