"""Algebraic simplification and numerically stable rewrites, written as data.

Each ``Rule`` names the op it looks at, carries its algebra, and has a small function that
returns the replacement value (or None when it does not apply). A replacement always has the
same type as the value it replaces. ``explain()`` lists which rules fired where.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.ir.core import CONSTANT, Node, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import ELEMENTWISE, OPS, VIEW, kernels
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.dce import live
from tracegrad.passes.pipeline import note, register_pass, substitute


class Rewriter:
    """What a rule sees: producers and constant values of earlier values, and a way to add
    new nodes (placed before the node being rewritten, at its source line)."""

    def __init__(self, producers, nodes: list[Node], node: Node, counter, uses, readers):
        self.producers, self.nodes, self.node, self.counter = producers, nodes, node, counter
        self.uses = uses  # id(value) -> how many nodes and outputs read it
        self.readers = readers  # id(value) -> the nodes that read it (as the round began)

    def only_use(self, value: Value) -> bool:
        """Whether the node being rewritten is the only reader of ``value``."""
        return self.uses.get(id(value), 0) == 1

    def producer(self, value: Value, op: str | None = None) -> Node | None:
        node = self.producers.get(id(value))
        return node if node is not None and (op is None or node.op == op) else None

    def const(self, value: Value) -> np.ndarray | None:
        node = self.producer(value, CONSTANT)
        return node.attrs["value"] if node is not None else None

    def is_const(self, value: Value, number: float) -> bool:
        c = self.const(value)
        return c is not None and bool(np.all(c == number))

    def emit(self, op: str, inputs, type_: TensorType | None = None, **attrs) -> Value:
        if type_ is None:
            type_ = OPS[op].infer(*(v.type for v in inputs), **attrs)
        out = Value(f"s{next(self.counter)}", type_)
        node = self.node.derive(op, inputs, [out], attrs)
        self.nodes.append(node)
        self.producers[id(out)] = node
        return out

    def constant(self, array, dtype) -> Value:
        array = np.asarray(array, dtype.np)
        return self.emit(CONSTANT, [], TensorType(array.shape, dtype), value=array)


@dataclass(frozen=True)
class Rule:
    name: str
    algebra: str
    op: str
    rewrite: Callable[[Node, Rewriter], Value | None]


def _same(node: Node, value: Value | None) -> Value | None:
    """``value`` if it can stand for the node's output (same shape and dtype)."""
    return value if value is not None and value.type == node.outputs[0].type else None


# --- identities -----------------------------------------------------------------------------


def _identity_operand(neutral: float, commutative: bool):
    def rewrite(node, rw):
        x, y = node.inputs
        if rw.is_const(y, neutral):
            return _same(node, x)
        if commutative and rw.is_const(x, neutral):
            return _same(node, y)
        return None

    return rewrite


def _double_negation(node, rw):
    inner = rw.producer(node.inputs[0], "neg")
    return _same(node, inner.inputs[0]) if inner else None


def _same_type_op(node, rw):
    return _same(node, node.inputs[0])


def _power_one(node, rw):
    return _same(node, node.inputs[0]) if node.attrs["exponent"] == 1.0 else None


def _permute_chain(node, rw):
    dims = tuple(node.attrs["dims"])
    if dims == tuple(range(len(dims))):
        return _same(node, node.inputs[0])
    inner = rw.producer(node.inputs[0], "permute")
    if inner is None:
        return None
    composed = tuple(inner.attrs["dims"][d] for d in dims)
    if composed == tuple(range(len(composed))):
        return _same(node, inner.inputs[0])
    return rw.emit("permute", [inner.inputs[0]], dims=composed)


def _swap_dims(n: int) -> tuple[int, ...]:
    """The permutation swapping the last two of ``n`` dims (a stack of matrix transposes)."""
    return (*range(n - 2), n - 1, n - 2)


def _swap_last(rw, value: Value) -> Value:
    return rw.emit("permute", [value], dims=_swap_dims(value.type.ndim))


def _transpose_of_product(node, rw):
    """A transposed product is a strided view; the product of transposed views is contiguous
    (BLAS reads transposed operands for free), so later elementwise passes run fast."""
    dims, n = tuple(node.attrs["dims"]), len(node.attrs["dims"])
    inner = rw.producer(node.inputs[0], "matmul")
    if n < 2 or dims != _swap_dims(n) or inner is None:
        return None
    a, b = inner.inputs
    if a.type.ndim != n or b.type.ndim != n or not rw.only_use(node.inputs[0]):
        return None
    if n == 2 and _runs_transposed(rw, b.type.shape[1], a.type.shape[0], a):
        return None  # wide-product would turn b^T @ a^T back into (a @ b)^T
    return _same(node, rw.emit("matmul", [_swap_last(rw, b), _swap_last(rw, a)]))


def _wide_product(node, rw):
    """A small product by a transposed matrix, wider than tall, runs with its long side
    first: x @ W^T = (W @ x^T)^T. OpenBLAS multiplies by a transposed operand 5-35% faster
    that way round (x (32, 784) @ W^T for W (128, 784): 88 us, (W @ x^T)^T: 68 us); the
    other layouts gain nothing from it. The result is then a transposed view, and the bias
    and activation after it move onto the product (elementwise-before-transpose)."""
    a, b = node.inputs
    view = rw.producer(b, "permute")
    if a.type.ndim != 2 or view is None or tuple(view.attrs["dims"]) != (1, 0):
        return None
    if not _runs_transposed(rw, a.type.shape[0], b.type.shape[1], view.inputs[0]):
        return None
    return _same(node, _swap_last(rw, rw.emit("matmul", [view.inputs[0], _swap_last(rw, a)])))


