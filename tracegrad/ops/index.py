"""Indexing: ``getitem`` and its transpose ``scatter_add``; ``take_rows``, an embedding's
lookup into a planned buffer.

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
from tracegrad.ops import rules
from tracegrad.ops.elementwise import _zero
from tracegrad.ops.registry import VIEW, Sample, call, register
from tracegrad.ops.runtime import kernel, scratch


def resolve(key, index_arrays) -> tuple:
    """Turn a stored key back into a NumPy index."""
    return index(key, *index_arrays)


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
    return scatter_add(g, key, shape, *indices)


@kernel
def index(key, *index_arrays):
    """Turn an index key (the module docstring gives its form) back into a NumPy index."""
    items: list = []  # slices, ints, None, Ellipsis and index arrays
    for kind, *args in key:
        if kind == "slice":
            items.append(slice(*args))
        elif kind == "int":
            items.append(args[0])
        elif kind == "none":
            items.append(None)
        elif kind == "ellipsis":
            items.append(Ellipsis)
        elif kind == "rows":
            items.append(check_rows(index_arrays[args[0]], args[1]))
        else:
            items.append(index_arrays[args[0]])
    return tuple(items)


def check_rows(rows, size):
    """``rows`` when every value is in [0, size), else IndexError naming the first that is
    not: an embedding's lookup, where -1 is a bad token and not the last row."""
    if rows.size and (rows.min() < 0 or rows.max() >= size):
        bad = rows[(rows < 0) | (rows >= size)].flat[0]
        raise IndexError(
            f"index {bad} is out of range for a table of {size} rows (0 to {size - 1})"
        )
    return rows


def _key(*items):
    return {"key": items}


ALL = ("slice", None, None, None)
# Index arrays for dims of 2 or more elements: negative ones too, repeated ones accumulate.
INDICES = Sample(kind="integers", low=-2, high=2)
MATRICES = (((2, 3),), ((3, 4),), ((2, 3, 2),))
GETITEM_SAMPLES = (
    Sample(_key(("slice", 1, None, None), ("slice", None, None, 2)), shapes=MATRICES),
    Sample(_key(("slice", None, None, -1), ("slice", -1, 0, -2)), shapes=MATRICES),
    Sample(_key(("none",), ("ellipsis",), ("int", 1)), shapes=MATRICES),
    Sample(_key(("int", -1), ("int", 1)), shapes=MATRICES),
    Sample(_key(("ellipsis",)), shapes=(((),), ((2, 3),))),
    Sample(
        _key(("tensor", 0)), shapes=(((2,), (4,)), ((3, 2), (2, 2))), inputs=(Sample(), INDICES)
    ),
    Sample(
        _key(ALL, ("tensor", 0)),
        shapes=(((2, 3), (2, 2)), ((2, 2, 2), (3,))),
        inputs=(Sample(), INDICES),
    ),
    Sample(
        _key(("tensor", 0), ("tensor", 1)),
        shapes=(((2, 3), (3,), (3,)), ((3, 4, 2), (2, 3), (3,))),
        inputs=(Sample(), INDICES, INDICES),
    ),
    # advanced indices apart: NumPy moves their dim to the front
    Sample(
        _key(("tensor", 0), ALL, ("tensor", 1)),
        shapes=(((2, 2, 3), (3,), (3,)),),
        inputs=(Sample(), INDICES, INDICES),
    ),
    # an embedding's lookup: rows checked to lie in [0, 4)
    Sample(
        _key(("rows", 0, 4)),
        shapes=(((4, 2), (2, 3)), ((4,), (5,))),
        inputs=(Sample(), Sample(kind="integers", low=0, high=4)),
    ),
)


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
    samples=GETITEM_SAMPLES,
)


@kernel
def scatter_add(g, key, shape, *index_arrays, out=None):
    """Add ``g`` into zeros(shape) at ``index(key)``; repeated indices accumulate."""
    if out is None:
        out = np.zeros(shape, g.dtype)
    else:
        out[...] = 0
    rows = len(key) == 1 and key[0][0] in ("tensor", "rows")  # x[i] for one index array
    if rows and index_arrays[0].dtype.kind in "iu" and index_arrays[0].size:
        _add_rows(out, index_arrays[0], g)
        return out
    where = index(key, *index_arrays)
    if index_arrays:
        np.add.at(out, where, g)
    else:
        out[where] = g
    return out


def _add_rows(out, rows, g):
    """out[rows] += g for an index array along axis 0 (an embedding's gradient), repeated
    rows summed: a stable sort groups equal rows, np.add.reduceat sums each group in the
    original order (np.add.at is 4x slower)."""
    rows = rows.reshape(-1) % out.shape[0]  # -1 and n - 1 name the same row
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    # g's rows in that order, in a scratch array: a steady step allocates no copy of g
    g = g.reshape(rows.size, *out.shape[1:])
    grouped = np.take(g, order, axis=0, out=scratch(g, "add_rows"), mode="clip")
    out[ordered[starts]] = np.add.reduceat(grouped, starts, axis=0)


def _scatter_add_reference(g, *indices, key, shape):
    """np.add.at into zeros (a test reference: the kernel sums repeated rows its own way)."""
    out = np.zeros(shape, g.dtype)
    np.add.at(out, resolve(key, indices), g)
    return out


