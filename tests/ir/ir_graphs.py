"""Hand-built graphs shared by the IR tests, and tiny helpers to write them.

``val("x", "f32[2,3]")`` makes a Value from its text type; ``node(op, ins, outs, **attrs)``
a Node. ``ZOO`` holds graphs that together use every printable feature of the IR.
"""

from __future__ import annotations

import re

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation
from tracegrad.ir.core import Node, Phase, Value
from tracegrad.ir.graph import Graph
from tracegrad.scopes import Scope

inf, nan = float("inf"), float("nan")


class Twice:
    """Stands in for a user's autograd.Function in custom nodes (only its name matters)."""


def tensor_type(spec: str) -> TensorType:
    dtype, dims = re.fullmatch(r"(\w+)\[([\d,]*)\]", spec).groups()
    return TensorType(tuple(int(d) for d in dims.split(",") if d), dtypes.from_name(dtype))


def val(name: str, spec: str) -> Value:
    return Value(name, tensor_type(spec))


def node(op, inputs, outputs, location=None, **attrs) -> Node:
    return Node(op, list(inputs), list(outputs), attrs, location)


def at(lineno: int, filename: str = "model.py") -> SourceLocation:
    return SourceLocation(filename, lineno, "the source line, which is not kept")


def constant(name: str, array) -> Node:
    array = np.asarray(array)
    type_ = TensorType(array.shape, dtypes.from_numpy(array.dtype))
    return node("constant", [], [Value(name, type_)], value=array)


def mlp() -> Graph:
    """One linear layer, ReLU and a scaled sum: every node a well-typed registry op."""
    x, w, b = val("x", "f32[4,3]"), val("fc1.weight", "f32[2,3]"), val("fc1.bias", "f32[2]")
    wt, h, hb = val("1", "f32[3,2]"), val("2", "f32[4,2]"), val("3", "f32[4,2]")
    r, c = val("4", "f32[4,2]"), constant("5", np.float32(0.5))
    s, loss = val("6", "f32[]"), val("7", "f32[]")
    nodes = [
        node("permute", [w], [wt], at(12), dims=(1, 0)),
        node("matmul", [x, wt], [h], at(12)),
        node("add", [h, b], [hb], at(12)),
        node("relu", [hb], [r], at(13)),
        c,
        node("sum", [r], [s], at(14), dims=(0, 1), keepdim=False),
        node("mul", [s, c.outputs[0]], [loss], at(14)),
    ]
    return Graph([x, w, b], nodes, [loss], {})


def mlp_with_updates() -> Graph:
    """``mlp`` plus an SGD-like update of both parameters (two updates)."""
    g = mlp()
    _, w, b = g.inputs
    w2, b2 = val("w2", "f32[2,3]"), val("b2", "f32[2]")
    g.nodes += [node("neg", [w], [w2], at(20)), node("neg", [b], [b2], at(21))]
    g.updates = {"fc1.weight": w2, "fc1.bias": b2}
    return g


def constants() -> Graph:
    """Constants of every dtype, with non-finite, negative-zero, 0-d and empty values."""
    arrays = [
        np.array([[0.1, -inf], [nan, -0.0]], np.float32),
        np.array([1e-300, inf, -2.5], np.float64),
        np.array([[-3, 0], [2**62, 7]], np.int64),
        np.array([True, False, True]),
        np.array(False),
        np.array(-inf, np.float32),
        np.zeros((0, 3), np.float64),
        np.float32(1) / np.arange(1, 8, dtype=np.float32),  # thirds, sevenths: long decimals
    ]
    nodes = [constant(f"c{i}", a) for i, a in enumerate(arrays)]
    return Graph([], nodes, [n.outputs[0] for n in nodes[:3]], {})


def odd_attrs() -> Graph:
    """A custom node whose attrs hold nested tuples, None, tricky strings, dicts and floats."""
    x = val("x", "f64[2]")
    outs = [val("a", "f64[2]"), val("b", "i64[]")]
    args = (
        ("t",),
        ("v", None),
        ("s", 'it\'s a "quote" ] ) # %1 \\ \n\t é'),
        ("nested", ((1, (2.5, -inf)), [True, None], ())),
        ("d", {"k": (1,), 2: [inf]}),
    )
    custom = node("custom", [x, x], outs, at(99, "C:\\odd path#1:2\\model.py"), fn=Twice, args=args)
    return Graph([x], [custom], [], {})


def fused() -> Graph:
    """A fused kernel (its body a graph of its own) and the backward and update phases."""
    x, b, w = val("x", "f32[4,2]"), val("b", "f32[2]"), val("w", "f32[2]")
    a0, a1, s, r = (
        val("a0", "f32[4,2]"),
        val("a1", "f32[2]"),
        val("s", "f32[4,2]"),
        val("r", "f32[4,2]"),
    )
    body = Graph([a0, a1], [node("add", [a0, a1], [s]), node("relu", [s], [r])], [r])
    y, g, w2 = val("y", "f32[4,2]"), val("g", "f32[4,2]"), val("w2", "f32[2]")
    kernel = node("fused", [x, b], [y], at(3), body=body, kind="elementwise add relu")
    grad = node("relu_grad", [y, x], [g], at(3))
    grad.phase, grad.grad_of = Phase.BACKWARD, "relu"
    update = node("sub", [w, b], [w2], at(9, "optim.py"))
    update.phase = Phase.UPDATE
    return Graph([x, b, w], [kernel, grad, update], [y, g], {"w": w2})


def scoped() -> Graph:
    """Nodes made by module calls (nested ones, a path that needs quotes, a scope with and
    without a location and origin) and one outside any module."""
    x, w = val("x", "f32[4,2]"), val("w", "f32[2,2]")
    blocks = Scope("blocks", "Sequential")
    inner = blocks.inside("blocks.0", "Block").inside("blocks.0.mlp.0", "Linear")
    y, r, g, s = (val(n, "f32[4,2]") for n in ("y", "r", "g", "s"))
    made = [
        node("matmul", [x, w], [y], at(7)),
        node("relu", [y], [r]),
        node("relu_grad", [r, y], [g], at(3)),
        node("neg", [g], [s], at(30, "my (odd) file.py")),
    ]
    made[0].scope, made[1].scope = inner, Scope("heads-1.a b", "ReLU")
    made[2].scope, made[2].phase, made[2].grad_of = inner, Phase.BACKWARD, "relu"
    return Graph([x, w], made, [s], {})


def empty() -> Graph:
    return Graph()


ZOO = {
    "mlp": mlp,
    "updates": mlp_with_updates,
    "constants": constants,
    "odd_attrs": odd_attrs,
    "fused": fused,
    "scoped": scoped,
    "empty": empty,
}
