"""Signatures: what a specialization depends on, as (label, value) pairs, and their diff in
words.

A call's signature lists its arguments' shapes, dtypes and requires_grad, and the metadata of
the state the program reads. Equal signatures can run one program; when they differ,
``signature_diff`` says what changed, in words ("input 0: shape (4, 3) -> (8, 3)",
"model.0.weight: .grad now exists"), for ``recompile_reasons``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

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
    ``text`` (the number). ``aspects`` names the items of a tuple ``fact`` (``"shape"``,
    ``".grad"``, ``"tensor"`` for an identity) so that a recompile reason can say which one
    changed; a constant, so guards checked on every call build nothing more."""

    fact: Any  # a tuple when ``aspects`` names its items
    text: str = field(compare=False)
    aspects: tuple[str, ...] = field(default=(), compare=False)

    @property
    def parts(self) -> tuple:
        return tuple(zip(self.aspects, self.fact, strict=True)) if self.aspects else ()

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def tensor_meta(t) -> Shown:
    """A module member's guard: the same tensor (the program reads this very one), of its
    type and requires_grad."""
    d = t.array
    needs = " requires grad" if t._requires_grad else ""
    meta = (d.shape, dtype_name(d.dtype), t._requires_grad, id(t))
    return Shown(meta, f"{dtype_name(d.dtype)}{list(d.shape)}{needs}", MEMBER_ASPECTS)


MEMBER_ASPECTS = ("shape", "dtype", "requires_grad", "tensor")


def training_modes(flags: tuple[bool, ...]) -> Shown:
    """The guard on the train/eval flags of a module and its submodules, shown in words."""
    on, n = sum(flags), len(flags)
    text = "train mode" if on == n else "eval mode" if not on else f"{on} of {n} in train mode"
    return Shown(tuple(flags), text)


# --- recompile reasons ----------------------------------------------------------------------

ABSENT = object()  # a guard only one signature has

# The last word of a label when it names an aspect of what the rest of the label names
# ("input 0 shape"); kinds of state that need no saying once named ("state model.0.weight").
_ASPECTS = ("shape", "dtype", "requires_grad", ".grad", "type", "value", "state")
_SILENT_KINDS = ("state ", "parameter ", "buffer ")
_IDENTITIES = {"tensor": "another tensor", "tensors": "other tensors"}  # aspects: id()s


def signature_diff(old: Signature, new: Signature) -> str:
    """Which guards changed, in words: ``input 0: shape (64, 20) -> (40, 20)``,
    ``model.0.weight, model.0.bias: .grad now exists``; the same change of several things
    is said once, naming them all."""
    before, after = _unique_labels(old), _unique_labels(new)
    by_subject: dict[str, list[tuple]] = {}
    for label in dict.fromkeys([*before, *after]):
        was, now = before.get(label, ABSENT), after.get(label, ABSENT)
        if was != now:
            subject, aspect = _subject(label)
            by_subject.setdefault(subject, []).append((aspect, was, now))
    by_change: dict[str, list[str]] = {}
    for subject, changed in by_subject.items():
        for change in _changes(changed):
            by_change.setdefault(change, []).append(subject)
    reasons = [f"{', '.join(subjects)}: {change}" for change, subjects in by_change.items()]
    return "; ".join(reasons) or NO_CHANGE


def _subject(label: str) -> tuple[str, str]:
    """``input 0 shape`` -> (``input 0``, ``shape``); ``state m.w`` -> (``m.w``, "")."""
    subject, _, aspect = label.rpartition(" ")
    if not subject or aspect not in _ASPECTS:
        subject, aspect = label, ""
    for kind in _SILENT_KINDS:
        subject = subject.removeprefix(kind)
    return subject, aspect


def _changes(changed: list[tuple]) -> list[str]:
    """The changes of one subject's guards, (aspect, was, now) each, in words; a subject
    guarded by other aspects now (a number passed where a tensor was) as what it was and is."""
    was = {aspect: w for aspect, w, _ in changed if w is not ABSENT}
    now = {aspect: n for aspect, _, n in changed if n is not ABSENT}
    if was and now and was.keys() != now.keys():
        return [f"{_kind(was)} -> {_kind(now)}"]
    return [_in_words(aspect, w, n) for aspect, w, n in changed]


def _kind(aspects: dict) -> str:
    if "shape" in aspects:
        return f"tensor {aspects.get('dtype', '')}{list(aspects['shape'])}"
    if "type" in aspects:
        return f"{aspects['type']} {aspects.get('value', '')}".strip()
    return ", ".join(f"{aspect} {_text(value)}" for aspect, value in aspects.items())


def _in_words(aspect: str, was, now) -> str:
    if was is ABSENT:
        return f"{aspect} now read: {_text(now)}".strip()
    if now is ABSENT:
        return f"{aspect} no longer read".strip()
    if isinstance(was, Shown) and isinstance(now, Shown):
        return _shown_change(aspect, was, now)
    return _change(aspect, was, now)


def _shown_change(aspect: str, was: Shown, now: Shown) -> str:
    if was.aspects and was.aspects == now.aspects:
        # a replaced object first; new objects where there were none go without saying
        parts = sorted(zip(was.aspects, was.fact, now.fact, strict=True),
                       key=lambda part: part[0] not in _IDENTITIES)  # fmt: skip
        return ", ".join(
            _change(aspect, a, b)
            for aspect, a, b in parts
            if a != b and (a or aspect not in _IDENTITIES)
        )
    if str(was) == str(now):  # (the same kind of object, another one)
        return f"{aspect} replaced by another {now}".strip()
    return _change(aspect, was, now)


def _change(aspect: str, was, now) -> str:
    """One aspect's change: ``shape (4, 3) -> (5, 3)``, ``now requires grad``, ``.grad now
    exists``, ``replaced by another tensor``."""
    if aspect == "requires_grad" and isinstance(now, bool):
        return "now requires grad" if now else "no longer requires grad"
    if aspect in _IDENTITIES:
        return f"replaced by {_IDENTITIES[aspect]}"
    if was is None:
        return f"{aspect} {now} now exists" if isinstance(now, str) else f"{aspect} now exists"
    if now is None:
        return f"{aspect} no longer exists"
    return f"{aspect} {_text(was)} -> {_text(now)}".strip()


def _text(value) -> str:
    """A guard value as a reason shows it: never an object's address."""
    text = str(value)
    return type(value).__name__ if " at 0x" in text else text


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
