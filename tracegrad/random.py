"""The global random generator behind randn/rand, initialisers, dropout and shuffling."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tracegrad.errors import TraceError, at_user_line

_generator = np.random.default_rng()


def _never() -> bool:
    return False


# Whether this thread is tracing a function now: tracegrad.tensor.tracing, a layer above,
# installs its check when imported. A seed set while tracing would be set once, as the trace
# runs, and never by the compiled calls, whose draws would then differ from eager ones.
is_tracing: Callable[[], bool] = _never


def manual_seed(seed: int) -> np.random.Generator:
    """Seed tracegrad's global generator (like ``torch.manual_seed``).

    Every draw comes from it: ``randn``, ``rand``, ``randint``, ``randperm``, dropout,
    initialisation, ``DataLoader`` shuffling, eagerly and in compiled code alike.

    Args:
        seed: an int.

    Returns:
        The NumPy generator now in use.

    Raises:
        TraceError: inside a function being compiled (seed before calling it instead).

    Examples:
        >>> _ = tg.manual_seed(0)
        >>> first = tg.randn(2)
        >>> _ = tg.manual_seed(0)
        >>> tg.equal(first, tg.randn(2))
        True
    """
    global _generator
    if is_tracing():
        raise TraceError(at_user_line(
            "tg.manual_seed inside a compiled function would seed once, while tracing, and "
            "never on the compiled calls: seed before calling the compiled function"
        ))  # fmt: skip
    _generator = np.random.default_rng(seed)
    return _generator


def generator() -> np.random.Generator:
    return _generator
