"""Scheduling: the order in which generated code runs the nodes.

In an optimizer update, the scalar computations (step counts, bias corrections,
learning-rate factors) run first; every other node keeps its place relative to the others.
An optimizer's per-parameter updates, interleaved with such scalars when traced, then sit
side by side, and codegen runs neighbouring elementwise updates together, piece of rows by
piece of rows, while each piece is in cache (``tracegrad.codegen.emit``). A planning pass: it
runs on each generated function, before the memory plan.
"""

from __future__ import annotations

import math

import networkx as nx

from tracegrad.ir.core import CUSTOM
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass


def _scalar(node) -> bool:
    """A node computing scalars, free to move: not a random draw (the order of draws is
    the generator's stream) and not a custom Function (the user's code)."""
    op = OPS.get(node.op)
    if node.op == CUSTOM or (op is not None and RANDOM in op.props):
        return False
    return all(math.prod(v.type.shape) <= 1 for v in node.outputs)


@register_pass("schedule")
def schedule(graph: Graph) -> Graph:
    """Run an update's scalar computations first, before its per-parameter updates."""
    start = next((i for i, n in enumerate(graph.nodes) if n.origin == "update"), None)
    if start is None:
        return graph
    tail = graph.nodes[start:]
    producer = {id(v): i for i, node in enumerate(tail) for v in node.outputs}
    dependencies = nx.DiGraph()
    dependencies.add_nodes_from(range(len(tail)))
    dependencies.add_edges_from(
        (producer[id(v)], i)
        for i, node in enumerate(tail)
        for v in node.inputs
        if id(v) in producer
    )
    # Among the nodes whose inputs exist, scalars first, then program order: the relative
    # order of all other nodes is kept.
    order = list(
        nx.lexicographical_topological_sort(dependencies, key=lambda i: (not _scalar(tail[i]), i))
    )
    latest, hoisted = -1, 0
    for i in order:
        if i < latest:
            note("hoisted", tail[i])
            hoisted += 1
        latest = max(latest, i)
    graph.meta["hoisted"] = hoisted
    graph.nodes = graph.nodes[:start] + [tail[i] for i in order]
    return graph
