"""``specialize_numpy``: layout and BLAS choices for the NumPy backend, as rewrite rules.

These rules change no values, only how NumPy computes them, and each was kept because it
measured faster: products with their long side first, one BLAS call for a stack of products,
sums as matrix-vector products, softmax down the columns of short rows, elementwise ops moved
onto a product's own layout so they fuse with it. Their left sides are patterns (the language
is in patterns.py); their right sides are builders, because a layout choice needs code.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from tracegrad.ir.core import Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import ELEMENTWISE, OPS, VIEW, kernels
from tracegrad.ops.registry import RANDOM
from tracegrad.passes import canonicalize
from tracegrad.passes.patterns import AnyOf, Match, Pat, Rule, V, by_op, rewrite
from tracegrad.passes.pipeline import register_pass

# Rows up to this long are short: NumPy reduces along them with a slow inner loop, while down
# columns it compares and adds whole rows at a time.
SHORT_ROWS = 256


def _swap_dims(n: int) -> tuple[int, ...]:
    """The permutation swapping the last two of ``n`` dims (a stack of matrix transposes)."""
    return (*range(n - 2), n - 1, n - 2)


def _swap_last(m: Match, value: Value) -> Value:
    return m.emit("permute", [value], dims=_swap_dims(value.type.ndim))


def _ndim(n: int):
    return lambda value: value.type.ndim == n


def _scalar(value: Value) -> bool:
    return value.type.shape == ()


def _strided_view(m: Match, value: Value) -> bool:
    """Whether ``value`` is a view other than a reshape (a transpose, a slice, a broadcast),
    which a reshape may have to copy. Constants and fused results are arrays of their own."""
    producer = m.producer(value)
    if producer is None or producer.op == "reshape":
        return False
    op = OPS.get(producer.op)
    return op is not None and VIEW in op.props


def _runs_transposed(m: Match, rows: int, columns: int, matrix: Value) -> bool:
    """Whether a product of ``rows`` x ``columns`` whose right operand is ``matrix``
    transposed runs as wide-product computes it. Only small results (one chunk): the ops
    reading them then meet a transposed layout, which costs little while it fits in cache."""
    small = rows * columns <= kernels.CHUNK
    return rows < columns and small and matrix.type.ndim == 2 and not _strided_view(m, matrix)


# --- products -----------------------------------------------------------------------------------


def _product_transposes_back(m: Match) -> bool:
    """(a @ b)^T with the transpose of a whole product used nowhere else; a 2-D one only if
    wide-product would not turn b^T @ a^T back into (a @ b)^T."""
    a, b, dims = m["a"], m["b"], tuple(m.root.attrs["dims"])
    n = len(dims)
    if n < 2 or dims != _swap_dims(n) or a.type.ndim != n or b.type.ndim != n:
        return False
    if not m.only_use(m["p"]):
        return False
    return not (n == 2 and _runs_transposed(m, b.type.shape[1], a.type.shape[0], a))


def _product_of_transposes(m: Match) -> Value:
    """A transposed product is a strided view; the product of transposed views is contiguous
    (BLAS reads transposed operands for free), so later elementwise passes run fast."""
    return m.emit("matmul", [_swap_last(m, m["b"]), _swap_last(m, m["a"])])


def _one_product_of_rows(m: Match) -> Value:
    """A stack of matrices times one matrix (a linear layer on (B, T, C)) is one product of
    all the rows: NumPy multiplies a stack matrix by matrix (1.2-1.4x slower than one BLAS
    call), and the weight's gradient becomes one product instead of a product per matrix
    summed over the stack."""
    a = m["a"]
    rows = m.emit("reshape", [a], shape=(math.prod(a.type.shape[:-1]), a.type.shape[-1]))
    product = m.emit("matmul", [rows, m["b"]])
    return m.emit("reshape", [product], shape=m.root.outputs[0].type.shape)


def _wide_and_small(m: Match) -> bool:
    return _runs_transposed(m, m["a"].type.shape[0], m.root.outputs[0].type.shape[1], m["w"])


def _long_side_first(m: Match) -> Value:
    """A small product by a transposed matrix, wider than tall, runs with its long side
    first: x @ W^T = (W @ x^T)^T. OpenBLAS multiplies by a transposed operand 5-35% faster
    that way round (x (32, 784) @ W^T for W (128, 784): 88 us, (W @ x^T)^T: 68 us); the
    other layouts gain nothing from it. The result is then a transposed view, and the bias
    and activation after it move onto the product (elementwise-before-transpose)."""
    return _swap_last(m, m.emit("matmul", [m["w"], _swap_last(m, m["a"])]))


def _scaled_operand_is_smaller(m: Match) -> bool:
    size = math.prod(m.root.outputs[0].type.shape)
    small = min(math.prod(m["a"].type.shape), math.prod(m["b"].type.shape))
    return m.only_use(m["p"]) and small < size


def _scale_the_smaller_operand(m: Match) -> Value:
    """Attention scores scaled by 1/sqrt(d): scaling q (B, H, T, d) instead of the scores
    (B, H, T, T) is a quarter of the work at T = 4d, in the forward and in the backward."""
    a, b, c = m["a"], m["b"], m["c"]
    if math.prod(a.type.shape) < math.prod(m.root.outputs[0].type.shape):
        return m.emit("matmul", [m.emit("mul", [a, c]), b])
    return m.emit("matmul", [a, m.emit("mul", [b, c])])


def _product_is_smaller_than_scaled(m: Match) -> bool:
    """(x * c) @ b with a scalar c, a product smaller than x, and x * c read only by products
    and not returned (otherwise the scaled value is needed anyway)."""
    x, operand = m["x"], m["scaled"]
    if x.type.shape != operand.type.shape:
        return False
    if math.prod(m.root.outputs[0].type.shape) >= math.prod(x.type.shape):
        return False
    return not m.returned(operand) and all(r.op == "matmul" for r in m.readers(operand))


def _scale_the_product(m: Match) -> Value:
    """The attention gradient scaled by 1/sqrt(d) on (B, H, T, d) results, not (B, H, T, T)."""
    inputs = list(m.root.inputs)
    inputs[m.position] = m["x"]
    return m.emit("mul", [m.emit("matmul", inputs), m["c"]])


# --- sums ---------------------------------------------------------------------------------------


def _sums_a_stack_of_products(m: Match) -> bool:
    """sum_to of a stack of products to one matrix, both operands stacked alike (with a
    broadcast operand the sum is not over matching pairs)."""
    out, shape = m["p"].type.shape, tuple(m.root.attrs["shape"])
    if len(out) < 3 or shape != out[-2:] or not m.only_use(m["p"]):
        return False
    batch = out[:-2]
    return m["a"].type.shape[:-2] == batch and m["b"].type.shape[:-2] == batch


def _one_product_over_the_stack(m: Match) -> Value:
    """A stack of products summed over the stack (the weight gradient of a linear layer on
    (B, T, C): sum_b x_b^T g_b) is one product of all the rows, x^T g over B*T rows: one BLAS
    call with a long inner dim instead of B small products and a sum."""
    a, b, out = m["a"], m["b"], m["p"].type.shape
    n, (rows_a, k), cols = len(out), a.type.shape[-2:], b.type.shape[-1]
    rows = math.prod(out[:-2]) * k
    # a (..., M, K) -> (M, ..., K) -> (M, rows); b (..., K, N) -> (rows, N)
    lead = m.emit("permute", [a], dims=(n - 2, *range(n - 2), n - 1))
    left = m.emit("reshape", [lead], shape=(rows_a, rows))
    right = m.emit("reshape", [b], shape=(rows, cols))
    return m.emit("matmul", [left, right])


def _sums_leading_dims(m: Match) -> bool:
    """A float sum over leading dims; above 2-D, not of a strided view (a reshape of it would
    copy it first)."""
    x, shape = m["x"], tuple(m.root.attrs["shape"])
    lead = x.type.ndim - len(shape)
    if not shape or lead < 1 or x.type.shape[lead:] != shape or x.type.dtype.np.kind != "f":
        return False
    strided = m.producer(x) is None or _strided_view(m, x)
    return not (x.type.ndim > 2 and strided)


def _ones_times_rows(m: Match) -> Value:
    """A sum over leading dims (a bias gradient) is ones @ rows: one BLAS matrix-vector
    product, 1.4-3x faster than np.sum down the columns, emitted as a plain np.matmul."""
    x, shape = m["x"], tuple(m.root.attrs["shape"])
    rows = math.prod(x.type.shape[: x.type.ndim - len(shape)])
    if x.type.ndim > 2 or len(shape) > 1:
        x = m.emit("reshape", [x], shape=(rows, math.prod(shape)))
    total = m.emit("matmul", [m.constant(np.ones(rows), x.type.dtype), x])
    if len(shape) > 1:
        total = m.emit("reshape", [total], shape=shape)
    return total


def _kept_dims(shape: tuple) -> int:
    """How many leading dims a sum to ``shape`` keeps (the rest are trailing 1s)."""
    return len(shape) - len(tuple(itertools.takewhile(lambda size: size == 1, reversed(shape))))


def _sums_trailing_dims(m: Match) -> bool:
    """A float sum of a contiguous x over trailing dims kept as 1s, some dims kept."""
    x, shape = m["x"], tuple(m.root.attrs["shape"])
    n, kept = len(shape), _kept_dims(shape)
    if n != x.type.ndim or kept in (0, n) or x.type.dtype.np.kind != "f":
        return False
    return shape[:kept] == x.type.shape[:kept] and not _strided_view(m, x)


def _rows_times_ones(m: Match) -> Value:
    """A sum over trailing dims kept as 1s (the bias gradient of a product computed
    transposed, (C, N) summed to (C, 1)) is rows @ ones: a BLAS matrix-vector product."""
    x, shape = m["x"], tuple(m.root.attrs["shape"])
    kept = _kept_dims(shape)
    rows = m.emit("reshape", [x], shape=(math.prod(shape[:kept]), math.prod(x.type.shape[kept:])))
    ones = m.constant(np.ones(rows.type.shape[1]), x.type.dtype)
    return m.emit("reshape", [m.emit("matmul", [rows, ones])], shape=shape)


# --- views --------------------------------------------------------------------------------------


def _reshape_copies(m: Match) -> bool:
    """Whether NumPy must copy to reshape this transposed view (tried on a stand-in array)."""
    permute = m.node("p")
    probe = np.empty(m["x"].type.shape, np.int8).transpose(permute.attrs["dims"])
    return not np.shares_memory(probe.reshape(m.root.attrs["shape"]), probe)


def _copy_then_reshape(m: Match) -> Value:
    """A reshape that merges transposed dims copies, into fresh memory each time; an explicit
    copy first (a contiguous op) lets the memory plan give that copy a reused buffer."""
    copied = m.emit("contiguous", [m["p"]])
    return m.emit("reshape", [copied], shape=m.root.attrs["shape"])


def _rows_of_a_stack(m: Match) -> bool:
    """f(reshape(rows), ...) where the reshape has the result's shape and the rows are a
    product's (or an elementwise op's) with the result's last dim, as a stack of them."""
    out, rows = m.root.outputs[0].type.shape, m["rows"]
    if m["view"].type.shape != out:
        return False
    # a bias along the last dim would meet another dim; or not a stack of rows
    return rows.type.shape[-1:] == out[-1:] and rows.type.ndim < len(out)


