"""Runtime buffers of compiled steps: where a step's results that outlive a run (a
parameter's ``.grad``, an optimizer state entry) are stored, and the planned memory they may
live in without a copy.

A step's program owns planned buffers that every run writes again. A ``Sink`` stores one
result after each run: without a copy when the result is a planned buffer, a view of all of
one, or a contiguous piece of one (a gradient's piece of its all_reduce bucket), where no
other live tensor lives (the tensor then lives there, and the next run writes its next value
in place), else into the tensor's own memory or a copy. A home is that memory: the buffer's
id and the byte range the result covers. ``_holders`` records which tensor lives in which
home, so no memory is ever handed to two tensors at once.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracegrad.tensor import Tensor, wrap

# Where a stored result lives: (id of a planned buffer, first byte, byte after the last).
Home = tuple[int, int, int]

# id(planned buffer) -> {(first byte, byte after the last): the tensor living there}. Memory
# is one tensor's at a time: while a tensor a step handed out is alive (the user may keep an
# old .grad, or a view of it), no home overlapping its own is handed to another tensor.
Held = weakref.WeakValueDictionary[tuple[int, int], Tensor]
_holders: dict[int, Held] = {}
_NOBODY: Held = weakref.WeakValueDictionary()  # (what a buffer nobody lives in holds)


# References to a tensor a sink keeps when nothing else holds it: the sink's attribute, the
# local name in keep_orphan and sys.getrefcount's own argument.
_ONLY_THE_SINK = 3


@dataclass
class Sink:
    """Where a value computed by the step is stored after each run."""

    kind: str  # "grad" (a tensor's .grad) or "state" (an optimizer state entry)
    owner: Any  # the tensor, or the optimizer state dict of one parameter
    key: str | None = None
    buffer: Home | None = None  # the home the last run stored in
    kept: Tensor | None = None  # the tensor living in that buffer, stored by the last run
    # For the .grad of an argument: its position (each run points ``owner`` at its argument)
    argument: int | None = None
    # Whether the step replaces the .grad it finds (zero_grad() first): each run drops it
    # first, unless it is the tensor the last run stored and nobody else holds it
    replaces: bool = False

    def current(self):
        return self.owner.grad if self.kind == "grad" else self.owner.get(self.key)

    def put(self, tensor: Tensor) -> None:
        if self.kind == "grad":
            self.owner.grad = tensor
        else:
            self.owner[self.key] = tensor

    def keep_orphan(self) -> None:
        """Before a run writes this sink's buffer again: the tensor living there, if its
        owner has dropped it (zero_grad set .grad to None) but the user kept it, moves to
        memory of its own, so it keeps its value as it would in PyTorch. If nothing but this
        sink holds it, nobody can see it change: the next store hands it out again."""
        kept = self.kept
        if kept is None or kept is self.current():
            return
        if sys.getrefcount(kept) > _ONLY_THE_SINK:
            if self.buffer is not None:
                _release(self.buffer, kept)
            kept.array = kept.array.copy()
            self.kept = None

    def store(self, array: np.ndarray, home: Home | None) -> None:
        """Without a copy when ``array`` is one of the program's planned buffers, a view of
        all of one or a contiguous piece of one (``home`` is then that memory), and no other
        live tensor lives there:
        the tensor then lives in that buffer, which every later run leaves holding the same
        value's next result. A tensor the user made keeps its memory (it may be a view of
        theirs) and is written into; anything else is copied, since it may be an input or
        memory shared with another result."""
        current, kept = self.current(), self.kept
        if current is None and kept is not None and same_memory(kept.array, array):
            current = kept  # dropped by zero_grad and held by nobody: it comes back
            self.put(kept)
        if current is not None and same_memory(current.array, array):
            current.bump_version()  # the run wrote the tensor's own memory: nothing to move
            return
        free = home is not None and _is_free(home)
        if (
            isinstance(current, Tensor)
            and current.array.shape == array.shape
            and current.array.dtype == array.dtype
        ):
            held = _held_in(current)
            if free and held is not None:  # a tensor some run stored without a copy: it moves
                _release(held, current)
                current.array = array
                self._live_in(home, current)
            else:
                np.copyto(current.array, array)
            current.bump_version()
            return
        new = wrap(array if free else array.copy())
        if free:
            self._live_in(home, new)
        self.put(new)

    def _live_in(self, home: Home | None, tensor: Tensor) -> None:
        assert home is not None  # (only a free store lives in a buffer: it has one)
        buffer, start, stop = home
        _holders.setdefault(buffer, Held())[start, stop] = tensor
        self.buffer, self.kept = home, tensor


def _is_free(home: Home) -> bool:
    """Whether no live tensor lives in memory overlapping ``home``."""
    buffer, start, stop = home
    held = _holders.get(buffer, _NOBODY)
    return not any(a < stop and start < b for a, b in list(held.keys()))


def _release(home: Home, tensor: Tensor) -> None:
    """``tensor`` no longer lives in ``home`` (it moves to memory of its own, or elsewhere)."""
    buffer, start, stop = home
    held = _holders.get(buffer, _NOBODY)
    if held.get((start, stop)) is tensor:
        del held[start, stop]


def _held_in(tensor: Tensor) -> Home | None:
    """The home ``tensor`` lives in, if a run stored it without a copy."""
    array = tensor.array
    buffer = array if array.base is None else array.base
    home = _home_in(array, buffer)
    held = _holders.get(id(buffer), _NOBODY)
    return home if home is not None and held.get(home[1:]) is tensor else None


def _home_in(array: np.ndarray, buffer: np.ndarray) -> Home | None:
    """The bytes of ``buffer`` that ``array`` (a view of it) covers, when they are one
    contiguous run (all of it, reshaped or transposed, or a contiguous piece)."""
    if array.size == buffer.size:
        return (id(buffer), 0, buffer.nbytes)
    if not array.flags.c_contiguous:
        return None
    start = array.ctypes.data - buffer.ctypes.data
    return (id(buffer), start, start + array.nbytes)


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays are the same memory seen the same way (each run makes a new view of
    a buffer: equal base, shape, strides and first byte)."""
    if a is b:
        return True
    base = a.base
    return (
        base is not None
        and base is b.base
        and a.shape == b.shape
        and a.strides == b.strides
        and a.ctypes.data == b.ctypes.data
    )


def memory_of(array: np.ndarray) -> int:
    """The id of the array owning ``array``'s memory."""
    base = array.base
    return id(array if base is None else base)


def planned_home(array: np.ndarray, planned: frozenset[int]) -> Home | None:
    """Where ``array`` lives in the program's planned memory, if it is a planned buffer, a
    view of all of one (reshaped or transposed: a weight's gradient computed as the
    transposed product of rows) or a contiguous piece of one (a gradient's piece of its
    all_reduce bucket)."""
    if id(array) in planned:
        return (id(array), 0, array.nbytes)
    base = array.base
    return _home_in(array, base) if base is not None and id(base) in planned else None
