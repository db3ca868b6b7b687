"""Fused ops: one NumPy kernel each, where the plain VJP would take many small ops, and the
pieces a compiled training step splits gelu and layer norm into, so the backward reads what
the forward computed (t, std) instead of computing it again.

NOTE: each is declared with a *reference* written in tracegrad ops (the formula its kernel
computes). The reference is its specification and also its derivative: the VJP of a fused op is
the VJP of its reference, so gradients of gradients stay exact without hand-written
second-order rules.

Each kernel sits above its op's declaration and is safe when ``out`` is one of its inputs: an
input is read only before ``out`` is written, or copied first.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tracegrad import tape
from tracegrad.dtypes import TensorType
from tracegrad.ops import rules
from tracegrad.ops.elementwise import (
    GELU_TANH_COEF,
    INV_SQRT_2,
    INV_SQRT_2PI,
    SQRT_2_OVER_PI,
    erf,
    gelu_from_tanh,
    gelu_tanh_into,
)
from tracegrad.ops.nn import (
    LOG_FLOOR,
    class_loss_infer,
    layer_norm_center,
    layer_norm_std,
    log_kept,
    nll_loss,
    usual_class_loss,
)
from tracegrad.ops.reduce import keep_dims, window_cells
from tracegrad.ops.registry import ELEMENTWISE, OVERWRITES_INPUT, Sample, call, register
from tracegrad.ops.runtime import (
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


def reference_vjp(reference):
    """The VJP rule of an op from its reference composition: d(reference)/d(each input)."""

    def rule(c, g):
        create_graph = tape.is_grad_enabled()
        # Fresh views stand for the inputs, so each input gets its own partial derivative even
        # when one input was computed from another.
        with tape.enable_grad():
            stand_ins = [
                call("reshape", t, shape=tuple(t.shape)) if need else t
                for t, need in zip(c.inputs, c.needs_input_grad, strict=True)
            ]
            out = reference(*stand_ins, **c.attrs)
        wanted = [t for t, need in zip(stand_ins, c.needs_input_grad, strict=True) if need]
        grads = iter(
            tape.run_backward(
                [out], [g], retain_graph=create_graph, create_graph=create_graph, capture=wanted
            )
        )
        results = []
        for t, need in zip(c.inputs, c.needs_input_grad, strict=True):
            grad = next(grads) if need else None
            # an input the reference reads only through comparisons has a zero derivative
            results.append(t * 0.0 if need and grad is None else grad)
        return tuple(results)

    return rule


def fused(
    name,
    inputs,
    kernel,
    reference,
    emit,
    out=None,
    elementwise=False,
    infer=None,
    props=(),
    samples=(),
):
    """Declare a fused op: its result has the type of its last input (the cotangent) unless
    ``infer`` says otherwise."""

    def same_as_cotangent(*types, **attrs) -> TensorType:
        return types[-1]

    props = {*props, ELEMENTWISE} if elementwise else set(props)
    register(
        name,
        inputs,
        infer or same_as_cotangent,
        kernel,
        reference_vjp(reference),
        emit,
        saves=tuple(inputs),
        props=props,
        out=out,
        samples=samples,
    )


# --- elementwise activations: (output or input, cotangent) -> input cotangent -------------------


def _relu_reference(y, g):
    return g * (y > 0)  # d relu(x) = [x > 0], read off the output


def _tanh_reference(y, g):
    return g * (1.0 - y * y)


def _sigmoid_reference(y, g):
    return g * y * (1.0 - y)


def gelu_reference(x, g, approximate):
    """d gelu(x) = Phi(x) + x phi(x), with Phi in PyTorch's tanh form when asked."""
    if approximate == "tanh":
        t = call("tanh", SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x * x * x))
        dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEF * x * x)
        return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)
    cdf = 0.5 * (1.0 + call("erf", x * INV_SQRT_2))
    pdf = call("exp", -0.5 * x * x) * INV_SQRT_2PI
    return g * (cdf + x * pdf)


@kernel
@chunked
def relu_grad(y, g, out=None):
    return np.multiply(g, np.greater(y, 0, out=scratch(y, "relu_grad", bool)), out=out)


