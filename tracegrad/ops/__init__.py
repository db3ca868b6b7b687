"""The op registry. Importing this package declares every primitive (one file per family)."""

from tracegrad.ops import elementwise, fused, index, linalg, nn, optim, random, reduce, shape
from tracegrad.ops.registry import (
    CHEAP,
    COMMUTATIVE,
    ELEMENTWISE,
    LAYOUT_VIEW,
    NON_NEGATIVE,
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
    "CHEAP",
    "COMMUTATIVE",
    "ELEMENTWISE",
    "LAYOUT_VIEW",
    "NON_NEGATIVE",
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
