"""``canonicalize``: algebraic identities, as rewrite rules (the language is in patterns.py).

Each rule replaces a value by a simpler one that equals it for every input: neutral operands,
inverse ops, chains of views, copies of immutable values, broadcasts an elementwise op does by
itself. ``explain()`` lists which rules fired at which of the user's lines.
"""

from __future__ import annotations

from tracegrad.ir.core import Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import ELEMENTWISE, NON_NEGATIVE, OPS, ops_with
from tracegrad.passes.patterns import Const, Match, Pat, Rule, V, by_op, rewrite
from tracegrad.passes.pipeline import register_pass
from tracegrad.passes.scatter_sums import assembled_sum, is_sum_root


def _identity(dims) -> bool:
    return tuple(dims) == tuple(range(len(dims)))


def _composed_permutes(m: Match) -> Value:
    dims = tuple(m.node("inner").attrs["dims"][d] for d in m.root.attrs["dims"])
    if _identity(dims):
        return m["x"]
    return m.emit("permute", [m["x"]], dims=dims)


def _reshape_of_reshape(m: Match) -> Value:
    if m["x"].type.shape == m.root.outputs[0].type.shape:
        return m["x"]
    return m.emit("reshape", [m["x"]], shape=m.root.attrs["shape"])


def _scalar_constant(value: Value) -> bool:
    return value.type.numel == 1


def _product_of_scalars(m: Match) -> Value:
    scale = m.const("a").item() * m.const("b").item()
    return m.emit("mul", [m["x"], m.constant(scale, m.root.outputs[0].type.dtype)])


def _summed_copies(m: Match) -> Value:
    x = m["x"]
    copies = m["b"].type.numel // max(x.type.numel, 1)
    return m.emit("mul", [x, m.constant(copies, x.type.dtype)])


def _sums_its_broadcast_back(m: Match) -> bool:
    return m["x"].type.shape == tuple(m.root.attrs["shape"])


def _other_operand_sets_the_shape(m: Match) -> bool:
    if len(m.root.inputs) != 2:
        return False
    other = m.root.inputs[1 - m.position]
    return other.type.shape == m.root.outputs[0].type.shape


def _without_broadcast(m: Match) -> Value:
    inputs = list(m.root.inputs)
    inputs[m.position] = m["y"]
    return m.emit(m.root.op, inputs, **m.root.attrs)


# Elementwise ops of two or more operands (where's condition is not broadcast away).
BINARY_ELEMENTWISE = frozenset(
    op for op in OPS if ELEMENTWISE in OPS[op].props and len(OPS[op].inputs) >= 2 and op != "where"
)

RULES = [
    Rule("mul-one", "x * 1 -> x", Pat("mul", V("x"), Const(1.0), commutative=True), "x"),
    Rule("add-zero", "x + 0 -> x", Pat("add", V("x"), Const(0.0), commutative=True), "x"),
    Rule("sub-zero", "x - 0 -> x", Pat("sub", V("x"), Const(0.0)), "x"),
    Rule("div-one", "x / 1 -> x", Pat("div", V("x"), Const(1.0)), "x"),
    Rule("neg-neg", "-(-x) -> x", Pat("neg", Pat("neg", V("x"))), "x"),
    Rule("pow-one", "x ** 1 -> x", Pat("pow_scalar", V("x"), attrs={"exponent": 1.0}), "x"),
    Rule(
        "identity-permute",
        "permute(x, (0, 1, ...)) -> x",
        Pat("permute", V("x"), attrs={"dims": _identity}),
        "x",
        on_build=True,
    ),
    Rule(
        "permute-chain",
        "permute(permute(x, p), q) -> permute(x, p[q])",
        Pat("permute", Pat("permute", V("x"), name="inner")),
        _composed_permutes,
        on_build=True,
    ),
    Rule(
        "reshape-chain",
        "reshape(reshape(x), S) -> reshape(x, S)",
        Pat("reshape", Pat("reshape", V("x"))),
        _reshape_of_reshape,
        on_build=True,
    ),
    # (the engine keeps a replacement only when its type is the value's: the shapes agree)
    Rule("same-reshape", "reshape(x, shape(x)) -> x", Pat("reshape", V("x")), "x"),
    Rule("same-cast", "cast(x: t, t) -> x", Pat("cast", V("x")), "x"),
    # Graph values are never modified in place, so a copy is the value itself (eager code
    # clones to keep .grad tensors apart; the memory plan decides on in-place writes).
    Rule("clone", "clone(x) -> x", Pat("clone", V("x")), "x"),
    Rule("same-broadcast", "broadcast_to(x, shape(x)) -> x", Pat("broadcast_to", V("x")), "x"),
    Rule("same-sum-to", "sum_to(x, shape(x)) -> x", Pat("sum_to", V("x")), "x"),
    Rule(
        "exp-log",
        "exp(log(x)) -> x for x >= 0",
        Pat("exp", Pat("log", Pat(ops_with(NON_NEGATIVE), name="x"))),
        "x",
    ),
    Rule("log-exp", "log(exp(x)) -> x", Pat("log", Pat("exp", V("x"))), "x"),
    Rule(
        "scalar-chain",
        "(x * a) * b -> x * (a*b) for scalars a, b",
        Pat(
            "mul",
            Pat("mul", V("x"), Const(name="a", where=_scalar_constant)),
            Const(name="b", where=_scalar_constant),
        ),
        _product_of_scalars,
    ),
    Rule(
        "sum-of-broadcast",
        "sum_to(broadcast_to(x, S), shape(x)) -> x * |S|/|x|",
        Pat("sum_to", Pat("broadcast_to", V("x"), name="b")),
        _summed_copies,
        when=_sums_its_broadcast_back,
    ),
    # Gradients of a value indexed at many static places (a sequence's steps, q, k and v
    # sliced from one projection): one array instead of a zero-filled one per piece, summed.
    Rule(
        "scatter-sum-assembled",
        "scatter(a, [i:j]) + scatter(b, [j:k]) + ... -> cat(a, b, ...) along one axis "
        "(zeros in gaps, repeats added)",
        Pat("add"),
        assembled_sum,
        when=is_sum_root,
    ),
    # An elementwise op takes broadcasting operands as they are, so explicit broadcasts go.
    Rule(
        "operand-broadcast",
        "f(x, broadcast_to(y)) -> f(x, y)",
        Pat(BINARY_ELEMENTWISE, some=Pat("broadcast_to", V("y"))),
        _without_broadcast,
        when=_other_operand_sets_the_shape,
    ),
]

_BY_OP = by_op(RULES)


@register_pass("canonicalize")
def canonicalize(graph: Graph) -> Graph:
    """Apply the algebraic identities until none fires."""
    return rewrite(graph, _BY_OP)
