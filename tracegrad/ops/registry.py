"""The op registry: every primitive declared once.

An ``Op`` entry holds, side by side:

- ``infer(*types, **attrs) -> TensorType``: the shape/dtype rule, on static types alone;
- ``impl(*arrays, **attrs) -> ndarray``: the NumPy implementation used eagerly;
- ``vjp``: the vector-Jacobian rule written in tracegrad ops, so eager autograd, the
  reverse-mode pass and higher-order gradients all use the same rule. Either a tuple with one
  rule per input, ``rule(ctx, g) -> cotangent`` (``None`` for inputs without a gradient), or
  for variadic ops one function ``(ctx, g) -> tuple`` of cotangents. ``ctx`` exposes the inputs
  by their declared names, ``ctx.out`` and the attributes. Cotangents may keep a broadcast
  shape: the backward engine sums them back to each input's shape;
- ``emit``: the codegen template, a Python expression with ``{0}, {1}...`` for the inputs and
  ``{name}`` for the attributes; ``out``: the same writing into a given buffer ``{out}``
  (for ops NumPy can compute in place), used by the memory plan;
- ``saves``: which values the rule reads (input names and ``"out"``), checked against in-place
  modification and used to choose saved activations. Either a tuple (any rule may read them) or
  a dict from each input to the values its own rule reads (``mul``: ``{"x": ("y",), "y":
  ("x",)}``), so the tape saves only what the rules that will run read, as PyTorch does: ``v *
  2`` for a ``v`` needing grad keeps no reference to ``v``, and ``v`` may then change in place;
- ``props``: property sets passes query instead of listing op names;
- ``samples``: the inputs the op's generated test rows draw (``Sample``: attributes, how
  values are drawn (an interval, points to stay away from, distinct values, indices, masks),
  input shapes, whether the op is smooth there, a NumPy reference). The gradient, forward,
  compiled-vs-eager and extreme-value test tables make their rows of an op from them.

Ops are called through ``call(name, *inputs, **attrs)``, which hands them to the inputs'
``apply_op`` (the tensor layer's dispatcher: eager execution, or tracing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tracegrad.dtypes import TensorType

# Property names ops carry; passes ask these sets instead of listing ops.
ELEMENTWISE = "elementwise"
REDUCE = "reduce"
VIEW = "view"  # output may alias the input's memory
# Always a view of its one input, laid out from shapes alone (a transpose, a broadcast, a
# reshape of contiguous memory): made of a planned buffer once, it serves every call.
LAYOUT_VIEW = "layout_view"
COMMUTATIVE = "commutative"
RANDOM = "random"  # draws from the random generator: never folded, always traced
# Not elementwise, but its kernel reads all of its first input before writing out= (a softmax
# row by row), so the memory plan may give it that input's memory.
OVERWRITES_INPUT = "overwrites_input"
# Its result is never negative, for every input: for it exp(log(y)) is y (elsewhere log gives nan).
NON_NEGATIVE = "non_negative"
# Cheap enough to run again in the backward rather than keep its result alive from the forward
# (views cost nothing; elementwise arithmetic one pass).
CHEAP = "cheap"


# Shape sets a one-input op is tested on: a matrix, a 0-d value, and a 3-d one with a size-1 dim.
UNARY_SHAPES = (((2, 3),), ((),), ((4, 1, 2),))
# ... and a two-input one: equal shapes, then broadcasting each way, from 0-d, across ranks.
BINARY_SHAPES = (
    ((2, 3), (2, 3)),
    ((3, 1), (1, 4)),
    ((2, 3), (3,)),
    ((), (2, 3)),
    ((2, 1, 3), (4, 1)),
)


@dataclass(frozen=True)
class Sample:
    """Inputs a generated test row of an op draws, with its attributes.

    ``kind`` says how an input's values are drawn: ``"uniform"`` in [low, high], redrawn until
    ``gap`` away from each of ``kinks`` (where finite differences cannot decide); ``"distinct"``
    values at least 0.09 apart (no ties, for max-like ops and sorts); ``"zeros"`` uniform with
    about a third of them exactly 0; ``"integers"`` int64 in [low, high) (indices, targets);
    ``"positions"`` distinct int64 in [0, high) (flat positions written once each);
    ``"mask"`` bool, never masking the first element along the last two dims (so no row of a
    masked softmax is masked whole). ``smooth`` ops are also checked to second order there;
    ``tol`` overrides gradcheck's. ``ref(*arrays, **attrs)``, when given, is the op's meaning
    in NumPy, written apart from its implementation (a forward row compares the op with it in
    float32 and float64)."""

    attrs: dict = field(default_factory=dict)
    low: float = -2.0
    high: float = 2.0
    kinks: tuple[float, ...] = ()
    gap: float = 0.15
    shapes: tuple = UNARY_SHAPES  # shape sets: one shape per input
    smooth: bool = True
    tol: dict = field(default_factory=dict)
    inputs: tuple = ()  # a Sample per input, drawing it (default: this one draws every input)
    kind: str = "uniform"
    ref: Callable | None = None

    def per_input(self) -> tuple:
        """The sample drawing each input of the op."""
        return self.inputs or (self,) * len(self.shapes[0])

    def drawers(self) -> tuple:
        """One ``draw(rng, shape)`` per input of the op."""
        return tuple(s.draw for s in self.per_input())

    @property
    def floating(self) -> bool:
        """Whether it draws floats (not indices or masks)."""
        return self.kind not in ("integers", "positions", "mask")

    def draw(self, rng, shape):
        """One input of ``shape`` as the sample says (``rng``: a NumPy Generator)."""
        return _DRAWS[self.kind](self, rng, shape)

    def label(self, op: str) -> str:
        """A test id: the op's name and the sample's attributes."""
        return "-".join([op, *(f"{k}={v}" for k, v in self.attrs.items())])


def _uniform(sample, rng, shape):
    while True:
        x = rng.uniform(sample.low, sample.high, shape)
        if all((abs(x - k) >= sample.gap).all() for k in sample.kinks):
            return x


def _distinct(sample, rng, shape):
    n = math.prod(shape)
    spaced = rng.permutation(n) * 0.1 - 0.05 * n + rng.uniform(0.0, 0.01, n)
    return spaced.reshape(shape)


def _with_zeros(sample, rng, shape):
    return _uniform(sample, rng, shape) * (rng.random(shape) > 0.35)


def _integers(sample, rng, shape):
    return rng.integers(int(sample.low), int(sample.high), shape)


def _positions(sample, rng, shape):
    return rng.permutation(int(sample.high))[: math.prod(shape)].reshape(shape)


def _mask(sample, rng, shape):
    mask = np.asarray(rng.random(shape) < 0.5)
    if mask.ndim >= 1:
        mask[..., :1] = False
    if mask.ndim >= 2:
        mask[..., :1, :] = False
    return mask


_DRAWS = {
    "uniform": _uniform,
    "distinct": _distinct,
    "zeros": _with_zeros,
    "integers": _integers,
    "positions": _positions,
    "mask": _mask,
}


POSITIVE = Sample(low=0.5, high=2.0)
AWAY_FROM_ZERO = Sample(kinks=(0.0,), gap=0.5)


@dataclass(frozen=True)
class Op:
    name: str
    inputs: tuple[str, ...]  # names of the tensor inputs; a trailing "*" name is variadic
    infer: Callable[..., TensorType]
    impl: Callable
    vjp: tuple | Callable | None = None
    emit: str | None = None
    saves: tuple[str, ...] = ()  # every value some rule reads
    props: frozenset[str] = field(default_factory=frozenset)
    out: str | None = None
    # (input, values its rule reads) pairs when declared per input; empty: any rule reads saves
    reads: tuple[tuple[str, tuple[str, ...]], ...] = ()
    samples: tuple[Sample, ...] = field(default=(), compare=False)

    def saved_for(self, needs_input_grad) -> tuple[str, ...]:
        """The values read by the rules of the inputs that need a gradient."""
        if not self.reads:
            return self.saves
        needed = (names for (_, names), need in zip(self.reads, needs_input_grad) if need)
        return tuple(dict.fromkeys(name for names in needed for name in names))

    @property
    def variadic(self) -> bool:
        return self.inputs[-1].startswith("*")

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None

    def __repr__(self) -> str:
        return f"Op({self.name})"


OPS: dict[str, Op] = {}


def register(
    name, inputs, infer, impl, vjp=None, emit=None, saves=(), props=(), out=None, samples=()
) -> Op:
    """Declare a primitive; the declaration is the only place the op is described."""
    if name in OPS:
        raise ValueError(f"op {name!r} is declared twice")
    reads: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if isinstance(saves, dict):
        reads = tuple((arg, tuple(saves.get(arg, ()))) for arg in inputs)
        saves = dict.fromkeys(value for _, values in reads for value in values)
    saves, props = tuple(saves), frozenset(props)
    op = Op(name, tuple(inputs), infer, impl, vjp, emit, saves, props, out, reads, tuple(samples))
    OPS[name] = op
    return op


def ops_with(prop: str) -> frozenset[str]:
    return frozenset(name for name, op in OPS.items() if prop in op.props)


class VJPContext:
    """What a VJP rule sees: the op's inputs by name, its output, attributes, and which inputs
    need a gradient."""

    def __init__(self, op: Op, inputs, out, attrs, needs_input_grad):
        self.op = op
        self.inputs = tuple(inputs)
        self.out = out
        self.attrs = attrs
        self.needs_input_grad = tuple(needs_input_grad)

    def __getattr__(self, name):
        names = self.op.inputs
        if name in names:
            return self.inputs[names.index(name)]
        if name in self.attrs:
            return self.attrs[name]
        raise AttributeError(f"op {self.op.name!r} has no input or attribute {name!r}")


def vjp(op: Op, ctx: VJPContext, g):
    """Apply ``op``'s rule: one cotangent (or None) per input, computing only needed ones."""
    if callable(op.vjp):
        return tuple(op.vjp(ctx, g))
    assert op.vjp is not None  # (an op without a rule records no node to differentiate)
    return tuple(
        rule(ctx, g) if rule is not None and need else None
        for rule, need in zip(op.vjp, ctx.needs_input_grad, strict=True)
    )


def call(name: str, *inputs, **attrs):
    """Run op ``name`` on tensors; VJP rules use this to reach ops without Tensor methods.

    The ops know no tensor class: the class of the first input applies the op through its
    ``apply_op(op, inputs, attrs)`` (as NumPy hands a function to ``__array_function__``), so
    this layer never imports the tensor layer above it."""
    return type(inputs[0]).apply_op(OPS[name], inputs, attrs)
