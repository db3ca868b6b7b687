"""Neural-network primitives: sliding windows (for conv and pooling), softmax family, layer norm.

NOTE: softmax, log_softmax, cross_entropy and layer_norm are primitives rather than compositions
because their stable forms (subtracting the max, normalizing once) and their short hand-written
VJPs are both cheaper and more accurate than differentiating the naive formulas.
"""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import rules
from tracegrad.ops.elementwise import where
from tracegrad.ops.registry import (
    ELEMENTWISE,
    NON_NEGATIVE,
    OVERWRITES_INPUT,
    VIEW,
    Sample,
    call,
    register,
)
from tracegrad.ops.runtime import (
    SMALL_REDUCTION,
    bound_like,
    chunked,
    class_dim,
    joint_scratch,
    kernel,
    layer_norm_axes,
    out_or_new,
    row_max,
    row_mean,
    row_numbers,
    row_sum,
    scratch,
)

# --- sliding windows: conv2d and max_pool2d are compositions over these -------------------------


def window_out_size(size, kernel, stride, padding, dilation) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _unfold_infer(x: TensorType, kernel, stride, padding, dilation, pad_value) -> TensorType:
    if x.ndim != 4:
        raise ShapeError(f"unfold: expected a 4-D (N, C, H, W) input, got shape {x.shape}")
    out = tuple(
        window_out_size(*args) for args in zip(x.shape[2:], kernel, stride, padding, dilation)
    )
    if min(out) < 1:
        raise ShapeError(
            f"unfold: kernel {tuple(kernel)} with dilation {tuple(dilation)} does not fit "
            f"input {x.shape[2:]} padded by {tuple(padding)}"
        )
    return TensorType((*x.shape[:2], *out, *kernel), x.dtype)


def _fold_infer(cols: TensorType, size, kernel, stride, padding, dilation) -> TensorType:
    return TensorType((*cols.shape[:2], *size), cols.dtype)


