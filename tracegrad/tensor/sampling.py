"""Drawing category indices from probabilities: ``multinomial`` (``Tensor.multinomial``,
``tg.multinomial``).

The draws are made of ``random_uniform``, the op behind ``tg.rand``, and ordinary ops, so they
come from tracegrad's generator (``tg.manual_seed``) and a compiled program draws exactly the
numbers the eager one does:

- with replacement, by inverse CDF: the index of the first cumulative probability above a
  uniform draw;
- without replacement, by an exponential race: each category draws ``E / p`` with ``E`` an
  exponential draw, and the ``num_samples`` smallest win, in their order. The first is category
  i with probability ``p_i / sum(p)``, and (exponentials forgetting their past) each next one
  likewise among those left: the order of draws one at a time, without removing anything.
"""

from __future__ import annotations

import math

import numpy as np

from tracegrad import tape
from tracegrad.errors import DTypeError, ShapeError, at_user_line
from tracegrad.ops.random import weights_problem
from tracegrad.tensor.core import Tensor, as_tensor
from tracegrad.tensor.dispatch import call
from tracegrad.tensor.tracing import active_tracer


def multinomial(input, num_samples, replacement=False, *, generator=None) -> Tensor:
    """``num_samples`` category indices drawn from each row of ``input``, as
    ``torch.multinomial``.

    ``input`` holds non-negative weights of the categories (its last dim), which need not sum
    to one: a 1-d tensor is one distribution, a 2-d one a distribution per row. The draws come
    from tracegrad's generator (``tg.manual_seed``); compiled code draws the same numbers.
    Without replacement, a row's indices differ, in the order drawn.

    Args:
        input: float weights of shape ``(C,)`` or ``(N, C)``.
        num_samples: how many indices to draw from each distribution.
        replacement: whether an index may be drawn again.
        generator: None; tracegrad has one generator (seed it with ``tg.manual_seed``).

    Returns:
        int64 indices of shape ``(num_samples,)`` or ``(N, num_samples)``, without gradient.

    Raises:
        ShapeError: for an input of other than 1 or 2 dims, or more samples than categories
            without replacement.
        DTypeError: for an input that is not floating-point.
        ValueError: eagerly, for a negative, infinite or nan weight, a row without weight,
            or (without replacement) fewer categories of nonzero weight than samples; and
            for ``num_samples`` < 1.

    Examples:
        >>> _ = tg.manual_seed(0)
        >>> tg.multinomial(tg.tensor([0.0, 10.0, 0.0]), 2, replacement=True)
        tensor([1, 1])
        >>> sorted(tg.tensor([[1.0, 1.0, 0.0]]).multinomial(2)[0].tolist())
        [0, 1]
    """
    probs = as_tensor(input)
    _check_arguments(probs, num_samples, replacement, generator)
    with tape.no_grad():
        probs = probs.detach()
        if active_tracer() is None:  # (eagerly: the error names the user's line)
            problem = weights_problem(probs.numpy(), num_samples, replacement)
            if problem is not None:
                raise ValueError(at_user_line(f"multinomial: {problem}"))
        else:  # (the values are known only as a compiled call runs)
            probs = call("multinomial_weights", probs, num_samples=num_samples,
                         replacement=replacement)  # fmt: skip
        if replacement:
            return _inverse_cdf(probs, num_samples)
        return _exponential_race(probs, num_samples)


def _inverse_cdf(probs: Tensor, num_samples: int) -> Tensor:
    """Per draw u in [0, 1): how many cumulative probabilities (but the last) are <= u."""
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[..., -1:]  # the last is exactly 1 (> u): no draw falls past the end
    u = _uniform((*probs.shape[:-1], num_samples, 1), probs)
    return (cdf.unsqueeze(-2)[..., :-1] <= u).sum(-1)


def _exponential_race(probs: Tensor, num_samples: int) -> Tensor:
    """The categories of the ``num_samples`` smallest ``E / p``; ``p = 0`` never wins."""
    exponential = -(-_uniform(tuple(probs.shape), probs)).log1p()  # u in [0, 1): finite
    weighted = probs > 0
    keys = exponential / call("where", weighted, probs, as_tensor(1.0, like=probs))
    keys = call("where", weighted, keys, as_tensor(math.inf, like=probs))
    return keys.topk(num_samples, -1, largest=False).indices


def _uniform(shape: tuple, like: Tensor) -> Tensor:
    return call("random_uniform", shape=shape, dtype=like.dtype.name)


def _check_arguments(probs: Tensor, num_samples, replacement: bool, generator) -> None:
    if generator is not None:
        raise TypeError(
            "multinomial: generator= is not supported: tracegrad draws from its one generator "
            "(seed it with tg.manual_seed)"
        )
    if not probs.dtype.is_floating_point:
        raise DTypeError(
            at_user_line(f"multinomial: input must be floating-point, got {probs.dtype}")
        )
    if probs.ndim not in (1, 2) or probs.shape[-1] == 0:
        raise ShapeError(
            at_user_line(
                "multinomial: input must be 1-d or 2-d with at least one category, got shape "
                f"{tuple(probs.shape)}"
            )
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(f"multinomial: num_samples must be an int, got {num_samples!r}")
    if num_samples < 1:
        raise ValueError(at_user_line(f"multinomial: cannot draw num_samples={num_samples}"))
    if not replacement and num_samples > probs.shape[-1]:
        raise ShapeError(
            at_user_line(
                f"multinomial: cannot draw {num_samples} samples without replacement from "
                f"{probs.shape[-1]} categories (input of shape {tuple(probs.shape)})"
            )
        )
