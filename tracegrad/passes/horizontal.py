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
from tracegrad.passes.dce import live
from tracegrad.passes.pipeline import note, register_pass


def _groups(graph: Graph) -> list[list[Node]]:
    """Live products sharing their left operand, forward and backward apart: a joint graph is
    cut into a forward and a backward function, and a forward product joined with a backward
    one would need the cotangent before the backward runs. (A dead product joined with a live
    one would be computed, and make the live result depend on its operand.)"""
    needed = live(graph)
    by_left: dict[tuple, list[Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "matmul" and node in needed:
            left, right = node.inputs
            if right.type.ndim == 2 and left.type.ndim >= 2:
                by_left[left, node.phase is Phase.BACKWARD].append(node)
    return [
        nodes
        for nodes in by_left.values()
        if len(nodes) > 1
        and len({n.inputs[1].type.shape[0] for n in nodes}) == 1
        and len({n.inputs[1].type.dtype for n in nodes}) == 1
    ]


def _fuse(group: list[Node], graph: Graph) -> list[Node]:
    """Nodes computing the whole group; the slices define the members' own output values."""
    left = group[0].inputs[0]
    rights = [n.inputs[1] for n in group]
    k, dtype = rights[0].type.shape[0], rights[0].type.dtype
    width = sum(r.type.shape[1] for r in rights)
    joined = Value(graph.fresh("h"), TensorType((k, width), dtype))
    wide = Value(graph.fresh("h"), TensorType((*left.type.shape[:-1], width), dtype))
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
    first = min(index[n] for n in group)
    defined = {v for n in group for v in n.outputs}
    moved = []
    for node in group:
        producer = producers.get(node.inputs[1])
        if producer is None or index[producer] < first:
            continue
        if node.inputs[1] in defined or any(  # x @ (x @ a): a member reads a member
            v in defined or index.get(producers.get(v), -1) >= first for v in producer.inputs
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
    index = {n: i for i, n in enumerate(graph.nodes)}
    producers = graph.producers()
    placed: dict[Node, list[Node]] = {}
    dropped: set[Node] = set()
    for group in groups:
        hoisted = _hoistable(group, index, producers)
        if hoisted is None:
            continue
        first = min(group, key=index.__getitem__)
        placed[first] = hoisted + _fuse(group, graph)
        dropped.update(group, hoisted)
    nodes = []
    for node in graph.nodes:
        nodes += placed.get(node, [])
        if node not in dropped:
            nodes.append(node)
    return Graph(graph.inputs, nodes, graph.outputs, graph.updates)