def _on_rows(m: Match, value: Value, rows: Value) -> Value | None:
    """``value`` as an operand beside ``rows`` (the same elements, or broadcast along the
    last dim), or None when it can't be: a full-size strided view would be copied."""
    if value.type.ndim <= 1:
        return value
    if value.type.numel != rows.type.numel or _strided_view(m, value):
        return None
    return m.emit("reshape", [value], shape=rows.type.shape)


def _elementwise_on_rows(m: Match) -> Value | None:
    """An elementwise op on the rows of a product seen as a stack, f(reshape(x), y), runs on
    the rows themselves: a linear layer on (B, T, C) is one product of all the rows, and its
    bias and activation then join it in one fused kernel, in place over the product."""
    operands = [_on_rows(m, v, m["rows"]) for v in m.root.inputs]
    if any(v is None for v in operands):
        return None
    operands[m.position] = m["rows"]
    on_rows = m.emit(m.root.op, operands, **m.root.attrs)
    return m.emit("reshape", [on_rows], shape=m.root.outputs[0].type.shape)


def _transposed_broadcast(m: Match, value: Value) -> Value | None:
    """A scalar, row or column operand of a 2-D elementwise op, shaped to broadcast the
    same way against the transposed matrix; None for a full matrix, which stays where it is
    (moving it could undo another such rewrite)."""
    shape = value.type.shape
    if len(shape) == 0 or shape == (1,) or shape == (1, 1):
        return value
    if len(shape) == 1 or shape[0] == 1:  # broadcast along the rows: a column of the result^T
        return m.emit("reshape", [value], shape=(shape[-1], 1))
    if len(shape) == 2 and shape[1] == 1:
        return m.emit("reshape", [value], shape=(1, shape[0]))
    return None


