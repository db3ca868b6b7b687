"""``tg.cuda``: what programs written for PyTorch ask before choosing a device.

tracegrad runs on the CPU only, so no GPU is ever available; seeding one does nothing, as
``torch.cuda.manual_seed`` does on a machine without one.
"""

from __future__ import annotations


def is_available() -> bool:
    return False


def device_count() -> int:
    return 0


def manual_seed(seed: int) -> None:
    """Nothing to seed: there is no GPU generator (``tg.manual_seed`` seeds tracegrad's)."""


manual_seed_all = manual_seed