def _window(kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> dict:
    """The attributes of a sliding window (for test samples)."""
    return {"kernel": (kh, kw), "stride": stride, "padding": padding, "dilation": dilation}


@kernel
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


register(
    "unfold",
    ("x",),
    _unfold_infer,
    unfold,
    (
        lambda c, g: call(
            "fold",
            g,
            size=c.x.shape[2:],
            kernel=c.kernel,
            stride=c.stride,
            padding=c.padding,
            dilation=c.dilation,
        ),
    ),
    "rt.unfold({0}, {kernel}, {stride}, {padding}, {dilation}, {pad_value!r})",
    props={VIEW},  # without padding the windows are a strided view of x
    samples=(
        Sample(
            _window(2, 2, stride=(1, 2), padding=(1, 0), dilation=(2, 1)) | {"pad_value": 0.0},
            shapes=(((1, 1, 4, 5),), ((2, 2, 3, 3),)),
        ),
    ),
)


def _pad2d_infer(x: TensorType, padding, value) -> TensorType:
    if x.ndim < 2:
        raise ShapeError(f"pad2d: expected an input of at least 2 dims, got shape {x.shape}")
    (ph, pw), (h, w) = padding, x.shape[-2:]
    return TensorType((*x.shape[:-2], h + 2 * ph, w + 2 * pw), x.dtype)


@kernel
def pad2d(x, padding, value, out=None):
    """x inside a border of ``value``, ``padding`` = (ph, pw) wide on the last two dims (np.pad's
    constant mode). With ``out`` the border is written again on every call: a planned buffer
    serves other values between calls, and the border is a small part of it."""
    (ph, pw), (h, w) = padding, x.shape[-2:]
    if out is None:
        out = np.empty((*x.shape[:-2], h + 2 * ph, w + 2 * pw), x.dtype)
    out[..., :ph, :] = value
    out[..., ph + h :, :] = value
    out[..., ph : ph + h, :pw] = value
    out[..., ph : ph + h, pw + w :] = value
    out[..., ph : ph + h, pw : pw + w] = x
    return out


def _pad2d_reference(x, padding, value):
    (ph, pw) = padding
    return np.pad(x, ((0, 0),) * (x.ndim - 2) + ((ph, ph), (pw, pw)), constant_values=value)


def _inside_border(c, g):
    """The gradient of a padding: the cotangent's interior (the border is constant)."""
    (ph, pw), (h, w) = c.padding, c.x.shape[-2:]
    key = (("ellipsis",), ("slice", ph, ph + h, None), ("slice", pw, pw + w, None))
    return call("getitem", g, key=key)


# Compiled code pads the input of a padded unfold with this op (specialize_numpy's
# padded-windows rule), so the padded copy lands in a planned buffer instead of a fresh array.
register(
    "pad2d",
    ("x",),
    _pad2d_infer,
    pad2d,
    (_inside_border,),
    "rt.pad2d({0}, {padding}, {value!r})",
    out="rt.pad2d({0}, {padding}, {value!r}, out={out})",
    samples=(
        Sample(
            {"padding": (1, 2), "value": 0.0},
            shapes=(((1, 1, 4, 5),), ((2, 3),), ((2, 2, 3, 3),)),
            ref=_pad2d_reference,
        ),
        Sample({"padding": (0, 1), "value": -1.5}, shapes=(((3, 2),),), ref=_pad2d_reference),
    ),
)


@kernel
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


register(
    "fold",
    ("cols",),
    _fold_infer,
    fold,
    (
        lambda c, g: call(
            "unfold",
            g,
            kernel=c.kernel,
            stride=c.stride,
            padding=c.padding,
            dilation=c.dilation,
            pad_value=0.0,
        ),
    ),
    "rt.fold({0}, {size}, {kernel}, {stride}, {padding}, {dilation})",
    out="rt.fold({0}, {size}, {kernel}, {stride}, {padding}, {dilation}, out={out})",
    # windows of a (4, 5) image under kernel (2, 2), stride (2, 1), padding (1, 1):
    # OH = (4 + 2 - 2) // 2 + 1 = 3, OW = (5 + 2 - 2) // 1 + 1 = 6
    samples=(
        Sample(
            _window(2, 2, stride=(2, 1), padding=(1, 1)) | {"size": (4, 5)},
            shapes=(((1, 1, 3, 6, 2, 2),), ((2, 2, 3, 6, 2, 2),)),
        ),
    ),
)

# --- softmax family ------------------------------------------------------------------------------


def _softmax_infer(x: TensorType, dim) -> TensorType:
    rules.normalize_dim("softmax", dim, x.ndim)
    return rules.floating("softmax", x)


@kernel
def softmax(x, dim, out=None):
    """Stable: exp(x - max) / sum. ``out`` may be ``x``."""
    return _softmax_shifted(x, row_max(x, dim), dim, out)


def _softmax_shifted(x, peak, dim, out):
    out = np.subtract(x, peak, out=out)
    np.exp(out, out=out)
    out /= row_sum(out, dim)
    return out


def _softmax_reference(x, dim):
    """exp(x) / sum(exp(x)) as written (a test reference; no shift by the max)."""
    e = np.exp(x)
    return e / e.sum(dim, keepdims=True)


# Along a middle dim, the first (down a vector too) and the last (samples of the softmax family)
ALONG = (
    ({"dim": 1}, ((2, 3),), ((2, 3, 2),), ((3, 4),)),
    ({"dim": 0}, ((2, 3),), ((4,),), ((2, 3, 2),)),
    ({"dim": 2}, ((2, 3, 2),)),
)


def _along_samples(ref):
    return tuple(Sample(attrs, shapes=tuple(shapes), ref=ref) for attrs, *shapes in ALONG)


# Their gradients are fused ops (tracegrad/ops/fused.py).
register(
    "softmax",
    ("x",),
    _softmax_infer,
    softmax,
    (lambda c, g: call("softmax_grad", c.out, g, dim=c.dim),),
    "rt.softmax({0}, {dim})",
    out="rt.softmax({0}, {dim}, out={out})",
    saves=("out",),
    props=(OVERWRITES_INPUT, NON_NEGATIVE),
    samples=_along_samples(_softmax_reference),
)


def _masked_softmax_infer(x: TensorType, mask: TensorType, dim) -> TensorType:
    if mask.dtype is not dtypes.bool_:
        raise rules.DTypeError(f"masked_softmax: the mask must be bool, got {mask.dtype}")
    if rules.broadcast_shape("masked_softmax", x.shape, mask.shape) != x.shape:
        raise ShapeError(
            f"masked_softmax: a mask of shape {mask.shape} does not broadcast to the input's "
            f"shape {x.shape}"
        )
    return _softmax_infer(x, dim)


@kernel
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


def _masked_softmax_reference(x, mask, dim):
    """Probabilities of the unmasked entries, 0 at masked ones (a test reference)."""
    e = np.where(mask, 0.0, np.exp(x))
    return e / e.sum(dim, keepdims=True)


# softmax(where(mask, -inf, x)), which the attention pattern rewrites to (passes/stabilize.py):
# in place over the scores, and a gradient without a pass for the mask.
register(
    "masked_softmax",
    ("x", "mask"),
    _masked_softmax_infer,
    masked_softmax,
    lambda c, g: (call("masked_softmax_grad", c.out, g, c.mask, dim=c.dim), None),
    "rt.masked_softmax({0}, {1}, {dim})",
    out="rt.masked_softmax({0}, {1}, {dim}, out={out})",
    saves=("out", "mask"),
    props=(OVERWRITES_INPUT,),
    samples=(
        Sample(
            {"dim": -1},
            shapes=(((3, 4), (3, 4)), ((2, 3, 4), (3, 4))),
            inputs=(Sample(), Sample(kind="mask")),
            ref=_masked_softmax_reference,
        ),
        # down the columns, as the attention rewrite makes it
        Sample(
            {"dim": -2},
            shapes=(((2, 4, 3), (4, 3)),),
            inputs=(Sample(), Sample(kind="mask")),
            ref=_masked_softmax_reference,
        ),
    ),
)


@kernel
def log_softmax(x, dim, out=None):
    """Stable: (x - max) - log(sum(exp(x - max))). ``out`` may be ``x``. Logits of a few
    thousand elements take plain NumPy reductions: row_max's and row_sum's ways pay for their
    Python calls only on larger arrays (a training step's cross entropy on W1's (32, 10)
    logits runs in a cold cache, where every call counts)."""
    small = x.size < SMALL_REDUCTION
    peak = np.maximum.reduce(x, dim, keepdims=True, initial=-np.inf) if small else row_max(x, dim)
    out = np.subtract(x, peak, out=out)
    exp = np.exp(out, out=scratch(out, "log_softmax"))
    out -= np.log(np.add.reduce(exp, axis=dim, keepdims=True) if small else row_sum(exp, dim))
    return out


def _reduce_loss(loss, valid, reduction, dtype):
    if reduction == "none":
        return loss
    total = loss.sum(dtype=dtype)
    return total / dtype.type(np.count_nonzero(valid)) if reduction == "mean" else total


register(
    "log_softmax",
    ("x",),
    _softmax_infer,
    log_softmax,
    (lambda c, g: call("log_softmax_grad", c.out, g, dim=c.dim),),
    "rt.log_softmax({0}, {dim})",
    out="rt.log_softmax({0}, {dim}, out={out})",
    saves=("out",),
    props=(OVERWRITES_INPUT,),
    samples=_along_samples(lambda x, dim: np.log(_softmax_reference(x, dim))),
)

# --- cross entropy over class indices ------------------------------------------------------------


def class_loss_infer(name: str):
    """The type rule of a loss over class indices (cross_entropy, nll_loss): logits or
    log-probabilities (N, C, ...) against int64 targets (N, ...)."""

    def infer(
        logits: TensorType, target: TensorType, ignore_index, label_smoothing, reduction
    ) -> TensorType:
        rules.floating(name, logits)
        if target.dtype is not dtypes.int64:
            raise rules.DTypeError(
                f"{name}: target must hold int64 class indices, got {target.dtype} "
                f"with shape {target.shape} (for one-hot or soft targets use -(target * "
                "log_softmax(input, 1)).sum(1).mean())"
            )
        dim = class_dim(logits.ndim)
        expected = logits.shape[:dim] + logits.shape[dim + 1 :]
        if logits.ndim == 0 or target.shape != expected:
            raise ShapeError(
                f"{name}: input of shape {logits.shape} needs a target of shape {expected}, "
                f"got {target.shape}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(
                f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
            )
        return TensorType(target.shape if reduction == "none" else (), logits.dtype)

    return infer


@kernel
def cross_entropy(logits, target, ignore_index, label_smoothing, reduction):
    """nll_loss of the (stable) log-probabilities, computed into a scratch array: the loss
    never returns memory of its log-probabilities."""
    logp = log_softmax(logits, class_dim(logits.ndim), out=scratch(logits, "cross_entropy"))
    return nll_loss(logp, target, ignore_index, label_smoothing, reduction)


# The kernel of the fused nll_loss op (tracegrad/ops/fused.py), here beside cross_entropy's, which
# runs it.
@kernel
def nll_loss(logp, target, ignore_index, label_smoothing, reduction):
    """Cross entropy from log-probabilities: -(1 - s) logp[target] - s mean(logp) over the
    classes, zero where the target is ignored, then reduced."""
    check_targets(target, logp.shape[class_dim(logp.ndim)], ignore_index)
    if usual_class_loss(logp, target, ignore_index, label_smoothing, reduction):
        total = -logp[row_numbers(len(target)), target].sum(dtype=logp.dtype)  # a pick and a sum
        return total / logp.dtype.type(len(target)) if reduction == "mean" else total
    valid = target != ignore_index
    every = bool(valid.all())
    if logp.ndim == 2 and not label_smoothing:
        picked = logp[row_numbers(len(target)), target if every else np.where(valid, target, 0)]
        loss = np.negative(picked, out=picked) if every else np.where(valid, -picked, 0.0)
        return _reduce_loss(loss.astype(logp.dtype, copy=False), valid, reduction, logp.dtype)
    moved = np.moveaxis(logp, class_dim(logp.ndim), -1)
    picked = np.take_along_axis(moved, np.where(valid, target, 0)[..., None], -1)[..., 0]
    loss = -(1.0 - label_smoothing) * picked - label_smoothing * moved.mean(-1)
    loss = np.where(valid, loss, 0.0).astype(logp.dtype)
    return _reduce_loss(loss, valid, reduction, logp.dtype)


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
            f"[0, {classes}) for the {classes} classes of the input, or equal ignore_index "
            f"({ignore_index})"
        )


