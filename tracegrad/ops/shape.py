"""Shape ops: reshape, permute, broadcast_to (views), and cat (a copy)."""

from __future__ import annotations

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import rules
from tracegrad.ops.registry import CHEAP, ELEMENTWISE, LAYOUT_VIEW, VIEW, Sample, call, register


def _reshape_infer(x: TensorType, shape) -> TensorType:
    shape = tuple(shape)
    if int(np.prod(shape, dtype=np.int64)) != x.numel or any(s < 0 for s in shape):
        raise ShapeError(f"reshape: shape {x.shape} ({x.numel} elements) cannot become {shape}")
    return TensorType(shape, x.dtype)


def _permute_infer(x: TensorType, dims) -> TensorType:
    if sorted(dims) != list(range(x.ndim)):
        raise ShapeError(
            f"permute: {tuple(dims)} is not a permutation of the {x.ndim} dims of {x.shape}"
        )
    return TensorType(tuple(x.shape[d] for d in dims), x.dtype)


def _broadcast_to_infer(x: TensorType, shape) -> TensorType:
    shape = tuple(shape)
    if rules.broadcast_shape("broadcast_to", x.shape, shape) != shape:
        raise ShapeError(f"broadcast_to: shape {x.shape} cannot be expanded to {shape}")
    return TensorType(shape, x.dtype)


def _reshape_reference(x, shape):
    """The elements in row-major order, laid out anew (a test reference)."""
    return np.array(list(x.flat), x.dtype).reshape(shape)


def _permute_reference(x, dims):
    """out[i_0, ..., i_n] = x at index i_k on dim dims[k] (a test reference)."""
    letters = "abcdefgh"[: x.ndim]
    return np.einsum(f"{letters}->{''.join(letters[d] for d in dims)}", x)


def _broadcast_to_reference(x, shape):
    """x added to zeros of ``shape`` (a test reference)."""
    return x + np.zeros(shape)


def _cat_reference(*xs, dim):
    """Each input written into its stretch of ``dim`` (a test reference)."""
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    out, start = np.empty(shape, xs[0].dtype), 0
    for x in xs:
        out[(slice(None),) * dim + (slice(start, start + x.shape[dim]),)] = x
        start += x.shape[dim]
    return out


register(
    "reshape",
    ("x",),
    _reshape_infer,
    lambda x, shape: np.reshape(x, shape),
    (lambda c, g: call("reshape", g, shape=c.x.shape),),
    "{0}.reshape({shape})",
    props={VIEW, LAYOUT_VIEW, CHEAP},
    samples=(
        Sample(
            {"shape": (3, 2)}, shapes=(((2, 3),), ((6,),), ((1, 6, 1),)), ref=_reshape_reference
        ),
        Sample({"shape": (1, 1)}, shapes=(((),),), ref=_reshape_reference),
        Sample({"shape": ()}, shapes=(((1, 1),),), ref=_reshape_reference),
    ),
)
register(
    "permute",
    ("x",),
    _permute_infer,
    lambda x, dims: np.transpose(x, dims),
    (lambda c, g: call("permute", g, dims=tuple(np.argsort(c.dims).tolist())),),
    "{0}.transpose({dims})",
    props={VIEW, LAYOUT_VIEW, CHEAP},
    samples=(
        # a 3-cycle is not its own inverse: the VJP must apply the inverse permutation
        Sample(
            {"dims": (1, 2, 0)},
            shapes=(((2, 3, 4),), ((1, 3, 2),), ((2, 3, 2),)),
            ref=_permute_reference,
        ),
        Sample({"dims": (2, 1, 0)}, shapes=(((2, 3, 2),), ((2, 1, 3),)), ref=_permute_reference),
        Sample({"dims": (1, 0)}, shapes=(((2, 3),), ((3, 1),), ((3, 4),)), ref=_permute_reference),
        Sample({"dims": ()}, shapes=(((),),), ref=_permute_reference),
    ),
)
register(
    "broadcast_to",
    ("x",),
    _broadcast_to_infer,
    lambda x, shape: np.broadcast_to(x, shape),
    (lambda c, g: call("sum_to", g, shape=c.x.shape),),
    "np.broadcast_to({0}, {shape})",
    props={VIEW, LAYOUT_VIEW, CHEAP},
    samples=(
        Sample(
            {"shape": (2, 3, 4)},
            shapes=(((3, 1),), ((),), ((1, 4),), ((2, 3, 4),)),
            ref=_broadcast_to_reference,
        ),
        Sample({"shape": (2, 3)}, shapes=(((3,),), ((2, 1),)), ref=_broadcast_to_reference),
    ),
)


