"""Eager updates of a group's small parameters at once, by the optimizer's one ``update``.

The built-in updates are elementwise: each element of a result reads the same element of the
parameter, its gradient and its state, plus 0-d entries such as Adam's step count. On the
concatenation of several parameters (and of their state) they therefore give, element by
element, the bits they give on each parameter. Eagerly, a tensor op costs microseconds
whatever its size, so for a transformer's 30 small parameters the op count is most of the
update: ``update_grouped`` gathers the small parameters of a group whose state agrees into
flat tensors, runs ``optimizer.update`` on them once, and copies the results back (what
PyTorch's foreach optimizers do about the same cost). Traced steps update one by one, so the
compiler sees each parameter.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tracegrad.ops.kernels import CHUNK
from tracegrad.tensor import Tensor, wrap

# Parameters up to this size are grouped: past it, a parameter's own ops cost far less than
# its memory traffic, which gathering it would add to.
SMALL = CHUNK


def update_grouped(optimizer, pairs: list, group: dict, settings: dict) -> list:
    """Update the (parameter, gradient) pairs that can go together at once; returns the
    pairs left for the one-by-one update."""
    members = _largest_agreeing_set(optimizer.state, pairs)
    if len(members) < 2:
        return pairs
    params = [p for p, _ in members]
    states = [optimizer.state.setdefault(p, {}) for p in params]
    flat_param = _gather(params)
    flat_state = {key: _gather([s[key] for s in states]) for key in states[0]}
    optimizer.update(flat_param, _gather([g for _, g in members]), flat_state, group, settings)
    _scatter(flat_param, params)
    for key, flat in flat_state.items():
        entries = [s.get(key) for s in states]
        if entries[0] is None:  # (a state entry the update made: one per parameter)
            entries = [s.setdefault(key, _like(flat, p)) for s, p in zip(states, params)]
        _scatter(flat, entries)
    grouped = {id(p) for p in params}
    return [(p, g) for p, g in pairs if id(p) not in grouped]


def _largest_agreeing_set(state: dict, pairs: list) -> list:
    """The largest set of small pairs of one dtype whose state entries agree: the same
    keys, each either shaped like its parameter or a 0-d value equal across the set."""
    sets = defaultdict(list)
    for p, g in pairs:
        a = p.array
        # (a 0-d parameter's entries could not be told from 0-d values such as a step count)
        if a.ndim == 0 or a.size > SMALL or not (a.flags.c_contiguous and a.flags.writeable):
            continue
        if g.array.dtype != a.dtype or g.array.shape != a.shape:
            continue
        signature = _signature(p, state.get(p, {}))
        if signature is not None:
            sets[signature].append((p, g))
    return max(sets.values(), key=len, default=[])


def _signature(param: Tensor, state: dict):
    dtype = param.array.dtype
    entries = []
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


def _gather(tensors: list[Tensor]) -> Tensor:
    """Parameter-shaped tensors as one flat tensor; equal 0-d ones as one 0-d tensor."""
    if tensors[0].ndim == 0:
        return wrap(tensors[0].array.copy())
    return wrap(np.concatenate([t.array.reshape(-1) for t in tensors]))


def _scatter(flat: Tensor, tensors: list[Tensor]) -> None:
    """The flat tensor's values back into ``tensors``, each write counted."""
    start = 0
    for t in tensors:
        if flat.ndim == 0:
            np.copyto(t.array, flat.array)
        else:
            np.copyto(t.array, flat.array[start : start + t.numel()].reshape(t.array.shape))
            start += t.numel()
        t.bump_version()


def _like(flat: Tensor, param: Tensor) -> Tensor:
    """A new state entry of ``param``'s shape (or 0-d like ``flat``), filled by _scatter."""
    shape = () if flat.ndim == 0 else param.array.shape
    return wrap(np.empty(shape, flat.array.dtype))
