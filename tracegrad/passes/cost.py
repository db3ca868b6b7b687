"""What a graph costs to run, estimated from its types: arithmetic operations and bytes
moved, per node and in total, with the part spent in products (``matmul``, ``einsum``: the
work a rewrite must never duplicate) and in other reductions kept apart.

The estimate is the usual roofline one, counting a multiply-add as one operation: a product
of (m, k) by (k, n) is mkn operations (the same as summing its mkn terms, so a sum written as
a product by ones costs what the sum does); an elementwise op or a reduction does about one
operation per element it reads or writes; views and constants cost nothing; a copy moves its
bytes. Bytes are what a node reads and writes once each. Rewrite rules are judged by it: the
engine (tracegrad.passes.patterns) declines a firing that adds product operations, and the
rule tests check that no rule adds work when the values it rewrites are still needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tracegrad.ir.core import CONSTANT, FUSED, Node
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ops import OPS
from tracegrad.ops.registry import ELEMENTWISE, REDUCE, VIEW

# Ops that compute each output element from many input elements (beyond REDUCE's sums)
_REDUCING = frozenset(
    {
        "softmax",
        "log_softmax",
        "masked_softmax",
        "layer_norm",
        "layer_norm_std",
        "softmax_grad",
        "log_softmax_grad",
        "masked_softmax_grad",
        "layer_norm_grad",
        "layer_norm_grad_from_std",
        "cross_entropy_grad",
    }
)
# Losses picking one log-probability per target: a cross entropy is a log_softmax and a pick
_PICKING = {
    "nll_loss": lambda node: node.inputs[1].type.numel,
    "cross_entropy": lambda node: node.inputs[0].type.numel + node.inputs[1].type.numel,
}
_COPIES = frozenset({"contiguous", "clone", "cat"})


@dataclass(frozen=True)
class Cost:
    """Estimated operations (a multiply-add is one), the part of them in products, the part
    in reductions (products included), and bytes moved."""

    operations: int = 0
    product_operations: int = 0
    reduction_operations: int = 0
    bytes: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.operations + other.operations,
            self.product_operations + other.product_operations,
            self.reduction_operations + other.reduction_operations,
            self.bytes + other.bytes,
        )


def node_cost(node: Node) -> Cost:
    """The estimated cost of running ``node`` once."""
    if node.op == CONSTANT:
        return Cost()
    if node.op == FUSED:  # one pass over its inputs and output, its members' arithmetic
        inner = graph_cost(body_of(node))
        return Cost(
            inner.operations,
            inner.product_operations,
            inner.reduction_operations,
            _bytes_read_and_written(node),
        )
    op = OPS.get(node.op)
    if op is not None and VIEW in op.props:
        return Cost()
    moved = _bytes_read_and_written(node)
    if node.op in _COPIES:
        return Cost(bytes=moved)
    if node.op in ("matmul", "einsum"):
        count = _matmul_operations(node) if node.op == "matmul" else _einsum_operations(node)
        return Cost(count, count, count, moved)
    if node.op in _PICKING:
        count = _PICKING[node.op](node)
        return Cost(count, 0, count, moved)
    elements = max(v.type.numel for v in [*node.inputs, *node.outputs])
    if node.op in _REDUCING or (op is not None and REDUCE in op.props):
        return Cost(elements, 0, elements, moved)
    return Cost(elements, 0, 0, moved)


def reduction_operations(node: Node) -> int:
    """``node_cost(node).reduction_operations``, at once for the many nodes that do none."""
    op = OPS.get(node.op)
    if node.op == CONSTANT or (op is not None and ({VIEW, ELEMENTWISE} & op.props)):
        return 0
    return node_cost(node).reduction_operations


def graph_cost(graph: Graph) -> Cost:
    """The estimated cost of running every node of ``graph`` once."""
    total = Cost()
    for node in graph.nodes:
        total += node_cost(node)
    return total


def _bytes_read_and_written(node: Node) -> int:
    values = [*node.inputs, *node.outputs]
    return sum(v.type.numel * v.type.dtype.np.itemsize for v in values)


def _matmul_operations(node: Node) -> int:
    a, b = (v.shape for v in node.inputs)
    m = a[-2] if len(a) > 1 else 1
    k = a[-1] if a else 1
    n = b[-1] if len(b) > 1 else 1
    batch = math.prod(max(x, y) for x, y in zip(_lead(a, b), _lead(b, a), strict=True))
    return batch * m * k * n


def _lead(shape: tuple[int, ...], other: tuple[int, ...]) -> tuple[int, ...]:
    """The batch dimensions of ``shape``, padded with 1s to as many as ``other`` has."""
    lead, other_lead = shape[:-2], other[:-2]
    return (1,) * (len(other_lead) - len(lead)) + lead


def _einsum_operations(node: Node) -> int:
    """One multiply-add per point of the einsum's index space (each letter's size once)."""
    sizes: dict[str, int] = {}
    subscripts = node.attrs["equation"].replace(" ", "").split("->")[0].split(",")
    for letters, value in zip(subscripts, node.inputs, strict=False):
        sizes.update(zip(letters, value.shape, strict=False))
    return math.prod(sizes.values())
