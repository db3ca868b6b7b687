"""Fused ops: one NumPy kernel each, where the plain VJP would take many small ops, and the
pieces a compiled training step splits gelu and layer norm into, so the backward reads what
the forward computed (t, std) instead of computing it again.

NOTE: each is declared with a *reference* written in tracegrad ops (the formula its kernel
computes). The reference is its specification and also its derivative: the VJP of a fused op is
the VJP of its reference, so gradients of gradients stay exact without hand-written
second-order rules.
"""

from __future__ import annotations

from tracegrad import tape
from tracegrad.dtypes import TensorType
from tracegrad.ops import kernels, rules
from tracegrad.ops.nn import class_loss_infer
from tracegrad.ops.reduce import keep_dims
from tracegrad.ops.registry import ELEMENTWISE, OVERWRITES_INPUT, call, register


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


def fused(name, inputs, kernel, reference, emit, out=None, elementwise=False, infer=None, props=()):
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
        t = call("tanh", kernels.SQRT_2_OVER_PI * (x + kernels.GELU_TANH_COEF * x * x * x))
        dinner = kernels.SQRT_2_OVER_PI * (1.0 + 3.0 * kernels.GELU_TANH_COEF * x * x)
        return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)
    cdf = 0.5 * (1.0 + call("erf", x * kernels.INV_SQRT_2))
    pdf = call("exp", -0.5 * x * x) * kernels.INV_SQRT_2PI
    return g * (cdf + x * pdf)


fused(
    "relu_grad",
    ("y", "g"),
    kernels.relu_grad,
    _relu_reference,
    "rt.relu_grad({0}, {1})",
    "rt.relu_grad({0}, {1}, out={out})",
    elementwise=True,
)
fused(
    "tanh_grad",
    ("y", "g"),
    kernels.tanh_grad,
    _tanh_reference,
    "rt.tanh_grad({0}, {1})",
    "rt.tanh_grad({0}, {1}, out={out})",
    elementwise=True,
)
fused(
    "sigmoid_grad",
    ("y", "g"),
    kernels.sigmoid_grad,
    _sigmoid_reference,
    "rt.sigmoid_grad({0}, {1})",
    "rt.sigmoid_grad({0}, {1}, out={out})",
    elementwise=True,
)
fused(
    "gelu_grad",
    ("x", "g"),
    kernels.gelu_grad,
    gelu_reference,
    "rt.gelu_grad({0}, {1}, {approximate!r})",
    "rt.gelu_grad({0}, {1}, {approximate!r}, out={out})",
    elementwise=True,
)

# --- gelu's tanh form in pieces: a training step keeps t = tanh(...) for its backward -----------


def _gelu_tanh_reference(x):
    return call("tanh", kernels.SQRT_2_OVER_PI * (x + kernels.GELU_TANH_COEF * x * x * x))


def _gelu_with_tanh_reference(x, t):
    return 0.5 * x * (1.0 + t)


def _gelu_grad_with_tanh_reference(x, t, g):
    """The tanh branch of gelu_reference, with x and t independent inputs."""
    dinner = kernels.SQRT_2_OVER_PI * (1.0 + 3.0 * kernels.GELU_TANH_COEF * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)


