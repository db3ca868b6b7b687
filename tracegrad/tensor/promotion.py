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
    if all(type(v) is Tensor for v in values):  # the common case, on every op: one dtype
        dtype = values[0].dtype
        if all(v.dtype is dtype for v in values[1:]) and (dtype.is_floating_point or not floating):
            return list(values)
    dtype = dtypes.promote(*(_priority(v) for v in values))
    if floating and not dtype.is_floating_point:
        dtype = dtypes.DEFAULT_FLOAT
    return [to_dtype(v, dtype) for v in values]


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
