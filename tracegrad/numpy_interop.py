"""NumPy's protocols for tensors: ufuncs and array functions dispatch to tracegrad ops, so
``np.exp(t)`` or ``np.sum(t, axis=0)`` is differentiated (and traced) like ``t.exp()``.

``UFUNCS`` and ``FUNCTIONS`` map NumPy's callables to tensor code with NumPy's signatures
(``axis``, ``keepdims``, NumPy's defaults); each returns tensors, differentiable where
NumPy's function is. A NumPy function missing from them raises a TypeError naming it.

One difference stays: ``tensor.size`` is PyTorch's method (``t.size()`` is the shape,
``t.size(0)`` one length), not NumPy's attribute (the element count): ``np.size(t)`` and
``t.numel()`` give the count.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from tracegrad import dtypes, linalg
from tracegrad import functions as fn
from tracegrad.errors import ShapeError, TraceError, at_user_line
from tracegrad.tensor import (
    Tensor,
    as_tensor,
    binary,
    install_numpy_protocol,
    is_symbolic,
    promote_operands,
    tensordot,
    wrap,
)


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


def _method(name: str):
    """``x.<name>(*rest)``, ``x`` made a tensor (NumPy passes arrays and numbers as they are)."""
    return lambda x, *rest: getattr(as_tensor(x), name)(*rest)


UFUNCS.update(
    {
        np.arcsin: _method("asin"),
        np.arccos: _method("acos"),
        np.arctan: _method("atan"),
        np.arcsinh: _method("asinh"),
        np.arccosh: _method("acosh"),
        np.arctanh: _method("atanh"),
        np.sinh: _method("sinh"),
        np.cosh: _method("cosh"),
        np.tan: _method("tan"),
        np.expm1: _method("expm1"),
        np.exp2: _method("exp2"),
        np.log2: _method("log2"),
        np.log10: _method("log10"),
        np.floor: _method("floor"),
        np.ceil: _method("ceil"),
        np.fabs: fn.abs,
        np.reciprocal: _method("reciprocal"),
        np.deg2rad: _method("deg2rad"),
        np.radians: _method("deg2rad"),
        np.rad2deg: _method("rad2deg"),
        np.degrees: _method("rad2deg"),
        np.arctan2: lambda x, y: binary("atan2", x, y, floating=True),
        np.remainder: lambda x, y: binary("remainder", x, y),
        np.logaddexp: lambda x, y: fn.logaddexp(x, y),
        np.logaddexp2: lambda x, y: fn.logaddexp2(x, y),
        np.hypot: lambda x, y: fn.hypot(x, y),
        np.fmax: lambda x, y: fn.fmax(x, y),
        np.fmin: lambda x, y: fn.fmin(x, y),
    }
)

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


# --- NumPy's functions with NumPy's signatures, written in tensor methods -----------------


def _dtype(dtype):
    return None if dtype is None else dtypes.from_numpy(np.dtype(dtype))


def _flat_unless(a, axis):
    """(tensor, axis): NumPy's axis=None means the flattened array."""
    a = as_tensor(a)
    return (a.reshape(-1), 0) if axis is None else (a, axis)


def _scan(name):
    def scan(a, axis=None, dtype=None):
        a, axis = _flat_unless(a, axis)
        return getattr(a, name)(axis, dtype=_dtype(dtype))

    return scan


