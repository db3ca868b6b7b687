"""Tensor factories: zeros, ones, full, arange, randn..., PyTorch's names and defaults."""

from __future__ import annotations

import numpy as np

from tracegrad import devices, dtypes
from tracegrad.tensor import Tensor, call, shape_args, tensor, wrap


def _make(array, dtype, requires_grad, device) -> Tensor:
    devices.check(device)
    dtype = dtypes.to_dtype(dtype) if dtype is not None else dtypes.DEFAULT_FLOAT
    return wrap(np.asarray(array, dtype.np), requires_grad=requires_grad)


def _sizes(size, kwargs) -> tuple[int, ...]:
    """The shape given as ``f(2, 3)``, ``f((2, 3))`` or, as PyTorch also takes, ``f(size=...)``
    (a keyword that cannot share its name with ``*size``, so it comes in ``kwargs``)."""
    unknown = set(kwargs) - {"size"}
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    if "size" in kwargs:
        if size:
            raise TypeError("pass the size either positionally or as size=, not both")
        size = (kwargs["size"],)
    return shape_args(size)


def zeros(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    return _make(np.zeros(_sizes(size, kwargs)), dtype, requires_grad, device)


def ones(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    return _make(np.ones(_sizes(size, kwargs)), dtype, requires_grad, device)


def empty(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    """Uninitialized in PyTorch; zeros here."""
    return zeros(*size, dtype=dtype, requires_grad=requires_grad, device=device, **kwargs)


def full(size, fill_value, dtype=None, requires_grad=False, device=None) -> Tensor:
    dtype = dtype if dtype is not None else dtypes.of_scalar(fill_value)
    return _make(np.full(shape_args((size,)), fill_value), dtype, requires_grad, device)


# PyTorch's memory formats: NumPy arrays made here are always C-contiguous, so the
# ``memory_format=`` of the ``*_like`` factories is accepted and has nothing to choose.
preserve_format = "preserve_format"
contiguous_format = "contiguous_format"
legacy_contiguous_format = "legacy_contiguous_format"


def _like(x: Tensor, dtype):
    return x.shape, dtype if dtype is not None else x.dtype


def zeros_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    shape, dtype = _like(x, dtype)
    return zeros(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def ones_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    shape, dtype = _like(x, dtype)
    return ones(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def full_like(
    x, fill_value, dtype=None, requires_grad=False, device=None, memory_format=None
) -> Tensor:
    shape, dtype = _like(x, dtype)
    return full(shape, fill_value, dtype=dtype, requires_grad=requires_grad, device=device)


def empty_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    return zeros_like(x, dtype, requires_grad, device)


def arange(start, end=None, step=1, dtype=None, requires_grad=False, device=None) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        integral = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = dtypes.int64 if integral else dtypes.DEFAULT_FLOAT
    return _make(np.arange(start, end, step), dtype, requires_grad, device)


def linspace(start, end, steps, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _make(np.linspace(start, end, steps), dtype, requires_grad, device)


def eye(n, m=None, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _make(np.eye(n, m), dtype, requires_grad, device)


def _draw(op: str, shape, dtype, device, requires_grad=False, **args) -> Tensor:
    """A random draw as an op: traced code draws anew on every run, from the same stream."""
    devices.check(device)
    dtype = dtypes.to_dtype(dtype) if dtype is not None else dtypes.DEFAULT_FLOAT
    out = call(op, shape=shape, dtype=dtype.name, **args)
    return out.requires_grad_() if requires_grad else out


def randn(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    return _draw("random_normal", _sizes(size, kwargs), dtype, device, requires_grad)


def rand(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    return _draw("random_uniform", _sizes(size, kwargs), dtype, device, requires_grad)


def randint(low, high=None, size=(), dtype=None, requires_grad=False, device=None) -> Tensor:
    if high is None:
        low, high = 0, low
    shape = shape_args((size,))
    dtype = dtype or dtypes.int64
    return _draw("random_integers", shape, dtype, device, low=int(low), high=int(high))


def randperm(n, dtype=None, device=None) -> Tensor:
    return _draw("random_permutation", (int(n),), dtype or dtypes.int64, device)


def randn_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    shape, dtype = _like(x, dtype)
    return randn(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def rand_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    shape, dtype = _like(x, dtype)
    return rand(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def FloatTensor(data) -> Tensor:  # noqa: N802  (PyTorch's name)
    return tensor(data, dtype=dtypes.float32)


def DoubleTensor(data) -> Tensor:  # noqa: N802
    return tensor(data, dtype=dtypes.float64)


def LongTensor(data) -> Tensor:  # noqa: N802
    return tensor(data, dtype=dtypes.int64)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """PyTorch's ``torch.as_tensor``: a tensor as it is and a NumPy array of a tensor dtype
    are not copied (``as_tensor(obs, dtype=tg.float32, device=device)`` in an RL loop)."""
    devices.check(device)
    if isinstance(data, Tensor):
        return data if dtype is None else data.to(dtype)
    if isinstance(data, np.ndarray) and dtype is None:
        return from_numpy(data)
    return tensor(data, dtype=dtype)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (other dtypes are converted, so copied)."""
    dtype = dtypes.from_numpy(array.dtype)
    return wrap(array if array.dtype == dtype.np else array.astype(dtype.np))
