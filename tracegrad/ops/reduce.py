"""Reductions over dims (attributes: normalized dims, sorted and non-negative, and keepdim),
and the ops along one dim (attribute ``dim``): the scans ``cumsum``/``cumprod``, the stable
``argsort`` sorts and topk are made of, and ``prod``."""

from __future__ import annotations

import math

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.ops import rules
from tracegrad.ops.registry import REDUCE, Sample, call, register
from tracegrad.ops.runtime import filled, kernel


def _reduce_infer(name, out_dtype=None, nonempty=False):
    """The type rule of a reduction; ``nonempty`` ones (a maximum, a minimum) refuse to reduce
    a dim of size 0, which has no value."""

    def infer(x: TensorType, dims, keepdim) -> TensorType:
        dims = rules.normalize_dims(name, dims, x.ndim)
        if nonempty:
            check_nonempty(name, x.shape, dims)
        return TensorType(rules.reduced_shape(x.shape, dims, keepdim), out_dtype or x.dtype)

    return infer


def check_nonempty(name, shape, dims) -> None:
    """ShapeError for a maximum or minimum over a dim of size 0 (NumPy's own error says
    nothing of the op or the shape)."""
    empty = [d for d in dims if shape[d] == 0]
    if empty:
        raise rules.ShapeError(
            f"{name}: cannot reduce dim {empty[0]} of shape {shape}: it is empty, and an empty "
            "slice has no maximum or minimum"
        )


# A reduction's test samples: (dims, keepdim) and the shape sets it is tried on
REDUCTIONS = (
    ((1,), True, ((2, 3),), ((3, 4),), ((4, 1, 2),)),
    ((0,), False, ((2, 3),), ((2, 3, 2),)),
    ((0, 2), False, ((2, 3, 4),), ((1, 2, 3),)),
    ((0, 1), False, ((2, 3),), ((3, 4),)),  # everything
    ((), False, ((),)),  # nothing, of a 0-d value
)


def _reduction_samples(ref, **draw):
    """Test samples of a reduction over ``dims``, as ``REDUCTIONS`` lists them;
    ``ref(x, axis, keepdims)`` is its NumPy counterpart."""

    def reference(x, dims, keepdim):
        return ref(x, axis=tuple(dims), keepdims=keepdim)

    return tuple(
        Sample({"dims": dims, "keepdim": keepdim}, shapes=tuple(shapes), ref=reference, **draw)
        for dims, keepdim, *shapes in REDUCTIONS
    )


# Reductions with kinks where values tie: drawn apart, checked to first order.
APART = {"kind": "distinct", "smooth": False}


def keep_dims(g, x_shape, dims, keepdim):
    """Give a reduced value back the reduced dims as size 1, so it broadcasts against x."""
    if keepdim:
        return g
    return call("reshape", g, shape=rules.reduced_shape(x_shape, dims, True))


def std_of_var(var):
    """sqrt(var), with the gradient taken as 0 where var == 0 (constant values, or a single
    one), as PyTorch's std rule does: sqrt's own derivative there is inf, and the variance's
    zero derivative times inf is nan. Where var == 0 the sqrt reads 1 instead, so that the
    untaken branch's derivatives are finite and 0 * them is 0 (the double where guard)."""
    flat = var == 0
    return call("where", flat, var * 0.0, call("sqrt", call("where", flat, var + 1.0, var)))


def _sum_grad(c, g):
    return call("broadcast_to", keep_dims(g, c.x.shape, c.dims, c.keepdim), shape=c.x.shape)


register(
    "sum",
    ("x",),
    _reduce_infer("sum"),
    lambda x, dims, keepdim: np.sum(x, dims, keepdims=keepdim),
    (_sum_grad,),
    "np.sum({0}, axis={dims}, keepdims={keepdim})",
    out="np.sum({0}, axis={dims}, keepdims={keepdim}, out={out})",
    props={REDUCE},
    samples=_reduction_samples(np.add.reduce),
)


@kernel
def amax(x, dims, keepdim, out=None):
    return _extreme(np.maximum, x, dims, keepdim, out)


@kernel
def amin(x, dims, keepdim, out=None):
    return _extreme(np.minimum, x, dims, keepdim, out)


def window_cells(x, dims, keepdim):
    """Index tuples of the cells of a small window being reduced over a large result
    (pooling), else None: NumPy reduces a few strided elements far slower than it compares
    whole strided slices, one per cell."""
    window = [x.shape[d] for d in dims]
    cells = math.prod(window)
    if keepdim or not dims or not 1 < cells <= 64 or x.size // cells < 1024:
        return None
    indexes = []
    for cell in np.ndindex(*window):
        index = [slice(None)] * x.ndim
        for d, i in zip(dims, cell, strict=True):
            index[d] = i
        indexes.append(tuple(index))
    return indexes