def _runs_transposed(rw, rows: int, columns: int, matrix: Value) -> bool:
    """Whether a product of ``rows`` x ``columns`` whose right operand is ``matrix``
    transposed runs as wide-product computes it. Only small results (one chunk): the ops
    reading them then meet a transposed layout, which costs little while it fits in cache."""
    small = rows * columns <= kernels.CHUNK
    return rows < columns and small and matrix.type.ndim == 2 and not _strided_view(rw, matrix)


def _rows_times_matrix(node, rw):
    """A stack of matrices times one matrix (a linear layer on (B, T, C)) is one product of
    all the rows: NumPy multiplies a stack matrix by matrix (1.2-1.4x slower than one BLAS
    call), and the weight's gradient becomes one product instead of a product per matrix
    summed over the stack."""
    a, b = node.inputs
    if a.type.ndim < 3 or b.type.ndim != 2:
        return None
    rows = rw.emit("reshape", [a], shape=(math.prod(a.type.shape[:-1]), a.type.shape[-1]))
    product = rw.emit("matmul", [rows, b])
    return _same(node, rw.emit("reshape", [product], shape=node.outputs[0].type.shape))


def _reshape_chain(node, rw):
    source = node.inputs[0]
    inner = rw.producer(source, "reshape")
    if inner is not None:
        source = inner.inputs[0]
    if source.type.shape == node.outputs[0].type.shape:
        return _same(node, source)
    return rw.emit("reshape", [source], shape=node.attrs["shape"]) if inner else None


def _copying_reshape(node, rw):
    """A reshape that merges transposed dims copies, into fresh memory each time; an explicit
    copy first (a contiguous op) lets the memory plan give that copy a reused buffer."""
    inner = rw.producer(node.inputs[0], "permute")
    if inner is None:
        return None
    source = inner.inputs[0].type.shape
    probe = np.empty(source, np.int8).transpose(inner.attrs["dims"])
    if np.shares_memory(probe.reshape(node.attrs["shape"]), probe):
        return None  # NumPy can reshape this view without copying
    copied = rw.emit("contiguous", [node.inputs[0]])
    return _same(node, rw.emit("reshape", [copied], shape=node.attrs["shape"]))


def _inverse_of(inner_op: str):
    def rewrite(node, rw):
        inner = rw.producer(node.inputs[0], inner_op)
        return _same(node, inner.inputs[0]) if inner else None

    return rewrite


# Ops whose results are never negative: for them exp(log(y)) is y (elsewhere log gives nan).
NON_NEGATIVE = frozenset({"exp", "sqrt", "abs", "relu", "sigmoid", "softmax"})


def _exp_of_log(node, rw):
    inner = rw.producer(node.inputs[0], "log")
    if inner is None or rw.producer(inner.inputs[0]) is None:
        return None
    if rw.producer(inner.inputs[0]).op not in NON_NEGATIVE:
        return None
    return _same(node, inner.inputs[0])


def _scalar_chain(node, rw):
    x, c2 = node.inputs
    inner = rw.producer(x, "mul")
    if inner is None or rw.const(c2) is None or rw.const(c2).size != 1:
        return None
    base, c1 = inner.inputs
    if rw.const(c1) is None or rw.const(c1).size != 1:
        return None
    scale = rw.constant(rw.const(c1).item() * rw.const(c2).item(), node.outputs[0].type.dtype)
    return _same(node, rw.emit("mul", [base, scale]))


def _scale_into_product(node, rw):
    """Attention scores scaled by 1/sqrt(d): scaling q (B, H, T, d) instead of the scores
    (B, H, T, T) is a quarter of the work at T = 4d, in the forward and in the backward."""
    for x, c in (node.inputs, node.inputs[::-1]):
        product = rw.producer(x, "matmul")
        if product is None or c.type.shape != () or not rw.only_use(x):
            continue
        a, b = product.inputs
        size = math.prod(node.outputs[0].type.shape)
        if math.prod(a.type.shape) < size:
            return _same(node, rw.emit("matmul", [rw.emit("mul", [a, c]), b]))
        if math.prod(b.type.shape) < size:
            return _same(node, rw.emit("matmul", [a, rw.emit("mul", [b, c])]))
    return None


