"""Optimizer update ops: each update a single kernel that reads its arrays once, instead of a
dozen elementwise ops. Their ``out=`` form lets the memory plan (and, eagerly, the dispatcher)
update optimizer state and parameters in place. The moment and Adam updates have no gradient
(updates run under no_grad); ``add_scaled``, which is also ``add_(other, alpha=...)`` on any
tensor, has one.

Hyperparameters (a weight, a beta, eps) are inputs, not attributes, so a compiled step reads
them on every call; the kernels take them as Python floats (NumPy's weak scalars), exactly as
an eager update passes them, so both round alike."""

from __future__ import annotations

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import rules
from tracegrad.ops.registry import ELEMENTWISE, register
from tracegrad.ops.runtime import chunked, joint_scratch, kernel, scratch


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


@kernel
def add_scaled(x, y, alpha, out=None):
    """x + alpha * y (``add_(y, alpha=...)``, an SGD step), alpha * y made in a scratch array
    so a write into ``out`` allocates nothing; ``out`` may be ``x`` or ``y``. (Not chunked:
    two plain ufunc passes are faster whole, by a quarter at 1e5 elements, a tenth at 4e6.)"""
    scaled = np.multiply(y, alpha, out=scratch(y, "add_scaled"))
    return np.add(x, scaled, out=out)


# add_scaled(x, y)[alpha] = x + alpha * y: add_/sub_ with alpha, an SGD step, as one kernel.
register(
    "add_scaled",
    ("x", "y"),
    lambda x, y, alpha: rules.elementwise("add_scaled", rules.floating("add_scaled", x), y),
    add_scaled,
    (lambda c, g: g, lambda c, g: g * c.alpha),
    "{0} + {alpha!r} * {1}",
    props={ELEMENTWISE},
    out="rt.add_scaled({0}, {1}, {alpha!r}, out={out})",
)


# The update kernels may write ``out`` over one of their inputs.
@kernel
@chunked
def lerp(x, y, weight, out=None):
    """x + weight * (y - x), rounded like PyTorch's lerp for weight < 0.5. (Hyperparameters
    here are Python floats, weak scalars rounded to the arrays' dtype, whether given so or as
    a compiled step's 0-d float64 input.)"""
    step = np.subtract(y, x, out=joint_scratch(x, y, "lerp"))
    step *= float(weight)
    return np.add(x, step, out=out)


# lerp(x, y, w) = x + w * (y - x): Adam's first moment (PyTorch's exp_avg.lerp_).
register(
    "lerp",
    ("x", "y", "weight"),
    _same_as_first("lerp", 1),
    lerp,
    None,
    "rt.lerp({0}, {1}, {2})",
    props={ELEMENTWISE},
    out="rt.lerp({0}, {1}, {2}, out={out})",
)


@kernel
@chunked
def ema_square(v, g, beta, out=None):
    """beta * v + (1 - beta) * g * g."""
    beta = float(beta)
    square = np.multiply(g, g, out=joint_scratch(v, g, "ema_square"))
    square *= 1.0 - beta
    if np.shape(v) != square.shape:
        return np.add(square, np.multiply(v, beta), out=out)
    out = np.multiply(v, beta, out=out)
    out += square
    return out


# ema_square(v, g, b) = b * v + (1 - b) * g * g: Adam's second moment.
register(
    "ema_square",
    ("v", "g", "beta"),
    _same_as_first("ema_square", 1),
    ema_square,
    None,
    "rt.ema_square({0}, {1}, {2})",
    props={ELEMENTWISE},
    out="rt.ema_square({0}, {1}, {2}, out={out})",
)


@kernel
@chunked
def adam_step(p, m, v, step_size, bias2_sqrt, eps, out=None):
    """p - step_size * m / (sqrt(v) / bias2_sqrt + eps), PyTorch's Adam parameter update."""
    denom = np.sqrt(v, out=scratch(v, "adam_step"))
    denom /= bias2_sqrt
    denom += float(eps)
    np.divide(m, denom, out=denom)
    denom *= step_size
    return np.subtract(p, denom, out=out)


# adam_step(p, m, v, step_size, bias2_sqrt, eps) = p - step_size * m / (sqrt(v) / bias2_sqrt + eps)
register(
    "adam_step",
    ("p", "m", "v", "step_size", "bias2_sqrt", "eps"),
    _same_as_first("adam_step", 1),
    adam_step,
    None,
    "rt.adam_step({0}, {1}, {2}, {3}, {4}, {5})",
    props={ELEMENTWISE},
    out="rt.adam_step({0}, {1}, {2}, {3}, {4}, {5}, out={out})",
)
