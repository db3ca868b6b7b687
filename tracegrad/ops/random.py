"""Ops that draw random numbers. Eagerly they use tracegrad's global generator; generated code
takes that generator as its ``rng`` argument, so compiled and eager runs draw the same stream."""

from __future__ import annotations

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.ops import kernels
from tracegrad.ops.registry import RANDOM, register
from tracegrad.random import generator

# dropout_mask: keep with probability 1 - p, scaled by 1 / (1 - p); no gradient (a constant).
register(
    "dropout_mask",
    (),
    lambda shape, p, dtype: TensorType(tuple(shape), dtypes.from_name(dtype)),
    lambda shape, p, dtype: kernels.dropout_mask(shape, p, dtypes.from_name(dtype).np, generator()),
    None,
    "rt.dropout_mask({shape}, {p!r}, np.{dtype}, rng)",
    props={RANDOM},
)