def _beside_the_transpose(m: Match, value: Value) -> Value | None:
    """An operand of f(x^T, ...) as one of f(x, ...): a transposed matrix is its source (a
    gelu's kept tanh, made beside its transposed input), else as ``_transposed_broadcast``."""
    view = m.producer(value, "permute")
    if view is not None and value.type.ndim == 2 and tuple(view.attrs["dims"]) == (1, 0):
        return view.inputs[0]
    return _transposed_broadcast(m, value)


def _transpose_of_a_matrix(m: Match) -> bool:
    out = m.root.outputs[0].type.shape
    return len(out) == 2 and m["view"].type.shape == out


def _elementwise_untransposed(m: Match) -> Value | None:
    """An elementwise op on a transposed matrix computed here, f(x^T, b), runs on x itself
    when the other operands are scalars or broadcast rows and columns: a product that
    wide-product turned round keeps its bias and activation in one fused kernel."""
    operands = [_beside_the_transpose(m, v) for v in m.root.inputs]
    operands[m.position] = m["x"]
    if any(v is None for v in operands):
        return None
    return _swap_last(m, m.emit(m.root.op, operands, **m.root.attrs))


# --- softmax over short rows --------------------------------------------------------------------


def _short_rows_of_a_product(m: Match) -> bool:
    """softmax over the short last dim of a stack of products read only here; masks 2-D+."""
    x, a, b = m["p"], m["a"], m["b"]
    n, dim = x.type.ndim, m.root.attrs["dim"] % max(x.type.ndim, 1)
    if n < 3 or dim != n - 1 or x.type.shape[-1] > SHORT_ROWS:
        return False
    if not m.only_use(x) or any(v.type.ndim < 2 for v in m.values("masks")):
        return False
    return a.type.ndim == n and b.type.ndim == n


