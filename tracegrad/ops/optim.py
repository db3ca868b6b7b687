"""Optimizer update ops: each update a single kernel that reads its arrays once, instead of a
dozen elementwise ops. Their ``out=`` form lets the memory plan (and, eagerly, the dispatcher)
update optimizer state and parameters in place. The moment and Adam updates have no gradient
(updates run under no_grad); ``add_scaled``, which is also ``add_(other, alpha=...)`` on any
tensor, has one.

Hyperparameters (a weight, a beta, eps) are inputs, not attributes, so a compiled step reads
them on every call; the kernels take them as Python floats (NumPy's weak scalars), exactly as
an eager update passes them, so both round alike."""

from __future__ import annotations

from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import kernels, rules
from tracegrad.ops.registry import ELEMENTWISE, register


def _same_as_first(name, n_scalars):
    """The type rule of an update whose last ``n_scalars`` inputs are hyperparameters: 0-d
    floats of any dtype (a compiled step reads them as float64 inputs), the rest elementwise
    of one dtype."""

    def infer(*types: TensorType, **attrs) -> TensorType:
        arrays, scalars = types[: len(types) - n_scalars], types[len(types) - n_scalars :]
        for t in scalars:
            rules.floating(name, t)
            if t.shape != ():
                raise ShapeError(f"{name}: a hyperparameter must be 0-d, got shape {t.shape}")
        return rules.elementwise(name, *arrays)

    return infer


# add_scaled(x, y)[alpha] = x + alpha * y: add_/sub_ with alpha, an SGD step, as one kernel.
register(
    "add_scaled",
    ("x", "y"),
    lambda x, y, alpha: rules.elementwise("add_scaled", rules.floating("add_scaled", x), y),
    kernels.add_scaled,
    (lambda c, g: g, lambda c, g: g * c.alpha),
    "{0} + {alpha!r} * {1}",
    props={ELEMENTWISE},
    out="rt.add_scaled({0}, {1}, {alpha!r}, out={out})",
)
# lerp(x, y, w) = x + w * (y - x): Adam's first moment (PyTorch's exp_avg.lerp_).
register(
    "lerp",
    ("x", "y", "weight"),
    _same_as_first("lerp", 1),
    kernels.lerp,
    None,
    "rt.lerp({0}, {1}, {2})",
    props={ELEMENTWISE},
    out="rt.lerp({0}, {1}, {2}, out={out})",
)
# ema_square(v, g, b) = b * v + (1 - b) * g * g: Adam's second moment.
register(
    "ema_square",
    ("v", "g", "beta"),
    _same_as_first("ema_square", 1),
    kernels.ema_square,
    None,
    "rt.ema_square({0}, {1}, {2})",
    props={ELEMENTWISE},
    out="rt.ema_square({0}, {1}, {2}, out={out})",
)
# adam_step(p, m, v, step_size, bias2_sqrt, eps) = p - step_size * m / (sqrt(v) / bias2_sqrt + eps)
register(
    "adam_step",
    ("p", "m", "v", "step_size", "bias2_sqrt", "eps"),
    _same_as_first("adam_step", 1),
    kernels.adam_step,
    None,
    "rt.adam_step({0}, {1}, {2}, {3}, {4}, {5})",
    props={ELEMENTWISE},
    out="rt.adam_step({0}, {1}, {2}, {3}, {4}, {5}, out={out})",
)