@kernel
def checked_targets(target, classes, ignore_index):
    """``target`` itself, once ``check_targets`` passes (a class loss composed of other ops
    reads its targets through this: they are data, checked as each call runs)."""
    check_targets(target, classes, ignore_index)
    return target


# class_targets: the targets as they are, or PyTorch's IndexError for one out of bounds.
register(
    "class_targets",
    ("target",),
    lambda target, classes, ignore_index: target,
    checked_targets,
    None,
    "rt.checked_targets({0}, {classes}, {ignore_index})",
    props={VIEW},
    samples=(
        Sample(
            {"classes": 3, "ignore_index": -100},
            kind="integers",
            low=0,
            high=3,
            smooth=False,
            ref=lambda target, **_: target,
        ),
    ),
)


def usual_class_loss(logp, target, ignore_index, label_smoothing, reduction) -> bool:
    """Whether a class loss is the usual one: (N, C) log-probabilities, no smoothing, reduced
    to a scalar, and no target ignored (a negative ignore_index, PyTorch's -100, below every
    target: the smallest target says so). Its kernels then take a short path."""
    if logp.ndim != 2 or label_smoothing or reduction == "none":
        return False
    if ignore_index < 0 and target.size and target.min() > ignore_index:
        return True
    return bool((target != ignore_index).all())


