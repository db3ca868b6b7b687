"""NumPy kernels shared by the eager op implementations and the generated code.

This module imports nothing but NumPy and the standard library: generated code imports it as
``rt``, and ``CompiledModule.export`` copies its source into the standalone module it writes.
"""

import functools
import math

import numpy as np
from scipy import special

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_COEF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def erf(x):
    """The error function, vectorized (SciPy's ufunc keeps float32 as float32)."""
    return np.asarray(special.erf(x))


def where(cond, x, y, out=None):
    """np.where into ``out``, which may be ``x`` or ``y`` (masking attention in place)."""
    if out is None:
        return np.where(cond, x, y)
    if out is x:
        keep = np.logical_not(cond, out=scratch(np.shape(cond), "where", bool))
        np.copyto(out, y, where=keep)
        return out
    if out is not y:
        np.copyto(out, y)
    np.copyto(out, x, where=cond)
    return out


def copy_into(x, out):
    np.copyto(out, x, casting="unsafe")
    return out


CHUNK = 65536  # elements per piece of a chunked kernel: a piece's arrays stay in cache


def chunked(kernel):
    """Run an elementwise kernel on pieces of rows of a large result, as a careful NumPy
    programmer updates in cache-sized chunks: each piece's temporaries stay in cache instead
    of streaming whole arrays through memory once per NumPy call. Arrays as long as the
    result along axis 0 are cut into the same pieces; scalars and arrays that broadcast
    along axis 0 go to every piece whole."""

    def pieces(*args, out=None, **attrs):
        if out is None or out.size <= CHUNK:
            return kernel(*args, out=out, **attrs)
        n = out.shape[0]
        step = max(1, CHUNK * n // out.size)
        cut = [isinstance(a, np.ndarray) and a.ndim == out.ndim and a.shape[0] == n for a in args]
        for start in range(0, n, step):
            rows = slice(start, start + step)
            parts = [a[rows] if c else a for a, c in zip(args, cut, strict=True)]
            kernel(*parts, out=out[rows], **attrs)
        return out

    return functools.wraps(kernel)(pieces)


@chunked
def sigmoid(x, out=None):
    """1 / (1 + exp(-x)); ``out`` may be ``x``."""
    out = np.negative(x, out=_buffer(x, out))
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def _buffer(x, out):
    # A ufunc on a 0-d array returns a scalar, which cannot be updated in place: use an array.
    return np.empty_like(x) if out is None else out


@chunked
def gelu(x, approximate, out=None):
    """x * Phi(x); with ``approximate='tanh'`` PyTorch's tanh form. ``out`` may be ``x``."""
    if approximate != "tanh":
        return np.multiply(0.5 * x, 1.0 + erf(x / math.sqrt(2.0)), out=out)
    t = _gelu_tanh(x, out=scratch(x, "gelu"))
    return _gelu_with_tanh(x, t, out=out, work=t)  # t is ours: 1 + t goes in its place


def _gelu_tanh(x, out=None):
    return np.tanh(_tanh_argument(x, _buffer(x, out)), out=out)


def _gelu_with_tanh(x, t, out=None, work=None):
    """x (1 + t) / 2, with 1 + t made in ``work`` (a scratch array unless given)."""
    inner = np.add(t, 1.0, out=_joint_scratch(x, t, "gelu_with_tanh") if work is None else work)
    out = np.multiply(x, inner, out=out)
    out *= 0.5
    return out


@chunked
def gelu_tanh(x, out=None):
    """t = tanh(c (x + k x^3)), the tanh in gelu's tanh form (its gradient reads it too)."""
    return _gelu_tanh(x, out=out)


@chunked
def gelu_with_tanh(x, t, out=None):
    """gelu(x) = x (1 + t) / 2 from t = gelu_tanh(x). ``out`` may be ``x`` or ``t``; unless
    it is ``x``, 1 + t is made there (no scratch pass)."""
    free = out is not None and not np.may_share_memory(out, x) and np.shape(out) == np.shape(t)
    return _gelu_with_tanh(x, t, out=out, work=out if free else None)


def _tanh_argument(x, out):
    """c (x + k x^3) as (c k x^2 + c) x: four passes (np.power is far slower)."""
    np.multiply(x, x, out=out)
    out *= SQRT_2_OVER_PI * GELU_TANH_COEF
    out += SQRT_2_OVER_PI
    out *= x
    return out


def sum_to_dims(in_shape, shape):
    """Leading dims to drop and size-1 dims to sum so ``in_shape`` reduces to ``shape``."""
    lead = len(in_shape) - len(shape)
    kept = tuple(i for i, s in enumerate(shape) if s == 1 and in_shape[lead + i] != 1)
    return tuple(range(lead)), tuple(lead + i for i in kept)


@functools.cache
def _filled(n: int, dtype: np.dtype, value: float) -> np.ndarray:
    return np.full(n, value, dtype)  # shared, never written


def sum_to(x, shape, out=None):
    """Undo broadcasting: sum the dims that broadcasting ``shape`` to ``x.shape`` added.
    Always new memory (or ``out``), never a view of ``x``."""
    lead, kept = sum_to_dims(x.shape, shape)
    if lead and not kept and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous:
        # Leading dims summed as ones @ rows: a BLAS matrix-vector product is 1.4-3x faster
        # than np.sum down the columns (a bias gradient, say).
        rows = x.reshape(-1, math.prod(shape))
        ones = _filled(rows.shape[0], x.dtype, 1.0)
        if out is None:
            total = np.matmul(ones, rows)
            return total if total.shape == tuple(shape) else total.reshape(shape)
        np.matmul(ones, rows, out=out.reshape(-1))
        return out
    if kept:
        x = np.sum(x, axis=kept, keepdims=True)
    if lead:
        x = np.sum(x, axis=lead)
    if out is not None:
        np.copyto(out, np.reshape(x, shape))
        return out
    return np.reshape(x if lead or kept else x.copy(), shape)


def unfold(x, kernel, stride, padding, dilation, pad_value):
    """(N, C, H, W) -> (N, C, OH, OW, KH, KW) windows: a strided view of the padded input."""
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    n, c, h, w = x.shape
    oh = (h - dh * (kernel[0] - 1) - 1) // sh + 1
    ow = (w - dw * (kernel[1] - 1) - 1) // sw + 1
    s_n, s_c, s_h, s_w = x.strides
    return np.lib.stride_tricks.as_strided(
        x,
        (n, c, oh, ow, *kernel),
        (s_n, s_c, s_h * sh, s_w * sw, s_h * dh, s_w * dw),
        writeable=False,
    )


def fold(cols, size, kernel, stride, padding, dilation, out=None):
    """The transpose of ``unfold``: add every window back where it came from."""
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    n, c, oh, ow = cols.shape[:4]
    padded = (n, c, size[0] + 2 * ph, size[1] + 2 * pw)
    if out is not None and not (ph or pw):
        sums = out  # without padding the sums land in the result directly
    elif out is not None:
        sums = scratch(padded, "fold", cols.dtype)
    else:
        sums = np.empty(padded, cols.dtype)
    sums[...] = 0
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            columns = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            sums[:, :, rows, columns] += cols[:, :, :, :, i, j]
    inner = sums[:, :, ph : ph + size[0], pw : pw + size[1]]
    if out is None or inner is out:
        return inner
    np.copyto(out, inner)
    return out


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
        return rows, _filled(rows[1], dtype, scale), shape[:kept] + (1,) * len(dims)
    if ndim >= 2 and dims == (ndim - 2,):
        return None, _filled(shape[-2], dtype, scale)[None], None
    return None


def _mean(x, dims):
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
    # (np.maximum.reduce: np.amax's Python wrapper costs more than a small reduction)
    if dim != x.ndim - 1 or x.dtype.kind != "f" or not 1 < n <= 256 or x.size < SMALL_REDUCTION:
        return np.maximum.reduce(x, axis=dim, keepdims=True)
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


def softmax(x, dim, out=None):
    """Stable: exp(x - max) / sum. ``out`` may be ``x``."""
    return _softmax_shifted(x, row_max(x, dim), dim, out)


def _softmax_shifted(x, peak, dim, out):
    out = np.subtract(x, peak, out=out)
    np.exp(out, out=out)
    out /= row_sum(out, dim)
    return out


def masked_softmax(x, mask, dim, out=None):
    """softmax(where(mask, -inf, x)) over ``dim``: masked entries get probability exactly 0
    (a row masked whole is nan, as in PyTorch). ``out`` may be ``x``."""
    if np.size(mask) >= np.size(x):
        out = where(mask, x.dtype.type(-np.inf), x, out=out)
        return softmax(out, dim, out=out)
    # A broadcast mask (causal, transposed for keys-major) is small: added to the scores as a
    # bias of -inf and 0 it takes one pass, twice as fast as a masked write. A score of +inf
    # or nan at a masked entry sums to nan there: the max shows it, and then the masked
    # write (masked_fill's -inf, whatever the score) is made too.
    bias = np.where(mask, x.dtype.type(-np.inf), x.dtype.type(0))
    out = np.add(x, bias, out=out)
    peak = row_max(out, dim)
    if np.isnan(peak).any():
        np.copyto(out, x.dtype.type(-np.inf), where=mask)
        peak = row_max(out, dim)
    return _softmax_shifted(out, peak, dim, out)


def log_softmax(x, dim, out=None):
    """Stable: (x - max) - log(sum(exp(x - max))). ``out`` may be ``x``. Logits of a few
    thousand elements take plain NumPy reductions: row_max's and row_sum's ways pay for their
    Python calls only on larger arrays (a training step's cross entropy on W1's (32, 10)
    logits runs in a cold cache, where every call counts)."""
    small = x.size < SMALL_REDUCTION
    peak = np.maximum.reduce(x, axis=dim, keepdims=True) if small else row_max(x, dim)
    out = np.subtract(x, peak, out=out)
    exp = np.exp(out, out=scratch(out, "log_softmax"))
    out -= np.log(np.add.reduce(exp, axis=dim, keepdims=True) if small else row_sum(exp, dim))
    return out


def class_dim(ndim):
    return 0 if ndim == 1 else 1


def _reduce_loss(loss, valid, reduction, dtype):
    if reduction == "none":
        return loss
    total = loss.sum(dtype=dtype)
    return total / dtype.type(np.count_nonzero(valid)) if reduction == "mean" else total


@functools.cache
def _rows(n: int) -> np.ndarray:
    return np.arange(n)  # shared, never written


def cross_entropy(logits, target, ignore_index, label_smoothing, reduction):
    """nll_loss of the (stable) log-probabilities, computed into a scratch array: the loss
    never returns memory of its log-probabilities."""
    logp = log_softmax(logits, class_dim(logits.ndim), out=scratch(logits, "cross_entropy"))
    return nll_loss(logp, target, ignore_index, label_smoothing, reduction)


def check_targets(target, classes, ignore_index):
    """IndexError, as in PyTorch, for a target outside [0, classes) other than ignore_index:
    NumPy would read -1 as the last class. Checked on every call of a class loss, in
    generated code too, since targets are data."""
    if not target.size or (target.min() >= 0 and target.max() < classes):
        return
    bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if bad.any():
        raise IndexError(
            f"Target {target[bad].flat[0]} is out of bounds: class indices must lie in "
            f"[0, {classes}) or equal ignore_index ({ignore_index})"
        )


def nll_loss(logp, target, ignore_index, label_smoothing, reduction):
    """Cross entropy from log-probabilities: -(1 - s) logp[target] - s mean(logp) over the
    classes, zero where the target is ignored, then reduced."""
    check_targets(target, logp.shape[class_dim(logp.ndim)], ignore_index)
    if _usual_loss(logp, target, ignore_index, label_smoothing, reduction):
        total = -logp[_rows(len(target)), target].sum(dtype=logp.dtype)  # a pick and a sum
        return total / logp.dtype.type(len(target)) if reduction == "mean" else total
    valid = target != ignore_index
    every = bool(valid.all())
    if logp.ndim == 2 and not label_smoothing:
        picked = logp[_rows(len(target)), target if every else np.where(valid, target, 0)]
        loss = np.negative(picked, out=picked) if every else np.where(valid, -picked, 0.0)
        return _reduce_loss(loss.astype(logp.dtype, copy=False), valid, reduction, logp.dtype)
    moved = np.moveaxis(logp, class_dim(logp.ndim), -1)
    picked = np.take_along_axis(moved, np.where(valid, target, 0)[..., None], -1)[..., 0]
    loss = -(1.0 - label_smoothing) * picked - label_smoothing * moved.mean(-1)
    loss = np.where(valid, loss, 0.0).astype(logp.dtype)
    return _reduce_loss(loss, valid, reduction, logp.dtype)


def layer_norm(x, ndims, eps, out=None):
    """(x - mean) / sqrt(var + eps) over the last ``ndims`` dims. ``out`` may be ``x``."""
    out = layer_norm_center(x, ndims, out=out)
    out /= layer_norm_std(out, ndims, eps)
    return out


def layer_norm_center(x, ndims, out=None):
    """x - mean(x) over the last ``ndims`` dims. ``out`` may be ``x``."""
    return np.subtract(x, _mean(x, layer_norm_axes(x.ndim, ndims)), out=out)


def layer_norm_std(centered, ndims, eps, out=None):
    """sqrt(mean(centered^2) + eps) over the last ``ndims`` dims (kept, as 1s)."""
    square = np.multiply(centered, centered, out=scratch(centered, "layer_norm"))
    variance = np.add(_mean(square, layer_norm_axes(centered.ndim, ndims)), eps, out=out)
    return np.sqrt(variance, out=variance)


def layer_norm_axes(ndim: int, ndims: int) -> tuple[int, ...]:
    """The last ``ndims`` of ``ndim`` dims: the ones a layer norm normalizes."""
    return tuple(range(ndim - ndims, ndim))


def index(key, *index_arrays):
    """Turn an index key (see tracegrad.ops.index) back into a NumPy index."""
    items = []
    for kind, *args in key:
        if kind == "slice":
            items.append(slice(*args))
        elif kind == "int":
            items.append(args[0])
        elif kind == "none":
            items.append(None)
        elif kind == "ellipsis":
            items.append(Ellipsis)
        elif kind == "rows":
            items.append(check_rows(index_arrays[args[0]], args[1]))
        else:
            items.append(index_arrays[args[0]])
    return tuple(items)


def check_rows(rows, size):
    """``rows`` when every value is in [0, size), else IndexError naming the first that is
    not: an embedding's lookup, where -1 is a bad token and not the last row."""
    if rows.size and (rows.min() < 0 or rows.max() >= size):
        bad = rows[(rows < 0) | (rows >= size)].flat[0]
        raise IndexError(
            f"index {bad} is out of range for a table of {size} rows (0 to {size - 1})"
        )
    return rows


def scatter_add(g, key, shape, *index_arrays, out=None):
    """Add ``g`` into zeros(shape) at ``index(key)``; repeated indices accumulate."""
    if out is None:
        out = np.zeros(shape, g.dtype)
    else:
        out[...] = 0
    rows = len(key) == 1 and key[0][0] in ("tensor", "rows")  # x[i] for one index array
    if rows and index_arrays[0].dtype.kind in "iu" and index_arrays[0].size:
        _add_rows(out, index_arrays[0], g)
        return out
    where = index(key, *index_arrays)
    if index_arrays:
        np.add.at(out, where, g)
    else:
        out[where] = g
    return out


def _add_rows(out, rows, g):
    """out[rows] += g for an index array along axis 0 (an embedding's gradient), repeated
    rows summed: a stable sort groups equal rows, np.add.reduceat sums each group in the
    original order (np.add.at is 4x slower)."""
    rows = rows.reshape(-1) % out.shape[0]  # -1 and n - 1 name the same row
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    sums = np.add.reduceat(g.reshape(rows.size, *out.shape[1:])[order], starts, axis=0)
    out[ordered[starts]] = sums


def one_hot(t, num_classes):
    return (t[..., None] == np.arange(num_classes)).astype(np.int64)


def dropout_mask(shape, p, dtype, rng):
    """Keep each element with probability 1 - p, scaled by 1 / (1 - p) so the mean is kept."""
    keep = rng.random(shape) >= p
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return (keep * scale).astype(dtype)


def check_finite(value, op, phase, where):
    """Raise FloatingPointError at the first NaN or Inf (used with debug_nans)."""
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        bad = "NaN" if np.isnan(value).any() else "Inf"
        raise FloatingPointError(f"{bad} produced by {op} in the {phase} at {where}")
    return value


# --- fused gradients (tracegrad/ops/fused.py declares them). Each is safe when ``out`` is one
# --- of its inputs: an input is read only before ``out`` is written, or copied first.


def scratch(like, slot: str, dtype=None):
    """A work array shaped like ``like`` (an array, or a shape with ``dtype``), kept between
    calls (slot names keep a kernel's arrays apart), so a steady training step allocates
    nothing for kernel temporaries. Never returned from a kernel."""
    if type(like) is np.ndarray:  # the usual call: attribute reads only
        key = (slot, like.shape, like.dtype if dtype is None else dtype)
    else:
        shape = like if isinstance(like, tuple) else np.shape(like)
        key = (slot, shape, np.dtype(dtype or like.dtype))
    array = _SCRATCH.get(key)
    if array is None:
        array = _SCRATCH[key] = np.empty(key[1], key[2])
    return array


_SCRATCH: dict = {}


@chunked
def relu_grad(y, g, out=None):
    return np.multiply(g, np.greater(y, 0, out=scratch(y, "relu_grad", bool)), out=out)


@chunked
def tanh_grad(y, g, out=None):
    slope = np.multiply(y, y, out=scratch(y, "tanh_grad"))
    np.subtract(1.0, slope, out=slope)
    return np.multiply(g, slope, out=out)


@chunked
def sigmoid_grad(y, g, out=None):
    slope = np.subtract(1.0, y, out=scratch(y, "sigmoid_grad"))
    slope *= y
    return np.multiply(g, slope, out=out)


@chunked
def gelu_grad(x, g, approximate, out=None):
    """d gelu(x) = Phi(x) + x phi(x) (Phi in PyTorch's tanh form when asked)."""
    if approximate == "tanh":
        t = _gelu_tanh(x, out=scratch(x, "gelu_grad.t"))
        return _gelu_grad_with_tanh(x, t, g, out=out)
    density = np.multiply(x, x, out=scratch(x, "gelu_grad.square"))
    density *= -0.5
    np.exp(density, out=density)
    density *= INV_SQRT_2PI
    density *= x
    slope = np.multiply(x, INV_SQRT_2, out=scratch(x, "gelu_grad.slope"))
    slope[...] = erf(slope)
    slope += 1.0
    slope *= 0.5
    slope += density
    return np.multiply(g, slope, out=out)


@chunked
def gelu_grad_with_tanh(x, t, g, out=None):
    """g * d gelu(x) in the tanh form, from t = gelu_tanh(x) kept from the forward.
    ``out`` may be ``g``."""
    return _gelu_grad_with_tanh(x, t, g, out=out)


def _gelu_grad_with_tanh(x, t, g, out=None):
    # With q = x (c/2 + 3ck/2 x^2): gelu'(x) = (1 + t)/2 + (1 - t^2) q = (1 + t) (1/2 + (1 - t) q)
    q = np.multiply(x, x, out=scratch(x, "gelu_grad.square"))
    q *= 1.5 * SQRT_2_OVER_PI * GELU_TANH_COEF
    q += 0.5 * SQRT_2_OVER_PI
    q *= x
    slope = np.subtract(1.0, t, out=_joint_scratch(x, t, "gelu_grad.slope"))
    slope *= q
    slope += 0.5
    slope *= np.add(t, 1.0, out=q) if np.shape(t) == q.shape else np.add(t, 1.0)
    return np.multiply(g, slope, out=out)


def softmax_grad(y, g, dim, out=None):
    """y * (g - sum(g * y)) over ``dim``."""
    gy = np.multiply(g, y, out=scratch(y, "softmax_grad"))
    total = row_sum(gy, dim)
    np.subtract(g, total, out=gy)
    return np.multiply(y, gy, out=out)


def masked_softmax_grad(y, g, mask, dim, out=None):
    """softmax_grad, zero where masked. There y is exactly 0 and so is the product, except in
    rows masked whole (y is nan there): only those rows are zeroed, without a pass over the
    rest. (A non-finite ``g`` at a masked entry would give nan there.)"""
    out = softmax_grad(y, g, dim, out=out)
    mask = np.reshape(mask, (1,) * (y.ndim - np.ndim(mask)) + np.shape(mask))
    whole = np.all(mask, axis=dim, keepdims=True)
    if whole.any():
        np.copyto(out, 0, where=whole)
    return out


def log_softmax_grad(y, g, dim, out=None):
    """g - exp(y) * sum(g) over ``dim``."""
    total = row_sum(g, dim)
    scaled = np.exp(y, out=scratch(y, "log_softmax_grad"))
    scaled *= total
    return np.subtract(g, scaled, out=out)


def _usual_loss(logp, target, ignore_index, label_smoothing, reduction) -> bool:
    """Whether a class loss is the usual one: (N, C) log-probabilities, no smoothing, reduced
    to a scalar, and no target ignored (a negative ignore_index, PyTorch's -100, below every
    target: the smallest target says so). Its kernels then take a short path."""
    if logp.ndim != 2 or label_smoothing or reduction == "none":
        return False
    if ignore_index < 0 and target.size and target.min() > ignore_index:
        return True
    return bool((target != ignore_index).all())


def _loss_weight(g, valid, every, reduction, dtype):
    """Each sample's share of the loss's cotangent ``g`` (divided by the count for a mean)."""
    weight = np.asarray(g, dtype)
    if reduction == "mean":
        weight = weight / dtype.type(valid.size if every else np.count_nonzero(valid))
    return weight


def _subtract_targets(grad, target, valid, every, weight, label_smoothing):
    """grad -= weight * smoothed one-hot(target) along the class dim, then zero the ignored
    samples. ``grad`` already holds probabilities times ``weight``."""
    if grad.ndim == 2 and not label_smoothing:
        picks = target if every else np.where(valid, target, 0)
        grad[_rows(len(target)), picks] -= weight
        if not every:
            grad *= valid[:, None]
        return grad
    moved = np.moveaxis(grad, class_dim(grad.ndim), -1)
    share = np.broadcast_to(weight, valid.shape)[..., None]
    if label_smoothing:
        moved -= share * (label_smoothing / moved.shape[-1])
    picks = np.where(valid, target, 0)[..., None]
    picked = np.take_along_axis(moved, picks, -1)
    np.put_along_axis(moved, picks, picked - share * (1.0 - label_smoothing), -1)
    moved *= valid[..., None]
    return grad


def _class_weight(weight, ndim):
    """A per-sample weight shaped to broadcast along the class dim (1 of (N, C, ...))."""
    return weight if weight.ndim == 0 else np.expand_dims(weight, class_dim(ndim))


def cross_entropy_grad(logits, target, g, ignore_index, label_smoothing, reduction):
    """softmax(logits) - smoothed one-hot(target), weighted by g, zero where ignored."""
    valid = target != ignore_index
    every = bool(valid.all())
    weight = _loss_weight(g, valid, every, reduction, logits.dtype)
    dim = class_dim(logits.ndim)
    grad = np.subtract(logits, row_max(logits, dim))
    np.exp(grad, out=grad)
    # softmax times the weight in one pass: exp(shifted) * (w / sum)
    grad *= np.divide(_class_weight(weight, logits.ndim), row_sum(grad, dim))
    return _subtract_targets(grad, target, valid, every, weight, label_smoothing)


def log_softmax_nll_grad(logp, target, g, ignore_index, label_smoothing, reduction, out=None):
    """The gradient of nll_loss(log_softmax(x)) with respect to x, from the log-probabilities
    the forward kept: exp(logp) - smoothed one-hot(target), weighted by g. ``out`` may be
    ``logp``."""
    if _usual_loss(logp, target, ignore_index, label_smoothing, reduction):
        # (what the general way below computes then, without its helpers' calls)
        n = len(target)
        weight = np.asarray(g, logp.dtype)
        weight = weight / logp.dtype.type(n) if reduction == "mean" else weight
        grad = np.exp(logp, out=out)
        grad *= weight
        grad[_rows(n), target] -= weight
        return grad
    valid = target != ignore_index
    every = bool(valid.all())
    weight = _loss_weight(g, valid, every, reduction, logp.dtype)
    grad = np.exp(logp, out=out)
    grad *= _class_weight(weight, logp.ndim)
    return _subtract_targets(grad, target, valid, every, weight, label_smoothing)


def layer_norm_grad(x, y, g, ndims, eps, out=None):
    """With y = (x - mean) * rstd: dx = rstd * (g - mean(g) - y * mean(g * y))."""
    centered = layer_norm_center(x, ndims, out=scratch(x, "layer_norm_grad"))
    return layer_norm_grad_from_std(y, g, layer_norm_std(centered, ndims, eps), ndims, out=out)


def layer_norm_grad_from_std(y, g, std, ndims, out=None):
    """layer_norm_grad with the forward's std = sqrt(var + eps) kept: nothing of x is needed."""
    axes = layer_norm_axes(y.ndim, ndims)
    rstd = 1.0 / std
    work = np.multiply(g, y, out=scratch(y, "layer_norm_grad"))
    projection = _mean(work, axes)
    np.multiply(y, projection, out=work)
    np.subtract(g, work, out=work)
    work -= _mean(g, axes)
    return np.multiply(work, rstd, out=out)


def _window_cells(x, dims, keepdim):
    """Index tuples of the cells of a small window being reduced over a large result
    (pooling), else None: NumPy reduces a few strided elements far slower than it compares
    whole strided slices, one per cell."""
    window = [x.shape[d] for d in dims]
    cells = math.prod(window)
    if keepdim or not dims or not 1 < cells <= 64 or x.size // cells < 1024:
        return None
    indexes = []
    for cell in np.ndindex(*window):
        index = [slice(None)] * x.ndim
        for d, i in zip(dims, cell, strict=True):
            index[d] = i
        indexes.append(tuple(index))
    return indexes


def _extreme(ufunc, x, dims, keepdim, out):
    cells = _window_cells(x, dims, keepdim)
    if cells is None:
        return ufunc.reduce(x, axis=tuple(dims), keepdims=keepdim, out=out)
    if out is None:
        out = np.empty([n for d, n in enumerate(x.shape) if d not in dims], x.dtype)
    np.copyto(out, x[cells[0]])
    for cell in cells[1:]:
        ufunc(out, x[cell], out=out)
    return out


def amax(x, dims, keepdim, out=None):
    return _extreme(np.maximum, x, dims, keepdim, out)


def amin(x, dims, keepdim, out=None):
    return _extreme(np.minimum, x, dims, keepdim, out)


def extreme_grad(x, y, g, dims, keepdim, out=None):
    """amax/amin: the gradient shared evenly between tied extremes."""
    cells = _window_cells(x, dims, keepdim)
    if cells is not None:
        grad = np.empty(x.shape, x.dtype) if out is None else out
        hits = scratch((len(cells), *y.shape), "extreme_grad.hits", bool)
        count = scratch(y.shape, "extreme_grad.count", np.uint8)  # at most 64 cells
        count[...] = 0
        for hit, cell in zip(hits, cells, strict=True):
            np.equal(x[cell], y, out=hit)
            np.add(count, hit.view(np.uint8), out=count)  # a view: no casting loop
        untied = count.min() == 1 == count.max()
        share = g if untied else g / count
        for hit, cell in zip(hits, cells, strict=True):
            np.multiply(share, hit, out=grad[cell])
        return grad
    if not keepdim:
        y, g = np.expand_dims(y, dims), np.expand_dims(g, dims)
    hits = np.equal(x, y, out=out, casting="unsafe") if out is not None else (x == y)
    hits = hits.astype(x.dtype, copy=False)
    hits *= g / hits.sum(axis=dims, keepdims=True)
    return hits


# --- optimizer updates (tracegrad/ops/optim.py declares them); ``out`` may be an input.


def _joint_shape(x, y) -> tuple[int, ...]:
    """The broadcast shape of two operands (the first may be a broadcast scalar); equal
    shapes, the common case, skip np.broadcast_shapes (1 µs a call)."""
    shape = np.shape(x)
    return shape if shape == np.shape(y) else np.broadcast_shapes(shape, np.shape(y))


def _joint_scratch(x, y, slot: str):
    """A scratch array of the broadcast shape and result dtype of ``x`` and ``y``. Two arrays
    of one shape and dtype (an optimizer's state and gradient) are looked up directly: the
    general way costs more than the kernel's own work on a small parameter."""
    arrays = type(x) is np.ndarray and type(y) is np.ndarray
    if arrays and x.shape == y.shape and x.dtype == y.dtype:
        return scratch(x, slot)
    return scratch(_joint_shape(x, y), slot, np.result_type(x, y))


def add_scaled(x, y, alpha, out=None):
    """x + alpha * y (``add_(y, alpha=...)``, an SGD step), alpha * y made in a scratch array
    so a write into ``out`` allocates nothing; ``out`` may be ``x`` or ``y``. (Not chunked:
    two plain ufunc passes are faster whole, by a quarter at 1e5 elements, a tenth at 4e6.)"""
    scaled = np.multiply(y, alpha, out=scratch(y, "add_scaled"))
    return np.add(x, scaled, out=out)


@chunked
def lerp(x, y, weight, out=None):
    """x + weight * (y - x), rounded like PyTorch's lerp for weight < 0.5. (Hyperparameters
    here are Python floats, weak scalars rounded to the arrays' dtype, whether given so or as
    a compiled step's 0-d float64 input.)"""
    step = np.subtract(y, x, out=_joint_scratch(x, y, "lerp"))
    step *= float(weight)
    return np.add(x, step, out=out)


@chunked
def ema_square(v, g, beta, out=None):
    """beta * v + (1 - beta) * g * g."""
    beta = float(beta)
    square = np.multiply(g, g, out=_joint_scratch(v, g, "ema_square"))
    square *= 1.0 - beta
    if np.shape(v) != square.shape:
        return np.add(square, np.multiply(v, beta), out=out)
    out = np.multiply(v, beta, out=out)
    out += square
    return out


@chunked
def adam_step(p, m, v, step_size, bias2_sqrt, eps, out=None):
    """p - step_size * m / (sqrt(v) / bias2_sqrt + eps), PyTorch's Adam parameter update."""
    denom = np.sqrt(v, out=scratch(v, "adam_step"))
    denom /= bias2_sqrt
    denom += float(eps)
    np.divide(m, denom, out=denom)
    denom *= step_size
    return np.subtract(p, denom, out=out)


def view_update(base, values, positions):
    """``base`` with the elements at flat ``positions`` set to ``values`` (broadcast to the
    positions' shape): an in-place write through a view, as a new array."""
    out = np.array(base, order="C", copy=True)
    np.put(out, positions, np.broadcast_to(values, positions.shape))
    return out
