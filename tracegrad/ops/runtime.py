"""What the NumPy kernels of every op family share, and the table of kernels generated code calls.

A kernel is the NumPy function an op runs, eagerly and in generated code; it is written in the
family file of the op that uses it, next to the op's declaration, and marked ``@kernel``, which
enters it in ``KERNELS``: generated code reaches it as ``rt.<name>`` through
``tracegrad.ops.kernels``. This module holds what several families' kernels use: chunking,
scratch arrays, row reductions, the class and layer-norm axes. It imports nothing but NumPy and
the standard library, because ``CompiledModule.export`` copies its source (and the source of
each kernel with what it reads) into the standalone module it writes.
"""

import functools
import math
import threading

import numpy as np

KERNELS: dict = {}  # name -> the kernel generated code calls as rt.<name>


def kernel(fn):
    """Enter ``fn`` in ``KERNELS`` under its name, for generated code."""
    if fn.__name__ in KERNELS:
        raise ValueError(f"kernel {fn.__name__!r} is defined twice")
    KERNELS[fn.__name__] = fn
    return fn


@kernel
def copy_into(x, out):
    np.copyto(out, x, casting="unsafe")
    return out


CHUNK = 65536  # elements per piece of a chunked kernel: a piece's arrays stay in cache


def chunked(elementwise_kernel):
    """Run an elementwise kernel on pieces of rows of a large result, as a careful NumPy
    programmer updates in cache-sized chunks: each piece's temporaries stay in cache instead
    of streaming whole arrays through memory once per NumPy call. Arrays as long as the
    result along axis 0 are cut into the same pieces; scalars and arrays that broadcast
    along axis 0 go to every piece whole."""

    def pieces(*args, out=None, **attrs):
        if out is None or out.size <= CHUNK:
            return elementwise_kernel(*args, out=out, **attrs)
        n = out.shape[0]
        step = max(1, CHUNK * n // out.size)
        cut = [isinstance(a, np.ndarray) and a.ndim == out.ndim and a.shape[0] == n for a in args]
        for start in range(0, n, step):
            rows = slice(start, start + step)
            parts = [a[rows] if c else a for a, c in zip(args, cut, strict=True)]
            elementwise_kernel(*parts, out=out[rows], **attrs)
        return out

    return functools.wraps(elementwise_kernel)(pieces)


def out_or_new(x, out):
    # A ufunc on a 0-d array returns a scalar, which cannot be updated in place: use an array.
    return np.empty_like(x) if out is None else out


@functools.cache
def filled(n: int, dtype: np.dtype, value: float) -> np.ndarray:
    array = np.full(n, value, dtype)  # shared: read-only, so no caller can write it
    array.flags.writeable = False
    return array


def bound_like(x, value):
    """``value`` as an array shaped like ``x`` (shared, read-only), for a clamp's bound:
    NumPy's maximum, minimum and fmax run without SIMD when an operand is a scalar or a
    broadcast one, 3-4x slower (NumPy 2.4) than against a whole array of the bound. Past
    CHUNK elements (a chunked kernel's pieces are smaller), and for a scalar ``x``, the
    scalar: the shared arrays stay few and small."""
    if type(x) is not np.ndarray or x.size > CHUNK:
        return value
    return filled(x.size, x.dtype, value).reshape(x.shape)


def row_sum(x, dims, scale=1.0):
    """``scale`` times the sum over ``dims`` (keeping them; scale 1/n makes a mean). Over the
    trailing dims of a contiguous float array it is rows @ [scale, ...]: a BLAS
    matrix-vector product, 3-4x faster than np.sum along short rows."""
    plan = _row_sum_plan(x.shape, x.dtype, dims, scale) if x.flags.c_contiguous else None
    if plan is None:
        total = np.add.reduce(x, axis=dims, keepdims=True)
        return total * x.dtype.type(scale) if scale != 1.0 else total
    rows, weights, shape = plan
    if rows is None:  # down the columns of each matrix: [scale, ...] @ x
        return np.matmul(weights, x)
    return np.matmul(x.reshape(rows), weights).reshape(shape)


@functools.lru_cache(maxsize=1024)
def _row_sum_plan(shape: tuple, dtype: np.dtype, dims, scale: float):
    """How row_sum reduces a contiguous array (worked out once per shape, as a kernel's
    Python prologue costs more than its product on small arrays): (rows, weights, result
    shape) for rows @ weights, (None, weights, None) for weights @ x down the columns of
    each matrix (keys-major attention scores), or None for np.add.reduce."""
    ndim = len(shape)
    dims = tuple(sorted(d % ndim for d in (dims if isinstance(dims, tuple) else (dims,))))
    kept = ndim - len(dims)
    if dtype not in (np.float32, np.float64) or kept == 0:
        return None
    if dims == tuple(range(kept, ndim)):
        rows = (math.prod(shape[:kept]), math.prod(shape[kept:]))
        return rows, filled(rows[1], dtype, scale), shape[:kept] + (1,) * len(dims)
    if ndim >= 2 and dims == (ndim - 2,):
        return None, filled(shape[-2], dtype, scale)[None], None
    return None


def row_mean(x, dims):
    return row_sum(x, dims, 1.0 / math.prod(x.shape[d] for d in dims))


# Arrays below this many elements are reduced by plain NumPy calls: the faster ways for large
# ones cost more in Python than they save.
SMALL_REDUCTION = 4096


def row_max(x, dim):
    """The max over ``dim`` (kept). Over the last dim of short rows, NumPy reduces each row
    with a slow inner loop; down columns it compares whole rows at a time. So rows of up to
    256 are turned into columns first: square blocks (attention scores) one block at a
    time, which stays in cache, and narrow matrices (logits of a few classes) whole."""
    dim %= x.ndim
    n = x.shape[-1] if x.ndim else 0
    # (np.maximum.reduce: np.amax's Python wrapper costs more than a small reduction; from
    # -inf, so that a softmax over an empty dim is empty, as in PyTorch)
    if dim != x.ndim - 1 or x.dtype.kind != "f" or not 1 < n <= 256 or x.size < SMALL_REDUCTION:
        return np.maximum.reduce(x, axis=dim, keepdims=True, initial=-np.inf)
    if x.ndim >= 3 and x.shape[-2] * n <= 65536:
        columns = scratch(x.swapaxes(-1, -2).shape, "row_max", x.dtype)
        np.copyto(columns, x.swapaxes(-1, -2))
        return np.maximum.reduce(columns, axis=-2, keepdims=True).swapaxes(-1, -2)
    if n <= 32:
        rows = x.reshape(-1, n)
        columns = scratch((n, rows.shape[0]), "row_max", x.dtype)
        np.copyto(columns, rows.T)
        return np.maximum.reduce(columns, axis=0).reshape(*x.shape[:-1], 1)
    return np.maximum.reduce(x, axis=dim, keepdims=True)


def class_dim(ndim):
    return 0 if ndim == 1 else 1


@functools.cache
def row_numbers(n: int) -> np.ndarray:
    return np.arange(n)  # shared, never written


def layer_norm_axes(ndim: int, ndims: int) -> tuple[int, ...]:
    """The last ``ndims`` of ``ndim`` dims: the ones a layer norm normalizes."""
    return tuple(range(ndim - ndims, ndim))


@kernel
def check_finite(value, op, phase, where):
    """Raise FloatingPointError at the first NaN or Inf (used with debug_nans)."""
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        bad = "NaN" if np.isnan(value).any() else "Inf"
        raise FloatingPointError(f"{bad} produced by {op} in the {phase} at {where}")
    return value


def scratch(like, slot: str, dtype=None):
    """A work array shaped like ``like`` (an array, or a shape with ``dtype``), kept between
    calls (slot names keep a kernel's arrays apart), so a steady training step allocates
    nothing for kernel temporaries. Never returned from a kernel. Each thread has its own
    (code compiled with ``threads=n`` runs one kernel on two halves of an array at once)."""
    if type(like) is np.ndarray:  # the usual call: attribute reads only
        key = (slot, like.shape, like.dtype if dtype is None else dtype)
    else:
        shape = like if isinstance(like, tuple) else np.shape(like)
        key = (slot, shape, np.dtype(dtype or like.dtype))
    arrays: dict = _SCRATCH.__dict__  # (this thread's)
    array = arrays.get(key)
    if array is None:
        array = arrays[key] = np.empty(key[1], key[2])
    return array


_SCRATCH = threading.local()


def _joint_shape(x, y) -> tuple[int, ...]:
    """The broadcast shape of two operands (the first may be a broadcast scalar); equal
    shapes, the common case, skip np.broadcast_shapes (1 µs a call)."""
    shape = np.shape(x)
    return shape if shape == np.shape(y) else np.broadcast_shapes(shape, np.shape(y))


def joint_scratch(x, y, slot: str):
    """A scratch array of the broadcast shape and result dtype of ``x`` and ``y``. Two arrays
    of one shape and dtype (an optimizer's state and gradient) are looked up directly: the
    general way costs more than the kernel's own work on a small parameter."""
    arrays = type(x) is np.ndarray and type(y) is np.ndarray
    if arrays and x.shape == y.shape and x.dtype == y.dtype:
        return scratch(x, slot)
    return scratch(_joint_shape(x, y), slot, np.result_type(x, y))