def _batch_summed_product(node, rw):
    """A stack of products summed over the stack (the weight gradient of a linear layer on
    (B, T, C): sum_b x_b^T g_b) is one product of all the rows, x^T g over B*T rows: one BLAS
    call with a long inner dim instead of B small products and a sum."""
    product = rw.producer(node.inputs[0], "matmul")
    shape, out = tuple(node.attrs["shape"]), node.inputs[0].type.shape
    if product is None or len(out) < 3 or shape != out[-2:] or not rw.only_use(node.inputs[0]):
        return None
    a, b = product.inputs
    batch = out[:-2]
    if a.type.shape[:-2] != batch or b.type.shape[:-2] != batch:
        return None  # a broadcast operand: the sum is not over matching pairs
    n, (m, k), cols = len(out), a.type.shape[-2:], b.type.shape[-1]
    rows = math.prod(batch) * k
    # a (..., M, K) -> (M, ..., K) -> (M, rows); b (..., K, N) -> (rows, N)
    lead = rw.emit("permute", [a], dims=(n - 2, *range(n - 2), n - 1))
    left = rw.emit("reshape", [lead], shape=(m, rows))
    right = rw.emit("reshape", [b], shape=(rows, cols))
    return _same(node, rw.emit("matmul", [left, right]))


def _sum_of_rows(node, rw):
    """A sum over leading dims (a bias gradient) is ones @ rows: one BLAS matrix-vector
    product, 1.4-3x faster than np.sum down the columns, emitted as a plain np.matmul."""
    x, shape = node.inputs[0], tuple(node.attrs["shape"])
    lead = x.type.ndim - len(shape)
    if not shape or lead < 1 or x.type.shape[lead:] != shape or x.type.dtype.np.kind != "f":
        return None
    strided = rw.producer(x) is None or _strided_view(rw, x)
    if x.type.ndim > 2 and strided:
        return None  # a reshape of a strided view would copy it first
    rows = math.prod(x.type.shape[:lead])
    if x.type.ndim > 2 or len(shape) > 1:
        x = rw.emit("reshape", [x], shape=(rows, math.prod(shape)))
    total = rw.emit("matmul", [rw.constant(np.ones(rows), x.type.dtype), x])
    if len(shape) > 1:
        total = rw.emit("reshape", [total], shape=shape)
    return _same(node, total)


def _sum_of_columns(node, rw):
    """A sum over trailing dims kept as 1s (the bias gradient of a product computed
    transposed, (C, N) summed to (C, 1)) is rows @ ones: a BLAS matrix-vector product."""
    x, shape = node.inputs[0], tuple(node.attrs["shape"])
    n = len(shape)
    kept = n - len(tuple(itertools.takewhile(lambda size: size == 1, reversed(shape))))
    if n != x.type.ndim or kept in (0, n) or x.type.dtype.np.kind != "f":
        return None
    if shape[:kept] != x.type.shape[:kept] or _strided_view(rw, x):
        return None
    rows = rw.emit("reshape", [x], shape=(math.prod(shape[:kept]), math.prod(x.type.shape[kept:])))
    ones = rw.constant(np.ones(rows.type.shape[1]), x.type.dtype)
    return _same(node, rw.emit("reshape", [rw.emit("matmul", [rows, ones])], shape=shape))


def _operand_broadcast(node, rw):
    """An elementwise op broadcasts by itself: f(x, broadcast_to(y)) -> f(x, y)."""
    if len(node.inputs) != 2:
        return None
    for i, value in enumerate(node.inputs):
        inner = rw.producer(value, "broadcast_to")
        other = node.inputs[1 - i]
        if inner is not None and other.type.shape == node.outputs[0].type.shape:
            inputs = list(node.inputs)
            inputs[i] = inner.inputs[0]
            return _same(node, rw.emit(node.op, inputs, **node.attrs))
    return None


def _elementwise_before_reshape(node, rw):
    """An elementwise op on the rows of a product seen as a stack, f(reshape(x), y), runs on
    the rows themselves: a linear layer on (B, T, C) is one product of all the rows, and its
    bias and activation then join it in one fused kernel, in place over the product."""
    out = node.outputs[0].type.shape
    for position, value in enumerate(node.inputs):
        view = rw.producer(value, "reshape")
        if view is None or value.type.shape != out:
            continue
        rows = view.inputs[0]
        source = OPS.get(getattr(rw.producer(rows), "op", None))
        if source is None or not (source.name == "matmul" or ELEMENTWISE in source.props):
            continue
        if rows.type.shape[-1:] != out[-1:] or rows.type.ndim >= len(out):
            continue  # a bias along the last dim would meet another dim; or not a stack of rows
        operands = [_on_rows(rw, v, rows) for v in node.inputs]
        if any(v is None for v in operands):
            continue
        operands[position] = rows
        on_rows = rw.emit(node.op, operands, **node.attrs)
        return _same(node, rw.emit("reshape", [on_rows], shape=out))
    return None


def _on_rows(rw, value: Value, rows: Value) -> Value | None:
    """``value`` as an operand beside ``rows`` (the same elements, or broadcast along the
    last dim), or None when it can't be: a full-size strided view would be copied."""
    if value.type.ndim <= 1:
        return value
    if value.type.numel != rows.type.numel:
        return None
    if _strided_view(rw, value):
        return None
    return rw.emit("reshape", [value], shape=rows.type.shape)


def _strided_view(rw, value: Value) -> bool:
    """Whether ``value`` is a view other than a reshape (a transpose, a slice, a broadcast),
    which a reshape may have to copy. Constants and fused results are arrays of their own."""
    producer = rw.producer(value)
    op = OPS.get(producer.op) if producer is not None else None
    return op is not None and VIEW in op.props and producer.op != "reshape"


