"""Indexing: ``getitem`` and its transpose ``scatter_add``.

An index is stored as a ``key``: a tuple with one entry per indexing item,
``("slice", start, stop, step)``, ``("int", i)``, ``("none",)``, ``("ellipsis",)`` or
``("tensor", k)`` for the k-th int64 index tensor, which is an input of the op (so the
graph sees it), or ``("rows", k, size)`` for one whose values must lie in [0, size), checked
when the index is resolved, eagerly and in generated code alike (an embedding's lookup, where
-1 is an error rather than the last row). Boolean masks are turned into integer indices
before they get here.
"""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.ops import kernels, rules
from tracegrad.ops.elementwise import _zero
from tracegrad.ops.registry import VIEW, call, register


def resolve(key, index_arrays) -> tuple:
    """Turn a stored key back into a NumPy index."""
    return kernels.index(key, *index_arrays)


def _getitem_infer(x: TensorType, *indices: TensorType, key) -> TensorType:
    for t in indices:
        rules.integer("getitem", t, "index tensors")
    # Index a zero-strided stand-in of x's shape with zero-strided stand-in indices: NumPy's
    # own rules then give the result shape, without data.
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.bool_), x.shape, (0,) * x.ndim)
    stand_ins = [np.zeros(t.shape, np.int64) for t in indices]
    try:
        shape = probe[resolve(key, stand_ins)].shape
    except IndexError as exc:
        raise rules.ShapeError(f"getitem: cannot index shape {x.shape}: {exc}") from None
    return TensorType(shape, x.dtype)


def _getitem_impl(x, *indices, key):
    return x[resolve(key, indices)]


def _scatter_add_infer(g: TensorType, *indices: TensorType, key, shape) -> TensorType:
    return TensorType(tuple(shape), g.dtype)


def _scatter_add_impl(g, *indices, key, shape):
    return kernels.scatter_add(g, key, shape, *indices)


# Basic indexing (slices, ints, None, ...) returns a view of x, as in NumPy and PyTorch.
register(
    "getitem",
    ("x", "*indices"),
    _getitem_infer,
    _getitem_impl,
    lambda c, g: (
        (call("scatter_add", g, *c.inputs[1:], key=c.key, shape=c.x.shape),)
        + (None,) * (len(c.inputs) - 1)
    ),
    "{0}[rt.index({key!r}, {indices})]",
    props={VIEW},
)
# scatter_add(g, idx) adds g into zeros(shape) at x[idx]: the transpose of getitem.
register(
    "scatter_add",
    ("g", "*indices"),
    _scatter_add_infer,
    _scatter_add_impl,
    lambda c, g: (call("getitem", g, *c.inputs[1:], key=c.key),) + (None,) * (len(c.inputs) - 1),
    "rt.scatter_add({0}, {key!r}, {shape}, {indices})",
    out="rt.scatter_add({0}, {key!r}, {shape}, out={out}, *[{indices}])",
)


def _flat(g):
    return call("reshape", g, shape=(int(np.prod(g.shape)),))


def _view_update_infer(base: TensorType, values: TensorType, positions: TensorType) -> TensorType:
    rules.integer("view_update", positions, "positions")
    rules.broadcast_shape("view_update", values.shape, positions.shape)
    return base


# view_update(base, values, positions): base with the elements at flat positions set to values,
# how a traced program writes in place through a view (x[0].add_(1), x.t().mul_(2), x[i] = v).
# d/dbase: g with those elements zeroed; d/dvalues: g at those elements.
register(
    "view_update",
    ("base", "values", "positions"),
    _view_update_infer,
    kernels.view_update,
    (
        lambda c, g: call("view_update", g, _zero(g), c.positions),
        lambda c, g: call(
            "getitem",
            call("reshape", g, shape=(int(np.prod(g.shape)),)),
            c.positions,
            key=(("tensor", 0),),
        ),
        None,
    ),
    "rt.view_update({0}, {1}, {2})",
)


def _one_hot_infer(t: TensorType, num_classes) -> TensorType:
    rules.integer("one_hot", t, "the input")
    return TensorType((*t.shape, num_classes), dtypes.int64)


register(
    "one_hot",
    ("t",),
    _one_hot_infer,
    kernels.one_hot,
    None,
    "rt.one_hot({0}, {num_classes})",
)