# scatter_add(g, idx) adds g into zeros(shape) at x[idx]: the transpose of getitem.
register(
    "scatter_add",
    ("g", "*indices"),
    _scatter_add_infer,
    _scatter_add_impl,
    lambda c, g: (call("getitem", g, *c.inputs[1:], key=c.key),) + (None,) * (len(c.inputs) - 1),
    "rt.scatter_add({0}, {key!r}, {shape}, {indices})",
    out="rt.scatter_add({0}, {key!r}, {shape}, out={out}, *[{indices}])",
    samples=(
        Sample(
            {"key": (("tensor", 0),), "shape": (4, 2)},
            shapes=(((5, 2), (5,)), ((2, 3, 2), (2, 3))),
            inputs=(Sample(), Sample(kind="integers", low=-4, high=4)),
            ref=_scatter_add_reference,
        ),
        Sample(
            {"key": (("rows", 0, 4),), "shape": (4, 3)},
            shapes=(((6, 3), (6,)),),
            inputs=(Sample(), Sample(kind="integers", low=0, high=4)),
            ref=_scatter_add_reference,
        ),
        Sample(
            {"key": (("slice", None, None, -1), ("int", 1), ("ellipsis",)), "shape": (2, 3, 2)},
            shapes=(((2, 2),),),
            ref=_scatter_add_reference,
        ),
    ),
)


def _take_rows_infer(x: TensorType, rows: TensorType) -> TensorType:
    rules.integer("take_rows", rows, "index tensors")
    if x.ndim == 0:
        raise rules.ShapeError("take_rows: cannot take rows of a 0-d tensor")
    return TensorType(rows.shape + x.shape[1:], x.dtype)


@kernel
def take_rows(x, rows, out=None):
    """x[rows] for an index array whose values lie in [0, len(x)) (IndexError otherwise, as
    getitem's ``rows`` key), written into ``out``: the copy fancy indexing makes, without a
    fresh array. (np.take with out= and mode="raise" buffers a copy; the rows are checked.)"""
    check_rows(rows, x.shape[0])
    return np.take(x, rows, axis=0, out=out, mode="clip")


def _rows_key(c):
    return (("rows", 0, c.x.shape[0]),)


# take_rows(x, i) = x[i] with i checked to lie in [0, len(x)): compiled code looks an
# embedding up with it (specialize_numpy's gathered-rows rule), into a planned buffer.
register(
    "take_rows",
    ("x", "rows"),
    _take_rows_infer,
    take_rows,
    (
        lambda c, g: call("scatter_add", g, c.rows, key=_rows_key(c), shape=c.x.shape),
        None,
    ),
    "rt.take_rows({0}, {1})",
    out="rt.take_rows({0}, {1}, out={out})",
    samples=(
        Sample(
            shapes=(((4, 2), (2, 3)), ((4,), (5,)), ((3, 2, 2), (4,))),
            inputs=(Sample(), Sample(kind="integers", low=0, high=3)),
            ref=lambda x, rows: x[rows],
        ),
    ),
)


def _flat(g):
    return call("reshape", g, shape=(int(np.prod(g.shape)),))


def _view_update_infer(base: TensorType, values: TensorType, positions: TensorType) -> TensorType:
    rules.integer("view_update", positions, "positions")
    rules.broadcast_shape("view_update", values.shape, positions.shape)
    return base


@kernel
def view_update(base, values, positions):
    """``base`` with the elements at flat ``positions`` set to ``values`` (broadcast to the
    positions' shape): an in-place write through a view, as a new array."""
    out = np.array(base, order="C", copy=True)
    np.put(out, positions, np.broadcast_to(values, positions.shape))
    return out


def _view_update_reference(base, values, positions):
    """A copy of base with values written at the flat positions (a test reference)."""
    out = base.copy()
    out.reshape(-1)[positions] = values
    return out


# view_update(base, values, positions): base with the elements at flat positions set to values,
# how a traced program writes in place through a view (x[0].add_(1), x.t().mul_(2), x[i] = v).
# d/dbase: g with those elements zeroed; d/dvalues: g at those elements.
register(
    "view_update",
    ("base", "values", "positions"),
    _view_update_infer,
    view_update,
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
    samples=(
        Sample(
            shapes=(((2, 3), (2, 2), (2, 2)), ((3, 2), (2,), (2, 2)), ((6,), (), (2, 2))),
            inputs=(Sample(), Sample(), Sample(kind="positions", high=6)),
            ref=_view_update_reference,
        ),
    ),
)


def _one_hot_infer(t: TensorType, num_classes) -> TensorType:
    rules.integer("one_hot", t, "the input")
    return TensorType((*t.shape, num_classes), dtypes.int64)


@kernel
def one_hot(t, num_classes):
    return (t[..., None] == np.arange(num_classes)).astype(np.int64)


register(
    "one_hot",
    ("t",),
    _one_hot_infer,
    one_hot,
    None,
    "rt.one_hot({0}, {num_classes})",
    samples=(
        Sample(
            {"num_classes": 4},
            shapes=(((2, 3),), ((),), ((0,),)),
            kind="integers",
            low=0,
            high=4,
            ref=lambda t, num_classes: np.eye(num_classes, dtype=np.int64)[t],
        ),
    ),
)