fused(
    "relu_grad",
    ("y", "g"),
    relu_grad,
    _relu_reference,
    "rt.relu_grad({0}, {1})",
    "rt.relu_grad({0}, {1}, out={out})",
    elementwise=True,
)


@kernel
@chunked
def tanh_grad(y, g, out=None):
    slope = np.multiply(y, y, out=scratch(y, "tanh_grad"))
    np.subtract(1.0, slope, out=slope)
    return np.multiply(g, slope, out=out)


fused(
    "tanh_grad",
    ("y", "g"),
    tanh_grad,
    _tanh_reference,
    "rt.tanh_grad({0}, {1})",
    "rt.tanh_grad({0}, {1}, out={out})",
    elementwise=True,
)


@kernel
@chunked
def sigmoid_grad(y, g, out=None):
    slope = np.subtract(1.0, y, out=scratch(y, "sigmoid_grad"))
    slope *= y
    return np.multiply(g, slope, out=out)


fused(
    "sigmoid_grad",
    ("y", "g"),
    sigmoid_grad,
    _sigmoid_reference,
    "rt.sigmoid_grad({0}, {1})",
    "rt.sigmoid_grad({0}, {1}, out={out})",
    elementwise=True,
)


@kernel
@chunked
def gelu_grad(x, g, approximate, out=None):
    """d gelu(x) = Phi(x) + x phi(x) (Phi in PyTorch's tanh form when asked)."""
    if approximate == "tanh":
        t = gelu_tanh_into(x, out=scratch(x, "gelu_grad.t"))
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


fused(
    "gelu_grad",
    ("x", "g"),
    gelu_grad,
    gelu_reference,
    "rt.gelu_grad({0}, {1}, {approximate!r})",
    "rt.gelu_grad({0}, {1}, {approximate!r}, out={out})",
    elementwise=True,
)

# --- gelu's tanh form in pieces: a training step keeps t = tanh(...) for its backward -----------


def _gelu_tanh_reference(x):
    return call("tanh", SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x * x * x))


def _gelu_with_tanh_reference(x, t):
    return 0.5 * x * (1.0 + t)


def _gelu_grad_with_tanh_reference(x, t, g):
    """The tanh branch of gelu_reference, with x and t independent inputs."""
    dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEF * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)


@kernel
@chunked
def gelu_tanh(x, out=None):
    """t = tanh(c (x + k x^3)), the tanh in gelu's tanh form (its gradient reads it too)."""
    return gelu_tanh_into(x, out=out)


fused(
    "gelu_tanh",
    ("x",),
    gelu_tanh,
    _gelu_tanh_reference,
    "rt.gelu_tanh({0})",
    "rt.gelu_tanh({0}, out={out})",
    elementwise=True,
)


@kernel
@chunked
def gelu_with_tanh(x, t, out=None):
    """gelu(x) = x (1 + t) / 2 from t = gelu_tanh(x). ``out`` may be ``x`` or ``t``; unless
    it is ``x``, 1 + t is made there (no scratch pass)."""
    free = out is not None and not np.may_share_memory(out, x) and np.shape(out) == np.shape(t)
    return gelu_from_tanh(x, t, out=out, work=out if free else None)


fused(
    "gelu_with_tanh",
    ("x", "t"),
    gelu_with_tanh,
    _gelu_with_tanh_reference,
    "rt.gelu_with_tanh({0}, {1})",
    "rt.gelu_with_tanh({0}, {1}, out={out})",
    elementwise=True,
)


@kernel
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
    slope = np.subtract(1.0, t, out=joint_scratch(x, t, "gelu_grad.slope"))
    slope *= q
    slope += 0.5
    slope *= np.add(t, 1.0, out=q) if np.shape(t) == q.shape else np.add(t, 1.0)
    return np.multiply(g, slope, out=out)


fused(
    "gelu_grad_with_tanh",
    ("x", "t", "g"),
    gelu_grad_with_tanh,
    _gelu_grad_with_tanh_reference,
    "rt.gelu_grad_with_tanh({0}, {1}, {2})",
    "rt.gelu_grad_with_tanh({0}, {1}, {2}, out={out})",
    elementwise=True,
)

# --- binary cross entropy on probabilities: its gradient, alone and after a sigmoid -------------


