"""Ops that draw random numbers. Eagerly they use tracegrad's global generator; generated code
takes that generator as its ``rng`` argument, so compiled and eager runs draw the same stream."""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.ops.registry import RANDOM, VIEW, Sample, register
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


def weights_problem(weights: np.ndarray, num_samples: int, replacement: bool) -> str | None:
    """What PyTorch's ``multinomial`` refuses in ``weights`` (rows of category weights), in
    words; None when they may be drawn from."""
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        return "the weights contain an infinity, a nan or a negative"
    if np.any(weights.sum(-1) <= 0):
        return "a distribution has no weight (sum <= 0)"
    nonzero = int(np.min(np.count_nonzero(weights, axis=-1)))
    if not replacement and nonzero < num_samples:
        return (
            f"cannot draw {num_samples} samples without replacement from a distribution "
            f"with {nonzero} categories of nonzero weight"
        )
    return None


@kernel
def checked_weights(weights, num_samples, replacement):
    """``weights`` themselves, once they pass PyTorch's checks of multinomial's weights: the
    values are known only as a call runs, so the check is a node of the graph."""
    problem = weights_problem(weights, num_samples, replacement)
    if problem is not None:
        raise ValueError(f"multinomial: {problem}")
    return weights


# multinomial_weights: the weights as they are, or a ValueError saying what PyTorch refuses.
register(
    "multinomial_weights",
    ("weights",),
    lambda weights, num_samples, replacement: weights,
    checked_weights,
    None,
    "rt.checked_weights({0}, {num_samples}, {replacement})",
    props={VIEW},
    samples=(
        Sample(
            {"num_samples": 1, "replacement": True},
            low=0.1,
            high=1.0,
            smooth=False,
            ref=lambda weights, **_: weights,
        ),
    ),
)