def _keys_major(m: Match) -> Value:
    """softmax over the short last dim of a stack of products a @ b (attention scores) is
    computed on the transposed product b^T @ a^T, down its columns (the max and sum vectorize
    along the queries, the sum is one matrix product), and read back as a transposed view,
    which the next product (probabilities @ values) takes as it is."""
    n = m["p"].type.ndim
    transposed = m.emit("matmul", [_swap_last(m, m["b"]), _swap_last(m, m["a"])])
    masks = [_swap_last(m, mask) for mask in m.values("masks")]
    down = m.emit(m.root.op, [transposed, *masks], dim=n - 2)
    return _swap_last(m, down)


def _gradient_of_keys_major(m: Match) -> bool:
    """softmax_grad over the last dim of y read as a transposed view, other operands 2-D+."""
    y = m["view"]
    n, dim = y.type.ndim, m.root.attrs["dim"] % max(y.type.ndim, 1)
    if n < 3 or dim != n - 1 or tuple(m.node("view").attrs["dims"]) != _swap_dims(n):
        return False
    return all(v.type.ndim >= 2 for v in m.root.inputs[2:])


def _keys_major_gradient(m: Match) -> Value:
    """The gradient of a keys-major softmax, read as a transposed view: computed keys-major
    too (its cotangent transposed, usually a product that then comes out transposed)."""
    n = m["view"].type.ndim
    others = [_swap_last(m, v) for v in m.root.inputs[1:]]
    down = m.emit(m.root.op, [m["y"], *others], dim=n - 2)
    return _swap_last(m, down)


def _few_classes_alone(m: Match) -> bool:
    """log_softmax over the few classes of 2-D logits, the only reader of them (the loss and
    its gradient each make a log_softmax of x, one once cse merges them)."""
    x = m.root.inputs[0]
    if x.type.ndim != 2 or m.root.attrs["dim"] % 2 != 1 or x.type.shape[1] > SHORT_ROWS:
        return False
    alone = all(r.op == m.root.op and r.attrs == m.root.attrs for r in m.readers(x))
    return alone and ("bias" not in m.captures or m.only_use(m["p"]))


