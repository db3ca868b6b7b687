"""Optimizer update ops: each update a single kernel that reads its arrays once, instead of a
dozen elementwise ops. They have no gradient (updates run under no_grad), and their ``out=``
form lets the memory plan update optimizer state and parameters in place."""

from __future__ import annotations

from tracegrad.dtypes import TensorType
from tracegrad.ops import kernels, rules
from tracegrad.ops.registry import ELEMENTWISE, register


def _same_as_first(name):
    def infer(*types: TensorType, **attrs) -> TensorType:
        rules.same_dtype(name, *types)
        return rules.elementwise(name, *types)

    return infer


# lerp(x, y; w) = x + w * (y - x): Adam's first moment (PyTorch's exp_avg.lerp_).
register(
    "lerp",
    ("x", "y"),
    _same_as_first("lerp"),
    kernels.lerp,
    None,
    "rt.lerp({0}, {1}, {weight!r})",
    props={ELEMENTWISE},
    out="rt.lerp({0}, {1}, {weight!r}, out={out})",
)
# ema_square(v, g; b) = b * v + (1 - b) * g * g: Adam's second moment.
register(
    "ema_square",
    ("v", "g"),
    _same_as_first("ema_square"),
    kernels.ema_square,
    None,
    "rt.ema_square({0}, {1}, {beta!r})",
    props={ELEMENTWISE},
    out="rt.ema_square({0}, {1}, {beta!r}, out={out})",
)
# adam_step(p, m, v, step_size, bias2_sqrt; eps) = p - step_size * m / (sqrt(v) / bias2_sqrt + eps)
register(
    "adam_step",
    ("p", "m", "v", "step_size", "bias2_sqrt"),
    _same_as_first("adam_step"),
    kernels.adam_step,
    None,
    "rt.adam_step({0}, {1}, {2}, {3}, {4}, {eps!r})",
    props={ELEMENTWISE},
    out="rt.adam_step({0}, {1}, {2}, {3}, {4}, {eps!r}, out={out})",
)
