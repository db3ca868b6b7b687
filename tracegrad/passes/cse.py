"""Common-subexpression elimination."""

from __future__ import annotations

from tracegrad.ir.core import CONSTANT
from tracegrad.ir.graph import Graph, _attr_key
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass, substitute


def _key(node, inputs) -> tuple | None:
    op = OPS.get(node.op)
    if node.op != CONSTANT and (op is None or RANDOM in op.props or len(node.outputs) != 1):
        return None  # random draws differ each time; custom nodes are left alone
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    return (node.op, tuple(id(v) for v in inputs), attrs, node.outputs[0].type)


@register_pass("cse")
def cse(graph: Graph) -> Graph:
    """Compute each distinct (op, inputs, attributes) once: f(a) ... f(a) -> one f(a)."""
    seen: dict[tuple, object] = {}
    replaced: dict[int, object] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [replaced.get(id(v), v) for v in node.inputs]
        key = _key(node, node.inputs)
        if key is not None and key in seen:
            replaced[id(node.outputs[0])] = seen[key]
            note("merged", node)
            continue
        if key is not None:
            seen[key] = node.outputs[0]
        kept.append(node)
    return substitute(Graph(graph.inputs, kept, graph.outputs, graph.updates), replaced)
