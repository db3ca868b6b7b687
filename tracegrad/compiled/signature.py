"""Signatures: what a specialization depends on, as (label, value) pairs, and their diff in
words.

A call's signature lists its arguments' shapes, dtypes and requires_grad, and the metadata of
the state the program reads. Equal signatures can run one program; when they differ,
``signature_diff`` says what changed ("input 0 shape (4, 3) -> (8, 3)") for
``recompile_reasons``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from tracegrad.tensor import Tensor

Signature = tuple  # of (label, value) pairs


@functools.cache
def input_label(index: int) -> str:
    return f"input {index}"


@functools.cache
def _tensor_labels(label: str) -> tuple[str, str, str]:
    return f"{label} shape", f"{label} dtype", f"{label} requires_grad"


@functools.cache
def dtype_name(dtype: np.dtype) -> str:
    return dtype.name  # computed anew on every access by NumPy, which guards cannot afford


def tensor_guards(label: str, value) -> list[tuple[str, object]]:
    # Read from the array and cached labels: guards are checked on every call.
    if isinstance(value, Tensor):
        shape, dtype, requires_grad = _tensor_labels(label)
        data = value.array
        return [
            (shape, data.shape),
            (dtype, dtype_name(data.dtype)),
            (requires_grad, value._requires_grad),
        ]
    # By type as well: 2 and 2.0 are equal, but x * 2 keeps an integer tensor's dtype.
    return [(f"{label} type", type(value).__name__), (f"{label} value", value)]


def identity(obj) -> Shown:
    """A guard's value for an object the program depends on by identity (a submodule)."""
    return Shown(id(obj), type(obj).__name__)


@dataclass(frozen=True)
class Shown:
    """A guard's value compared by ``fact`` (a number by whether it is 0, say) and shown as
    ``text`` (the number) in recompile reasons."""

    fact: object
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def tensor_meta(t) -> Shown:
    """A module member's guard: the same tensor (the program reads this very one), of its
    type and requires_grad."""
    d = t.array
    needs = " requires grad" if t._requires_grad else ""
    meta = (d.shape, dtype_name(d.dtype), t._requires_grad, id(t))
    return Shown(meta, f"{dtype_name(d.dtype)}{list(d.shape)}{needs}")


def signature_diff(old: Signature, new: Signature) -> str:
    """Which guards changed, in words: "label old -> new", or "label replaced" for an object
    now another one of the same kind (labels only in one side included)."""
    before, after = _unique_labels(old), _unique_labels(new)
    changes = []
    for label in dict.fromkeys([*before, *after]):
        was, now = before.get(label, "<absent>"), after.get(label, "<absent>")
        if was == now:
            continue
        same_text = isinstance(was, Shown) and isinstance(now, Shown) and str(was) == str(now)
        changes.append(
            f"{label} replaced by another {now}" if same_text else f"{label} {was} -> {now}"
        )
    return "; ".join(changes) or NO_CHANGE


def _unique_labels(signature: Signature) -> dict:
    """The signature as a dict; a label seen again is numbered (two tensors both named
    state m.bias, a replaced one and its successor, stay apart)."""
    found: dict = {}
    for label, value in signature:
        key, n = label, 1
        while key in found:
            n += 1
            key = f"{label} ({n})"
        found[key] = value
    return found


NO_CHANGE = "no guard changed"
