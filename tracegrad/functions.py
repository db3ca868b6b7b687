"""Module-level functions mirroring Tensor methods: ``tg.exp(x)`` is ``x.exp()``."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import numpy as np

from tracegrad.tensor import (
    Tensor,
    as_tensor,
    binary,
    cat,
    einsum,
    stack,
    tensordot,
    tril,
    triu,
    where,
)
from tracegrad.tensor.sampling import multinomial

__all__ = ["cat", "einsum", "multinomial", "stack", "tensordot", "tril", "triu", "where"]


def _method(name: str):
    def function(x, *args, **kwargs):
        return getattr(as_tensor(x), name)(*args, **kwargs)

    function.__name__ = name
    method = inspect.getdoc(getattr(Tensor, name)) or ""
    function.__doc__ = f"``tracegrad.{name}(x, ...)`` is ``x.{name}(...)``:\n\n{method}"
    return function


_METHODS = [
    "exp",
    "log",
    "log1p",
    "sqrt",
    "rsqrt",
    "tanh",
    "sigmoid",
    "sin",
    "cos",
    "erf",
    "relu",
    "abs",
    "sign",
    "square",
    "clamp",
    "clip",
    "softmax",
    "log_softmax",
    "sum",
    "mean",
    "var",
    "std",
    "amax",
    "amin",
    "argmax",
    "any",
    "all",
    "argmin",
    "logsumexp",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "unsqueeze",
    "squeeze",
    "masked_fill",
    "pow",
    "t",
    "numel",
    "split",
    "chunk",
    "cumsum",
    "cumprod",
    "sort",
    "argsort",
    "topk",
    "gather",
    "scatter",
    "scatter_add",
    "masked_scatter",
    "tan",
    "asin",
    "arcsin",
    "acos",
    "arccos",
    "atan",
    "arctan",
    "sinh",
    "cosh",
    "asinh",
    "arcsinh",
    "acosh",
    "arccosh",
    "atanh",
    "arctanh",
    "expm1",
    "exp2",
    "log2",
    "log10",
    "floor",
    "ceil",
    "atan2",
    "arctan2",
    "remainder",
    "reciprocal",
    "logaddexp",
    "logaddexp2",
    "hypot",
    "fmax",
    "fmin",
    "deg2rad",
    "rad2deg",
    "sinc",
    "prod",
    "diagonal",
    "diag",
    "trace",
    "kron",
    "inner",
    "diff",
    "movedim",
    "moveaxis",
    "swapaxes",
    "swapdims",
    "fliplr",
    "flipud",
    "rot90",
    "nan_to_num",
    "ravel",
]
for _name in _METHODS:
    globals()[_name] = _method(_name)
    __all__.append(_name)

if TYPE_CHECKING:  # the functions made above as type checkers see them: the method, unbound
    # (listed again for ``from tracegrad.functions import *``: type checkers cannot run the loop)
    __all__ += [
        "exp",
        "log",
        "log1p",
        "sqrt",
        "rsqrt",
        "tanh",
        "sigmoid",
        "sin",
        "cos",
        "erf",
        "relu",
        "abs",
        "sign",
        "square",
        "clamp",
        "clip",
        "softmax",
        "log_softmax",
        "sum",
        "mean",
        "var",
        "std",
        "amax",
        "amin",
        "argmax",
        "any",
        "all",
        "argmin",
        "logsumexp",
        "reshape",
        "flatten",
        "permute",
        "transpose",
        "unsqueeze",
        "squeeze",
        "masked_fill",
        "pow",
        "t",
        "numel",
        "split",
        "chunk",
        "cumsum",
        "cumprod",
        "sort",
        "argsort",
        "topk",
        "gather",
        "scatter",
        "scatter_add",
        "masked_scatter",
        "tan",
        "asin",
        "arcsin",
        "acos",
        "arccos",
        "atan",
        "arctan",
        "sinh",
        "cosh",
        "asinh",
        "arcsinh",
        "acosh",
        "arccosh",
        "atanh",
        "arctanh",
        "expm1",
        "exp2",
        "log2",
        "log10",
        "floor",
        "ceil",
        "atan2",
        "arctan2",
        "remainder",
        "reciprocal",
        "logaddexp",
        "logaddexp2",
        "hypot",
        "fmax",
        "fmin",
        "deg2rad",
        "rad2deg",
        "sinc",
        "prod",
        "diagonal",
        "diag",
        "trace",
        "kron",
        "inner",
        "diff",
        "movedim",
        "moveaxis",
        "swapaxes",
        "swapdims",
        "fliplr",
        "flipud",
        "rot90",
        "nan_to_num",
        "ravel",
    ]
    exp = Tensor.exp
    log = Tensor.log
    log1p = Tensor.log1p
    sqrt = Tensor.sqrt
    rsqrt = Tensor.rsqrt
    tanh = Tensor.tanh
    sigmoid = Tensor.sigmoid
    sin = Tensor.sin
    cos = Tensor.cos
    erf = Tensor.erf
    relu = Tensor.relu
    abs = Tensor.abs
    sign = Tensor.sign
    square = Tensor.square
    clamp = Tensor.clamp
    clip = Tensor.clip
    softmax = Tensor.softmax
    log_softmax = Tensor.log_softmax
    sum = Tensor.sum
    mean = Tensor.mean
    var = Tensor.var
    std = Tensor.std
    amax = Tensor.amax
    amin = Tensor.amin
    argmax = Tensor.argmax
    any = Tensor.any
    all = Tensor.all
    argmin = Tensor.argmin
    logsumexp = Tensor.logsumexp
    reshape = Tensor.reshape
    flatten = Tensor.flatten
    permute = Tensor.permute
    transpose = Tensor.transpose
    unsqueeze = Tensor.unsqueeze
    squeeze = Tensor.squeeze
    masked_fill = Tensor.masked_fill
    pow = Tensor.pow
    t = Tensor.t
    numel = Tensor.numel
    split = Tensor.split
    chunk = Tensor.chunk
    cumsum = Tensor.cumsum
    cumprod = Tensor.cumprod
    sort = Tensor.sort
    argsort = Tensor.argsort
    topk = Tensor.topk
    gather = Tensor.gather
    scatter = Tensor.scatter
    scatter_add = Tensor.scatter_add
    masked_scatter = Tensor.masked_scatter
    tan = Tensor.tan
    asin = Tensor.asin
    arcsin = Tensor.arcsin
    acos = Tensor.acos
    arccos = Tensor.arccos
    atan = Tensor.atan
    arctan = Tensor.arctan
    sinh = Tensor.sinh
    cosh = Tensor.cosh
    asinh = Tensor.asinh
    arcsinh = Tensor.arcsinh
    acosh = Tensor.acosh
    arccosh = Tensor.arccosh
    atanh = Tensor.atanh
    arctanh = Tensor.arctanh
    expm1 = Tensor.expm1
    exp2 = Tensor.exp2
    log2 = Tensor.log2
    log10 = Tensor.log10
    floor = Tensor.floor
    ceil = Tensor.ceil
    atan2 = Tensor.atan2
    arctan2 = Tensor.arctan2
    remainder = Tensor.remainder
    reciprocal = Tensor.reciprocal
    logaddexp = Tensor.logaddexp
    logaddexp2 = Tensor.logaddexp2
    hypot = Tensor.hypot
    fmax = Tensor.fmax
    fmin = Tensor.fmin
    deg2rad = Tensor.deg2rad
    rad2deg = Tensor.rad2deg
    sinc = Tensor.sinc
    prod = Tensor.prod
    diagonal = Tensor.diagonal
    diag = Tensor.diag
    trace = Tensor.trace
    kron = Tensor.kron
    inner = Tensor.inner
    diff = Tensor.diff
    movedim = Tensor.movedim
    moveaxis = Tensor.moveaxis
    swapaxes = Tensor.swapaxes
    swapdims = Tensor.swapdims
    fliplr = Tensor.fliplr
    flipud = Tensor.flipud
    rot90 = Tensor.rot90
    nan_to_num = Tensor.nan_to_num
    ravel = Tensor.ravel


def max(x, dim=None, keepdim=False):
    """The maximum of ``x``, or ``(values, indices)`` along ``dim``: ``x.max(dim, keepdim)``.

    Examples:
        >>> tg.max(tg.tensor([1.0, 3.0]))
        tensor(3.)
    """
    return as_tensor(x).max(dim, keepdim)


def min(x, dim=None, keepdim=False):
    """The minimum of ``x``, or ``(values, indices)`` along ``dim``: ``x.min(dim, keepdim)``.

    Examples:
        >>> tg.min(tg.tensor([1.0, 3.0]))
        tensor(1.)
    """
    return as_tensor(x).min(dim, keepdim)


def add(x, y, alpha=1):
    """``x + alpha * y`` elementwise, broadcast and promoted as in PyTorch.

    Args:
        x: a tensor or a number.
        y: a tensor or a number, broadcast with ``x``.
        alpha: a scale of ``y``.

    Examples:
        >>> tg.add(tg.ones(2), tg.ones(2), alpha=2)
        tensor([3., 3.])
    """
    return binary("add", x, y * alpha if alpha != 1 else y)


def sub(x, y, alpha=1):
    """``x - alpha * y`` elementwise, broadcast and promoted as in PyTorch.

    Args:
        x: a tensor or a number.
        y: a tensor or a number, broadcast with ``x``.
        alpha: a scale of ``y``.

    Examples:
        >>> tg.sub(tg.ones(2), 1)
        tensor([0., 0.])
    """
    return binary("sub", x, y * alpha if alpha != 1 else y)


def mul(x, y):
    """``x * y`` elementwise, broadcast and promoted as in PyTorch.

    Args:
        x: a tensor or a number.
        y: a tensor or a number, broadcast with ``x``.

    Examples:
        >>> tg.mul(tg.tensor([1, 2]), 3)
        tensor([3, 6])
    """
    return binary("mul", x, y)


def div(x, y):
    """``x / y`` elementwise, always floating (true division).

    Args:
        x: a tensor or a number.
        y: a tensor or a number, broadcast with ``x``.

    Examples:
        >>> tg.div(tg.tensor([1, 2]), 2)
        tensor([0.5, 1. ])
    """
    return binary("div", x, y, floating=True)


def neg(x):
    """``-x`` elementwise.

    Examples:
        >>> tg.neg(tg.tensor([1.0]))
        tensor([-1.])
    """
    return -as_tensor(x)


def maximum(x, y):
    """The larger of ``x`` and ``y`` elementwise (ties share the gradient).

    Args:
        x: a tensor or a number.
        y: a tensor or a number, broadcast with ``x``.

    Examples:
        >>> tg.maximum(tg.tensor([1.0, 5.0]), tg.tensor([3.0, 2.0]))
        tensor([3., 5.])
    """
    return binary("maximum", x, y)


def minimum(x, y):
    """The smaller of ``x`` and ``y`` elementwise.

    Args:
        x: a tensor or a number.
        y: a tensor or a number, broadcast with ``x``.

    Examples:
        >>> tg.minimum(tg.tensor([1.0, 5.0]), tg.tensor([3.0, 2.0]))
        tensor([1., 2.])
    """
    return binary("minimum", x, y)


def matmul(x, y):
    """The matrix product ``x @ y`` with NumPy's rules: 1-d operands are vectors, batch
    dimensions broadcast.

    Raises:
        ShapeError: if the inner sizes differ.

    Examples:
        >>> tg.matmul(tg.ones(2, 3), tg.ones(3)).shape
        tracegrad.Size([2])
    """
    return as_tensor(x) @ y


def mm(x, y):
    """The matrix product of two matrices (``x @ y``); ``tg.bmm`` is the same for batches.

    Examples:
        >>> tg.mm(tg.ones(2, 3), tg.ones(3, 4)).shape
        tracegrad.Size([2, 4])
    """
    return as_tensor(x) @ y


bmm = mm


def outer(x, y):
    """The outer product of two vectors: ``x[i] * y[j]``.

    Examples:
        >>> tg.outer(tg.tensor([1, 2]), tg.tensor([1, 10]))
        tensor([[ 1, 10],
                [ 2, 20]])
    """
    return as_tensor(x).unsqueeze(-1) * as_tensor(y)


def is_tensor(x) -> bool:
    """Whether ``x`` is a tracegrad tensor.

    Examples:
        >>> tg.is_tensor(tg.zeros(1)), tg.is_tensor([0.0])
        (True, False)
    """
    return isinstance(x, Tensor)


def allclose(x, y, rtol=1e-5, atol=1e-8) -> bool:
    """Whether ``|x - y| <= atol + rtol * |y|`` everywhere (NumPy's ``allclose``).

    Args:
        x: a tensor.
        y: a tensor broadcast with ``x``.
        rtol: the relative tolerance.
        atol: the absolute tolerance.

    Examples:
        >>> tg.allclose(tg.tensor([1.0]), tg.tensor([1.0 + 1e-7]))
        True
    """
    return bool(np.allclose(as_tensor(x).detach().array, as_tensor(y).detach().array, rtol, atol))


def equal(x, y) -> bool:
    """Whether ``x`` and ``y`` have the same shape and the same elements.

    Examples:
        >>> tg.equal(tg.tensor([1, 2]), tg.tensor([1, 2]))
        True
    """
    x, y = as_tensor(x), as_tensor(y)
    return tuple(x.shape) == tuple(y.shape) and bool((x == y).detach().array.all())


__all__ += [
    "max",
    "min",
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "maximum",
    "minimum",
    "matmul",
    "mm",
    "bmm",
    "outer",
    "is_tensor",
]
__all__ += ["allclose", "equal"]