# Logits or log-probabilities: (N, C), one row, unbatched (C,) and spatial (N, C, d1)
CLASS_SHAPES = (((4, 3), (4,)), ((1, 5), (1,)), ((3,), ()), ((2, 3, 4), (2, 4)))


def _class_loss_sample(ignore_index, label_smoothing, reduction, shapes, low=0) -> Sample:
    """A sample of a loss over class indices: targets drawn in [low, 3)."""
    attrs = {"ignore_index": ignore_index, "label_smoothing": label_smoothing}
    targets = Sample(kind="integers", low=low, high=3)
    return Sample(attrs | {"reduction": reduction}, shapes=shapes, inputs=(Sample(), targets))


register(
    "cross_entropy",
    ("logits", "target"),
    class_loss_infer("cross_entropy"),
    cross_entropy,
    lambda c, g: (call("cross_entropy_grad", c.logits, c.target, g, **c.attrs), None),
    "rt.cross_entropy({0}, {1}, {ignore_index}, {label_smoothing}, {reduction!r})",
    saves=("logits", "target"),
    samples=(
        _class_loss_sample(-100, 0.0, "mean", CLASS_SHAPES),
        _class_loss_sample(-100, 0.0, "sum", CLASS_SHAPES[:2]),
        _class_loss_sample(-100, 0.0, "none", (*CLASS_SHAPES[:2], CLASS_SHAPES[3])),
        _class_loss_sample(1, 0.0, "none", CLASS_SHAPES[:1]),  # 1 drawn: ignored
        _class_loss_sample(0, 0.1, "mean", CLASS_SHAPES[3:]),
        _class_loss_sample(-100, 0.2, "mean", CLASS_SHAPES),
        # targets of -1 among the drawn ones, ignored (batches of 4 keep some)
        _class_loss_sample(-1, 0.0, "mean", (((4, 3), (4,)), ((2, 3, 2), (2, 2))), low=-1),
    ),
)

