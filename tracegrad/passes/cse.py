"""Common-subexpression elimination."""

from __future__ import annotations

from tracegrad.ir.core import CONSTANT, Value
from tracegrad.ir.graph import Graph, _attr_key
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass


def _key(node) -> tuple | None:
    op = OPS.get(node.op)
    if node.op != CONSTANT and (op is None or RANDOM in op.props or len(node.outputs) != 1):
        return None  # random draws differ each time; custom nodes are left alone
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    return (node.op, tuple(node.inputs), attrs, node.outputs[0].type)


@register_pass("cse")
def cse(graph: Graph) -> Graph:
    """Compute each distinct (op, inputs, attributes) once: f(a) ... f(a) -> one f(a)."""
    seen: dict[tuple, Value] = {}
    replaced: dict[Value, Value] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [replaced.get(v, v) for v in node.inputs]
        key = _key(node)
        if key is not None and key in seen:
            replaced[node.outputs[0]] = seen[key]
            note("merged", node)
            continue
        if key is not None:
            seen[key] = node.outputs[0]
        kept.append(node)
    result = Graph(graph.inputs, kept, graph.outputs, graph.updates)
    result.replace_all_uses(replaced)
    return result
