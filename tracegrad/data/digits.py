"""The bundled 8x8 handwritten digits (see DIGITS.md for origin and licence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracegrad.random import generator
from tracegrad.tensor import wrap

_PATH = Path(__file__).with_name("digits.npz")


def load_digits(test_fraction: float = 0.2, shuffle: bool = True):
    """(x_train, y_train, x_test, y_test): float32 pixels scaled to [0, 1] as 64-vectors and
    int64 labels; the split is shuffled with tracegrad's generator (seed with tg.manual_seed)."""
    with np.load(_PATH) as data:
        images, labels = data["images"], data["labels"]
    order = generator().permutation(len(labels)) if shuffle else np.arange(len(labels))
    x = (images.reshape(len(labels), -1)[order] / 16.0).astype(np.float32)
    y = labels[order]
    n_test = round(len(y) * test_fraction)
    return wrap(x[n_test:]), wrap(y[n_test:]), wrap(x[:n_test]), wrap(y[:n_test])