# --- binary cross entropy on probabilities --------------------------------------------------------

# PyTorch clamps each log of binary cross entropy at -100: a probability of 0 or 1 gives a
# finite loss.
LOG_FLOOR = -100.0


def clamped_log(p):
    """log(p), at least -100 (-100 for p <= 0 and nan), in tracegrad ops; log(0) is kept out
    of the gradient too (0 * 1/0 would be nan)."""
    positive = p > 0
    return p.where(positive, 1.0).log().clamp(min=LOG_FLOOR).where(positive, LOG_FLOOR)


def binary_cross_entropy_reference(p, t):
    """-(t log p + (1 - t) log(1 - p)), each log clamped at -100: the op's meaning, the
    composition it replaces."""
    return -(t * clamped_log(p) + (1.0 - t) * clamped_log(1.0 - p))


def clamped_log_into(q, out):
    """clamped_log in NumPy: fmax takes -100 over log's -inf (q = 0) and nan (q < 0, q nan)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(q, out=out)
    return np.fmax(out, bound_like(out, LOG_FLOOR), out=out)


def log_kept(q, out):
    """[log q >= -100] into the bool array ``out``: where clamped_log's slope is 1/q (False
    for q <= 0 and nan)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(q, out=scratch(q, "log_kept"))
    return np.greater_equal(logs, LOG_FLOOR, out=out)


@kernel
@chunked
def binary_cross_entropy(p, t, out=None):
    """Unreduced, in the reference's order of operations (its values bit for bit). ``out``
    may be ``p`` or ``t``: both are read before it is written."""
    q = np.subtract(1.0, p, out=joint_scratch(p, t, "binary_cross_entropy.q"))
    log_q = clamped_log_into(q, q)
    log_p = clamped_log_into(p, joint_scratch(p, t, "binary_cross_entropy.p"))
    log_p *= t
    log_q *= np.subtract(1.0, t, out=joint_scratch(p, t, "binary_cross_entropy.1-t"))
    log_p += log_q
    return np.negative(log_p, out=out_or_new(log_p, out))