def _log_slope(q):
    """d clamped_log(q) / dq: 1/q where the log is not clamped, 0 where it is."""
    kept = (q > 0) & (q.where(q > 0, 1.0).log() >= LOG_FLOOR)
    return (1.0 / q.where(kept, 1.0)).where(kept, 0.0)


def _binary_cross_entropy_grad_reference(p, t, g):
    return g * ((1.0 - t) * _log_slope(1.0 - p) - t * _log_slope(p))


def _sigmoid_binary_cross_entropy_grad_reference(p, t, g):
    """sigmoid_grad(p, binary_cross_entropy_grad(p, t, g)), the ops eager runs."""
    return _sigmoid_reference(p, _binary_cross_entropy_grad_reference(p, t, g))


def _kept_ratio(num, den, out):
    """num / den where den's log is not clamped, 0 where it is; ``out`` may be ``num``."""
    clamped = np.logical_not(log_kept(den, scratch(den, "kept_ratio", bool)))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(num, den, out=out)
    np.copyto(out, 0.0, where=clamped)
    return out


@kernel
@chunked
def binary_cross_entropy_grad(p, t, g, out=None):
    """g ((1 - t) / (1 - p) - t / p), each term 0 where its log is clamped. ``out`` may be any
    input: p and t are read before it is written, g by the write itself."""
    q = np.subtract(1.0, p, out=joint_scratch(p, t, "binary_cross_entropy_grad.q"))
    rest = np.subtract(1.0, t, out=joint_scratch(p, t, "binary_cross_entropy_grad.rest"))
    slope = _kept_ratio(rest, q, rest)
    slope -= _kept_ratio(t, p, joint_scratch(p, t, "binary_cross_entropy_grad.t"))
    return np.multiply(g, slope, out=out_or_new(slope, out))


def _binary_cross_entropy_grad_samples(ref):
    """Probabilities away from 0 and 1 (no log clamped), targets in [0, 1], any cotangent."""
    probability, target = Sample(low=0.05, high=0.95), Sample(low=0.0, high=1.0)
    return (
        Sample(
            shapes=(((2, 3), (2, 3), (2, 3)), ((), (), ())),
            inputs=(probability, target, Sample()),
            ref=ref,
        ),
    )


fused(
    "binary_cross_entropy_grad",
    ("p", "t", "g"),
    binary_cross_entropy_grad,
    _binary_cross_entropy_grad_reference,
    "rt.binary_cross_entropy_grad({0}, {1}, {2})",
    "rt.binary_cross_entropy_grad({0}, {1}, {2}, out={out})",
    elementwise=True,
    samples=_binary_cross_entropy_grad_samples(lambda p, t, g: g * ((1 - t) / (1 - p) - t / p)),
)


@functools.cache
def _far_from_clamp(dtype) -> float:
    return max(math.exp(-99.0), math.sqrt(np.finfo(dtype).tiny))


def _far_from_0_and_1(p, out=None):
    """Whether p and 1 - p are at least e^-99 and sqrt(tiny) (1e-19 in float32, 1e-43 in
    float64): far above a log clamped at -100, and 1/p far from overflowing. With ``out``,
    where (a bool array); without, everywhere (two reductions, no pass of its own)."""
    safe = _far_from_clamp(np.result_type(p))
    if out is None:
        return np.size(p) == 0 or (np.min(p) >= safe and 1 - np.max(p) >= safe)
    q = np.subtract(1, p, out=scratch(p, "far_from_0_and_1.q"))
    far = np.greater_equal(p, safe, out=out)
    far &= np.greater_equal(q, safe, out=scratch(p, "far_from_0_and_1", bool))
    return far


@kernel
@chunked
def sigmoid_binary_cross_entropy_grad(p, t, g, out=None):
    """The gradient of binary_cross_entropy(sigmoid(x), t) at x, from p = sigmoid(x): g (p - t)
    where p is far from 0 and 1 (eager's sigmoid_grad(p, binary_cross_entropy_grad(p, t, g))
    is that up to rounding); elsewhere (a saturated sigmoid, where a log may be clamped),
    eager's formula itself. ``out`` may be any input: they are read before it is written."""
    d = np.subtract(p, t, out=joint_scratch(p, t, "sigmoid_binary_cross_entropy_grad.d"))
    if _far_from_0_and_1(p):
        return np.multiply(g, d, out=out_or_new(d, out))
    exact = binary_cross_entropy_grad(p, t, g, out=scratch(g, "sigmoid_binary_cross_entropy_grad"))
    exact = sigmoid_grad(p, exact, out=exact)
    near = np.logical_not(
        _far_from_0_and_1(p, scratch(p, "sigmoid_binary_cross_entropy_grad", bool))
    )
    result = np.multiply(g, d, out=out_or_new(d, out))
    np.copyto(result, exact, where=near)
    return result