def _extreme(ufunc, x, dims, keepdim, out):
    cells = window_cells(x, dims, keepdim)
    if cells is None:
        return ufunc.reduce(x, axis=tuple(dims), keepdims=keepdim, out=out)
    if out is None:
        out = np.empty([n for d, n in enumerate(x.shape) if d not in dims], x.dtype)
    np.copyto(out, x[cells[0]])
    for cell in cells[1:]:
        ufunc(out, x[cell], out=out)
    return out


# amax/amin: the gradient is shared evenly between tied extremes (a fused op).
for _name, _kernel, _ufunc in (("amax", amax, np.maximum), ("amin", amin, np.minimum)):
    register(
        _name,
        ("x",),
        _reduce_infer(_name, nonempty=True),
        _kernel,
        (lambda c, g: call("extreme_grad", c.x, c.out, g, **c.attrs),),
        f"rt.{_name}({{0}}, {{dims}}, {{keepdim}})",
        out=f"rt.{_name}({{0}}, {{dims}}, {{keepdim}}, out={{out}})",
        saves=("x", "out"),
        props={REDUCE},
        samples=_reduction_samples(_ufunc.reduce, **APART),
    )


def _arg_infer(name):
    def infer(x: TensorType, dim, keepdim) -> TensorType:
        dims = rules.normalize_dims(name, dim, x.ndim) if dim is not None else ()
        check_nonempty(name, x.shape, dims if dim is not None else range(x.ndim))
        shape = rules.reduced_shape(x.shape, dims, keepdim) if dim is not None else ()
        return TensorType(shape, dtypes.int64)

    return infer


def _arg_impl(np_fn):
    def impl(x, dim, keepdim):
        if dim is None:
            return np.asarray(np_fn(x), dtype=np.int64)
        return np_fn(x, axis=dim, keepdims=keepdim).astype(np.int64)

    return impl


def _arg_samples(extreme):
    """Samples of argmax/argmin: the index where ``extreme`` is found, over a dim or all."""

    def reference(x, dim, keepdim):
        found = extreme(x, axis=dim, keepdims=True) == x
        index = np.indices(x.shape)[dim] if dim is not None else np.arange(x.size).reshape(x.shape)
        return np.sum(np.where(found, index, 0), axis=dim, keepdims=keepdim)

    return (
        Sample(
            {"dim": 1, "keepdim": False},
            shapes=(((2, 3),), ((3, 4, 2),)),
            kind="distinct",
            ref=reference,
        ),
        Sample({"dim": 0, "keepdim": True}, shapes=(((2, 3),),), kind="distinct", ref=reference),
        Sample(
            {"dim": None, "keepdim": False},
            shapes=(((2, 3),), ((),)),
            kind="distinct",
            ref=reference,
        ),
    )


register(
    "argmax",
    ("x",),
    _arg_infer("argmax"),
    _arg_impl(np.argmax),
    None,
    "np.argmax({0}, axis={dim}, keepdims={keepdim})",
    props={REDUCE},
    samples=_arg_samples(np.max),
)
register(
    "argmin",
    ("x",),
    _arg_infer("argmin"),
    _arg_impl(np.argmin),
    None,
    "np.argmin({0}, axis={dim}, keepdims={keepdim})",
    props={REDUCE},
    samples=_arg_samples(np.min),
)


def _sum_to_infer(x: TensorType, shape) -> TensorType:
    if rules.broadcast_shape("sum_to", x.shape, shape) != x.shape:
        raise rules.ShapeError(f"sum_to: shape {x.shape} cannot be reduced to {tuple(shape)}")
    return TensorType(tuple(shape), x.dtype)


def sum_to_dims(in_shape, shape):
    """Leading dims to drop and size-1 dims to sum so ``in_shape`` reduces to ``shape``."""
    lead = len(in_shape) - len(shape)
    kept = tuple(i for i, s in enumerate(shape) if s == 1 and in_shape[lead + i] != 1)
    return tuple(range(lead)), tuple(lead + i for i in kept)


@kernel
def sum_to(x, shape, out=None):
    """Undo broadcasting: sum the dims that broadcasting ``shape`` to ``x.shape`` added.
    Always new memory (or ``out``), never a view of ``x``."""
    lead, kept = sum_to_dims(x.shape, shape)
    if lead and not kept and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous:
        # Leading dims summed as ones @ rows: a BLAS matrix-vector product is 1.4-3x faster
        # than np.sum down the columns (a bias gradient, say).
        rows = x.reshape(-1, math.prod(shape))
        ones = filled(rows.shape[0], x.dtype, 1.0)
        if out is None:
            total = np.matmul(ones, rows)
            return total if total.shape == tuple(shape) else total.reshape(shape)
        np.matmul(ones, rows, out=out.reshape(-1))
        return out
    if kept:
        x = np.sum(x, axis=kept, keepdims=True)
    if lead:
        x = np.sum(x, axis=lead)
    if out is not None:
        np.copyto(out, np.reshape(x, shape))
        return out
    return np.reshape(x if lead or kept else x.copy(), shape)


