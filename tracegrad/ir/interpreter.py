"""A plain NumPy interpreter of the IR: the reference every compiled program is checked against.

It runs each node with its op's eager implementation. ``custom`` nodes must be expanded first
(the reverse-mode pass and ``passes.inline_custom`` do that).
"""

from __future__ import annotations

import numpy as np

from tracegrad.ir.core import CONSTANT, CUSTOM, FUSED
from tracegrad.ops import OPS


def interpret(graph, *arrays, updates: bool = False, values: dict | None = None):
    """Run ``graph`` on input arrays; returns its outputs (and the updates dict if asked).
    With ``values``, every value's array is also stored there by name."""
    if len(arrays) != len(graph.inputs):
        raise ValueError(f"graph takes {len(graph.inputs)} inputs, got {len(arrays)}")
    env = {v: np.asarray(a) for v, a in zip(graph.inputs, arrays, strict=True)}
    with np.errstate(all="ignore"):
        for node in graph.nodes:
            env[node.outputs[0]] = _run(node, [env[v] for v in node.inputs])
    if values is not None:
        values.update((v.name, env[v]) for v in graph.values())
    outputs = [env[v] for v in graph.outputs]
    if updates:
        return outputs, {name: env[v] for name, v in graph.updates.items()}
    return outputs


def _run(node, arrays):
    if node.op == CONSTANT:
        return node.attrs["value"]
    if node.op == CUSTOM:
        raise ValueError("interpret: expand custom nodes first (tracegrad.passes.inline_custom)")
    if node.op == FUSED:
        return interpret(node.attrs["body"], *arrays)[0]
    out = np.asarray(OPS[node.op].impl(*arrays, **node.attrs))
    expected = node.outputs[0].type.dtype.np
    return out if out.dtype == expected else out.astype(expected)
