"""Data types and value types, the vocabulary every layer shares.

A ``DType`` names one of the four element types tracegrad supports; a ``TensorType`` is the
static part of a value (shape and dtype, no data). Shape/dtype rules in ``tracegrad.ops`` map
input ``TensorType``s to an output ``TensorType``, so they work on shapes alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import DTypeLike


class DType:
    """An element type. Compares equal to itself and to the NumPy dtype it stands for.

    The four are ``tg.float32`` (the default float, also ``tg.float``), ``tg.float64``
    (``tg.double``), ``tg.int64`` (``tg.long``) and ``tg.bool``.

    Examples:
        >>> tg.float64 == np.float64, tg.float32.is_floating_point
        (True, True)
    """

    def __init__(self, name: str, short: str, np_dtype: type, category: int):
        self.name = name
        self.short = short  # the IR's spelling: f32, f64, i64, b8
        self.np = np.dtype(np_dtype)
        self.category = category  # bool < integer < floating, for type promotion

    @property
    def is_floating_point(self) -> bool:
        return self.category == 2

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    def __repr__(self) -> str:
        return f"tracegrad.{self.name}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DType):
            return self is other
        try:
            return self.np == np.dtype(cast(DTypeLike, other))  # (TypeError if it names none)
        except TypeError:
            return False

    def __hash__(self) -> int:
        return hash(self.name)

    def __reduce__(self):
        return (from_name, (self.name,))


bool_ = DType("bool", "b8", np.bool_, 0)
int64 = DType("int64", "i64", np.int64, 1)
float32 = DType("float32", "f32", np.float32, 2)
float64 = DType("float64", "f64", np.float64, 2)

ALL = (bool_, int64, float32, float64)
_BY_NAME = {d.name: d for d in ALL} | {d.short: d for d in ALL}
DEFAULT_FLOAT = float32


def from_name(name: str) -> DType:
    return _BY_NAME[name]


def from_numpy(np_dtype) -> DType:
    """The tracegrad dtype for a NumPy dtype: other ints become int64, other floats float32."""
    exact = _BY_NUMPY.get(np_dtype)  # the common case, looked up on every tensor.dtype
    if exact is not None:
        return exact
    kind = np.dtype(np_dtype).kind
    if kind == "b":
        return bool_
    if kind in "iu":
        return int64
    if kind == "f":
        return float64 if np.dtype(np_dtype) == np.float64 else float32
    raise TypeError(f"tracegrad has no dtype for NumPy dtype {np.dtype(np_dtype)}")


_BY_NUMPY = {d.np: d for d in ALL}


def of_scalar(value) -> DType:
    """The dtype a Python scalar takes on its own: bool, int64 or the default float."""
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer)):
        return int64
    if isinstance(value, (float, np.floating)):
        return DEFAULT_FLOAT
    raise TypeError(f"expected a number, got {type(value).__name__}")


def requested(args, kwargs):
    """The dtype in ``to(...)``'s arguments (devices, given as strings, are ignored), or None."""
    dtype = kwargs.get("dtype")
    for arg in args:
        if not isinstance(arg, str):
            dtype = arg
    return None if dtype is None else to_dtype(dtype)


def to_dtype(dtype) -> DType:
    """Accept a tracegrad dtype, a NumPy dtype or a Python type."""
    if isinstance(dtype, DType):
        return dtype
    if dtype is float:
        return DEFAULT_FLOAT
    if dtype is int:
        return int64
    if dtype is bool:
        return bool_
    if isinstance(dtype, str) and dtype in _BY_NAME:
        return _BY_NAME[dtype]
    return from_numpy(dtype)


# Promotion follows PyTorch: the highest category wins; inside it, dimensioned tensors outrank
# 0-d tensors, which outrank Python scalars; scalars alone give the category's default dtype.
DIMENSIONED, ZERO_DIM, SCALAR = 2, 1, 0


def promote(*participants: tuple[DType, int]) -> DType:
    """Result dtype of an op on (dtype, priority) pairs, priority one of the constants above."""
    category = max(d.category for d, _ in participants)
    top = [(d, p) for d, p in participants if d.category == category]
    priority = max(p for _, p in top)
    if priority == SCALAR:
        return {0: bool_, 1: int64, 2: DEFAULT_FLOAT}[category]
    return max((d for d, p in top if p == priority), key=lambda d: d.itemsize)


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: DType

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(map(str, self.shape))}]"
