"""The global random generator behind randn/rand, initialisers, dropout and shuffling."""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed tracegrad's global generator (like ``torch.manual_seed``).

    Every draw comes from it: ``randn``, ``rand``, ``randint``, ``randperm``, dropout,
    initialisation, ``DataLoader`` shuffling, eagerly and in compiled code alike.

    Args:
        seed: an int.

    Returns:
        The NumPy generator now in use.

    Examples:
        >>> _ = tg.manual_seed(0)
        >>> first = tg.randn(2)
        >>> _ = tg.manual_seed(0)
        >>> tg.equal(first, tg.randn(2))
        True
    """
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator() -> np.random.Generator:
    return _generator