fused(
    "gelu_tanh",
    ("x",),
    kernels.gelu_tanh,
    _gelu_tanh_reference,
    "rt.gelu_tanh({0})",
    "rt.gelu_tanh({0}, out={out})",
    elementwise=True,
)
fused(
    "gelu_with_tanh",
    ("x", "t"),
    kernels.gelu_with_tanh,
    _gelu_with_tanh_reference,
    "rt.gelu_with_tanh({0}, {1})",
    "rt.gelu_with_tanh({0}, {1}, out={out})",
    elementwise=True,
)
fused(
    "gelu_grad_with_tanh",
    ("x", "t", "g"),
    kernels.gelu_grad_with_tanh,
    _gelu_grad_with_tanh_reference,
    "rt.gelu_grad_with_tanh({0}, {1}, {2})",
    "rt.gelu_grad_with_tanh({0}, {1}, {2}, out={out})",
    elementwise=True,
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
    classes = like.shape[kernels.class_dim(like.ndim)]
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
    return (probs - wanted) * (valid * g).unsqueeze(kernels.class_dim(probs.ndim))


def cross_entropy_reference(logits, target, g, ignore_index, label_smoothing, reduction):
    """d loss / d logits = softmax(logits) - smoothed one-hot(target), zero where ignored."""
    probs = call("softmax", logits, dim=kernels.class_dim(logits.ndim))
    return _class_loss_grad(probs, target, g, ignore_index, label_smoothing, reduction)


def _log_softmax_nll_reference(logp, target, g, ignore_index, label_smoothing, reduction):
    """d nll_loss(log_softmax(x)) / dx from logp = log_softmax(x): exp(logp) - one-hot."""
    probs = call("exp", logp)
    return _class_loss_grad(probs, target, g, ignore_index, label_smoothing, reduction)


def _nll_loss_reference(logp, target, ignore_index, label_smoothing, reduction):
    """-(smoothed one-hot(target) . logp) over the classes, counted samples only, reduced."""
    wanted, valid = _smoothed_targets(logp, target, ignore_index, label_smoothing)
    loss = -(wanted * logp).sum(dim=kernels.class_dim(logp.ndim)) * valid
    if reduction == "none":
        return loss
    return loss.sum() / valid.sum() if reduction == "mean" else loss.sum()


def layer_norm_reference(x, y, g, ndims, eps):
    """With y = (x - mean) * rstd: dx = rstd * (g - mean(g) - y * mean(g * y))."""
    axes = kernels.layer_norm_axes(x.ndim, ndims)
    centered = x - x.mean(dim=axes, keepdim=True)
    rstd = 1.0 / call("sqrt", (centered * centered).mean(dim=axes, keepdim=True) + eps)
    return rstd * (g - g.mean(dim=axes, keepdim=True) - y * (g * y).mean(dim=axes, keepdim=True))


def _layer_norm_center_reference(x, ndims):
    return x - x.mean(dim=kernels.layer_norm_axes(x.ndim, ndims), keepdim=True)


def _layer_norm_std_reference(centered, ndims, eps):
    axes = kernels.layer_norm_axes(centered.ndim, ndims)
    return call("sqrt", (centered * centered).mean(dim=axes, keepdim=True) + eps)


def _layer_norm_grad_from_std_reference(y, g, std, ndims):
    axes = kernels.layer_norm_axes(y.ndim, ndims)
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


fused(
    "softmax_grad",
    ("y", "g"),
    kernels.softmax_grad,
    _softmax_reference,
    "rt.softmax_grad({0}, {1}, {dim})",
    "rt.softmax_grad({0}, {1}, {dim}, out={out})",
)
fused(
    "masked_softmax_grad",
    ("y", "g", "mask"),
    kernels.masked_softmax_grad,
    _masked_softmax_reference,
    "rt.masked_softmax_grad({0}, {1}, {2}, {dim})",
    "rt.masked_softmax_grad({0}, {1}, {2}, {dim}, out={out})",
    infer=_input_type,
)
fused(
    "log_softmax_grad",
    ("y", "g"),
    kernels.log_softmax_grad,
    _log_softmax_reference,
    "rt.log_softmax_grad({0}, {1}, {dim})",
    "rt.log_softmax_grad({0}, {1}, {dim}, out={out})",
)
fused(
    "cross_entropy_grad",
    ("logits", "target", "g"),
    kernels.cross_entropy_grad,
    cross_entropy_reference,
    "rt.cross_entropy_grad({0}, {1}, {2}, {ignore_index}, {label_smoothing}, {reduction!r})",
    infer=_cross_entropy_grad_infer,
)
fused(
    "nll_loss",
    ("logp", "target"),
    kernels.nll_loss,
    _nll_loss_reference,
    "rt.nll_loss({0}, {1}, {ignore_index}, {label_smoothing}, {reduction!r})",
    infer=class_loss_infer("nll_loss"),
)
fused(
    "log_softmax_nll_grad",
    ("logp", "target", "g"),
    kernels.log_softmax_nll_grad,
    _log_softmax_nll_reference,
    "rt.log_softmax_nll_grad({0}, {1}, {2}, {ignore_index}, {label_smoothing}, {reduction!r})",
    "rt.log_softmax_nll_grad({0}, {1}, {2}, {ignore_index}, {label_smoothing}, {reduction!r}, "
    "out={out})",
    infer=_cross_entropy_grad_infer,
    props=(OVERWRITES_INPUT,),
)
fused(
    "layer_norm_grad",
    ("x", "y", "g"),
    kernels.layer_norm_grad,
    layer_norm_reference,
    "rt.layer_norm_grad({0}, {1}, {2}, {ndims}, {eps!r})",
    "rt.layer_norm_grad({0}, {1}, {2}, {ndims}, {eps!r}, out={out})",
)
# A training step keeps layer norm's std for the backward: the forward is x - mean (centered),
# std = sqrt(mean(centered^2) + eps) and centered / std, and the gradient reads y and std.
fused(
    "layer_norm_center",
    ("x",),
    kernels.layer_norm_center,
    _layer_norm_center_reference,
    "rt.layer_norm_center({0}, {ndims})",
    "rt.layer_norm_center({0}, {ndims}, out={out})",
    props=(OVERWRITES_INPUT,),
)
fused(
    "layer_norm_std",
    ("centered",),
    kernels.layer_norm_std,
    _layer_norm_std_reference,
    "rt.layer_norm_std({0}, {ndims}, {eps!r})",
    "rt.layer_norm_std({0}, {ndims}, {eps!r}, out={out})",
    infer=_std_infer,
)
fused(
    "layer_norm_grad_from_std",
    ("y", "g", "std"),
    kernels.layer_norm_grad_from_std,
    _layer_norm_grad_from_std_reference,
    "rt.layer_norm_grad_from_std({0}, {1}, {2}, {ndims})",
    "rt.layer_norm_grad_from_std({0}, {1}, {2}, {ndims}, out={out})",
    infer=_input_type,
)
fused(
    "extreme_grad",
    ("x", "y", "g"),
    kernels.extreme_grad,
    extreme_reference,
    "rt.extreme_grad({0}, {1}, {2}, {dims}, {keepdim})",
    out="rt.extreme_grad({0}, {1}, {2}, {dims}, {keepdim}, out={out})",
    infer=_input_type,
)
