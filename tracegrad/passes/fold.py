"""Constant folding."""

from __future__ import annotations

import numpy as np

from tracegrad.ir.core import CONSTANT, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.pipeline import note, register_pass

# Folding must not turn a cheap broadcast of a scalar into a big stored array.
MAX_FOLDED_ELEMENTS = 1 << 16


def _foldable(node, constants: dict[Value, np.ndarray]) -> bool:
    op = OPS.get(node.op)
    if op is None or RANDOM in op.props or not node.inputs:
        return False
    if not all(v in constants for v in node.inputs):
        return False
    biggest_input = max(v.type.numel for v in node.inputs)
    return node.outputs[0].type.numel <= max(MAX_FOLDED_ELEMENTS, biggest_input)


@register_pass("fold")
def fold(graph: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants: f(c1, c2) -> constant."""
    constants: dict[Value, np.ndarray] = {}
    nodes = []
    for node in graph.nodes:
        if node.op == CONSTANT:
            constants[node.outputs[0]] = node.attrs["value"]
        elif _foldable(node, constants):
            with np.errstate(all="ignore"):
                value = OPS[node.op].impl(*(constants[v] for v in node.inputs), **node.attrs)
            out = node.outputs[0]
            value = np.ascontiguousarray(value, dtype=out.type.dtype.np).reshape(out.type.shape)
            constants[out] = value
            node = node.derive(CONSTANT, [], [out], {"value": value})
            note("folded", node)
        nodes.append(node)
    return Graph(graph.inputs, nodes, graph.outputs, graph.updates)
