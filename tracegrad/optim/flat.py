"""Small parameters updated together: their optimizer state lives in one flat buffer per kind
(Adam's moments, its step counts), and each eager step gathers their values and gradients into
flat arrays, runs the update's NumPy calls once over all of them and scatters the values back.

A per-parameter update costs a dozen NumPy calls of about a microsecond each, whatever the
size: for a transformer's 30 parameters that is most of the update, while one call over all
of them costs what its memory traffic costs (what PyTorch's foreach and fused optimizers are
to its per-parameter loop). The updates are elementwise, so the flat arrays get the same bits.

Parameters stay where they are (the caller may hold their arrays); the state tensors keep their
identity and see views of the flat buffers. Those are moved there only when nothing but their
tensor refers to their arrays, so the move cannot be observed.
"""

from __future__ import annotations

import sys

import numpy as np

from tracegrad.ops.kernels import CHUNK
from tracegrad.tensor import Tensor

# Parameters up to this size are updated together: past it, a parameter's own NumPy calls
# cost far less than its memory traffic, which gathering it would add to.
SMALL = CHUNK
# sys.getrefcount of an array only its tensor refers to (the attribute, the call's argument)
_ONLY_THE_TENSOR = 2


class FlatState:
    """The state entries ``keys`` of ``params`` (all of one dtype), as views of one flat array
    per key; scratch arrays for the gathered values and gradients."""

    def __init__(self, params: list[Tensor], states: list[dict], keys: tuple[str, ...]):
        self.params, self.keys = params, keys
        self.entries = [[state[key] for key in keys] for state in states]
        self.flats: dict[str, np.ndarray] = {}
        for k, key in enumerate(keys):
            arrays = [entry[k]._data for entry in self.entries]
            self.flats[key] = flat = np.concatenate([a.reshape(-1) for a in arrays])
            for entry, view in zip(self.entries, self._views(flat, arrays), strict=True):
                entry[k]._data = view
        self.views = [[entry[k]._data for k in range(len(keys))] for entry in self.entries]
        size = sum(p._data.size for p in params)
        self.values = np.empty(size, params[0]._data.dtype)
        self.grads = np.empty_like(self.values)
        # each parameter's part of the gathered values, in its shape
        self.pieces = self._views(self.values, [p._data for p in params])

    @staticmethod
    def _views(flat: np.ndarray, arrays: list[np.ndarray]) -> list[np.ndarray]:
        views, start = [], 0
        for a in arrays:
            views.append(flat[start : start + a.size].reshape(a.shape))
            start += a.size
        return views

    @classmethod
    def build(cls, params, states, keys) -> FlatState | None:
        """The flat state of ``params``, or None when some entry is missing, of another dtype
        or shape than its parameter's (a step count is a 0-d float), or held elsewhere."""
        if not params:
            return None
        dtype = params[0]._data.dtype
        for p, state in zip(params, states, strict=True):
            if p._data.dtype != dtype:
                return None
            for key in keys:
                entry = state.get(key)
                if not isinstance(entry, Tensor) or entry._data.dtype.kind != "f":
                    return None
                if entry._data.shape not in (p._data.shape, ()):
                    return None
                if sys.getrefcount(entry._data) > _ONLY_THE_TENSOR:
                    return None
        return cls(params, states, keys)

    def holds(self, params, states) -> bool:
        """Whether ``params`` are still these, of these shapes, with these state tensors on
        these views (code outside, load_state_dict say, may have replaced any of them)."""
        if len(params) != len(self.params):
            return False
        for p, mine, piece, state, entry, views in zip(
            params, self.params, self.pieces, states, self.entries, self.views, strict=True
        ):
            if p is not mine or p._data.shape != piece.shape:  # (p.data may be replaced)
                return False
            for key, tensor, view in zip(self.keys, entry, views, strict=True):
                if state.get(key) is not tensor or tensor._data is not view:
                    return False
        # Still views of these flat arrays (a deep copy of the optimizer copies each apart)
        return all(v.base is self.flats[k] for k, v in zip(self.keys, self.views[0], strict=True))

    def gather(self, arrays: list[np.ndarray], out: np.ndarray) -> np.ndarray:
        return np.concatenate([a.reshape(-1) for a in arrays], out=out)

    def scatter_values(self) -> None:
        """The updated values back into the parameters, and their versions bumped."""
        for p, piece, entry in zip(self.params, self.pieces, self.entries, strict=True):
            np.copyto(p._data, piece)
            p._version[0] += 1
            for tensor in entry:
                tensor._version[0] += 1


def small_params(pairs: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """The (parameter, gradient) pairs an update runs together: small, contiguous, writable
    parameters with gradients of their own dtype and shape."""
    return [
        (p, g)
        for p, g in pairs
        if p._data.size <= SMALL
        and p._data.flags.c_contiguous
        and p._data.flags.writeable
        and g._data.dtype == p._data.dtype
        and g._data.shape == p._data.shape
    ]
