"""Random well-typed graphs: text and JSON round trips keep them equal, and lint passes.

Graphs are grown node by node from a handful of elementwise, reduce, matmul and shape ops,
plus constants and custom nodes; each registry node's output type comes from its op's
``infer``, so every generated graph is well formed by construction.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.errors import DTypeError, ShapeError, SourceLocation
from tracegrad.ir.core import Node, Value
from tracegrad.ir.graph import Graph, structure
from tracegrad.ir.lint import lint
from tracegrad.ir.serialize import parts_from_json, to_json, to_networkx
from tracegrad.ir.text import parse_parts, print_graph
from tracegrad.ops import OPS

UNARY = ["neg", "exp", "tanh", "relu", "abs"]
BINARY = ["add", "mul", "sub", "maximum", "matmul"]


class Scale:
    """The class of the generated custom nodes."""


names = st.from_regex(r"[A-Za-z0-9_.]{1,6}", fullmatch=True)
shapes = st.lists(st.integers(0, 3), max_size=3).map(tuple)
filenames = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=12)
locations = st.none() | st.builds(SourceLocation, filenames, st.integers(0, 10**6))
# NaN is left out of scalar attributes: structure() compares them with ==, and nan != nan.
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
literals = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=8,
)


def fits(op: str, *types: TensorType, **attrs) -> TensorType | None:
    """The op's output type for these operands, or None when its rule rejects them."""
    try:
        return OPS[op].infer(*types, **attrs)
    except (ShapeError, DTypeError):
        return None


def elements(dtype):
    if dtype is dtypes.bool_:
        return st.booleans()
    if dtype is dtypes.int64:
        return st.integers(-(2**63), 2**63 - 1)
    width = 32 if dtype is dtypes.float32 else 64
    return st.floats(width=width, allow_nan=False) | st.just(math.nan)


class Builder:
    """Grows a graph: a pool of defined values and the nodes that defined them."""

    def __init__(self, draw):
        self.draw = draw
        self.dtype = draw(st.sampled_from([dtypes.float32, dtypes.float64]))
        self.inputs, self.nodes, self.pool = [], [], []
        self.count = 0

    def value(self, type_: TensorType) -> Value:
        # The "_<count>" suffix keeps names unique whatever the random prefix is.
        self.count += 1
        return Value(f"{self.draw(names)}_{self.count}", type_)

    def add_input(self) -> None:
        value = self.value(TensorType(self.draw(shapes), self.dtype))
        self.inputs.append(value)
        self.pool.append(value)

    def add(self, op: str, inputs, output_types, **attrs) -> None:
        outputs = [self.value(t) for t in output_types]
        self.nodes.append(Node(op, list(inputs), outputs, attrs, self.draw(locations)))
        self.pool.extend(outputs)

    def pick(self, accept=lambda v: True) -> Value | None:
        candidates = [v for v in self.pool if accept(v)]
        return self.draw(st.sampled_from(candidates)) if candidates else None


def add_unary(b: Builder) -> None:
    op = b.draw(st.sampled_from(UNARY))
    x = b.pick(lambda v: fits(op, v.type))
    if x is not None:
        b.add(op, [x], [fits(op, x.type)])


def add_binary(b: Builder) -> None:
    op = b.draw(st.sampled_from(BINARY))
    x = b.pick(lambda v: any(fits(op, v.type, w.type) for w in b.pool))
    if x is not None:
        y = b.pick(lambda v: fits(op, x.type, v.type))
        b.add(op, [x, y], [fits(op, x.type, y.type)])


def add_sum(b: Builder) -> None:
    x = b.pick()
    dims = tuple(sorted(b.draw(st.sets(st.integers(0, max(x.type.ndim - 1, 0))))))
    dims = dims if x.type.ndim else ()
    keepdim = b.draw(st.booleans())
    b.add("sum", [x], [fits("sum", x.type, dims=dims, keepdim=keepdim)], dims=dims, keepdim=keepdim)


def add_shape_op(b: Builder) -> None:
    x = b.pick()
    shape = x.type.shape
    if b.draw(st.booleans()):
        dims = tuple(b.draw(st.permutations(range(len(shape)))))
        b.add("permute", [x], [fits("permute", x.type, dims=dims)], dims=dims)
    else:
        new = b.draw(st.sampled_from([(x.type.numel,), shape[::-1], (1, *shape)]))
        b.add("reshape", [x], [fits("reshape", x.type, shape=new)], shape=new)


def add_constant(b: Builder) -> None:
    dtype = b.draw(st.sampled_from(dtypes.ALL))
    array = b.draw(hnp.arrays(dtype.np, b.draw(shapes), elements=elements(dtype)))
    b.add("constant", [], [TensorType(array.shape, dtype)], value=array)


def add_custom(b: Builder) -> None:
    inputs = b.draw(st.lists(st.sampled_from(b.pool), min_size=1, max_size=2))
    types = b.draw(
        st.lists(st.builds(TensorType, shapes, st.sampled_from(dtypes.ALL)), min_size=1, max_size=2)
    )
    b.add("custom", inputs, types, fn=Scale, args=b.draw(literals))


ADDERS = [add_unary, add_binary, add_sum, add_shape_op, add_constant, add_custom]


@st.composite
def graphs(draw) -> Graph:
    b = Builder(draw)
    for _ in range(draw(st.integers(1, 3))):
        b.add_input()
    for _ in range(draw(st.integers(0, 10))):
        draw(st.sampled_from(ADDERS))(b)
    outputs = draw(st.lists(st.sampled_from(b.pool), max_size=3))
    return Graph(b.inputs, b.nodes, outputs, draw_updates(draw, b))


def draw_updates(draw, b: Builder) -> dict:
    """Some inputs overwritten by a node output of the same type."""
    updates = {}
    for value in draw(st.lists(st.sampled_from(b.inputs), unique_by=id, max_size=2)):
        same = [v for n in b.nodes for v in n.outputs if v.type == value.type]
        if same:
            updates[value.name] = draw(st.sampled_from(same))
    return updates


@settings(deadline=None)
@given(graphs())
def test_random_graphs_roundtrip_through_text(graph):
    text = print_graph(graph)
    back = Graph(*parse_parts(text))
    assert structure(back) == structure(graph)
    assert print_graph(back) == text


@settings(deadline=None)
@given(graphs())
def test_random_graphs_roundtrip_through_json(graph):
    back = Graph(*parts_from_json(to_json(graph)))
    assert structure(back) == structure(graph)


@settings(deadline=None)
@given(graphs())
def test_random_graphs_pass_lint_and_export_as_dags(graph):
    lint(graph)
    exported = to_networkx(graph)
    assert exported.number_of_nodes() == len(graph.nodes)
    assert nx.is_directed_acyclic_graph(exported)