def _elementwise_before_transpose(node, rw):
    """An elementwise op on a transposed matrix computed here, f(x^T, b), runs on x itself
    when the other operands are scalars or broadcast rows and columns: a product that
    wide-product turned round keeps its bias and activation in one fused kernel."""
    out = node.outputs[0].type.shape
    for position, value in enumerate(node.inputs):
        view = rw.producer(value, "permute")
        if len(out) != 2 or view is None or value.type.shape != out:
            continue
        inner = view.inputs[0]
        source = OPS.get(getattr(rw.producer(inner), "op", None))
        if source is None or not (source.name == "matmul" or ELEMENTWISE in source.props):
            continue
        operands = [_transposed_broadcast(rw, v) for v in node.inputs]
        operands[position] = inner
        if any(v is None for v in operands):
            continue
        return _same(node, _swap_last(rw, rw.emit(node.op, operands, **node.attrs)))
    return None


def _transposed_broadcast(rw, value: Value) -> Value | None:
    """A scalar, row or column operand of a 2-D elementwise op, shaped to broadcast the
    same way against the transposed matrix; None for a full matrix, which stays where it is
    (moving it could undo another such rewrite)."""
    shape = value.type.shape
    if len(shape) == 0 or shape == (1,) or shape == (1, 1):
        return value
    if len(shape) == 1 or shape[0] == 1:  # broadcast along the rows: a column of the result^T
        return rw.emit("reshape", [value], shape=(shape[-1], 1))
    if len(shape) == 2 and shape[1] == 1:
        return rw.emit("reshape", [value], shape=(1, shape[0]))
    return None


def _sum_of_broadcast(node, rw):
    inner = rw.producer(node.inputs[0], "broadcast_to")
    x = inner.inputs[0] if inner else None
    if x is None or x.type.shape != tuple(node.attrs["shape"]):
        return None
    copies = inner.outputs[0].type.numel // max(x.type.numel, 1)
    return _same(node, rw.emit("mul", [x, rw.constant(copies, x.type.dtype)]))


# --- numerical stability --------------------------------------------------------------------


def _log_of_softmax(node, rw):
    inner = rw.producer(node.inputs[0], "softmax")
    return _same(node, rw.emit("log_softmax", [inner.inputs[0]], **inner.attrs)) if inner else None


def _log_of_one_plus(node, rw):
    inner = rw.producer(node.inputs[0], "add")
    if inner is None:
        return None
    a, b = inner.inputs
    x = b if rw.is_const(a, 1.0) else a if rw.is_const(b, 1.0) else None
    return _same(node, rw.emit("log1p", [x])) if x is not None else None


def _log_of_sigmoid(node, rw):
    inner = rw.producer(node.inputs[0], "sigmoid")
    if inner is None:
        return None
    x = inner.inputs[0]
    zero = rw.constant(0.0, x.type.dtype)
    tail = rw.emit("log1p", [rw.emit("exp", [rw.emit("neg", [rw.emit("abs", [x])])])])
    return _same(node, rw.emit("sub", [rw.emit("minimum", [x, zero]), tail]))


def _beside(node, rw, partner_op: str, shared: int = 2) -> bool:
    """Whether a ``partner_op`` node reads the same first ``shared`` inputs as ``node``, with
    the same attributes: an op and its gradient (a cross entropy's logits and targets, a
    layer norm's input), both in one graph."""
    mine = node.inputs[:shared]
    return any(
        other.op == partner_op
        and all(a is b for a, b in zip(other.inputs[:shared], mine, strict=True))
        and other.attrs == node.attrs
        for other in rw.readers.get(id(mine[0]), ())
    )


def _log_probs(node, rw) -> Value:
    logits = node.inputs[0]
    return rw.emit("log_softmax", [logits], dim=kernels.class_dim(logits.type.ndim))


def _cross_entropy_via_log_probs(node, rw):
    if not _beside(node, rw, "cross_entropy_grad"):
        return None
    return _same(node, rw.emit("nll_loss", [_log_probs(node, rw), node.inputs[1]], **node.attrs))


def _gradient_from_log_probs(node, rw):
    if not _beside(node, rw, "cross_entropy"):
        return None
    inputs = [_log_probs(node, rw), *node.inputs[1:]]
    return _same(node, rw.emit("log_softmax_nll_grad", inputs, **node.attrs))


def _layer_norm_keeps_std(node, rw):
    """A layer norm with its gradient in the graph: the forward's std = sqrt(var + eps) is
    kept, y = (x - mean) / std, and the gradient reads y and std instead of centering x and
    reducing it again (a third of its work: W4's five layer norms, 0.2 ms a step)."""
    if not _beside(node, rw, "layer_norm_grad", shared=1):
        return None
    centered, std = _layer_norm_stats(rw, node.inputs[0], node.attrs)
    return _same(node, rw.emit("div", [centered, std]))


def _layer_norm_gradient_from_std(node, rw):
    if not _beside(node, rw, "layer_norm", shared=1):
        return None
    x, y, g = node.inputs
    std = _layer_norm_stats(rw, x, node.attrs)[1]
    return _same(node, rw.emit("layer_norm_grad_from_std", [y, g, std], ndims=node.attrs["ndims"]))


