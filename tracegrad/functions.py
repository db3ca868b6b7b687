"""Module-level functions mirroring Tensor methods: ``tg.exp(x)`` is ``x.exp()``."""

from __future__ import annotations

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

__all__ = ["cat", "einsum", "stack", "tensordot", "tril", "triu", "where"]


def _method(name: str):
    def function(x, *args, **kwargs):
        return getattr(as_tensor(x), name)(*args, **kwargs)

    function.__name__ = name
    function.__doc__ = f"``tracegrad.{name}(x, ...)`` is ``x.{name}(...)``."
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


def max(x, dim=None, keepdim=False):
    return as_tensor(x).max(dim, keepdim)


def min(x, dim=None, keepdim=False):
    return as_tensor(x).min(dim, keepdim)


def add(x, y, alpha=1):
    return binary("add", x, y * alpha if alpha != 1 else y)


def sub(x, y, alpha=1):
    return binary("sub", x, y * alpha if alpha != 1 else y)


def mul(x, y):
    return binary("mul", x, y)


def div(x, y):
    return binary("div", x, y, floating=True)


def neg(x):
    return -as_tensor(x)


def maximum(x, y):
    return binary("maximum", x, y)


def minimum(x, y):
    return binary("minimum", x, y)


def matmul(x, y):
    return as_tensor(x) @ y


def mm(x, y):
    return as_tensor(x) @ y


bmm = mm


def outer(x, y):
    return as_tensor(x).unsqueeze(-1) * as_tensor(y)


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)


def allclose(x, y, rtol=1e-5, atol=1e-8) -> bool:
    return bool(np.allclose(as_tensor(x).detach().array, as_tensor(y).detach().array, rtol, atol))


def equal(x, y) -> bool:
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
