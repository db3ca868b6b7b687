"""Type promotion of operands, PyTorch's way: one dtype for all operands of an op, Python
scalars and 0-d tensors staying weak (the rules themselves are ``tracegrad.dtypes.promote``)."""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import DType
from tracegrad.ops import registry
from tracegrad.tensor.core import Tensor, wrap


def _priority(value) -> tuple[DType, int]:
    if isinstance(value, Tensor):
        return value.dtype, dtypes.DIMENSIONED if value.ndim else dtypes.ZERO_DIM
    if isinstance(value, np.ndarray):
        return dtypes.from_numpy(value.dtype), dtypes.DIMENSIONED
    return dtypes.of_scalar(value), dtypes.SCALAR


def promote_operands(*values, floating=False) -> list[Tensor]:
    """Apply PyTorch's type promotion: one dtype for all operands, scalars staying weak."""
    dtype = _shared_dtype(values)  # the common case, on every op: the tensors' one dtype
    if dtype is None:
        dtype = dtypes.promote(*(_priority(v) for v in values))
    if floating and not dtype.is_floating_point:
        dtype = dtypes.DEFAULT_FLOAT
    wanted = dtype.np
    return [
        v if type(v) is Tensor and v.array.dtype == wanted else to_dtype(v, dtype) for v in values
    ]


# The category (dtypes.DType.category) of a Python scalar's type
_SCALAR_CATEGORY = {bool: 0, int: 1, float: 2}


def _shared_dtype(values) -> DType | None:
    """The dtype of the tensors among ``values`` when they all have it and the other values
    are Python scalars of its category or a lower one (which take it); else None."""
    array_dtype = None
    for v in values:
        if isinstance(v, Tensor):
            if array_dtype is None:
                array_dtype = v.array.dtype
            elif v.array.dtype != array_dtype:
                return None
    if array_dtype is None:
        return None
    dtype = dtypes.from_numpy(array_dtype)
    for v in values:
        if not isinstance(v, Tensor) and _SCALAR_CATEGORY.get(type(v), 3) > dtype.category:
            return None
    return dtype


def to_dtype(value, dtype: DType) -> Tensor:
    """``value`` (a tensor or a Python/NumPy number) as a tensor of ``dtype``."""
    if isinstance(value, Tensor):
        return value if value.dtype == dtype else registry.call("cast", value, dtype=dtype.name)
    return wrap(np.asarray(value, dtype.np))


def binary(name: str, x, y, floating=False) -> Tensor:
    """Op ``name`` on ``x`` and ``y`` promoted to one dtype (a float one if ``floating``)."""
    return registry.call(name, *promote_operands(x, y, floating=floating))


def float_unary(name: str, x: Tensor, **attrs) -> Tensor:
    """Op ``name`` on ``x``, made the default float first if it is not floating point."""
    if not x.dtype.is_floating_point:
        x = registry.call("cast", x, dtype=dtypes.DEFAULT_FLOAT.name)
    return registry.call(name, x, **attrs)
