"""Eager updates of a group's small parameters at once, by the optimizer's one ``update``.

The built-in updates are elementwise: each element of a result reads the same element of the
parameter, its gradient and its state, plus 0-d entries such as Adam's step count. On the
concatenation of several parameters (and of their state) they therefore give, element by
element, the bits they give on each parameter. Eagerly, a tensor op costs microseconds
whatever its size, so for a transformer's 30 small parameters the op count is most of the
update: ``update_grouped`` runs ``optimizer.update`` once on flat tensors of the small
parameters of a group whose state agrees (what PyTorch's foreach optimizers do about the same
cost). A large parameter, the other way round, is updated piece by piece: the update's few
passes over a piece find it in cache, as a fused kernel's would, instead of streaming the
whole arrays through memory once per op. Traced steps update one by one, so the compiler sees
each parameter (and the generated code loops over row pieces of its own).

A ``FlatGroup`` keeps such a set between steps. Its members' state entries are views of the
flat state tensors the update writes (their tensors keep their identity, and count their
writes with them), so a step gathers only the values and gradients, into arrays kept between
steps, and scatters only the values back: it allocates nothing. Each step first checks that
the set still holds (the same parameters and state entries, on the same memory); when it does
not (a parameter without a gradient, state loaded from a state dict), the set is chosen again
and state given from outside moves onto new flat tensors.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tracegrad.ops.kernels import CHUNK
from tracegrad.tensor import Tensor, wrap

# Parameters up to this size are grouped: past it, a parameter's own ops cost far less than
# its memory traffic, which gathering it would add to.
SMALL = CHUNK
# Parameters past this size are updated in pieces of it: about 1 MiB per float32 array, so a
# piece's arrays stay in cache across the update's ops while the ops' own cost (microseconds
# each) stays small beside a piece's (Adam on W2: 8% faster than whole arrays; a fourth of
# this: 5%).
PIECE = 4 * CHUNK


def update_grouped(optimizer, index: int, pairs: list, group: dict, settings: dict) -> list:
    """Update the (parameter, gradient) pairs of parameter group ``index`` that can go
    together at once, and the large ones in pieces; returns the pairs left for the one-by-one
    update."""
    pairs = [(p, g) for p, g in pairs if not _updated_in_pieces(optimizer, p, g, group, settings)]
    flat = optimizer.flat_groups.get(index)
    grads = flat.gradients(pairs, optimizer.state) if flat is not None else None
    if grads is None:
        flat = optimizer.flat_groups[index] = FlatGroup.of(optimizer.state, pairs)
        if flat is None:
            return pairs
        grads = flat.gradients(pairs, optimizer.state)
    flat.update(optimizer, grads, group, settings)
    return [(p, g) for p, g in pairs if p not in flat.members]


class FlatGroup:
    """Parameters of one dtype laid end to end, with their state as views of flat tensors."""

    def __init__(self, params: list[Tensor], states: list[dict]):
        self.params, self.states = params, states
        self.members = set(params)
        size = sum(p.numel() for p in params)
        self.values = wrap(np.empty(size, params[0].array.dtype))
        self.grads = wrap(np.empty_like(self.values.array))
        self.pieces = _cut(self.values.array, [p.array.shape for p in params])
        self.state: dict[str, Tensor] = {}  # what the update reads and writes
        self.counts: dict[str, np.ndarray] = {}  # key of a 0-d entry -> the members' entries
        for key in states[0]:
            self._adopt(key, _gathered([s[key] for s in states]))

    @classmethod
    def of(cls, state: dict, pairs: list) -> FlatGroup | None:
        """The largest agreeing set among ``pairs``, or None if it has fewer than two."""
        members = _largest_agreeing_set(state, pairs)
        if len(members) < 2:
            return None
        return cls([p for p, _ in members], [state.setdefault(p, {}) for p, _ in members])

    def gradients(self, pairs: list, state: dict) -> list[Tensor] | None:
        """The members' gradients among ``pairs``, or None when the set no longer holds."""
        if not self._intact():
            return None
        given = dict(pairs)  # (tensors hash by identity)
        grads = []
        for p, piece, own in zip(self.params, self.pieces, self.states, strict=True):
            g = given.get(p)
            if g is None or g.array.shape != piece.shape or p.array.shape != piece.shape:
                return None
            if state.get(p) is not own or len(own) != len(self.state):
                return None
            grads.append(g)
        return grads

    def update(self, optimizer, grads: list[Tensor], group: dict, settings: dict) -> None:
        np.concatenate([p.array.reshape(-1) for p in self.params], out=self.values.array)
        np.concatenate([g.array.reshape(-1) for g in grads], out=self.grads.array)
        for key, counts in self.counts.items():
            np.copyto(self.state[key].array, counts[0])
        kept = set(self.state)
        optimizer.update(self.values, self.grads, self.state, group, settings)
        for p, piece in zip(self.params, self.pieces, strict=True):
            np.copyto(p.array, piece)
            p.bump_version()
        for key, counts in self.counts.items():
            np.copyto(counts, self.state[key].array)
        for key, flat in list(self.state.items()):
            if key not in kept:  # an entry the update made (its first step), in its order
                self._adopt(key, flat)

    def _adopt(self, key: str, flat: Tensor) -> None:
        """Make ``flat`` the state entry ``key`` of the set: each member's entry a view of it
        (a 0-d entry: one element of ``counts``, all of them equal to ``flat``)."""
        self.state[key] = flat
        if flat.ndim == 0:
            counts = self.counts[key] = np.full(len(self.params), flat.array)
            views = [counts[i : i + 1].reshape(()) for i in range(len(self.params))]
        else:
            views = _cut(flat.array, [p.array.shape for p in self.params])
        for own, view in zip(self.states, views, strict=True):
            entry = own.get(key)
            if entry is None:
                entry = own[key] = wrap(view)
            else:
                entry.array = view
            entry.count_writes_with(flat)

    def _intact(self) -> bool:
        """Whether the views are still views of this set's arrays and every member's entry
        one of them, as set up (a deep copy of the optimizer copies each apart)."""
        if self.pieces[0].base is not self.values.array:
            return False
        for key, flat in self.state.items():
            base = self.counts.get(key, flat.array)
            for own in self.states:
                entry = own.get(key)
                if entry is None or entry.array.base is not base:
                    return False
            if key in self.counts and not _all_equal(self.counts[key]):
                return False
        return True


