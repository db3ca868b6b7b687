"""A count of changes to what compiled code specializes on but reads from plain Python
objects: module trees (the submodules, parameters and buffers each module holds), modules'
training flags and optimizers' hyperparameters.

All are changed rarely (``model.eval()``, a new head, a learning-rate schedule) and read on
every call of a compiled step, by guards that would otherwise touch every module and every
parameter group each time. A guard reads them again only when the count has moved since it
last did (see ``tracegrad.codegen.guards``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

count = [0]  # a list: generated guards read it by name, without a call


def note() -> None:
    """Count one change (after it is made: a guard reading the new count sees it)."""
    count[0] += 1


class CountedDict(dict):
    """A dict (the type PyTorch's parameter groups have) whose changes are counted."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        note()

    def __delitem__(self, key):
        super().__delitem__(key)
        note()

    # (mypy checks an override of dict's |= against dict's overloaded |, which only a
    # stub's overloads match)
    def __ior__(self, other: Mapping) -> Self:  # type: ignore[override, misc]
        result = super().__ior__(other)
        note()
        return result

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        note()

    def setdefault(self, key, default=None):
        value = super().setdefault(key, default)
        note()
        return value

    def pop(self, *args):
        value = super().pop(*args)
        note()
        return value

    def popitem(self):
        item = super().popitem()
        note()
        return item

    def clear(self):
        super().clear()
        note()