# sum_to undoes broadcasting: it sums the dims that broadcast_to(x, shape) would have added.
register(
    "sum_to",
    ("x",),
    _sum_to_infer,
    sum_to,
    (lambda c, g: call("broadcast_to", g, shape=c.x.shape),),
    "rt.sum_to({0}, {shape})",
    out="rt.sum_to({0}, {shape}, out={out})",
    props={REDUCE},
    samples=(
        Sample({"shape": (1, 3)}, shapes=(((2, 3),), ((4, 2, 3),))),
        Sample({"shape": (3, 1)}, shapes=(((2, 3, 4),), ((3, 1),))),
        Sample({"shape": ()}, shapes=(((2, 3),), ((),))),
    ),
)


# --- scans and sorts along one dim (attribute ``dim``, non-negative; inputs of >= 1 dim) ---


def _along_dim_infer(name, out_dtype=None):
    def infer(x: TensorType, dim, **_) -> TensorType:
        if x.ndim == 0:
            raise rules.ShapeError(f"{name}: expected a tensor of at least 1 dim, got shape ()")
        rules.normalize_dim(name, dim, x.ndim)
        return TensorType(x.shape, out_dtype or x.dtype)

    return infer


def _running(ufunc, x, dim):
    """The scan of ``ufunc`` along ``dim``, one step at a time (a test reference)."""
    out = np.array(np.moveaxis(x, dim, 0))
    for i in range(1, len(out)):
        out[i] = ufunc(out[i - 1], out[i])
    return np.moveaxis(out, 0, dim)


def reverse(x, dim):
    """``x`` reversed along ``dim`` (a view)."""
    key = (("slice", None, None, None),) * dim + (("slice", None, None, -1),)
    return call("getitem", x, key=key)


def move_dim_last(x, dim):
    """(``x`` with ``dim`` moved last, the permutation that moves it back)."""
    order = [d for d in range(x.ndim) if d != dim] + [dim]
    back = tuple(order.index(d) for d in range(x.ndim))
    return call("permute", x, dims=tuple(order)), back


# cumsum: d/dx_i = sum_{j >= i} g_j, a cumsum of g from the end.
register(
    "cumsum",
    ("x",),
    _along_dim_infer("cumsum"),
    lambda x, dim: np.cumsum(x, axis=dim),
    (lambda c, g: reverse(call("cumsum", reverse(g, c.dim), dim=c.dim), c.dim),),
    "np.cumsum({0}, axis={dim})",
    out="np.cumsum({0}, axis={dim}, out={out})",
    samples=(
        Sample(
            {"dim": 1},
            shapes=(((2, 3),), ((2, 4, 1),)),
            ref=lambda x, dim: _running(np.add, x, dim),
        ),
        Sample(
            {"dim": 0}, shapes=(((3,),), ((3, 2),)), ref=lambda x, dim: _running(np.add, x, dim)
        ),
    ),
)


def _cumprod_grad(c, g):
    """d/dx_i = sum_{j >= i} g_j prod_{k <= j, k != i} x_k
              = out_{i-1} * sum_{j >= i} g_j Q_ij,  Q_ij = prod_{i < k <= j} x_k.

    NOTE: written without dividing by x (the usual g-cumsum of out / x), so it holds where x
    has zeros, and in ops, so it has gradients itself; Q is an (n, n) matrix per row along dim,
    the cumprod of x masked to 1 at k <= i."""
    x, back = move_dim_last(c.x, c.dim)
    out, _ = move_dim_last(c.out, c.dim)
    g_last, _ = move_dim_last(g, c.dim)
    n = x.shape[-1]
    after = x.new_tensor(np.triu(np.ones((n, n), bool), 1), dtype=dtypes.bool_)  # [i, j]: j > i
    rows = call("reshape", x, shape=(*x.shape[:-1], 1, n))
    q = call("cumprod", call("where", after, rows, x.new_ones(())), dim=x.ndim)
    from_i = x.new_tensor(np.triu(np.ones((n, n), bool)), dtype=dtypes.bool_)  # [i, j]: j >= i
    weighted = call("where", from_i, call("reshape", g_last, shape=rows.shape) * q, g.new_zeros(()))
    total = call("sum", weighted, dims=(x.ndim,), keepdim=False)
    before = call("cat", x.new_ones((*x.shape[:-1], 1)), _drop_last(out), dim=x.ndim - 1)
    return call("permute", before * total, dims=back)