fused(
    "sigmoid_binary_cross_entropy_grad",
    ("p", "t", "g"),
    sigmoid_binary_cross_entropy_grad,
    _sigmoid_binary_cross_entropy_grad_reference,
    "rt.sigmoid_binary_cross_entropy_grad({0}, {1}, {2})",
    "rt.sigmoid_binary_cross_entropy_grad({0}, {1}, {2}, out={out})",
    elementwise=True,
    samples=_binary_cross_entropy_grad_samples(lambda p, t, g: g * (p - t)),
)

# --- softmax family and normalization ---------------------------------------------------------


def _softmax_reference(y, g, dim):
    return y * (g - (g * y).sum(dim=dim, keepdim=True))


def _masked_softmax_reference(y, g, mask, dim):
    return call("where", mask, y * 0.0, _softmax_reference(y, g, dim))


def _log_softmax_reference(y, g, dim):
    return g - call("exp", y) * g.sum(dim=dim, keepdim=True)


def _smoothed_targets(like, target, ignore_index, label_smoothing):
    """(smoothed one-hot targets laid out like ``like`` (N, C, ...), 1 where counted else 0)."""
    dtype = like.dtype.name
    classes = like.shape[class_dim(like.ndim)]
    keep = target != ignore_index
    one_hot = call("one_hot", target * keep, num_classes=classes)
    order = (0, one_hot.ndim - 1, *range(1, one_hot.ndim - 1)) if like.ndim > 1 else (0,)
    one_hot = call("cast", call("permute", one_hot, dims=order), dtype=dtype)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / classes, call(
        "cast", keep, dtype=dtype
    )


def _class_loss_grad(probs, target, g, ignore_index, label_smoothing, reduction):
    """(probs - smoothed one-hot(target)) weighted by each sample's share of g."""
    wanted, valid = _smoothed_targets(probs, target, ignore_index, label_smoothing)
    if reduction == "mean":
        g = g / valid.sum()
    return (probs - wanted) * (valid * g).unsqueeze(class_dim(probs.ndim))


def cross_entropy_reference(logits, target, g, ignore_index, label_smoothing, reduction):
    """d loss / d logits = softmax(logits) - smoothed one-hot(target), zero where ignored."""
    probs = call("softmax", logits, dim=class_dim(logits.ndim))
    return _class_loss_grad(probs, target, g, ignore_index, label_smoothing, reduction)


def _log_softmax_nll_reference(logp, target, g, ignore_index, label_smoothing, reduction):
    """d nll_loss(log_softmax(x)) / dx from logp = log_softmax(x): exp(logp) - one-hot."""
    probs = call("exp", logp)
    return _class_loss_grad(probs, target, g, ignore_index, label_smoothing, reduction)


def _nll_loss_reference(logp, target, ignore_index, label_smoothing, reduction):
    """-(smoothed one-hot(target) . logp) over the classes, counted samples only, reduced."""
    wanted, valid = _smoothed_targets(logp, target, ignore_index, label_smoothing)
    loss = -(wanted * logp).sum(dim=class_dim(logp.ndim)) * valid
    if reduction == "none":
        return loss
    return loss.sum() / valid.sum() if reduction == "mean" else loss.sum()


def layer_norm_reference(x, y, g, ndims, eps):
    """With y = (x - mean) * rstd: dx = rstd * (g - mean(g) - y * mean(g * y))."""
    axes = layer_norm_axes(x.ndim, ndims)
    centered = x - x.mean(dim=axes, keepdim=True)
    rstd = 1.0 / call("sqrt", (centered * centered).mean(dim=axes, keepdim=True) + eps)
    return rstd * (g - g.mean(dim=axes, keepdim=True) - y * (g * y).mean(dim=axes, keepdim=True))