def _classes_major(m: Match) -> Value | None:
    """log_softmax over the few classes of a linear layer's logits, (a @ b + bias) with a and
    b transposed views (a layer after one that wide-product turned round), is computed on
    the transposed logits b^T @ a^T + bias^T, down their columns: the max and the sum
    vectorize along the samples, and the product reads both operands contiguous."""
    logits = m.emit("matmul", [m["b"], m["a"]])
    if "bias" in m.captures:
        bias = _transposed_broadcast(m, m["bias"])
        if bias is None:
            return None
        logits = m.emit("add", [logits, bias])
    return _swap_last(m, m.emit("log_softmax", [logits], dim=0))


# --- padded windows ----------------------------------------------------------------------------


def _pads(m: Match) -> bool:
    return any(m.root.attrs["padding"])


def _windows_of_padded_copy(m: Match) -> Value:
    """unfold pads a fresh copy of its input on every call (np.pad); the padding as its own
    op writes into a planned buffer, and the windows are a view of it."""
    attrs = dict(m.root.attrs)
    padded = m.emit("pad2d", [m["x"]], padding=attrs["padding"], value=attrs["pad_value"])
    return m.emit("unfold", [padded], **(attrs | {"padding": (0, 0)}))


# --- lookups ------------------------------------------------------------------------------------


def _rows_of_the_table(m: Match) -> bool:
    """x[i] with i an index array checked to lie in [0, len(x)) (an embedding's lookup)."""
    (item,) = m.root.attrs["key"]
    return item[0] == "rows" and item[1] == 0 and item[2] == m["x"].type.shape[0]


def _rows_into_buffer(m: Match) -> Value:
    """Fancy indexing copies the rows into a fresh array on every call; take_rows writes
    them into a planned buffer."""
    return m.emit("take_rows", [m["x"], m["i"]])


# --- the rules ----------------------------------------------------------------------------------

PRODUCT = Pat("matmul", V("a"), V("b"), name="p")
PRODUCT_OF_TRANSPOSES = Pat(
    "matmul", Pat("permute", V("a", _ndim(2))), Pat("permute", V("b", _ndim(2))), name="p"
)
SOFTMAXES = ("softmax", "masked_softmax")
MATMUL_OR_ELEMENTWISE = frozenset({"matmul", *(op for op in OPS if ELEMENTWISE in OPS[op].props)})
# Deterministic elementwise ops, the ones moved past a view
ELEMENTWISE_OPS = frozenset(
    op for op in OPS if ELEMENTWISE in OPS[op].props and RANDOM not in OPS[op].props
)

