"""Gradient clipping with PyTorch's names and arithmetic: ``tg.nn.utils.clip_grad_norm_`` and
``clip_grad_value_``.

Both are tensor ops on ``.grad``, never a Python number read from it, so a compiled whole step
traces them like the rest of its update: the total norm stays a tensor, and gradients are
always scaled by min(1, max_norm / (norm + 1e-6)) rather than only when the norm is large
(PyTorch's form, which has no branch on a value).
"""

from __future__ import annotations

import math

import numpy as np

from tracegrad import tape
from tracegrad.errors import TraceError, at_user_line
from tracegrad.tensor import Tensor, active_tracer, stack, tensor


def _grads(parameters) -> list[Tensor]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p.grad for p in params if p.grad is not None]


def _vector_norm(x: Tensor, norm_type: float) -> Tensor:
    """The ``norm_type``-norm of all of x's entries (torch.linalg.vector_norm)."""
    # Flat, in C order: a sum's rounding depends on the order it adds in, and a gradient may
    # be a transposed view eagerly and a row-major buffer in a compiled step, or the reverse
    x = x.reshape(-1)
    if norm_type == math.inf:
        return x.abs().amax()
    if norm_type == -math.inf:
        return x.abs().amin()
    if norm_type == 0:  # the number of nonzero entries
        return (x != 0).to(x.dtype).sum()
    if norm_type == 1:
        return x.abs().sum()
    if norm_type == 2:
        return (x * x).sum().sqrt()
    return (x.abs() ** norm_type).sum() ** (1.0 / norm_type)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False) -> Tensor:
    """Scale the gradients of ``parameters`` in place so that their total ``norm_type``-norm
    (the norm of their norms) is at most ``max_norm``; returns the total norm before
    clipping, a 0-d tensor."""
    grads = _grads(parameters)
    if not grads:
        return tensor(0.0)
    norm_type = float(norm_type)
    with tape.no_grad():
        norms = [_vector_norm(g, norm_type) for g in grads]
        total = _vector_norm(stack([n.to(norms[0].dtype) for n in norms]), norm_type)
        if error_if_nonfinite:
            _check_finite(total, norm_type)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype))
    return total


def _check_finite(total: Tensor, norm_type: float) -> None:
    if active_tracer() is not None:
        raise TraceError(at_user_line(
            "clip_grad_norm_(error_if_nonfinite=True) reads the norm's value in Python, which a "
            "compiled step cannot: pass error_if_nonfinite=False there (tg.compile(..., "
            "debug_nans=True) reports the first non-finite value instead)"
        ))  # fmt: skip
    if not np.isfinite(total.array):
        raise RuntimeError(at_user_line(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        ))  # fmt: skip


def clip_grad_value_(parameters, clip_value) -> None:
    """Clamp the gradients of ``parameters`` in place to [-clip_value, clip_value]."""
    clip_value = float(clip_value)
    with tape.no_grad():
        for g in _grads(parameters):
            g.clamp_(-clip_value, clip_value)
