"""Neural-network primitives: sliding windows (for conv and pooling), softmax family, layer norm.

NOTE: softmax, log_softmax, cross_entropy and layer_norm are primitives rather than compositions
because their stable forms (subtracting the max, normalizing once) and their short hand-written
VJPs are both cheaper and more accurate than differentiating the naive formulas.
"""

from __future__ import annotations

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import kernels, rules
from tracegrad.ops.registry import NON_NEGATIVE, OVERWRITES_INPUT, VIEW, call, register

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


register(
    "unfold",
    ("x",),
    _unfold_infer,
    kernels.unfold,
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
)
register(
    "fold",
    ("cols",),
    _fold_infer,
    kernels.fold,
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
)

# --- softmax family ------------------------------------------------------------------------------


def _softmax_infer(x: TensorType, dim) -> TensorType:
    rules.normalize_dim("softmax", dim, x.ndim)
    return rules.floating("softmax", x)


# Their gradients are fused ops (tracegrad/ops/fused.py).
register(
    "softmax",
    ("x",),
    _softmax_infer,
    kernels.softmax,
    (lambda c, g: call("softmax_grad", c.out, g, dim=c.dim),),
    "rt.softmax({0}, {dim})",
    out="rt.softmax({0}, {dim}, out={out})",
    saves=("out",),
    props=(OVERWRITES_INPUT, NON_NEGATIVE),
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


# softmax(where(mask, -inf, x)), which the attention pattern rewrites to (passes/stabilize.py):
# in place over the scores, and a gradient without a pass for the mask.
register(
    "masked_softmax",
    ("x", "mask"),
    _masked_softmax_infer,
    kernels.masked_softmax,
    lambda c, g: (call("masked_softmax_grad", c.out, g, c.mask, dim=c.dim), None),
    "rt.masked_softmax({0}, {1}, {dim})",
    out="rt.masked_softmax({0}, {1}, {dim}, out={out})",
    saves=("out", "mask"),
    props=(OVERWRITES_INPUT,),
)
register(
    "log_softmax",
    ("x",),
    _softmax_infer,
    kernels.log_softmax,
    (lambda c, g: call("log_softmax_grad", c.out, g, dim=c.dim),),
    "rt.log_softmax({0}, {dim})",
    out="rt.log_softmax({0}, {dim}, out={out})",
    saves=("out",),
    props=(OVERWRITES_INPUT,),
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
        dim = kernels.class_dim(logits.ndim)
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


register(
    "cross_entropy",
    ("logits", "target"),
    class_loss_infer("cross_entropy"),
    kernels.cross_entropy,
    lambda c, g: (call("cross_entropy_grad", c.logits, c.target, g, **c.attrs), None),
    "rt.cross_entropy({0}, {1}, {ignore_index}, {label_smoothing}, {reduction!r})",
    saves=("logits", "target"),
)

# --- layer norm (without the affine part, which is an ordinary mul and add) ----------------------


def _layer_norm_infer(x: TensorType, ndims, eps) -> TensorType:
    if not 1 <= ndims <= x.ndim:
        raise ShapeError(f"layer_norm: cannot normalize the last {ndims} dims of shape {x.shape}")
    return rules.floating("layer_norm", x)


register(
    "layer_norm",
    ("x",),
    _layer_norm_infer,
    kernels.layer_norm,
    (lambda c, g: call("layer_norm_grad", c.x, c.out, g, **c.attrs),),
    "rt.layer_norm({0}, {ndims}, {eps!r})",
    out="rt.layer_norm({0}, {ndims}, {eps!r}, out={out})",
    saves=("x", "out"),
    props=(OVERWRITES_INPUT,),
)