def _cat_infer(*xs: TensorType, dim) -> TensorType:
    first = xs[0]
    dtype = rules.same_dtype("cat", *xs)
    if not 0 <= dim < first.ndim:  # (tg.cat counts a negative dim from the end before this)
        raise ShapeError(f"cat: dim {dim} is not an axis of {first.shape}")
    for x in xs[1:]:
        rest = [s for i, s in enumerate(x.shape) if i != dim]
        if x.ndim != first.ndim or rest != [s for i, s in enumerate(first.shape) if i != dim]:
            shapes = ", ".join(str(t.shape) for t in xs)
            raise ShapeError(f"cat: shapes {shapes} differ outside dim {dim}")
    shape = list(first.shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    return TensorType(tuple(shape), dtype)


def _cat_grad(c, g):
    grads, start = [], 0
    for x, need in zip(c.inputs, c.needs_input_grad, strict=True):
        size = x.shape[c.dim]
        key = (slice(None),) * c.dim + (slice(start, start + size),)
        grads.append(g[key] if need else None)
        start += size
    return tuple(grads)


register(
    "cat",
    ("*xs",),
    _cat_infer,
    lambda *xs, dim: np.concatenate(xs, axis=dim),
    _cat_grad,
    "np.concatenate([{inputs}], axis={dim})",
    out="np.concatenate([{inputs}], axis={dim}, out={out})",
    samples=(
        Sample(
            {"dim": 0},
            shapes=(((2, 3), (1, 3)), ((1,), (3,)), ((1, 2, 2), (3, 2, 2))),
            ref=_cat_reference,
        ),
        Sample(
            {"dim": 2},
            shapes=(((2, 2, 1), (2, 2, 2), (2, 2, 1)), ((1, 1, 1), (1, 1, 2), (1, 1, 3))),
            ref=_cat_reference,
        ),
    ),
)

# stop_gradient(x) = x with no gradient: what detach() and no_grad() mean inside a traced
# forward, so the reverse-mode pass (which replays the graph) stops there too.
register(
    "stop_gradient",
    ("x",),
    lambda x: x,
    lambda x: x,
    None,
    "{0}",
    props={VIEW, CHEAP},
    samples=(Sample(ref=lambda x: x),),
)

# keep_gradient(value, leaf) = value, whose gradient goes to leaf instead: in a traced forward,
# a tensor written while gradients are not recorded (under no_grad, through .data) keeps the
# gradient path it had, as eagerly (a parameter stays the leaf its .grad belongs to).
register(
    "keep_gradient",
    ("value", "leaf"),
    lambda value, leaf: value,
    lambda value, leaf: value,
    (None, lambda c, g: g),
    "{0}",
    props={VIEW},
)

# contiguous(x): x copied in row-major order. Its result has memory of its own (never a view),
# so the memory plan can give it a reused buffer: the im2col copy of a convolution, say.
register(
    "contiguous",
    ("x",),
    lambda x: x,
    lambda x: np.array(x, order="C", copy=True),
    (lambda c, g: g,),
    "np.array({0}, order='C')",
    props={ELEMENTWISE},
    out="rt.copy_into({0}, {out})",
    samples=(Sample(ref=lambda x: x),),
)
