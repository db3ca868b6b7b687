"""Autograd: custom Functions, ``grad``/``backward`` and finite-difference checks.

The tape and the backward engine live in ``tracegrad.tape``; this package is the API on top.
"""

from tracegrad.autograd.function import Function, FunctionCtx
from tracegrad.autograd.functional import backward, grad
from tracegrad.autograd.gradcheck import GradcheckError, gradcheck, gradgradcheck
from tracegrad.tape import (
    enable_grad,
    inference_mode,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)

__all__ = [
    "Function",
    "FunctionCtx",
    "GradcheckError",
    "backward",
    "enable_grad",
    "grad",
    "gradcheck",
    "gradgradcheck",
    "inference_mode",
    "is_grad_enabled",
    "no_grad",
    "set_grad_enabled",
]
