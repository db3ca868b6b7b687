"""Python index expressions and shape arguments, as the registry's ops take them.

``index_key(item, ndim)`` encodes ``t[item]`` as the ``getitem``/``setitem`` key, a tuple of
``("int", i)``, ``("slice", start, stop, step)``, ``("none",)``, ``("ellipsis",)`` and
``("tensor", k)`` entries, the k-th of which refers to the k-th returned index tensor (a bool
mask becomes the index tensors of its True positions). ``shape_args`` and ``infer_shape`` read
the shapes given to ``reshape``, ``zeros``...
"""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.errors import ShapeError, at_user_line
from tracegrad.tensor.core import Size, Tensor, tensor, wrap


def index_key(item, ndim: int) -> tuple[tuple, list[Tensor]]:
    """Encode a Python index as the registry's key plus its index tensors."""
    items = item if isinstance(item, tuple) else (item,)
    key: list[tuple] = []
    tensors: list[Tensor] = []
    for it in items:
        if isinstance(it, (list, range, np.ndarray)):
            it = _index_tensor(it)
        if isinstance(it, Tensor) and it.dtype is dtypes.bool_:
            # A mask selects its True positions; how many is known only from its data.
            for nz in np.nonzero(it._concrete("indexing with a boolean mask")):
                key.append(("tensor", len(tensors)))
                tensors.append(wrap(nz.astype(np.int64)))
        elif isinstance(it, Tensor):
            key.append(("tensor", len(tensors)))
            tensors.append(it)
        elif isinstance(it, slice):
            key.append(("slice", _index_int(it.start), _index_int(it.stop), _index_int(it.step)))
        elif it is None:
            key.append(("none",))
        elif it is Ellipsis:
            key.append(("ellipsis",))
        elif isinstance(it, (bool, np.bool_)):
            raise IndexError("indexing with a Python bool is not supported; use a bool tensor")
        else:
            key.append(("int", _index_int(it)))
    return tuple(key), tensors


def _index_tensor(items) -> Tensor:
    """A list, range or array index as a tensor; an empty one selects nothing (int64)."""
    if isinstance(items, range):
        return wrap(np.arange(items.start, items.stop, items.step, dtype=np.int64))
    if len(items) == 0:
        return wrap(np.zeros(0, np.int64))
    return tensor(items)


def _index_int(value):
    if value is None:
        return None
    if isinstance(value, Tensor):
        return int(value.item())
    return int(value)


def shape_args(shape) -> tuple[int, ...]:
    """Accept ``f(2, 3)`` and ``f((2, 3))`` alike."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, Size)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def infer_shape(shape, numel: int) -> tuple[int, ...]:
    """Fill a single -1 in ``shape`` so the element count is ``numel``."""
    if shape.count(-1) > 1:
        raise ShapeError(f"only one dimension can be -1, got {shape}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if known == 0 or numel % known:
            raise ShapeError(at_user_line(f"shape {shape} is invalid for input of size {numel}"))
        shape = tuple(numel // known if s == -1 else s for s in shape)
    return shape
