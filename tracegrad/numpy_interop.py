"""NumPy's protocols for tensors: ufuncs and array functions dispatch to tracegrad ops, so
``np.exp(t)`` or ``np.sum(t, axis=0)`` is differentiated (and, later, traced) like ``t.exp()``."""

from __future__ import annotations

import numpy as np

from tracegrad import functions as fn
from tracegrad.errors import TraceError, at_user_line
from tracegrad.tensor import Tensor, as_tensor, binary, install_numpy_protocol, is_symbolic


def _dims(axis):
    return tuple(axis) if isinstance(axis, (list, tuple)) else axis


def _dot(a, b, out=None):
    """NumPy's dot, which is not matmul for N-d operands: it contracts a's last axis with b's
    second-to-last (b's only axis when 1-d), and the result has a's other axes then b's, with
    no broadcasting. A 0-d operand makes it a product. Written as one einsum."""
    if out is not None:
        raise TypeError("np.dot on tensors: unsupported argument 'out'")
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return binary("mul", a, b)
    a, b = as_tensor(a), as_tensor(b)
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY")
    a_free = "".join(next(letters) for _ in range(a.ndim - 1))
    b_free = [next(letters) for _ in range(b.ndim - 1)]
    b_subs = "".join(b_free[:-1]) + "Z" + "".join(b_free[-1:])
    return fn.einsum(f"{a_free}Z,{b_subs}->{a_free}{''.join(b_free)}", a, b)


UFUNCS = {
    np.add: lambda x, y: binary("add", x, y),
    np.subtract: lambda x, y: binary("sub", x, y),
    np.multiply: lambda x, y: binary("mul", x, y),
    np.true_divide: lambda x, y: binary("div", x, y, floating=True),
    np.power: lambda x, y: as_tensor(x) ** y if isinstance(x, Tensor) else binary("pow", x, y),
    np.maximum: fn.maximum,
    np.minimum: fn.minimum,
    np.negative: fn.neg,
    np.positive: lambda x: x,
    np.exp: fn.exp,
    np.log: fn.log,
    np.log1p: fn.log1p,
    np.sqrt: fn.sqrt,
    np.tanh: fn.tanh,
    np.sin: fn.sin,
    np.cos: fn.cos,
    np.abs: fn.abs,
    np.sign: fn.sign,
    np.square: fn.square,
    np.matmul: fn.matmul,
    np.equal: lambda x, y: binary("eq", x, y),
    np.not_equal: lambda x, y: binary("ne", x, y),
    np.less: lambda x, y: binary("lt", x, y),
    np.less_equal: lambda x, y: binary("le", x, y),
    np.greater: lambda x, y: binary("gt", x, y),
    np.greater_equal: lambda x, y: binary("ge", x, y),
    np.logical_and: lambda x, y: as_tensor(x) & as_tensor(y),
    np.logical_or: lambda x, y: as_tensor(x) | as_tensor(y),
    np.logical_not: lambda x: ~as_tensor(x),
}

FUNCTIONS = {
    np.sum: lambda a, axis=None, keepdims=False: as_tensor(a).sum(_dims(axis), keepdims),
    np.mean: lambda a, axis=None, keepdims=False: as_tensor(a).mean(_dims(axis), keepdims),
    np.var: lambda a, axis=None, ddof=0, keepdims=False: as_tensor(a).var(
        _dims(axis), keepdim=keepdims, correction=ddof
    ),
    np.std: lambda a, axis=None, ddof=0, keepdims=False: as_tensor(a).std(
        _dims(axis), keepdim=keepdims, correction=ddof
    ),
    np.max: lambda a, axis=None, keepdims=False: as_tensor(a).amax(_dims(axis), keepdims),
    np.amax: lambda a, axis=None, keepdims=False: as_tensor(a).amax(_dims(axis), keepdims),
    np.min: lambda a, axis=None, keepdims=False: as_tensor(a).amin(_dims(axis), keepdims),
    np.amin: lambda a, axis=None, keepdims=False: as_tensor(a).amin(_dims(axis), keepdims),
    np.argmax: lambda a, axis=None, keepdims=False: as_tensor(a).argmax(axis, keepdims),
    np.argmin: lambda a, axis=None, keepdims=False: as_tensor(a).argmin(axis, keepdims),
    np.reshape: lambda a, shape, **_: as_tensor(a).reshape(shape),
    np.transpose: lambda a, axes=None: as_tensor(a).permute(axes) if axes else as_tensor(a).T,
    np.expand_dims: lambda a, axis: as_tensor(a).unsqueeze(axis),
    np.squeeze: lambda a, axis=None: as_tensor(a).squeeze(axis),
    np.broadcast_to: lambda a, shape: as_tensor(a).expand(shape),
    np.concatenate: lambda arrays, axis=0: fn.cat(arrays, axis),
    np.stack: lambda arrays, axis=0: fn.stack(arrays, axis),
    np.where: lambda c, x, y: fn.where(c, x, y),
    np.matmul: fn.matmul,
    np.dot: _dot,
    np.einsum: lambda equation, *operands: fn.einsum(equation, *operands),
    np.clip: lambda a, a_min=None, a_max=None: as_tensor(a).clamp(a_min, a_max),
    np.exp: fn.exp,
    np.log: fn.log,
    np.tanh: fn.tanh,
    np.sqrt: fn.sqrt,
    np.abs: fn.abs,
    np.shape: lambda a: tuple(as_tensor(a).shape),
    np.ndim: lambda a: as_tensor(a).ndim,
    np.size: lambda a: as_tensor(a).numel(),
}


def _unsupported(args, message: str):
    """TypeError eagerly; while tracing, a TraceError naming the user's line."""
    traced = any(isinstance(a, Tensor) and is_symbolic(a) for a in args)
    return TraceError(at_user_line(message)) if traced else TypeError(message)


def array_ufunc(ufunc, method, inputs, kwargs):
    if method != "__call__" or kwargs.get("out") is not None or ufunc not in UFUNCS:
        raise _unsupported(
            inputs,
            f"tracegrad does not support NumPy ufunc {ufunc.__name__!r}"
            f"{'' if method == '__call__' else f' (method {method!r})'} on tensors; "
            "use the tracegrad op, or convert with tensor.detach().numpy()",
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "out"}
    if kwargs:
        raise TypeError(
            f"NumPy ufunc {ufunc.__name__!r} on tensors: unsupported arguments {sorted(kwargs)}"
        )
    return UFUNCS[ufunc](*inputs)


def array_function(func, args, kwargs):
    if func not in FUNCTIONS:
        raise _unsupported(
            args,
            f"tracegrad does not support NumPy function 'numpy.{func.__name__}' on tensors; "
            "use the tracegrad op, or convert with tensor.detach().numpy()",
        )
    return FUNCTIONS[func](*args, **kwargs)


install_numpy_protocol(array_ufunc, array_function)
