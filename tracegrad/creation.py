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
    """A tensor of zeros.

    Args:
        *size: the shape, as ints or one tuple (or ``size=`` as a keyword).
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.zeros(2, 3).shape
        tracegrad.Size([2, 3])
    """
    return _make(np.zeros(_sizes(size, kwargs)), dtype, requires_grad, device)


def ones(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    """A tensor of ones.

    Args:
        *size: the shape, as ints or one tuple (or ``size=`` as a keyword).
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.ones(2)
        tensor([1., 1.])
    """
    return _make(np.ones(_sizes(size, kwargs)), dtype, requires_grad, device)


def empty(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    """A tensor whose contents may be anything (here zeros), as ``torch.empty``.

    Args:
        *size: the shape, as ints or one tuple (or ``size=`` as a keyword).
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.empty(2).shape
        tracegrad.Size([2])
    """
    return zeros(*size, dtype=dtype, requires_grad=requires_grad, device=device, **kwargs)


def full(size, fill_value, dtype=None, requires_grad=False, device=None) -> Tensor:
    """A tensor filled with ``fill_value`` (its dtype by default: int64 for an int).

    Args:
        size: the shape, an int or a tuple.
        fill_value: the number to fill with.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.full((2,), 7)
        tensor([7, 7])
    """
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
    """Zeros of ``x``'s shape and dtype.

    Args:
        x: the tensor whose shape (and, by default, dtype) to take.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.zeros_like(tg.ones(2, dtype=tg.float64))
        tensor([0., 0.], dtype=tracegrad.float64)
    """
    shape, dtype = _like(x, dtype)
    return zeros(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def ones_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    """Ones of ``x``'s shape and dtype.

    Args:
        x: the tensor whose shape (and, by default, dtype) to take.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.ones_like(tg.tensor([1, 2]))
        tensor([1, 1])
    """
    shape, dtype = _like(x, dtype)
    return ones(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def full_like(
    x, fill_value, dtype=None, requires_grad=False, device=None, memory_format=None
) -> Tensor:
    """``fill_value`` in ``x``'s shape and dtype.

    Args:
        x: the tensor whose shape (and, by default, dtype) to take.
        fill_value: the number to fill with.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.full_like(tg.zeros(2), 0.5)
        tensor([0.5, 0.5])
    """
    shape, dtype = _like(x, dtype)
    return full(shape, fill_value, dtype=dtype, requires_grad=requires_grad, device=device)


def empty_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    """A tensor of ``x``'s shape and dtype whose contents may be anything (zeros).

    Args:
        x: the tensor whose shape (and, by default, dtype) to take.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.empty_like(tg.zeros(3)).shape
        tracegrad.Size([3])
    """
    return zeros_like(x, dtype, requires_grad, device)


def arange(start, end=None, step=1, dtype=None, requires_grad=False, device=None) -> Tensor:
    """The numbers ``start, start + step, ...`` below ``end``; int64 when all are ints.

    Args:
        start: the first number (or ``end``, when ``end`` is None).
        end: the bound, not included.
        step: the spacing.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.arange(5)
        tensor([0, 1, 2, 3, 4])
    """
    if end is None:
        start, end = 0, start
    if dtype is None:
        integral = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = dtypes.int64 if integral else dtypes.DEFAULT_FLOAT
    return _make(np.arange(start, end, step), dtype, requires_grad, device)


def linspace(start, end, steps, dtype=None, requires_grad=False, device=None) -> Tensor:
    """``steps`` evenly spaced numbers from ``start`` to ``end``, both included.

    Args:
        start: the first number.
        end: the last number.
        steps: how many.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.linspace(0, 1, 3)
        tensor([0. , 0.5, 1. ])
    """
    return _make(np.linspace(start, end, steps), dtype, requires_grad, device)


def eye(n, m=None, dtype=None, requires_grad=False, device=None) -> Tensor:
    """A 2-d tensor with ones on the diagonal.

    Args:
        n: the number of rows.
        m: the number of columns (default ``n``).
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.eye(2)
        tensor([[1., 0.],
                [0., 1.]])
    """
    return _make(np.eye(n, m), dtype, requires_grad, device)


def _draw(op: str, shape, dtype, device, requires_grad=False, **args) -> Tensor:
    """A random draw as an op: traced code draws anew on every run, from the same stream."""
    devices.check(device)
    dtype = dtypes.to_dtype(dtype) if dtype is not None else dtypes.DEFAULT_FLOAT
    out = call(op, shape=shape, dtype=dtype.name, **args)
    return out.requires_grad_() if requires_grad else out


def randn(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    """Draws from the standard normal distribution, from tracegrad's generator
    (``tg.manual_seed``); compiled code draws anew on every call.

    Args:
        *size: the shape, as ints or one tuple (or ``size=`` as a keyword).
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.randn(2, 3).shape
        tracegrad.Size([2, 3])
    """
    return _draw("random_normal", _sizes(size, kwargs), dtype, device, requires_grad)


def rand(*size, dtype=None, requires_grad=False, device=None, **kwargs) -> Tensor:
    """Draws from the uniform distribution on [0, 1), from tracegrad's generator.

    Args:
        *size: the shape, as ints or one tuple (or ``size=`` as a keyword).
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> x = tg.rand(100)
        >>> x.min().item() >= 0 and x.max().item() < 1
        True
    """
    return _draw("random_uniform", _sizes(size, kwargs), dtype, device, requires_grad)


def randint(low, high=None, size=(), dtype=None, requires_grad=False, device=None) -> Tensor:
    """Integers drawn uniformly from ``[low, high)``, int64 by default.

    Args:
        low: the lowest integer (or ``high``, when ``high`` is None).
        high: the bound, not included.
        size: the shape, a tuple.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.randint(0, 10, (3,)).dtype
        tracegrad.int64
    """
    if high is None:
        low, high = 0, low
    shape = shape_args((size,))
    dtype = dtype or dtypes.int64
    return _draw("random_integers", shape, dtype, device, low=int(low), high=int(high))


def randperm(n, dtype=None, device=None) -> Tensor:
    """A random permutation of ``0 .. n - 1`` (int64), from tracegrad's generator.

    Args:
        n: the number of integers.
        dtype: the dtype (default int64).
        device: None or "cpu".

    Examples:
        >>> sorted(tg.randperm(4).tolist())
        [0, 1, 2, 3]
    """
    return _draw("random_permutation", (int(n),), dtype or dtypes.int64, device)


def randn_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    """Standard normal draws in ``x``'s shape and dtype.

    Args:
        x: the tensor whose shape (and, by default, dtype) to take.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.randn_like(tg.zeros(2, 2)).shape
        tracegrad.Size([2, 2])
    """
    shape, dtype = _like(x, dtype)
    return randn(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def rand_like(x, dtype=None, requires_grad=False, device=None, memory_format=None) -> Tensor:
    """Uniform draws on [0, 1) in ``x``'s shape and dtype.

    Args:
        x: the tensor whose shape (and, by default, dtype) to take.
        dtype: the dtype (default float32).
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Raises:
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.rand_like(tg.zeros(3)).shape
        tracegrad.Size([3])
    """
    shape, dtype = _like(x, dtype)
    return rand(shape, dtype=dtype, requires_grad=requires_grad, device=device)


def FloatTensor(data) -> Tensor:  # noqa: N802  (PyTorch's name)
    """A float32 tensor of ``data`` (PyTorch's legacy constructor).

    Examples:
        >>> tg.FloatTensor([1, 2])
        tensor([1., 2.])
    """
    return tensor(data, dtype=dtypes.float32)


def DoubleTensor(data) -> Tensor:  # noqa: N802
    """A float64 tensor of ``data`` (PyTorch's legacy constructor).

    Examples:
        >>> tg.DoubleTensor([1]).dtype
        tracegrad.float64
    """
    return tensor(data, dtype=dtypes.float64)


def LongTensor(data) -> Tensor:  # noqa: N802
    """An int64 tensor of ``data`` (PyTorch's legacy constructor).

    Examples:
        >>> tg.LongTensor([1.0, 2.0])
        tensor([1, 2])
    """
    return tensor(data, dtype=dtypes.int64)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """PyTorch's ``torch.as_tensor``: a tensor as it is and a NumPy array of a tensor dtype
    are not copied (``as_tensor(obs, dtype=tg.float32, device=device)`` in an RL loop).

    Examples:
        >>> array = np.zeros(2, dtype=np.float32)
        >>> t = tg.as_tensor(array)
        >>> array[0] = 5
        >>> t
        tensor([5., 0.])
    """
    devices.check(device)
    if isinstance(data, Tensor):
        return data if dtype is None else data.to(dtype)
    if isinstance(data, np.ndarray) and dtype is None:
        return from_numpy(data)
    return tensor(data, dtype=dtype)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (other dtypes are converted, so copied).

    Examples:
        >>> tg.from_numpy(np.arange(3)).dtype
        tracegrad.int64
    """
    dtype = dtypes.from_numpy(array.dtype)
    return wrap(array if array.dtype == dtype.np else array.astype(dtype.np))