def _layer_norm_stats(rw, x: Value, attrs) -> tuple[Value, Value]:
    """x - mean and its std (one pair for the layer norm and its gradient once cse merges)."""
    centered = rw.emit("layer_norm_center", [x], ndims=attrs["ndims"])
    return centered, rw.emit("layer_norm_std", [centered], **attrs)


def _untransposed(rw, value: Value) -> tuple[Value, tuple | None]:
    """(x, dims) for ``value`` = permute(x, dims), else (value, None): a gelu moved onto a
    product's own layout (elementwise-before-transpose) reads x, its gradient x^T."""
    view = rw.producer(value, "permute")
    return (view.inputs[0], tuple(view.attrs["dims"])) if view else (value, None)


def _tanh_form_beside(node, rw, partner_op: str) -> bool:
    """Whether ``node`` is gelu's tanh form and a ``partner_op`` node (its gradient, or the
    gelu itself) reads the same input in that form too (or a transpose of it)."""
    source = _untransposed(rw, node.inputs[0])[0]
    readers = [*rw.readers.get(id(source), ())]
    for view in readers if rw.producer(node.inputs[0], "permute") is None else ():
        if view.op == "permute":  # the partner may read a transpose of the gelu's input
            readers += rw.readers.get(id(view.outputs[0]), ())
    return node.attrs["approximate"] == "tanh" and any(
        other.op == partner_op
        and _untransposed(rw, other.inputs[0])[0] is source
        and other.attrs == node.attrs
        for other in readers
    )


def _gelu_keeps_tanh(node, rw):
    """gelu's tanh form with its gradient in the graph: t = tanh(c (x + k x^3)) is computed
    once, in the forward, and kept; the gradient reads it instead of computing it again (W4's
    two (1024, 256) GELUs: 2-4% of its step)."""
    if not _tanh_form_beside(node, rw, "gelu_grad"):
        return None
    x = node.inputs[0]
    return _same(node, rw.emit("gelu_with_tanh", [x, _kept_tanh(rw, x)]))


def _gelu_gradient_from_tanh(node, rw):
    if not _tanh_form_beside(node, rw, "gelu"):
        return None
    x, g = node.inputs
    return _same(node, rw.emit("gelu_grad_with_tanh", [x, _kept_tanh(rw, x), g]))


def _kept_tanh(rw, x: Value) -> Value:
    """gelu_tanh of x's source (one node for the gelu and its gradient once cse merges them),
    seen through x's transpose if x is one."""
    source, dims = _untransposed(rw, x)
    t = rw.emit("gelu_tanh", [source])
    return t if dims is None else rw.emit("permute", [t], dims=dims)


# --- attention ------------------------------------------------------------------------------

# Rows up to this long are short: NumPy reduces along them with a slow inner loop, while down
# columns it compares and adds whole rows at a time.
SHORT_ROWS = 256


def _masked_softmax(node, rw):
    """masked_fill(mask, -inf) then softmax: one op, in place over the scores; masked
    entries get probability exactly 0, so the gradient needs no pass for the mask."""
    inner = rw.producer(node.inputs[0], "where")
    if inner is None or not rw.is_const(inner.inputs[1], -np.inf):
        return None
    mask, scores = inner.inputs[0], inner.inputs[2]
    if scores.type.shape != node.outputs[0].type.shape:
        return None  # the mask broadcasts the scores to a larger shape
    return _same(node, rw.emit("masked_softmax", [scores, mask], **node.attrs))


def _keys_major(node, rw):
    """softmax over the short last dim of a stack of products a @ b (attention scores) is
    computed on the transposed product b^T @ a^T, down its columns (the max and sum vectorize
    along the queries, the sum is one matrix product), and read back as a transposed view,
    which the next product (probabilities @ values) takes as it is."""
    x = node.inputs[0]
    n, dim = x.type.ndim, node.attrs["dim"] % max(x.type.ndim, 1)
    product = rw.producer(x, "matmul")
    if product is None or n < 3 or dim != n - 1 or x.type.shape[-1] > SHORT_ROWS:
        return None
    if not rw.only_use(x) or any(v.type.ndim < 2 for v in node.inputs[1:]):
        return None
    a, b = product.inputs
    if a.type.ndim != n or b.type.ndim != n:
        return None
    transposed = rw.emit("matmul", [_swap_last(rw, b), _swap_last(rw, a)])
    masks = [_swap_last(rw, m) for m in node.inputs[1:]]
    down = rw.emit(node.op, [transposed, *masks], dim=n - 2)
    return _same(node, _swap_last(rw, down))


def _classes_major(node, rw):
    """log_softmax over the few classes of a linear layer's logits, (a @ b + bias) with a and
    b transposed views (a layer after one that wide-product turned round), is computed on
    the transposed logits b^T @ a^T + bias^T, down their columns: the max and the sum
    vectorize along the samples, and the product reads both operands contiguous."""
    x = node.inputs[0]
    if x.type.ndim != 2 or node.attrs["dim"] % 2 != 1 or x.type.shape[1] > SHORT_ROWS:
        return None
    add = rw.producer(x, "add")
    product = rw.producer(add.inputs[0] if add else x, "matmul")
    # (the loss and its gradient each make a log_softmax of x, one once cse merges them)
    readers = rw.readers.get(id(x), ())
    alone = all(r.op == node.op and r.attrs == node.attrs for r in readers)
    if product is None or not alone or (add and not rw.only_use(add.inputs[0])):
        return None
    a, b = (rw.producer(v, "permute") for v in product.inputs)
    if a is None or b is None or a.inputs[0].type.ndim != 2 or b.inputs[0].type.ndim != 2:
        return None
    logits = rw.emit("matmul", [b.inputs[0], a.inputs[0]])
    if add is not None:
        bias = _transposed_broadcast(rw, add.inputs[1])
        if bias is None:
            return None
        logits = rw.emit("add", [logits, bias])
    return _same(node, _swap_last(rw, rw.emit("log_softmax", [logits], dim=0)))


