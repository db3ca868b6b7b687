"""Shared shape/dtype rules. Each raises ShapeError/DTypeError naming the op and the operands."""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.errors import DTypeError, ShapeError


def broadcast_shape(op: str, *shapes) -> tuple[int, ...]:
    first = tuple(shapes[0])
    if all(tuple(s) == first for s in shapes[1:]):
        return first  # the common case, checked on every op: np.broadcast_shapes is slow
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = " and ".join(str(tuple(s)) for s in shapes)
        raise ShapeError(f"{op}: shapes {listed} cannot be broadcast together") from None


def same_dtype(op: str, *types: TensorType) -> dtypes.DType:
    kinds = {t.dtype for t in types}
    if len(kinds) > 1:
        listed = ", ".join(str(t.dtype) for t in types)
        raise DTypeError(f"{op}: operands must share a dtype, got {listed}")
    return types[0].dtype


def floating(op: str, t: TensorType) -> TensorType:
    if not t.dtype.is_floating_point:
        raise DTypeError(
            f"{op}: expected a floating-point tensor, got {t.dtype} of shape {t.shape}"
        )
    return t


def integer(op: str, t: TensorType, role: str) -> TensorType:
    if t.dtype is not dtypes.int64:
        raise DTypeError(f"{op}: {role} must be int64 indices, got {t.dtype} with shape {t.shape}")
    return t


def elementwise(op: str, *types: TensorType, out_dtype=None) -> TensorType:
    dtype = same_dtype(op, *types)
    return TensorType(broadcast_shape(op, *(t.shape for t in types)), out_dtype or dtype)


def same(t: TensorType, **_) -> TensorType:
    return t


def normalize_dim(op: str, dim: int, ndim: int) -> int:
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise ShapeError(f"{op}: dim {dim} is out of range for a tensor with {ndim} dims")
    return dim % size


def normalize_dims(op: str, dims, ndim: int) -> tuple[int, ...]:
    """``None`` means every dim; returns sorted non-negative dims."""
    if dims is None:
        return tuple(range(ndim))
    if isinstance(dims, int):
        dims = (dims,)
    return tuple(sorted({normalize_dim(op, d, ndim) for d in dims}))


def reduced_shape(shape, dims, keepdim: bool) -> tuple[int, ...]:
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)
