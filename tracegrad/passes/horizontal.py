"""Horizontal fusion: sibling matmuls that share their left operand become one matmul.

    x @ A, x @ B, x @ C  ->  y = x @ cat([A, B, C], 1);  y[..., :a], y[..., a:a+b], y[..., a+b:]

Query/key/value projections written as three Linear layers become one wider product (one BLAS
call reads x once); the slices are views.
"""

from __future__ import annotations

from collections import defaultdict

from tracegrad.dtypes import TensorType
from tracegrad.ir.core import Node, Phase, Value
from tracegrad.ir.graph import Graph
from tracegrad.passes.dce import live_nodes
from tracegrad.passes.pipeline import note, register_pass


def _groups(graph: Graph) -> list[list[Node]]:
    """Live products sharing their left operand, forward and backward apart: a joint graph is
    cut into a forward and a backward function, and a forward product joined with a backward
    one would need the cotangent before the backward runs. (A dead product joined with a live
    one would be computed, and make the live result depend on its operand.)"""
    live = live_nodes(graph)
    by_left: dict[tuple, list[Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "matmul" and id(node) in live:
            left, right = node.inputs
            if right.type.ndim == 2 and left.type.ndim >= 2:
                by_left[id(left), node.phase is Phase.BACKWARD].append(node)
    return [
        nodes
        for nodes in by_left.values()
        if len(nodes) > 1
        and len({n.inputs[1].type.shape[0] for n in nodes}) == 1
        and len({n.inputs[1].type.dtype for n in nodes}) == 1
    ]


def _fuse(group: list[Node], fresh) -> list[Node]:
    """Nodes computing the whole group; the slices define the members' own output values."""
    left = group[0].inputs[0]
    rights = [n.inputs[1] for n in group]
    k, dtype = rights[0].type.shape[0], rights[0].type.dtype
    width = sum(r.type.shape[1] for r in rights)
    joined = Value(next(fresh), TensorType((k, width), dtype))
    wide = Value(next(fresh), TensorType((*left.type.shape[:-1], width), dtype))
    first = group[0]
    nodes = [
        first.derive("cat", rights, [joined], {"dim": 1}),
        first.derive("matmul", [left, joined], [wide]),
    ]
    start = 0
    for node, right in zip(group, rights, strict=True):
        stop = start + right.type.shape[1]
        key = (("ellipsis",), ("slice", start, stop, None))
        nodes.append(first.derive("getitem", [wide], [node.outputs[0]], {"key": key}))
        start = stop
        note("horizontal", node)
    return nodes


def _hoistable(group, index, producers) -> list[Node] | None:
    """Producers of later members' right operands that can move before the first member (their
    own inputs are defined there already), or None if some cannot."""
    first = min(index[id(n)] for n in group)
    defined = {id(v) for n in group for v in n.outputs}
    moved = []
    for node in group:
        producer = producers.get(id(node.inputs[1]))
        if producer is None or index[id(producer)] < first:
            continue
        if id(node.inputs[1]) in defined or any(  # x @ (x @ a): a member reads a member
            id(v) in defined or index.get(id(producers.get(id(v))), -1) >= first
            for v in producer.inputs
        ):
            return None
        moved.append(producer)
    return moved


@register_pass("horizontal")
def horizontal(graph: Graph) -> Graph:
    """Fuse sibling matmuls sharing a left operand: x@A, x@B -> (x @ [A B]) sliced."""
    groups = _groups(graph)
    if not groups:
        return graph
    taken = {v.name for v in graph.values()}
    fresh = (f"h{i}" for i in range(1, 1 << 62) if f"h{i}" not in taken)
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    producers = graph.producers()
    placed: dict[int, list[Node]] = {}
    dropped: set[int] = set()
    for group in groups:
        hoisted = _hoistable(group, index, producers)
        if hoisted is None:
            continue
        first = min(group, key=lambda n: index[id(n)])
        placed[id(first)] = hoisted + _fuse(group, fresh)
        dropped |= {id(n) for n in [*group, *hoisted]}
    nodes = []
    for node in graph.nodes:
        nodes += placed.get(id(node), [])
        if id(node) not in dropped:
            nodes.append(node)
    return Graph(graph.inputs, nodes, graph.outputs, graph.updates)