def _masked_softmax_gradient(node, rw):
    """The gradient through masked_fill(-inf) and softmax, where(mask, 0, softmax_grad(y, g)),
    once the forward is a masked_softmax: one op, since y is 0 where masked."""
    cond, zero, inner = node.inputs
    grad = rw.producer(inner, "softmax_grad")
    if grad is None or not rw.is_const(zero, 0.0):
        return None
    forward = rw.producer(grad.inputs[0], "masked_softmax")
    if forward is None or forward.inputs[1] is not cond:
        return None
    y, g = grad.inputs
    return _same(node, rw.emit("masked_softmax_grad", [y, g, cond], **grad.attrs))


def _keys_major_gradient(node, rw):
    """The gradient of a keys-major softmax, read as a transposed view: computed keys-major
    too (its cotangent transposed, usually a product that then comes out transposed)."""
    y = node.inputs[0]
    n, dim = y.type.ndim, node.attrs["dim"] % max(y.type.ndim, 1)
    view = rw.producer(y, "permute")
    if view is None or n < 3 or dim != n - 1 or tuple(view.attrs["dims"]) != _swap_dims(n):
        return None
    if any(v.type.ndim < 2 for v in node.inputs[2:]):
        return None
    others = [_swap_last(rw, v) for v in node.inputs[1:]]
    down = rw.emit(node.op, [view.inputs[0], *others], dim=n - 2)
    return _same(node, _swap_last(rw, down))


def _scale_out_of_product(node, rw):
    """(x * c) @ b -> (x @ b) * c for a scalar c when the product is smaller than x: the
    attention gradient scaled by 1/sqrt(d) on (B, H, T, d) results, not on (B, H, T, T)."""
    for position, operand in enumerate(node.inputs):
        scaled = rw.producer(operand, "mul")
        if scaled is None:
            continue
        x, c = scaled.inputs
        if c.type.shape != () or x.type.shape != operand.type.shape:
            continue
        if math.prod(node.outputs[0].type.shape) >= math.prod(x.type.shape):
            continue
        if any(r.op != "matmul" for r in rw.readers.get(id(operand), ())):
            continue  # the scaled value is needed anyway
        inputs = list(node.inputs)
        inputs[position] = x
        return _same(node, rw.emit("mul", [rw.emit("matmul", inputs), c]))
    return None


# --- gradients of slices that tile an array ---------------------------------------------------


def _slice_scatter(node: Node | None):
    """(g, axis, start, stop) when ``node`` scatters g into zeros at a basic slice of one axis
    (the gradient of such a slice), else None."""
    if node is None or node.op != "scatter_add" or len(node.inputs) != 1:
        return None
    shape, spans = node.attrs["shape"], []
    for axis, item in enumerate(node.attrs["key"]):
        if item[0] != "slice" or item[3] not in (None, 1):
            return None
        start, stop, _ = slice(item[1], item[2]).indices(shape[axis])
        if (start, stop) != (0, shape[axis]):
            spans.append((axis, start, stop))
    return (node.inputs[0], *spans[0]) if len(spans) == 1 else None


def _cat_parts(value: Value, axis: int, rw) -> list[Value]:
    inner = rw.producer(value, "cat")
    return list(inner.inputs) if inner is not None and inner.attrs["dim"] == axis else [value]


def _add_of_slice_scatters(node, rw):
    """q, k and v cut from one projection get their gradients scattered into zeros and
    summed; side by side, the gradients are one concatenation (one copy, no zero fill)."""
    a, b = (_slice_scatter(rw.producer(v)) for v in node.inputs)
    if a is None or b is None or a[1] != b[1]:
        return None
    low, high = sorted([a, b], key=lambda span: span[2])
    if low[3] != high[2]:
        return None  # a gap or an overlap between the slices
    axis, shape = low[1], node.outputs[0].type.shape
    joined = rw.emit(
        "cat", [*_cat_parts(low[0], axis, rw), *_cat_parts(high[0], axis, rw)], dim=axis
    )
    if (low[2], high[3]) == (0, shape[axis]):
        return _same(node, joined)
    whole = ("slice", None, None, None)
    key = (*(whole for _ in range(axis)), ("slice", low[2], high[3], None))
    return _same(node, rw.emit("scatter_add", [joined], key=key, shape=shape))


