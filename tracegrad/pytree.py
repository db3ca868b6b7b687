"""Nested containers of tensors, as compiled functions take and return them.

A value is flattened into its *leaves* (the tensors in it, NumPy arrays made tensors sharing
their memory) and a *structure*: a hashable description of everything else (tuples, lists,
dicts and their keys, and plain values such as numbers and strings, compared by type and
value). Two calls with equal structures can run one program; ``unflatten`` rebuilds a value
of the structure from new leaves.

Structures read: ``"tensor"`` for a leaf; ``("tuple" | "list", children)``; ``("dict", keys,
children)``; ``("namedtuple", type, children)``; ``("value", type, value)`` for a plain
hashable value (a module is one, by identity); ``("object", ById(obj))`` for an unhashable
one, by identity.
"""

from __future__ import annotations

import numpy as np

from tracegrad.creation import from_numpy
from tracegrad.tensor import Tensor

TENSOR = "tensor"


def is_leaf(value) -> bool:
    return isinstance(value, (Tensor, np.ndarray))


def flatten(value) -> tuple[list[Tensor], object]:
    """The tensors in ``value``, in order, and its structure."""
    leaves: list[Tensor] = []
    return leaves, _flatten(value, leaves)


def _flatten(value, leaves: list) -> object:
    if isinstance(value, Tensor):
        leaves.append(value)
        return TENSOR
    if isinstance(value, np.ndarray):
        leaves.append(from_numpy(value))  # (sharing its memory: writes reach the caller)
        return TENSOR
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ("namedtuple", type(value), tuple(_flatten(v, leaves) for v in value))
    if isinstance(value, (tuple, list)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return (kind, tuple(_flatten(v, leaves) for v in value))
    if isinstance(value, dict):
        keys = tuple(value)
        return ("dict", keys, tuple(_flatten(value[k], leaves) for k in keys))
    try:
        hash(value)
    except TypeError:
        return ("object", ById(value))
    return ("value", type(value), value)


class ById:
    """An unhashable object in a structure, equal only to itself."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, ById) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def unflatten(structure, leaves):
    """The value of ``structure`` whose tensors are ``leaves`` (in flatten's order)."""
    return _unflatten(structure, iter(leaves))


def _unflatten(structure, leaves):
    if structure == TENSOR:
        return next(leaves)
    kind = structure[0]
    if kind in ("tuple", "list"):
        items = [_unflatten(s, leaves) for s in structure[1]]
        return tuple(items) if kind == "tuple" else items
    if kind == "namedtuple":
        return structure[1](*(_unflatten(s, leaves) for s in structure[2]))
    if kind == "dict":
        return {k: _unflatten(s, leaves) for k, s in zip(structure[1], structure[2], strict=True)}
    return structure[2] if kind == "value" else structure[1].obj


def count(structure) -> int:
    """How many leaves a value of ``structure`` has."""
    if structure == TENSOR:
        return 1
    kind = structure[0]
    if kind in ("tuple", "list"):
        return sum(count(s) for s in structure[1])
    if kind in ("dict", "namedtuple"):
        return sum(count(s) for s in structure[2])
    return 0