def _drop_last(x):
    return call("getitem", x, key=(("ellipsis",), ("slice", None, -1, None)))


register(
    "cumprod",
    ("x",),
    _along_dim_infer("cumprod"),
    lambda x, dim: np.cumprod(x, axis=dim),
    (_cumprod_grad,),
    "np.cumprod({0}, axis={dim})",
    saves=("x", "out"),
    out="np.cumprod({0}, axis={dim}, out={out})",
    samples=(
        Sample(
            {"dim": 1},
            shapes=(((2, 3),), ((3, 1, 2),), ((3, 4),)),
            ref=lambda x, dim: _running(np.multiply, x, dim),
        ),
        # at zeros, where x_i divides nothing
        Sample(
            {"dim": 0},
            shapes=(((3, 2),), ((4,),), ((2, 3, 2),)),
            kind="zeros",
            ref=lambda x, dim: _running(np.multiply, x, dim),
        ),
    ),
)


@kernel
def argsort(x, dim, descending):
    """Stable argsort along ``dim``; descending keeps equal values in their order too (a
    stable ascending sort of the reversed values, read backwards), NaN counted largest."""
    if not descending:
        return np.argsort(x, axis=dim, kind="stable")
    n = x.shape[dim]
    flipped = np.argsort(np.flip(x, dim), axis=dim, kind="stable")
    return (n - 1) - np.flip(flipped, dim)


register(
    "argsort",
    ("x",),
    _along_dim_infer("argsort", dtypes.int64),
    argsort,
    None,
    "rt.argsort({0}, {dim}, {descending})",
    samples=(
        Sample(
            {"dim": 1, "descending": False},
            shapes=(((2, 3),), ((3, 4, 2),)),
            kind="distinct",
            ref=lambda x, dim, descending: np.argsort(x, axis=dim),
        ),
        Sample(
            {"dim": 0, "descending": True},
            shapes=(((4, 2),), ((5,),)),
            kind="distinct",
            ref=lambda x, dim, descending: np.argsort(-x, axis=dim),
        ),
    ),
)


def _exclusive_cumprod(x, dim):
    """prod_{k < i} x_k along ``dim`` (1 at i = 0)."""
    ones = call("reshape", x.new_ones(()), shape=(1,) * x.ndim)
    head = call("broadcast_to", ones, shape=(*x.shape[:dim], 1, *x.shape[dim + 1 :]))
    cut = (("slice", None, None, None),) * dim + (("slice", None, -1, None),)
    return call("cat", head, call("getitem", call("cumprod", x, dim=dim), key=cut), dim=dim)


def _prod_grad(c, g):
    """d/dx_i = g * prod_{k < i} x_k * prod_{k > i} x_k: no division by x, so right at
    zeros; both products are cumprods (differentiable again)."""
    before = _exclusive_cumprod(c.x, c.dim)
    after = reverse(_exclusive_cumprod(reverse(c.x, c.dim), c.dim), c.dim)
    return keep_dims(g, c.x.shape, (c.dim,), c.keepdim) * before * after


def _prod_infer(x: TensorType, dim, keepdim) -> TensorType:
    _along_dim_infer("prod")(x, dim)
    return TensorType(rules.reduced_shape(x.shape, (dim,), keepdim), x.dtype)


def _prod_reference(x, dim, keepdim):
    """The product along ``dim`` as the last value of a running product (a test reference)."""
    last = np.take(_running(np.multiply, x, dim), [-1], axis=dim)
    return last if keepdim else np.squeeze(last, dim)


# prod over one dim (the tensor layer flattens several into one first).
register(
    "prod",
    ("x",),
    _prod_infer,
    lambda x, dim, keepdim: np.prod(x, axis=dim, keepdims=keepdim),
    (_prod_grad,),
    "np.prod({0}, axis={dim}, keepdims={keepdim})",
    saves=("x",),
    out="np.prod({0}, axis={dim}, keepdims={keepdim}, out={out})",
    props={REDUCE},
    samples=(
        Sample(
            {"dim": 1, "keepdim": False},
            shapes=(((2, 3),), ((3, 4, 1),), ((3, 4),)),
            ref=_prod_reference,
        ),
        # at zeros, where the usual out / x gradient divides by 0
        Sample(
            {"dim": 0, "keepdim": True},
            shapes=(((3, 2),), ((4,),), ((2, 3, 2),)),
            kind="zeros",
            ref=_prod_reference,
        ),
    ),
)
