"""The op registry. Importing this package declares every primitive (one file per family)."""

from tracegrad.ops import elementwise, fused, index, linalg, nn, optim, random, reduce, shape
from tracegrad.ops.registry import (
    COMMUTATIVE,
    ELEMENTWISE,
    LAYOUT_VIEW,
    OPS,
    OVERWRITES_INPUT,
    REDUCE,
    VIEW,
    Op,
    VJPContext,
    call,
    ops_with,
    register,
    vjp,
)

__all__ = [
    "COMMUTATIVE",
    "ELEMENTWISE",
    "LAYOUT_VIEW",
    "OPS",
    "OVERWRITES_INPUT",
    "REDUCE",
    "VIEW",
    "Op",
    "VJPContext",
    "call",
    "ops_with",
    "register",
    "vjp",
]
