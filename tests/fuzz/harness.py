"""The names a generated program's source sees besides tg, nn, optim, F and np."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tracegrad as tg
from tracegrad import nn


class Holder(nn.Module):
    """The program's parameters, buffers and submodules (the program assigns them)."""


class Wrapped(nn.Module):
    """A program's function as a module's forward, its Holder a submodule (variant c)."""

    def __init__(self, fn: Callable, holder: Holder):
        super().__init__()
        self.holder = holder
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@dataclass
class Case:
    """What a program's ``setup`` returns: the function, its arguments, the state to compare
    after each call (a function, since the caller may rebind names), and ``between(i)``."""

    fn: Callable
    args: tuple
    holder: Holder
    state: Callable[[], dict]
    between: Callable[[int], None]
    step: bool = False  # fn calls backward itself
    mixed: bool = False  # fn mixes a compiled piece with eager code; it is never compiled
    composed: bool = False  # fn compiles its pieces itself (mixed among them); run as it is
    backward: bool = False  # the caller backpropagates through the results
    keep: bool = False  # the caller keeps each call's results and checks them at the end


def tree_add(a, b):
    """Leafwise sum of two results of one shape of containers (compiled + eager)."""
    if isinstance(a, dict):
        return {k: tree_add(a[k], b[k]) for k in a}
    if isinstance(a, list | tuple):
        return type(a)(tree_add(x, y) for x, y in zip(a, b, strict=True))
    return a + b


NAMESPACE = {
    "Holder": Holder,
    "Wrapped": Wrapped,
    "Case": Case,
    "tree_add": tree_add,
    "tg": tg,
    "nn": nn,
}