def _layer_norm_center_reference(x, ndims):
    return x - x.mean(dim=layer_norm_axes(x.ndim, ndims), keepdim=True)


def _layer_norm_std_reference(centered, ndims, eps):
    axes = layer_norm_axes(centered.ndim, ndims)
    return call("sqrt", (centered * centered).mean(dim=axes, keepdim=True) + eps)


def _layer_norm_grad_from_std_reference(y, g, std, ndims):
    axes = layer_norm_axes(y.ndim, ndims)
    return (g - g.mean(dim=axes, keepdim=True) - y * (g * y).mean(dim=axes, keepdim=True)) / std


def _std_infer(centered: TensorType, ndims, eps) -> TensorType:
    """The statistics' type: the last ``ndims`` dims kept as 1s."""
    return TensorType((*centered.shape[: centered.ndim - ndims], *(1,) * ndims), centered.dtype)


def extreme_reference(x, y, g, dims, keepdim):
    """amax/amin share the gradient evenly between tied extremes, as torch.amax does."""
    hits = call("cast", call("eq", x, keep_dims(y, x.shape, dims, keepdim)), dtype=x.dtype.name)
    return hits / hits.sum(dim=dims, keepdim=True) * keep_dims(g, x.shape, dims, keepdim)


def _input_type(*types, **attrs) -> TensorType:
    return types[0]


def _cross_entropy_grad_infer(logits, target, g, **attrs) -> TensorType:
    return rules.floating("cross_entropy_grad", logits)


@kernel
def softmax_grad(y, g, dim, out=None):
    """y * (g - sum(g * y)) over ``dim``."""
    gy = np.multiply(g, y, out=scratch(y, "softmax_grad"))
    total = row_sum(gy, dim)
    np.subtract(g, total, out=gy)
    return np.multiply(y, gy, out=out)


fused(
    "softmax_grad",
    ("y", "g"),
    softmax_grad,
    _softmax_reference,
    "rt.softmax_grad({0}, {1}, {dim})",
    "rt.softmax_grad({0}, {1}, {dim}, out={out})",
)


@kernel
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


fused(
    "masked_softmax_grad",
    ("y", "g", "mask"),
    masked_softmax_grad,
    _masked_softmax_reference,
    "rt.masked_softmax_grad({0}, {1}, {2}, {dim})",
    "rt.masked_softmax_grad({0}, {1}, {2}, {dim}, out={out})",
    infer=_input_type,
)


@kernel
def log_softmax_grad(y, g, dim, out=None):
    """g - exp(y) * sum(g) over ``dim``."""
    total = row_sum(g, dim)
    scaled = np.exp(y, out=scratch(y, "log_softmax_grad"))
    scaled *= total
    return np.subtract(g, scaled, out=out)


fused(
    "log_softmax_grad",
    ("y", "g"),
    log_softmax_grad,
    _log_softmax_reference,
    "rt.log_softmax_grad({0}, {1}, {dim})",
    "rt.log_softmax_grad({0}, {1}, {dim}, out={out})",
)


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
        grad[row_numbers(len(target)), picks] -= weight
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


@kernel
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


fused(
    "cross_entropy_grad",
    ("logits", "target", "g"),
    cross_entropy_grad,
    cross_entropy_reference,
    "rt.cross_entropy_grad({0}, {1}, {2}, {ignore_index}, {label_smoothing}, {reduction!r})",
    infer=_cross_entropy_grad_infer,
)
fused(
    "nll_loss",
    ("logp", "target"),
    nll_loss,
    _nll_loss_reference,
    "rt.nll_loss({0}, {1}, {ignore_index}, {label_smoothing}, {reduction!r})",
    infer=class_loss_infer("nll_loss"),
)