RULES = [
    Rule("mul-one", "x * 1 -> x", "mul", _identity_operand(1.0, commutative=True)),
    Rule("add-zero", "x + 0 -> x", "add", _identity_operand(0.0, commutative=True)),
    Rule("sub-zero", "x - 0 -> x", "sub", _identity_operand(0.0, commutative=False)),
    Rule("div-one", "x / 1 -> x", "div", _identity_operand(1.0, commutative=False)),
    Rule("neg-neg", "-(-x) -> x", "neg", _double_negation),
    Rule("pow-one", "x ** 1 -> x", "pow_scalar", _power_one),
    Rule("transpose-of-product", "(a @ b)^T -> b^T @ a^T", "permute", _transpose_of_product),
    Rule(
        "rows-times-matrix",
        "a[..., m, k] @ b[k, n] -> (a.reshape(-1, k) @ b).reshape(..., m, n)",
        "matmul",
        _rows_times_matrix,
    ),
    Rule(
        "wide-product",
        "a @ b^T -> (b @ a^T)^T for a small product with fewer rows than columns",
        "matmul",
        _wide_product,
    ),
    Rule(
        "permute-chain", "permute(permute(x, p), q) -> permute(x, p[q])", "permute", _permute_chain
    ),
    Rule(
        "reshape-chain",
        "reshape(reshape(x)) -> reshape(x); reshape to own shape -> x",
        "reshape",
        _reshape_chain,
    ),
    Rule(
        "copying-reshape",
        "reshape(permute(x)) -> reshape(contiguous(permute(x)))",
        "reshape",
        _copying_reshape,
    ),
    Rule("same-cast", "cast(x: t, t) -> x", "cast", _same_type_op),
    # Graph values are never modified in place, so a copy is the value itself (eager code
    # clones to keep .grad tensors apart; the memory plan decides on in-place writes).
    Rule("clone", "clone(x) -> x", "clone", _same_type_op),
    Rule("same-broadcast", "broadcast_to(x, shape(x)) -> x", "broadcast_to", _same_type_op),
    Rule("same-sum-to", "sum_to(x, shape(x)) -> x", "sum_to", _same_type_op),
    Rule("exp-log", "exp(log(x)) -> x for x >= 0", "exp", _exp_of_log),
    Rule("log-exp", "log(exp(x)) -> x", "log", _inverse_of("exp")),
    Rule("scalar-chain", "(x * a) * b -> x * (a*b) for scalars a, b", "mul", _scalar_chain),
    Rule(
        "scale-into-product",
        "(a @ b) * c -> (a * c) @ b for a scalar c and an operand smaller than the product",
        "mul",
        _scale_into_product,
    ),
    Rule(
        "sum-of-broadcast",
        "sum_to(broadcast_to(x, S), shape(x)) -> x * |S|/|x|",
        "sum_to",
        _sum_of_broadcast,
    ),
    Rule(
        "batch-summed-product",
        "sum_to(a[b, m, k] @ c[b, k, n], (m, n)) -> a.permute(1, 0, 2).reshape(m, b*k) @ "
        "c.reshape(b*k, n)",
        "sum_to",
        _batch_summed_product,
    ),
    Rule(
        "sum-of-rows",
        "sum_to(x[r, ...], shape) over leading dims -> ones(r) @ x.reshape(r, -1)",
        "sum_to",
        _sum_of_rows,
    ),
    Rule(
        "sum-of-columns",
        "sum_to(x[r, c], (r, 1)) over trailing dims -> x.reshape(r, -1) @ ones(c)",
        "sum_to",
        _sum_of_columns,
    ),
    Rule("log-softmax", "log(softmax(x)) -> log_softmax(x)", "log", _log_of_softmax),
    Rule("log1p", "log(1 + x) -> log1p(x)", "log", _log_of_one_plus),
    Rule("log-sigmoid", "log(sigmoid(x)) -> min(x, 0) - log1p(exp(-|x|))", "log", _log_of_sigmoid),
    Rule(
        "masked-softmax",
        "softmax(where(mask, -inf, x)) -> masked_softmax(x, mask)",
        "softmax",
        _masked_softmax,
    ),
    *(
        Rule(
            "keys-major-softmax",
            "softmax(a @ b, -1) -> softmax(b^T @ a^T, -2)^T over short rows (masks transposed)",
            op,
            _keys_major,
        )
        for op in ("softmax", "masked_softmax")
    ),
    Rule(
        "classes-major-log-softmax",
        "log_softmax(a^T' @ b^T' + c, 1) -> log_softmax(b' @ a' + c^T, 0)^T over few classes",
        "log_softmax",
        _classes_major,
    ),
    Rule(
        "masked-softmax-gradient",
        "where(mask, 0, softmax_grad(masked_softmax(x, mask), g)) -> masked_softmax_grad",
        "where",
        _masked_softmax_gradient,
    ),
    *(
        Rule(
            "keys-major-softmax-gradient",
            "softmax_grad(y^T, g, -1) -> softmax_grad(y, g^T, -2)^T over short rows",
            op,
            _keys_major_gradient,
        )
        for op in ("softmax_grad", "masked_softmax_grad")
    ),
    Rule(
        "scale-out-of-product",
        "(x * c) @ b -> (x @ b) * c for a scalar c and a product smaller than x",
        "matmul",
        _scale_out_of_product,
    ),
    Rule(
        "loss-keeps-log-probs",
        "cross_entropy(x) -> nll_loss(log_softmax(x)) when its gradient is in the graph too",
        "cross_entropy",
        _cross_entropy_via_log_probs,
    ),
    Rule(
        "gradient-from-log-probs",
        "cross_entropy_grad(x) -> exp(log_softmax(x)) - one-hot, beside the loss's log_softmax",
        "cross_entropy_grad",
        _gradient_from_log_probs,
    ),
    Rule(
        "layer-norm-keeps-std",
        "layer_norm(x) -> (x - mean) / std, std = sqrt(mean((x - mean)^2) + eps), when its "
        "gradient is in the graph too",
        "layer_norm",
        _layer_norm_keeps_std,
    ),
    Rule(
        "layer-norm-gradient-from-std",
        "layer_norm_grad(x, y, g) -> layer_norm_grad_from_std(y, g, std), beside the forward's std",
        "layer_norm_grad",
        _layer_norm_gradient_from_std,
    ),
    Rule(
        "gelu-keeps-tanh",
        "gelu(x, tanh) -> gelu_with_tanh(x, t), t = gelu_tanh(x), when its gradient is in the "
        "graph too",
        "gelu",
        _gelu_keeps_tanh,
    ),
    Rule(
        "gelu-gradient-from-tanh",
        "gelu_grad(x, g, tanh) -> gelu_grad_with_tanh(x, t, g), beside the gelu's t",
        "gelu_grad",
        _gelu_gradient_from_tanh,
    ),
    Rule(
        "slice-scatters-cat",
        "scatter(a, [i:j]) + scatter(b, [j:k]) -> cat(a, b) (scattered at [i:k] unless whole)",
        "add",
        _add_of_slice_scatters,
    ),
]
# An elementwise op takes broadcasting operands as they are, so explicit broadcasts go.
RULES += [
    Rule("operand-broadcast", "f(x, broadcast_to(y)) -> f(x, y)", op, _operand_broadcast)
    for op in sorted(OPS)
    if ELEMENTWISE in OPS[op].props and len(OPS[op].inputs) >= 2 and op != "where"
]


