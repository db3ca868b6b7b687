"""Dead-code elimination."""

from __future__ import annotations

from tracegrad.ir.core import Node
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass


def has_effect(node) -> bool:
    # A random draw advances the generator: dropping it would shift every later draw.
    op = OPS.get(node.op)
    return op is not None and RANDOM in op.props


def live(graph: Graph) -> set[Node]:
    """The nodes some of whose outputs reach a graph output or an in-place update, and the
    random draws (with what they read)."""
    draws = [v for node in graph.nodes if has_effect(node) for v in node.outputs]
    needed = graph.ancestors([*graph.kept(), *draws])
    return {node for node in graph.nodes if any(v in needed for v in node.outputs)}


@register_pass("dce")
def dce(graph: Graph) -> Graph:
    """Remove nodes none of whose outputs reach a graph output or an in-place update."""
    kept = live(graph)
    for node in graph.nodes:
        if node not in kept:
            note("removed", node)
    return Graph(graph.inputs, [n for n in graph.nodes if n in kept], graph.outputs, graph.updates)
