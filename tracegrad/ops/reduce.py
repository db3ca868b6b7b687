"""Reductions over dims. Attributes hold normalized dims (sorted, non-negative) and keepdim."""

from __future__ import annotations

import math

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.ops import rules
from tracegrad.ops.registry import REDUCE, call, register
from tracegrad.ops.runtime import filled, kernel


def _reduce_infer(name, out_dtype=None):
    def infer(x: TensorType, dims, keepdim) -> TensorType:
        dims = rules.normalize_dims(name, dims, x.ndim)
        return TensorType(rules.reduced_shape(x.shape, dims, keepdim), out_dtype or x.dtype)

    return infer


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
for _name, _kernel in (("amax", amax), ("amin", amin)):
    register(
        _name,
        ("x",),
        _reduce_infer(_name),
        _kernel,
        (lambda c, g: call("extreme_grad", c.x, c.out, g, **c.attrs),),
        f"rt.{_name}({{0}}, {{dims}}, {{keepdim}})",
        out=f"rt.{_name}({{0}}, {{dims}}, {{keepdim}}, out={{out}})",
        saves=("x", "out"),
        props={REDUCE},
    )


def _arg_infer(name):
    def infer(x: TensorType, dim, keepdim) -> TensorType:
        dims = rules.normalize_dims(name, dim, x.ndim) if dim is not None else ()
        shape = rules.reduced_shape(x.shape, dims, keepdim) if dim is not None else ()
        return TensorType(shape, dtypes.int64)

    return infer


def _arg_impl(np_fn):
    def impl(x, dim, keepdim):
        if dim is None:
            return np.asarray(np_fn(x), dtype=np.int64)
        return np_fn(x, axis=dim, keepdims=keepdim).astype(np.int64)

    return impl


register(
    "argmax",
    ("x",),
    _arg_infer("argmax"),
    _arg_impl(np.argmax),
    None,
    "np.argmax({0}, axis={dim}, keepdims={keepdim})",
    props={REDUCE},
)
register(
    "argmin",
    ("x",),
    _arg_infer("argmin"),
    _arg_impl(np.argmin),
    None,
    "np.argmin({0}, axis={dim}, keepdims={keepdim})",
    props={REDUCE},
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
)