def _for_elementwise_ops(name: str, algebra: str, rewrite) -> list[Rule]:
    """One rule per deterministic elementwise op (rules moving an op past a view)."""
    return [
        Rule(name, algebra, op, rewrite)
        for op in sorted(OPS)
        if ELEMENTWISE in OPS[op].props and RANDOM not in OPS[op].props
    ]


RULES += _for_elementwise_ops(
    "elementwise-before-reshape",
    "f(reshape(x, S), y) -> reshape(f(x, y'), S) with x rows of a product (y' on x's rows)",
    _elementwise_before_reshape,
)
RULES += _for_elementwise_ops(
    "elementwise-before-transpose",
    "f(x^T, b) -> f(x, b')^T for a 2-D x computed here, b scalar or broadcast (b' on x)",
    _elementwise_before_transpose,
)

_BY_OP: dict[str, list[Rule]] = {}
for _rule in RULES:
    _BY_OP.setdefault(_rule.op, []).append(_rule)

MAX_ROUNDS = 6


@register_pass("simplify")
def simplify(graph: Graph) -> Graph:
    """Apply the rewrite rules (identities and stable forms) until none fires."""
    counter = iter(range(1, 1 << 62))
    for _ in range(MAX_ROUNDS):
        graph, fired = _rewrite_once(graph, counter)
        if not fired:
            break
    return graph


def _rewrite_once(graph: Graph, counter) -> tuple[Graph, bool]:
    producers: dict[int, Node] = {}
    nodes: list[Node] = []
    replaced: dict[int, Value] = {}
    taken = {v.name for v in graph.values()}
    fresh = (n for n in counter if f"s{n}" not in taken)
    # Reads by live nodes only: an earlier rewrite leaves the nodes it replaced dead, and they
    # must not keep a value from counting as read once.
    needed = live(graph)
    readers: dict[int, list[Node]] = {}
    for n in graph.nodes:
        for v in n.inputs if n in needed else ():
            readers.setdefault(id(v), []).append(n)
    uses = {key: len(nodes) for key, nodes in readers.items()}
    for v in [*graph.outputs, *graph.updates.values()]:
        uses[id(v)] = uses.get(id(v), 0) + 1
    for node in graph.nodes:
        node.inputs = [_final(replaced, v) for v in node.inputs]
        rw = Rewriter(producers, nodes, node, fresh, uses, readers)
        for rule in _BY_OP.get(node.op, ()):
            mark = len(nodes)
            out = rule.rewrite(node, rw)
            if out is not None:
                replaced[id(node.outputs[0])] = out
                note(rule.name, node)
                break
            _drop_from(nodes, producers, mark)  # a rule that declines leaves no nodes behind
        else:
            nodes.append(node)
            producers.update((id(v), node) for v in node.outputs)
    graph = Graph(graph.inputs, nodes, graph.outputs, graph.updates)
    return substitute(graph, replaced), bool(replaced)


def _drop_from(nodes: list[Node], producers: dict[int, Node], mark: int) -> None:
    """Forget the nodes a rule emitted before it declined (their values are unused)."""
    for node in nodes[mark:]:
        for v in node.outputs:
            producers.pop(id(v), None)
    del nodes[mark:]


def _final(replaced: dict[int, Value], value: Value) -> Value:
    while id(value) in replaced:
        value = replaced[id(value)]
    return value