def _binary_cross_entropy_ref(p, t):
    with np.errstate(divide="ignore"):
        return -(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log(1 - p), -100))


# F.binary_cross_entropy's elementwise loss. One kernel (the composition was a dozen passes),
# and a gradient op the sigmoid before it can join (fuse_training_step's sigmoid-bce rule).
register(
    "binary_cross_entropy",
    ("p", "t"),
    lambda p, t: rules.elementwise("binary_cross_entropy", p, t),
    binary_cross_entropy,
    (
        lambda c, g: call("binary_cross_entropy_grad", c.p, c.t, g),
        lambda c, g: g * (clamped_log(1.0 - c.p) - clamped_log(c.p)),
    ),
    "rt.binary_cross_entropy({0}, {1})",
    out="rt.binary_cross_entropy({0}, {1}, out={out})",
    saves=("p", "t"),
    props={ELEMENTWISE},
    samples=(
        Sample(
            shapes=(((2, 3), (2, 3)), ((), ()), ((3, 1), (1, 4))),
            inputs=(Sample(low=0.05, high=0.95), Sample(low=0.0, high=1.0)),
            ref=_binary_cross_entropy_ref,
        ),
    ),
)

# --- layer norm (without the affine part, which is an ordinary mul and add) ----------------------


def _layer_norm_infer(x: TensorType, ndims, eps) -> TensorType:
    if not 1 <= ndims <= x.ndim:
        raise ShapeError(f"layer_norm: cannot normalize the last {ndims} dims of shape {x.shape}")
    return rules.floating("layer_norm", x)


# Kernels of the fused layer_norm_center and layer_norm_std ops (tracegrad/ops/fused.py), here
# beside layer_norm's, which runs them.
@kernel
def layer_norm_center(x, ndims, out=None):
    """x - mean(x) over the last ``ndims`` dims. ``out`` may be ``x``."""
    return np.subtract(x, row_mean(x, layer_norm_axes(x.ndim, ndims)), out=out)


@kernel
def layer_norm_std(centered, ndims, eps, out=None):
    """sqrt(mean(centered^2) + eps) over the last ``ndims`` dims (kept, as 1s)."""
    square = np.multiply(centered, centered, out=scratch(centered, "layer_norm"))
    variance = np.add(row_mean(square, layer_norm_axes(centered.ndim, ndims)), eps, out=out)
    return np.sqrt(variance, out=variance)


@kernel
def layer_norm(x, ndims, eps, out=None):
    """(x - mean) / sqrt(var + eps) over the last ``ndims`` dims. ``out`` may be ``x``."""
    out = layer_norm_center(x, ndims, out=out)
    out /= layer_norm_std(out, ndims, eps)
    return out


def _layer_norm_reference(x, ndims, eps):
    """(x - mean) / sqrt(var + eps) over the last ``ndims`` dims (a test reference)."""
    axes = tuple(range(x.ndim - ndims, x.ndim))
    return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)


register(
    "layer_norm",
    ("x",),
    _layer_norm_infer,
    layer_norm,
    (lambda c, g: call("layer_norm_grad", c.x, c.out, g, **c.attrs),),
    "rt.layer_norm({0}, {ndims}, {eps!r})",
    out="rt.layer_norm({0}, {ndims}, {eps!r}, out={out})",
    saves=("x", "out"),
    props=(OVERWRITES_INPUT,),
    samples=(
        Sample(
            {"ndims": 1, "eps": 1e-5},
            shapes=(((2, 3),), ((2, 2, 4),), ((5,),)),
            ref=_layer_norm_reference,
        ),
        Sample(
            {"ndims": 2, "eps": 1e-5}, shapes=(((2, 2, 3),), ((3, 2),)), ref=_layer_norm_reference
        ),
    ),
)
