"""Ops that draw random numbers. Eagerly they use tracegrad's global generator; generated code
takes that generator as its ``rng`` argument, so compiled and eager runs draw the same stream."""

from __future__ import annotations

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.ops.registry import RANDOM, register
from tracegrad.ops.runtime import kernel
from tracegrad.random import generator


@kernel
def dropout_mask(shape, p, dtype, rng):
    """Keep each element with probability 1 - p, scaled by 1 / (1 - p) so the mean is kept."""
    keep = rng.random(shape) >= p
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return (keep * scale).astype(dtype)


# dropout_mask: keep with probability 1 - p, scaled by 1 / (1 - p); no gradient (a constant).
register(
    "dropout_mask",
    (),
    lambda shape, p, dtype: TensorType(tuple(shape), dtypes.from_name(dtype)),
    lambda shape, p, dtype: dropout_mask(shape, p, dtypes.from_name(dtype).np, generator()),
    None,
    "rt.dropout_mask({shape}, {p!r}, np.{dtype}, rng)",
    props={RANDOM},
)


def _draw_infer(shape, dtype, **_) -> TensorType:
    return TensorType(tuple(shape), dtypes.from_name(dtype))


# The eager kernels make the generated code's calls on the same stream: NumPy draws float64
# or int64, cast to the result's dtype.
def _normal(shape, dtype):
    return generator().standard_normal(tuple(shape)).astype(dtype)


def _uniform(shape, dtype):
    return generator().random(tuple(shape)).astype(dtype)


def _integers(shape, dtype, low, high):
    return generator().integers(low, high, tuple(shape)).astype(dtype)


# Draws made by tensor factories (randn, rand, randint, randn_like...): inside traced code they
# are nodes drawing anew on every run, never constants frozen at trace time.
register(
    "random_normal",
    (),
    _draw_infer,
    _normal,
    None,
    "rng.standard_normal({shape}).astype(np.{dtype})",
    props={RANDOM},
)
register(
    "random_uniform",
    (),
    _draw_infer,
    _uniform,
    None,
    "rng.random({shape}).astype(np.{dtype})",
    props={RANDOM},
)
register(
    "random_integers",
    (),
    _draw_infer,
    _integers,
    None,
    "rng.integers({low}, {high}, {shape}).astype(np.{dtype})",
    props={RANDOM},
)
register(
    "random_permutation",
    (),
    _draw_infer,
    lambda shape, dtype: generator().permutation(shape[0]).astype(dtype),
    None,
    "rng.permutation({shape}[0]).astype(np.{dtype})",
    props={RANDOM},
)
