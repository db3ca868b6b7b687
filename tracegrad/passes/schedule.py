"""Scheduling: the order in which generated code runs the nodes.

1. A result nothing but the caller and the update reads (a weight's gradient) runs as soon as
   its inputs exist, with the views it reads: its inputs (an activation, the gradient at a
   layer's output) are still in cache and can be freed early, while the result is kept to
   the end anyway. Traced, those products come last (the rewrites that make them are placed
   where the gradient is finally summed), after the whole backward.
2. In an optimizer update, the scalar computations (step counts, bias corrections,
   learning-rate factors) run first. An optimizer's per-parameter updates, interleaved with
   such scalars when traced, then sit side by side, and codegen runs neighbouring elementwise
   updates together, piece of rows by piece of rows, while each piece is in cache
   (``tracegrad.codegen.emit``).

Every other node keeps its place relative to the others. A planning pass: it runs on each
generated function, before the memory plan.
"""

from __future__ import annotations

import math

import networkx as nx

from tracegrad.ir.core import CUSTOM, Phase, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS, VIEW
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass


def _movable(node) -> bool:
    """Not a random draw (the order of draws is the generator's stream) and not a custom
    Function (the user's code)."""
    op = OPS.get(node.op)
    return node.op != CUSTOM and not (op is not None and RANDOM in op.props)


def _scalar(node) -> bool:
    """A node computing scalars, free to move."""
    return _movable(node) and all(math.prod(v.type.shape) <= 1 for v in node.outputs)


def _dependencies(nodes) -> nx.DiGraph:
    producer = _positions(nodes)
    dependencies = nx.DiGraph()
    dependencies.add_nodes_from(range(len(nodes)))
    dependencies.add_edges_from(
        (producer[v], i) for i, node in enumerate(nodes) for v in node.inputs if v in producer
    )
    return dependencies


def _positions(nodes) -> dict:
    """Each value the nodes define -> the position of the node defining it."""
    return {v: i for i, node in enumerate(nodes) for v in node.outputs}


def _early_results(graph: Graph) -> dict[int, float]:
    """Position -> the place of a result kept for the caller (and of the views it reads):
    just after the last of its other inputs."""
    nodes = graph.nodes
    producer = _positions(nodes)
    readers: dict[Value, list[int]] = {}
    for i, node in enumerate(nodes):
        for v in node.inputs:
            readers.setdefault(v, []).append(i)
    kept = graph.kept()

    def for_the_caller(value) -> bool:
        """Kept for the caller, and read only by the update (directly or through views)."""
        seen = readers.get(value, ())
        views = [nodes[r].outputs[0] for r in seen if VIEW in _props(nodes[r])]
        direct = all(nodes[r].phase is Phase.UPDATE or VIEW in _props(nodes[r]) for r in seen)
        return direct and (value in kept or bool(views)) and all(map(for_the_caller, views))

    places: dict[int, float] = {}
    for i, node in enumerate(nodes):
        if node.phase is Phase.UPDATE or not _movable(node) or VIEW in _props(node):
            continue
        big = any(math.prod(v.type.shape) > 1 for v in node.outputs)
        if not big or not all(map(for_the_caller, node.outputs)):
            continue
        cone = _view_cone(nodes, i, producer, readers)
        outside = [
            producer[v]
            for k in cone
            for v in nodes[k].inputs
            if v in producer and producer[v] not in cone
        ]
        # (every such node gets its place, moved or not, so a second run changes nothing;
        # a view of the cone already earlier stays where it is)
        target = max(outside, default=-1) + 0.5
        places.update((k, min(k, target)) for k in cone)
    return places


def _view_cone(nodes, index, producer, readers) -> list[int]:
    """``index`` and the view nodes feeding it that nothing else reads, in program order."""
    cone, todo = {index}, [index]
    while todo:
        for v in nodes[todo.pop()].inputs:
            k = producer.get(v)
            if k is None or k in cone or VIEW not in _props(nodes[k]):
                continue
            if all(r in cone for r in readers.get(v, ())):
                cone.add(k)
                todo.append(k)
    return sorted(cone)


def _props(node) -> frozenset:
    op = OPS.get(node.op)
    return op.props if op is not None else frozenset()


@register_pass("schedule")
def schedule(graph: Graph) -> Graph:
    """Run results kept for the caller as early as they can, and an update's scalar
    computations before its per-parameter updates."""
    places = _early_results(graph)
    order = list(
        nx.lexicographical_topological_sort(
            _dependencies(graph.nodes), key=lambda i: (places.get(i, i), i)
        )
    )
    moved = [i for position, i in enumerate(order) if position < i and i in places]
    for i in moved:
        note("moved", graph.nodes[i])
    graph.nodes = [graph.nodes[i] for i in order]
    start = next((i for i, n in enumerate(graph.nodes) if n.phase is Phase.UPDATE), None)
    if start is None:
        return graph
    tail = graph.nodes[start:]
    # Among the nodes whose inputs exist, scalars first, then program order: the relative
    # order of all other nodes is kept.
    order = list(
        nx.lexicographical_topological_sort(
            _dependencies(tail), key=lambda i: (not _scalar(tail[i]), i)
        )
    )
    latest = -1
    for i in order:
        if i < latest:
            note("hoisted", tail[i])
        latest = max(latest, i)
    graph.nodes = graph.nodes[:start] + [tail[i] for i in order]
    return graph