RULES = [
    Rule(
        "transpose-of-product",
        "(a @ b)^T -> b^T @ a^T",
        Pat("permute", PRODUCT),
        _product_of_transposes,
        when=_product_transposes_back,
    ),
    Rule(
        "rows-times-matrix",
        "a[..., m, k] @ b[k, n] -> (a.reshape(-1, k) @ b).reshape(..., m, n)",
        Pat("matmul", V("a", lambda a: a.type.ndim >= 3), V("b", _ndim(2))),
        _one_product_of_rows,
    ),
    Rule(
        "wide-product",
        "a @ b^T -> (b @ a^T)^T for a small product with fewer rows than columns",
        Pat(
            "matmul",
            V("a", _ndim(2)),
            Pat("permute", V("w"), attrs={"dims": lambda d: tuple(d) == (1, 0)}),
        ),
        _long_side_first,
        when=_wide_and_small,
    ),
    Rule(
        "copying-reshape",
        "reshape(permute(x)) -> reshape(contiguous(permute(x)))",
        Pat("reshape", Pat("permute", V("x"), name="p")),
        _copy_then_reshape,
        when=_reshape_copies,
        extra_passes=1,  # the copy NumPy's reshape of a permuted array makes anyway, made once
    ),
    Rule(
        "scale-into-product",
        "(a @ b) * c -> (a * c) @ b for a scalar c and an operand smaller than the product",
        Pat("mul", PRODUCT, V("c", _scalar), commutative=True),
        _scale_the_smaller_operand,
        when=_scaled_operand_is_smaller,
    ),
    Rule(
        "batch-summed-product",
        "sum_to(a[b, m, k] @ c[b, k, n], (m, n)) -> a.permute(1, 0, 2).reshape(m, b*k) @ "
        "c.reshape(b*k, n)",
        Pat("sum_to", PRODUCT),
        _one_product_over_the_stack,
        when=_sums_a_stack_of_products,
    ),
    Rule(
        "sum-of-rows",
        "sum_to(x[r, ...], shape) over leading dims -> ones(r) @ x.reshape(r, -1)",
        Pat("sum_to", V("x")),
        _ones_times_rows,
        when=_sums_leading_dims,
    ),
    Rule(
        "sum-of-columns",
        "sum_to(x[r, c], (r, 1)) over trailing dims -> x.reshape(r, -1) @ ones(c)",
        Pat("sum_to", V("x")),
        _rows_times_ones,
        when=_sums_trailing_dims,
    ),
    Rule(
        "keys-major-softmax",
        "softmax(a @ b, -1) -> softmax(b^T @ a^T, -2)^T over short rows (masks transposed)",
        Pat(SOFTMAXES, PRODUCT, rest="masks"),
        _keys_major,
        when=_short_rows_of_a_product,
    ),
    Rule(
        "classes-major-log-softmax",
        "log_softmax(a^T' @ b^T' + c, 1) -> log_softmax(b' @ a' + c^T, 0)^T over few classes",
        Pat(
            "log_softmax",
            AnyOf(Pat("add", PRODUCT_OF_TRANSPOSES, V("bias")), PRODUCT_OF_TRANSPOSES),
        ),
        _classes_major,
        when=_few_classes_alone,
    ),
    Rule(
        "keys-major-softmax-gradient",
        "softmax_grad(y^T, g, -1) -> softmax_grad(y, g^T, -2)^T over short rows",
        Pat(
            ("softmax_grad", "masked_softmax_grad"),
            Pat("permute", V("y"), name="view"),
            rest="others",
        ),
        _keys_major_gradient,
        when=_gradient_of_keys_major,
    ),
    Rule(
        "scale-out-of-product",
        "(x * c) @ b -> (x @ b) * c for a scalar c and a product smaller than x",
        Pat("matmul", some=Pat("mul", V("x"), V("c", _scalar), name="scaled")),
        _scale_the_product,
        when=_product_is_smaller_than_scaled,
    ),
    Rule(
        "elementwise-before-reshape",
        "f(reshape(x, S), y) -> reshape(f(x, y'), S) with x rows of a product (y' on x's rows)",
        Pat(
            ELEMENTWISE_OPS,
            some=Pat("reshape", Pat(MATMUL_OR_ELEMENTWISE, name="rows"), name="view"),
        ),
        _elementwise_on_rows,
        when=_rows_of_a_stack,
    ),
    Rule(
        "elementwise-before-transpose",
        "f(x^T, b) -> f(x, b')^T for a 2-D x computed here, b scalar, broadcast or a "
        "transpose (b' on x)",
        Pat(
            ELEMENTWISE_OPS, some=Pat("permute", Pat(MATMUL_OR_ELEMENTWISE, name="x"), name="view")
        ),
        _elementwise_untransposed,
        when=_transpose_of_a_matrix,
    ),
    Rule(
        "gathered-rows",
        "x[i] for rows i checked to lie in [0, len(x)) -> take_rows(x, i)",
        Pat("getitem", V("x"), V("i"), attrs={"key": lambda key: len(key) == 1}),
        _rows_into_buffer,
        when=_rows_of_the_table,
        extra_passes=1,  # the copy fancy indexing made, now into a planned buffer
    ),
    Rule(
        "padded-windows",
        "unfold(x, padding=p, pad_value=v) -> unfold(pad2d(x, p, v), padding=0)",
        Pat("unfold", V("x")),
        _windows_of_padded_copy,
        when=_pads,
        extra_passes=1,  # the padded copy unfold made inside itself, now in a planned buffer
    ),
]

# The identities run with the layout choices, to cancel the chains of views those leave.
_BY_OP = by_op([*canonicalize.RULES, *RULES])


@register_pass("specialize_numpy")
def specialize_numpy(graph: Graph) -> Graph:
    """Apply the NumPy layout and BLAS choices (and the identities they expose) until none
    fires."""
    return rewrite(graph, _BY_OP)