def _updated_in_pieces(optimizer, param: Tensor, grad: Tensor, group, settings) -> bool:
    """Update a large parameter piece by piece if ``_in_pieces`` allows; whether it did."""
    state = optimizer.state.get(param)
    arrays = _in_pieces(param, grad, state)
    if arrays is None:
        return False
    shaped = [k for k, e in state.items() if e.ndim]
    counts = {k: e for k, e in state.items() if not e.ndim}  # (a step count)
    before = {k: e.array.copy() for k, e in counts.items()}
    for start in range(0, param.numel(), PIECE):
        piece = slice(start, start + PIECE)
        for key, entry in counts.items():  # each piece counts the same step from the same value
            np.copyto(entry.array, before[key])
        value, gradient, *entries = (wrap(a[piece]) for a in arrays)
        pieces = {**counts, **dict(zip(shaped, entries, strict=True))}
        optimizer.update(value, gradient, pieces, group, settings)
    for t in (param, *(state[k] for k in shaped)):
        t.bump_version()
    return True


def _in_pieces(param: Tensor, grad: Tensor, state: dict | None) -> list[np.ndarray] | None:
    """The flat arrays of a large parameter, its gradient and its shaped state entries, when
    its state is made (the first update makes it whole) and every array is contiguous, of the
    parameter's shape (and writable, but the gradient); else None."""
    if param.numel() <= PIECE or not state:
        return None
    if not all(isinstance(e, Tensor) for e in state.values()):
        return None
    arrays = [param.array, grad.array, *(e.array for e in state.values() if e.ndim)]
    if any(a.shape != param.array.shape or not a.flags.c_contiguous for a in arrays):
        return None
    if not all(a.flags.writeable for a in arrays[:1] + arrays[2:]):
        return None
    return [a.reshape(-1) for a in arrays]


def _cut(flat: np.ndarray, shapes: list) -> list[np.ndarray]:
    """Consecutive views of ``flat`` of the given shapes."""
    views, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        views.append(flat[start : start + size].reshape(shape))
        start += size
    return views


def _all_equal(counts: np.ndarray) -> bool:
    return bool(counts.min() == counts.max())


def _gathered(entries: list[Tensor]) -> Tensor:
    """Parameter-shaped entries as one flat tensor; equal 0-d ones as one 0-d tensor."""
    if entries[0].ndim == 0:
        return wrap(entries[0].array.copy())
    return wrap(np.concatenate([t.array.reshape(-1) for t in entries]))


def _largest_agreeing_set(state: dict, pairs: list) -> list:
    """The largest set of small pairs of one dtype whose state entries agree: the same
    keys, each either shaped like its parameter or a 0-d value equal across the set."""
    sets = defaultdict(list)
    for p, g in pairs:
        a = p.array
        # (a 0-d parameter's entries could not be told from 0-d values such as a step count)
        if a.ndim == 0 or a.size > SMALL or not a.flags.writeable:
            continue
        if g.array.dtype != a.dtype or g.array.shape != a.shape:
            continue
        signature = _signature(p, state.get(p, {}))
        if signature is not None:
            sets[signature].append((p, g))
    return max(sets.values(), key=len, default=[])


def _signature(param: Tensor, state: dict):
    dtype = param.array.dtype
    entries: list[tuple] = []
    for key, entry in state.items():
        if not isinstance(entry, Tensor) or entry.array.dtype.kind != "f":
            return None
        if entry.array.shape == param.array.shape and entry.array.dtype == dtype:
            entries.append((key, "shaped"))
        elif entry.array.shape == ():
            entries.append((key, entry.array.dtype, entry.array.tobytes()))
        else:
            return None
    return (dtype, *entries)
