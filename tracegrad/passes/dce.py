"""Dead-code elimination."""

from __future__ import annotations

from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass


def _has_effect(node) -> bool:
    # A random draw advances the generator: dropping it would shift every later draw.
    op = OPS.get(node.op)
    return op is not None and RANDOM in op.props


def live_nodes(graph: Graph) -> set[int]:
    """id() of the nodes some of whose outputs reach a graph output or an in-place update."""
    live = {id(v) for v in graph.outputs} | {id(v) for v in graph.updates.values()}
    kept = set()
    for node in reversed(graph.nodes):
        if _has_effect(node) or any(id(v) in live for v in node.outputs):
            kept.add(id(node))
            live.update(id(v) for v in node.inputs)
    return kept


@register_pass("dce")
def dce(graph: Graph) -> Graph:
    """Remove nodes none of whose outputs reach a graph output or an in-place update."""
    live = live_nodes(graph)
    for node in graph.nodes:
        if id(node) not in live:
            note("removed", node)
    return Graph(
        graph.inputs, [n for n in graph.nodes if id(n) in live], graph.outputs, graph.updates
    )
