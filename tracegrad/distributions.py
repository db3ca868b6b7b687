"""``tg.distributions``: Normal, Categorical and Bernoulli, as PyTorch's are used in
reinforcement learning (``m = Categorical(probs); a = m.sample(); m.log_prob(a)``) and VAEs
(``Normal(mu, sigma).rsample()``).

Everything is tensor ops, so it runs eagerly and compiles. Samples are drawn through
``tg.rand`` / ``tg.randn``, ops that draw from tracegrad's generator anew on every call of
compiled code too: the same ``tg.manual_seed`` gives the same samples in both. Categorical
samples by the inverse of its cumulative distribution: with ``u ~ U[0, 1)``, the sample is the
number of categories whose cumulative probability is at most ``u``.

Arguments are validated as in PyTorch (``validate_args``) where their values are known, in eager
code; compiled code cannot look at values, so it does not check them.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tracegrad import creation, tape
from tracegrad.errors import at_user_line
from tracegrad.tensor import (
    Size,
    Tensor,
    active_tracer,
    as_tensor,
    promote_operands,
    shape_args,
    stack,
    triu,
    where,
)

__all__ = ["Bernoulli", "Categorical", "Distribution", "Normal"]


class Distribution:
    """What the distributions share: shapes, ``sample`` without gradients, ``stddev``."""

    has_rsample = False

    def __init__(self, batch_shape, event_shape=(), validate_args=None):
        self.batch_shape, self.event_shape = Size(batch_shape), Size(event_shape)
        self._validate_args = validate_args is not False

    def _extended_shape(self, sample_shape) -> tuple:
        return shape_args((sample_shape,)) + self.batch_shape + self.event_shape

    def sample(self, sample_shape=()) -> Tensor:
        with tape.no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape=()) -> Tensor:
        """A sample gradients flow through; PyTorch's name, defined by the distributions that
        have one (``has_rsample``)."""
        raise NotImplementedError(f"{type(self).__name__} has no reparameterized sample")

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no variance")

    @property
    def stddev(self) -> Tensor:
        return self.variance.sqrt()

    def _check(self, holds, message: str) -> None:
        """Raise ValueError unless ``holds()`` (a bool tensor) is all true; only eagerly."""
        if self._validate_args and active_tracer() is None:
            with tape.no_grad():
                if not np.all(holds().numpy()):
                    raise ValueError(at_user_line(f"{type(self).__name__}: {message}"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)})"


class Normal(Distribution):
    """``Normal(loc, scale)``: ``rsample`` is ``loc + scale * eps``, differentiable in both."""

    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = _broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)
        self._check(lambda: self.scale > 0, "scale must be positive")

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        return self.scale**2

    def rsample(self, sample_shape=()) -> Tensor:
        eps = creation.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype)
        return self.loc + eps * self.scale

    def log_prob(self, value) -> Tensor:
        var = self.scale**2
        log_normalizer = self.scale.log() + math.log(math.sqrt(2 * math.pi))
        return -((value - self.loc) ** 2) / (2 * var) - log_normalizer

    def entropy(self) -> Tensor:
        return 0.5 + 0.5 * math.log(2 * math.pi) + self.scale.log()

    def cdf(self, value) -> Tensor:
        return 0.5 * (1 + ((value - self.loc) / (self.scale * math.sqrt(2))).erf())


class Categorical(Distribution):
    """``Categorical(probs=...)`` (normalized along the last dim) or ``(logits=...)``
    (log-probabilities up to a constant); each of ``probs`` / ``logits`` is made from the other
    on first use, as in PyTorch."""

    def __init__(self, probs=None, logits=None, validate_args=None):
        given = _one_of(probs, logits)
        if given.ndim < 1:
            raise ValueError(at_user_line("Categorical: probs or logits must be at least 1-d"))
        if probs is not None:
            self.probs = given / given.sum(-1, keepdim=True)
        else:
            self.logits = given - given.logsumexp(-1, keepdim=True)
        super().__init__(given.shape[:-1], validate_args=validate_args)
        self._num_events = given.shape[-1]
        if probs is not None:
            self._check(lambda: given >= 0, "probs must be non-negative")

    @functools.cached_property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    @functools.cached_property
    def logits(self) -> Tensor:
        return _clamped(self.probs).log()

    @property
    def mean(self) -> Tensor:
        return creation.full(self.batch_shape, math.nan, dtype=self.probs.dtype)

    variance = mean

    @property
    def mode(self) -> Tensor:
        return self.probs.argmax(-1)

    def sample(self, sample_shape=()) -> Tensor:
        with tape.no_grad():
            u = creation.rand(*self._extended_shape(sample_shape), 1, dtype=self.probs.dtype)
            ones = creation.ones(self._num_events, self._num_events, dtype=self.probs.dtype)
            cdf = self.probs @ triu(ones)  # cumulative sums along the last dim
            # Divided by the total, the last category's is exactly 1 (> u): a category of
            # probability 0 at the end is never drawn, however the sums round.
            cdf = cdf / cdf[..., -1:]
            return (cdf[..., :-1] <= u).sum(-1)

    def log_prob(self, value) -> Tensor:
        value = as_tensor(value).long()
        self._check(
            lambda: (value >= 0) & (value < self._num_events),
            f"value must be a category in [0, {self._num_events})",
        )
        picked = value.unsqueeze(-1) == creation.arange(self._num_events)
        return where(picked, self.logits, 0.0).sum(-1)

    def entropy(self) -> Tensor:
        logits = self.logits.clamp(min=float(np.finfo(self.logits.dtype.np).min))
        return -(logits * self.probs).sum(-1)


class Bernoulli(Distribution):
    """``Bernoulli(probs=...)`` or ``(logits=...)``: samples are 0.0 or 1.0."""

    def __init__(self, probs=None, logits=None, validate_args=None):
        given = _one_of(probs, logits)
        if probs is not None:
            self.probs = given
        else:
            self.logits = given
        super().__init__(given.shape, validate_args=validate_args)
        if probs is not None:
            self._check(lambda: (given >= 0) & (given <= 1), "probs must lie in [0, 1]")

    @functools.cached_property
    def probs(self) -> Tensor:
        return self.logits.sigmoid()

    @functools.cached_property
    def logits(self) -> Tensor:
        p = _clamped(self.probs)
        return p.log() - (-p).log1p()

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=()) -> Tensor:
        with tape.no_grad():
            u = creation.rand(self._extended_shape(sample_shape), dtype=self.probs.dtype)
            return (u < self.probs).to(self.probs.dtype)

    def log_prob(self, value) -> Tensor:
        value = as_tensor(value)
        self._check(lambda: (value == 0) | (value == 1), "value must be 0 or 1")
        return value * self.logits - _softplus(self.logits)

    def entropy(self) -> Tensor:
        return _softplus(self.logits) - self.probs * self.logits


def _broadcast_all(*values) -> list[Tensor]:
    """Floating tensors of one dtype and one shape (PyTorch's ``broadcast_all``)."""
    tensors = promote_operands(*(as_tensor(v) for v in values), floating=True)
    shape = np.broadcast_shapes(*(tuple(t.shape) for t in tensors))
    return [t if tuple(t.shape) == shape else t.broadcast_to(shape) for t in tensors]


def _one_of(probs, logits) -> Tensor:
    if (probs is None) == (logits is None):
        raise ValueError(at_user_line("give either probs or logits, not both"))
    return _broadcast_all(probs if probs is not None else logits)[0]


def _clamped(probs: Tensor) -> Tensor:
    """Probabilities kept off 0 and 1 by the dtype's eps, so their logits are finite."""
    eps = float(np.finfo(probs.dtype.np).eps)
    return probs.clamp(min=eps, max=1 - eps)


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` as ``logsumexp(0, x)``: stable, and its gradient at 0 is 1/2."""
    return stack([creation.zeros_like(x), x], -1).logsumexp(-1)