@kernel
def log_softmax_nll_grad(logp, target, g, ignore_index, label_smoothing, reduction, out=None):
    """The gradient of nll_loss(log_softmax(x)) with respect to x, from the log-probabilities
    the forward kept: exp(logp) - smoothed one-hot(target), weighted by g. ``out`` may be
    ``logp``."""
    if usual_class_loss(logp, target, ignore_index, label_smoothing, reduction):
        # (what the general way below computes then, without its helpers' calls)
        n = len(target)
        weight = np.asarray(g, logp.dtype)
        weight = weight / logp.dtype.type(n) if reduction == "mean" else weight
        grad = np.exp(logp, out=out)
        grad *= weight
        grad[row_numbers(n), target] -= weight
        return grad
    valid = target != ignore_index
    every = bool(valid.all())
    weight = _loss_weight(g, valid, every, reduction, logp.dtype)
    grad = np.exp(logp, out=out)
    grad *= _class_weight(weight, logp.ndim)
    return _subtract_targets(grad, target, valid, every, weight, label_smoothing)


fused(
    "log_softmax_nll_grad",
    ("logp", "target", "g"),
    log_softmax_nll_grad,
    _log_softmax_nll_reference,
    "rt.log_softmax_nll_grad({0}, {1}, {2}, {ignore_index}, {label_smoothing}, {reduction!r})",
    "rt.log_softmax_nll_grad({0}, {1}, {2}, {ignore_index}, {label_smoothing}, {reduction!r}, "
    "out={out})",
    infer=_cross_entropy_grad_infer,
    props=(OVERWRITES_INPUT,),
)


@kernel
def layer_norm_grad(x, y, g, ndims, eps, out=None):
    """With y = (x - mean) * rstd: dx = rstd * (g - mean(g) - y * mean(g * y))."""
    centered = layer_norm_center(x, ndims, out=scratch(x, "layer_norm_grad"))
    return layer_norm_grad_from_std(y, g, layer_norm_std(centered, ndims, eps), ndims, out=out)


fused(
    "layer_norm_grad",
    ("x", "y", "g"),
    layer_norm_grad,
    layer_norm_reference,
    "rt.layer_norm_grad({0}, {1}, {2}, {ndims}, {eps!r})",
    "rt.layer_norm_grad({0}, {1}, {2}, {ndims}, {eps!r}, out={out})",
)
# A training step keeps layer norm's std for the backward: the forward is x - mean (centered),
# std = sqrt(mean(centered^2) + eps) and centered / std, and the gradient reads y and std.
fused(
    "layer_norm_center",
    ("x",),
    layer_norm_center,
    _layer_norm_center_reference,
    "rt.layer_norm_center({0}, {ndims})",
    "rt.layer_norm_center({0}, {ndims}, out={out})",
    props=(OVERWRITES_INPUT,),
)
fused(
    "layer_norm_std",
    ("centered",),
    layer_norm_std,
    _layer_norm_std_reference,
    "rt.layer_norm_std({0}, {ndims}, {eps!r})",
    "rt.layer_norm_std({0}, {ndims}, {eps!r}, out={out})",
    infer=_std_infer,
)


@kernel
def layer_norm_grad_from_std(y, g, std, ndims, out=None):
    """layer_norm_grad with the forward's std = sqrt(var + eps) kept: nothing of x is needed."""
    axes = layer_norm_axes(y.ndim, ndims)
    rstd = 1.0 / std
    work = np.multiply(g, y, out=scratch(y, "layer_norm_grad"))
    projection = row_mean(work, axes)
    np.multiply(y, projection, out=work)
    np.subtract(g, work, out=work)
    work -= row_mean(g, axes)
    return np.multiply(work, rstd, out=out)


fused(
    "layer_norm_grad_from_std",
    ("y", "g", "std"),
    layer_norm_grad_from_std,
    _layer_norm_grad_from_std_reference,
    "rt.layer_norm_grad_from_std({0}, {1}, {2}, {ndims})",
    "rt.layer_norm_grad_from_std({0}, {1}, {2}, {ndims}, out={out})",
    infer=_input_type,
)


@kernel
def extreme_grad(x, y, g, dims, keepdim, out=None):
    """amax/amin: the gradient shared evenly between tied extremes."""
    cells = window_cells(x, dims, keepdim)
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


fused(
    "extreme_grad",
    ("x", "y", "g"),
    extreme_grad,
    extreme_reference,
    "rt.extreme_grad({0}, {1}, {2}, {dims}, {keepdim})",
    out="rt.extreme_grad({0}, {1}, {2}, {dims}, {keepdim}, out={out})",
    infer=_input_type,
)