def _prod(a, axis=None, dtype=None, keepdims=False):
    a = as_tensor(a).to(_dtype(dtype)) if dtype is not None else as_tensor(a)
    if axis is None and not keepdims:
        return a.prod()
    axes = range(a.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
    for d in sorted((d % a.ndim for d in axes), reverse=True):
        a = a.prod(d, keepdim=keepdims)
    return a


def _sort(name):
    def sort(a, axis=-1, kind=None, order=None):
        if order is not None:
            raise TypeError(f"np.{name} on tensors: unsupported argument 'order'")
        a, axis = _flat_unless(a, axis)
        indices = a.argsort(axis)  # (always stable, as kind="stable")
        return indices if name == "argsort" else a.gather(axis, indices)

    return sort


def _flip(m, axis=None):
    m = as_tensor(m)
    return m.flip(tuple(range(m.ndim)) if axis is None else axis)


def _repeat(a, repeats, axis=None):
    """NumPy's repeat (each element ``repeats`` times in a row), not PyTorch's (tiling)."""
    a, axis = _flat_unless(a, axis)
    axis %= a.ndim
    source = np.repeat(np.arange(a.shape[axis]), repeats)
    return a[(slice(None),) * axis + (wrap(source),)]


def _pad(array, pad_width, mode="constant", constant_values=0):
    """np.pad's constant, edge, reflect, symmetric and wrap modes: each padded axis reads
    its source positions (np.pad of the positions themselves), constants where there are none
    (``constant_values`` as NumPy takes them: one number, or before/after numbers per axis)."""
    x = as_tensor(array)
    if mode not in ("constant", "edge", "reflect", "symmetric", "wrap"):
        raise TypeError(f"np.pad on tensors: mode {mode!r} is not supported")
    widths = _per_axis_pairs("pad_width", pad_width, x.ndim, np.int64)
    constants = _per_axis_pairs("constant_values", constant_values, x.ndim, x.dtype.np)
    for axis, (before, after) in enumerate(widths):
        if not (before or after):
            continue
        extra = {"constant_values": -1} if mode == "constant" else {"mode": mode}
        source = np.pad(np.arange(x.shape[axis]), (before, after), **extra)
        x = x[(slice(None),) * axis + (wrap(np.maximum(source, 0)),)]
        if mode == "constant":
            x = _padded_constants(x, axis, source, before, constants[axis])
    return x


def _per_axis_pairs(name: str, value, ndim: int, dtype) -> np.ndarray:
    """A (before, after) pair per axis, broadcast from np.pad's forms: n, (n,), (b, a),
    ((b0, a0), (b1, a1), ...)."""
    if isinstance(value, Tensor):
        raise TypeError(f"np.pad on tensors: {name} must be numbers, not a tensor")
    try:
        return np.broadcast_to(np.asarray(value, dtype=dtype), (ndim, 2))
    except ValueError:
        raise ShapeError(
            f"np.pad: {name}={value!r} does not fit {ndim} axes (give n, (before, after) "
            "or one (before, after) pair per axis)"
        ) from None


def _padded_constants(picked, axis, source, before, pair):
    """``picked`` along ``axis`` where ``source`` (the positions read, -1 for padding) has
    data; ``pair[0]`` in the ``before`` padded places in front, ``pair[1]`` behind."""
    shape = (-1,) + (1,) * (picked.ndim - axis - 1)
    fill = np.where(np.arange(len(source)) < before, pair[0], pair[1]).astype(pair.dtype)
    inside = wrap((source >= 0).reshape(shape))
    return fn.where(inside, picked, wrap(fill.reshape(shape)))


def _section_bounds(n: int, sections, equal: bool) -> list[int]:
    """Where np.split / np.array_split cut an axis of length ``n``."""
    if not isinstance(sections, int):
        return [0, *sections, n]
    if equal and n % sections:
        raise ShapeError(f"np.split: length {n} does not divide into {sections} equal sections")
    each, extra = divmod(n, sections)
    sizes = [each + 1] * extra + [each] * (sections - extra)
    return [int(b) for b in np.cumsum([0, *sizes])]


def _splitter(axis_of, equal=True):
    def split(ary, indices_or_sections, axis=0):
        ary = as_tensor(ary)
        axis = axis_of(ary, axis)
        bounds = _section_bounds(ary.shape[axis], indices_or_sections, equal)
        lead = (slice(None),) * axis
        return [ary[(*lead, slice(a, b))] for a, b in pairwise(bounds)]

    return split


def _grown_shape(shape, ndim):
    """NumPy's atleast_2d/3d shapes: (n,) -> (1, n) and (1, n, 1); (m, n) -> (m, n, 1)."""
    if not shape:
        return (1,) * ndim
    if len(shape) == 1:
        return (1, *shape) if ndim == 2 else (1, *shape, 1)
    return (*shape, 1)


def _at_least(ndim):
    def at_least(*arys):
        grown = []
        for a in map(as_tensor, arys):
            grown.append(a if a.ndim >= ndim else a.reshape(_grown_shape(tuple(a.shape), ndim)))
        return grown[0] if len(grown) == 1 else tuple(grown)

    return at_least


def _hstack(tup):
    arrays = [_at_least(1)(a) for a in tup]
    return fn.cat(arrays, 0 if arrays[0].ndim == 1 else 1)


def _column_stack(tup):
    columns = [as_tensor(a) for a in tup]
    return fn.cat([c.reshape(-1, 1) if c.ndim < 2 else c for c in columns], 1)


def _linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    if retstep:
        raise TypeError("np.linspace on tensors: unsupported argument 'retstep'")
    start, stop = promote_operands(start, stop, floating=True)
    steps = np.arange(num) / max(num - 1 if endpoint else num, 1)
    ndim = max(start.ndim, stop.ndim)
    out = start + (stop - start) * wrap(steps.reshape((num,) + (1,) * ndim).astype(start.dtype.np))
    out = out.movedim(0, axis) if axis else out
    return out.astype(dtype) if dtype is not None else out


def _select(condlist, choicelist, default=0):
    """The first choice whose condition holds, else ``default``."""
    out = default
    for condition, choice in reversed(list(zip(condlist, choicelist, strict=True))):
        out = fn.where(condition, choice, out)
    return as_tensor(out)


def _values(a):
    return a.detach().numpy() if isinstance(a, Tensor) else a


FUNCTIONS.update(
    {
        np.cumsum: _scan("cumsum"),
        np.cumprod: _scan("cumprod"),
        np.prod: _prod,
        np.sort: _sort("sort"),
        np.argsort: _sort("argsort"),
        np.diag: lambda v, k=0: as_tensor(v).diag(k),
        np.diagonal: lambda a, offset=0, axis1=0, axis2=1: as_tensor(a).diagonal(
            offset, axis1, axis2
        ),
        np.trace: lambda a, offset=0, axis1=0, axis2=1: (
            as_tensor(a).diagonal(offset, axis1, axis2).sum(-1)
        ),
        np.outer: lambda a, b: as_tensor(a).outer(b),
        np.inner: lambda a, b: as_tensor(a).inner(b),
        np.tensordot: lambda a, b, axes=2: tensordot(a, b, axes),
        np.kron: lambda a, b: as_tensor(a).kron(b),
        np.tril: lambda m, k=0: fn.tril(as_tensor(m), k),
        np.triu: lambda m, k=0: fn.triu(as_tensor(m), k),
        np.pad: _pad,
        np.tile: lambda a, reps: as_tensor(a).tile(reps),
        np.repeat: _repeat,
        np.roll: lambda a, shift, axis=None: as_tensor(a).roll(shift, axis),
        np.flip: _flip,
        np.fliplr: lambda m: as_tensor(m).fliplr(),
        np.flipud: lambda m: as_tensor(m).flipud(),
        np.rot90: lambda m, k=1, axes=(0, 1): as_tensor(m).rot90(k, axes),
        np.moveaxis: lambda a, source, destination: as_tensor(a).movedim(source, destination),
        np.swapaxes: lambda a, axis1, axis2: as_tensor(a).swapaxes(axis1, axis2),
        np.split: _splitter(lambda a, axis: axis),
        np.array_split: _splitter(lambda a, axis: axis, equal=False),
        np.hsplit: _splitter(lambda a, _: 1 if a.ndim > 1 else 0),
        np.vsplit: _splitter(lambda a, _: 0),
        np.dsplit: _splitter(lambda a, _: 2),
        np.hstack: _hstack,
        np.vstack: lambda tup: fn.cat([_at_least(2)(a) for a in tup], 0),
        np.column_stack: _column_stack,
        np.atleast_1d: _at_least(1),
        np.atleast_2d: _at_least(2),
        np.atleast_3d: _at_least(3),
        np.linspace: _linspace,
        np.diff: lambda a, n=1, axis=-1: as_tensor(a).diff(n, axis),
        np.ravel: lambda a: as_tensor(a).ravel(),
        np.linalg.norm: lambda x, ord=None, axis=None, keepdims=False: linalg.norm(
            x, ord, _dims(axis), keepdims
        ),
        np.select: _select,
        np.nan_to_num: lambda x, copy=True, nan=0.0, posinf=None, neginf=None: as_tensor(
            x
        ).nan_to_num(nan, posinf, neginf),
        np.allclose: lambda a, b, rtol=1e-05, atol=1e-08, equal_nan=False: bool(
            np.allclose(_values(a), _values(b), rtol, atol, equal_nan)
        ),
        np.sinc: lambda x: as_tensor(x).sinc(),
        np.einsum: lambda *args: fn.einsum(*args),
    }
)


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
