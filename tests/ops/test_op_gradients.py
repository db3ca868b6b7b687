"""Gradient checks for every differentiable op, driven by one table.

Each row names the registry ops it covers, a function of tensors written with the public API,
several input-shape sets (broadcasting ones included, so cotangents must be summed back to each
input's shape) and generators that keep inputs inside the op's domain and away from its kinks.
Every row is checked against central differences in float64; smooth rows to second order too.
A final test fails when an op in ``tracegrad.ops.OPS`` declared with a VJP rule has no row, so
a new op cannot arrive untested.

A new op's rows are generated from the ``samples`` of its declaration
(``tracegrad.ops.registry.Sample``: attributes, shape sets, how each input is drawn, whether
the op is smooth there, tolerances): one row per sample, calling the op directly on each of
its shape sets, float inputs as float64 leaves and integer or bool ones (indices, targets,
masks) as constants. ``CASES`` keeps by hand only what a sample cannot say: public functions
made of several ops (mean, var, conv2d, max_pool2d, affine layer_norm...), inputs that must
be built from each other (fused gradient ops, whose ``y`` must be the forward's output),
draws a sample has no kind for (``maximum``'s half-integers) and ops without samples; each
names the ops it reaches, with a generator keeping inputs in its domain and ``smooth=False``
where it has kinks.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad.autograd import gradcheck, gradgradcheck
from tracegrad.ops import OPS
from tracegrad.ops.registry import BINARY_SHAPES, UNARY_SHAPES
from tracegrad.tensor import call

# Ops declared without a VJP rule (bool or integer results, random draws, detach, optimizer
# updates that run under no_grad) have no gradient; every other op needs a row.
NONDIFFERENTIABLE = frozenset(name for name, op in OPS.items() if not op.differentiable)

# --- input generators: (rng, shape) -> ndarray -------------------------------------------------


def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def away_from(*kinks, gap=0.15):
    """Uniform in [-2, 2], redrawn until every value is ``gap`` away from each kink."""

    def gen(rng, shape):
        x = rng.uniform(-2.0, 2.0, shape)
        while True:
            near = np.zeros(np.shape(x), bool)
            for k in kinks:
                near |= np.abs(x - k) < gap
            if not near.any():
                return x
            x = np.where(near, rng.uniform(-2.0, 2.0, shape), x)

    return gen


def distinct(rng, shape):
    """Values at least 0.09 apart (no ties for max-like ops), shuffled."""
    n = int(np.prod(shape, dtype=np.int64))
    spaced = rng.permutation(n) * 0.1 - 0.05 * n + rng.uniform(0.0, 0.01, n)
    return spaced.reshape(shape)


def near_thirds(rng, shape):
    """Integers and 0.3, for ``around_three``: x / y stays away from the integers."""
    return rng.integers(-3, 4, shape) + 0.3


def around_three(rng, shape):
    return rng.uniform(2.9, 3.1, shape)


def integral(rng, shape):
    return rng.integers(-3, 4, shape).astype(np.float64)


def half_integral(rng, shape):
    """Paired with ``integral``: the operands differ by at least 0.5, so no ties."""
    return rng.integers(-3, 4, shape) + 0.5


def mask(rng, shape):
    return rng.random(shape) < 0.5


def mask_keeping_first(rng, shape):
    """A random mask that never masks a whole last-dim row (which softmax would make nan)."""
    m = mask(rng, shape)
    m[..., 0] = False
    return m


def labels(classes):
    """Class indices in [0, classes)."""
    return lambda rng, shape: rng.integers(0, classes, shape)


def _zeros_and_twos(shape):
    """A constant base of alternating 0s and 2s."""
    return tg.tensor(np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape) % 2 * 2.0)


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    ops: tuple[str, ...]  # the registry ops this row is responsible for
    fn: Callable
    shapes: tuple  # shape sets: one shape per input of ``fn``
    gens: tuple = ()  # one generator per input; missing ones draw standard normals
    smooth: bool = True  # smooth rows are also checked to second order
    tol: dict = field(default_factory=dict)  # overrides of gradcheck's eps/atol/rtol


UNARY = UNARY_SHAPES  # a matrix, a 0-d value, a 3-d one with a size-1 dim
BINARY = BINARY_SHAPES
WHERE = (((2, 3), (2, 3), (2, 3)), ((3, 1), (1, 4), ()), ((2, 3), (3,), (2, 1)))
MATRIX = (((2, 3),), ((3, 4),), ((2, 3, 2),))


def _conv(stride=1, padding=0, dilation=1, groups=1):
    return lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups)


def _ln(ndims):
    return lambda x, w, b: F.layer_norm(x, tuple(x.shape[x.ndim - ndims :]), w, b, 1e-5)


def _pattern(shape):
    return tg.tensor(np.arange(int(np.prod(shape))).reshape(shape) % 3 != 1)


def _calling(name: str, attrs: dict):
    return lambda *xs: call(name, *xs, **attrs)


def declared_cases() -> list[Case]:
    """One row per sample declared with a differentiable op: the op called on inputs drawn as
    declared (integer and bool inputs stay constant)."""
    cases = []
    for name, op in OPS.items():
        for sample in op.samples if op.differentiable else ():
            gens = sample.drawers()
            fn = _calling(name, sample.attrs)
            label = sample.label(name)
            cases.append(Case(label, (name,), fn, sample.shapes, gens, sample.smooth, sample.tol))
    return cases


CASES = [
    # ops declared with samples: rows generated from them
    *declared_cases(),
    Case("add_scaled", ("add_scaled",), lambda x, y: call("add_scaled", x, y, alpha=-0.7), BINARY),
    Case(
        "add_scaled_method",
        ("add_scaled",),
        lambda x, y: (x * 1.0).sub_(y, alpha=2.5),
        (((2, 3), (2, 3)),),
    ),
    # binary arithmetic (add sub mul div pow atan2: rows generated from their declarations)
    # a constant base with zeros: 0**y is flat for y > 0, to every order
    Case("pow_zero_base", ("pow",), lambda y: _zeros_and_twos(y.shape) ** y, UNARY, (positive,)),
    Case(
        "maximum",
        ("maximum",),
        lambda x, y: tg.maximum(x, y),
        BINARY,
        (integral, half_integral),
        smooth=False,
    ),
    Case(
        "minimum",
        ("minimum",),
        lambda x, y: tg.minimum(x, y),
        BINARY,
        (integral, half_integral),
        smooth=False,
    ),
    # x / y stays 0.06 or more from an integer, where remainder jumps
    Case(
        "remainder", ("remainder",), lambda x, y: x % y, BINARY, (near_thirds, around_three), False
    ),
    Case("where", ("where",), lambda c, x, y: tg.where(c, x, y), WHERE, (mask,)),
    # cast's gradient is a cast back; float32 rounding needs a coarser step than 1e-6
    Case(
        "cast",
        ("cast",),
        lambda x: x.float().double() * x,
        UNARY,
        tol={"eps": 1e-3, "atol": 1e-4},
    ),
    # reductions written with several ops (the ops' own rows are generated)
    Case("mean", ("sum", "mul"), lambda x: x.mean(-1), MATRIX),
    Case("prod_all", ("prod",), lambda x: x.prod(), UNARY),
    Case("mean_all", ("sum", "mul"), lambda x: x.mean(), UNARY),
    Case("var", ("sub", "mul", "sum"), lambda x: x.var(1), MATRIX),
    Case(
        "var_keepdim", ("sub", "mul", "sum"), lambda x: x.var(0, keepdim=True, correction=0), MATRIX
    ),
    Case("std", ("sqrt",), lambda x: x.std(-1, correction=2), (((2, 4),), ((3, 3, 5),))),
    # indexing with masks (made integer indices by the tensor layer), embedding
    Case("getitem_mask", ("getitem",), lambda x: x[_pattern(x.shape)], MATRIX),
    Case("getitem_row_mask", ("getitem",), lambda x: x[tg.tensor([True, False])], MATRIX[::2]),
    Case(
        "embedding",
        ("getitem",),
        lambda w: F.embedding(tg.tensor([[0, 3], [3, 3]]), w),
        (((4, 2),), ((5, 3),)),
    ),
    Case("dropout_eval", (), lambda x: F.dropout(x, 0.5, training=False) * x, UNARY),
    Case(
        "layer_norm",
        ("layer_norm", "mul", "add"),
        _ln(1),
        (((2, 3), (3,), (3,)), ((2, 2, 4), (4,), (4,)), ((5,), (5,), (5,))),
    ),
    Case(
        "layer_norm_2d",
        ("layer_norm", "mul", "add"),
        _ln(2),
        (((2, 2, 3), (2, 3), (2, 3)), ((3, 2), (3, 2), (3, 2))),
    ),
    # composites
    Case(
        "conv2d",
        ("unfold", "reshape", "permute", "matmul", "add"),
        _conv(),
        (((1, 2, 3, 3), (2, 2, 2, 2), (2,)), ((2, 1, 3, 4), (3, 1, 1, 2), (3,))),
    ),
    Case(
        "conv2d_stride_padding",
        ("unfold", "matmul"),
        _conv(stride=(2, 1), padding=1),
        (((1, 1, 4, 3), (2, 1, 3, 2), (2,)),),
    ),
    Case(
        "conv2d_dilation",
        ("unfold", "matmul"),
        _conv(padding=(0, 1), dilation=2),
        (((1, 2, 5, 4), (1, 2, 2, 2), (1,)),),
    ),
    Case(
        "conv2d_groups",
        ("unfold", "matmul"),
        _conv(stride=2, padding=1, groups=2),
        (((1, 4, 3, 3), (4, 2, 2, 2), (4,)), ((2, 2, 3, 3), (2, 1, 3, 3), (2,))),
    ),
    Case(
        "max_pool2d",  # windows that tile the input: a reshape of it, trimmed when uneven
        ("reshape", "amax"),
        lambda x: F.max_pool2d(x, 2),
        (((1, 2, 4, 4),), ((2, 1, 3, 5),)),
        (distinct,),
        smooth=False,
    ),
    Case(
        "max_pool2d_stride_padding",  # overlapping windows: fold must add their gradients
        ("unfold", "amax"),
        lambda x: F.max_pool2d(x, 3, stride=2, padding=1),
        (((1, 1, 5, 5),), ((2, 2, 4, 3),)),
        (distinct,),
        smooth=False,
    ),
    Case(
        "max_pool2d_rect",
        ("unfold", "amax"),
        lambda x: F.max_pool2d(x, (2, 3), stride=(1, 2), padding=(1, 0)),
        (((1, 1, 4, 5),),),
        (distinct,),
        smooth=False,
    ),
    # fused gradient ops: their own gradients come from their reference compositions
    Case(
        "relu_grad",
        ("relu_grad",),
        lambda y, g: call("relu_grad", y, g),
        (((2, 3), (2, 3)),),
        (away_from(0), normal),
        smooth=False,
    ),
    Case(
        "tanh_grad",
        ("tanh_grad",),
        lambda y, g: call("tanh_grad", y, g),
        (*BINARY[:1], ((), ())),
    ),
    Case("sigmoid_grad", ("sigmoid_grad",), lambda y, g: call("sigmoid_grad", y, g), BINARY[:1]),
    Case(
        "gelu_grad",
        ("gelu_grad",),
        lambda x, g: call("gelu_grad", x, g, approximate="none"),
        BINARY[:1],
    ),
    Case(
        "gelu_grad_tanh",
        ("gelu_grad",),
        lambda x, g: call("gelu_grad", x, g, approximate="tanh"),
        BINARY[:1],
    ),
    # gelu's tanh form in pieces (a compiled step keeps t for the backward); x and t are
    # independent inputs here
    Case("gelu_tanh op", ("gelu_tanh",), lambda x: call("gelu_tanh", x), UNARY),
    Case("gelu_with_tanh", ("gelu_with_tanh",), lambda x, t: call("gelu_with_tanh", x, t), BINARY),
    Case(
        "gelu_grad_with_tanh",
        ("gelu_grad_with_tanh",),
        lambda x, t, g: call("gelu_grad_with_tanh", x, t, g),
        (((2, 3), (2, 3), (2, 3)), ((3, 1), (1, 4), (3, 4))),
    ),
    Case(
        "softmax_grad",
        ("softmax_grad",),
        lambda y, g: call("softmax_grad", y, g, dim=1),
        BINARY[:1],
    ),
    Case(
        "masked_softmax_grad",
        ("masked_softmax_grad",),
        # y as the forward makes it (0 where masked), so the kernel meets its precondition
        lambda x, g, m: call(
            "masked_softmax_grad", call("masked_softmax", x, m, dim=1), g, m, dim=1
        ),
        (((3, 4), (3, 4), (3, 4)),),
        (normal, normal, mask_keeping_first),
    ),
    Case(
        "log_softmax_grad",
        ("log_softmax_grad",),
        lambda y, g: call("log_softmax_grad", y, g, dim=0),
        BINARY[:1],
    ),
    Case(
        "cross_entropy_grad",
        ("cross_entropy_grad",),
        lambda x, t, g: call(
            "cross_entropy_grad", x, t, g, ignore_index=1, label_smoothing=0.1, reduction="mean"
        ),
        (((4, 3), (4,), ()),),
        (normal, labels(3), normal),
    ),
    Case(
        "cross_entropy_grad_none",
        ("cross_entropy_grad",),
        lambda x, t, g: call(
            "cross_entropy_grad", x, t, g, ignore_index=-100, label_smoothing=0.0, reduction="none"
        ),
        (((4, 3), (4,), (4,)),),
        (normal, labels(3), normal),
    ),
    Case(
        "nll_loss",  # from log-probabilities (what the compiler keeps for the gradient)
        ("nll_loss",),
        lambda logp, t: call(
            "nll_loss", logp, t, ignore_index=0, label_smoothing=0.2, reduction="mean"
        ),
        (((4, 3), (4,)), ((2, 3, 2), (2, 2))),
        (normal, labels(3)),
    ),
    Case(
        "nll_loss_none",
        ("nll_loss",),
        lambda logp, t: call(
            "nll_loss", logp, t, ignore_index=-100, label_smoothing=0.0, reduction="none"
        ),
        (((4, 3), (4,)),),
        (normal, labels(3)),
    ),
    Case(
        "log_softmax_nll_grad",
        ("log_softmax_nll_grad",),
        lambda logp, t, g: call(
            "log_softmax_nll_grad", logp, t, g, ignore_index=1, label_smoothing=0.1, reduction="sum"
        ),
        (((4, 3), (4,), ()),),
        (normal, labels(3), normal),
    ),
    Case(
        "layer_norm_grad",
        ("layer_norm_grad",),
        lambda x, y, g: call("layer_norm_grad", x, y, g, ndims=1, eps=1e-5),
        (((3, 4), (3, 4), (3, 4)),),
    ),
    # layer norm in pieces (a compiled step keeps std): each piece's inputs independent
    Case(
        "layer_norm_center",
        ("layer_norm_center",),
        lambda x: call("layer_norm_center", x, ndims=1),
        (((3, 4),), ((2, 3, 4),)),
    ),
    Case(
        "layer_norm_std",
        ("layer_norm_std",),
        lambda x: call("layer_norm_std", x, ndims=2, eps=1e-5),
        (((2, 3, 4),),),
    ),
    Case(
        "layer_norm_grad_from_std",
        ("layer_norm_grad_from_std",),
        lambda y, g, std: call("layer_norm_grad_from_std", y, g, std, ndims=1),
        (((3, 4), (3, 4), (3, 1)),),
        (normal, normal, positive),
    ),
    Case(
        "lstm_sequence_grad",
        ("lstm_sequence_grad",),
        # record must be the forward's of the same inputs: compute it inside
        lambda p, h0, c0, w, g: call(
            "lstm_sequence_grad",
            p,
            h0,
            c0,
            w,
            call("lstm_sequence", p, h0, c0, w, reverse=False),
            g,
            reverse=False,
        ),
        (((3, 2, 8), (2, 2), (2, 2), (8, 2), (84,)),),
    ),
    Case(
        "gru_sequence_grad",
        ("gru_sequence_grad",),
        # record must be the forward's of the same inputs: compute it inside
        lambda p, h0, w, b, g: call(
            "gru_sequence_grad",
            p,
            h0,
            w,
            b,
            call("gru_sequence", p, h0, w, b, reverse=True),
            g,
            reverse=True,
        ),
        (((3, 2, 6), (2, 2), (6, 2), (6,), (60,)),),
    ),
    Case(
        "extreme_grad",
        ("extreme_grad",),
        # y must be the maximum of x for the shares to be defined: compute it inside
        lambda x, g: call("extreme_grad", x, x.amax(1), g, dims=(1,), keepdim=False),
        (((3, 4), (3,)),),
        (distinct, normal),
        smooth=False,
    ),
    # singular values (of a matrix, of a batch, of a wide one); first order only (see below)
    Case(
        "svdvals",
        ("svdvals",),
        lambda x: tg.linalg.svdvals(x),
        (((3, 4),), ((2, 4, 3),), ((1, 3),)),
        smooth=False,
    ),
    # a sum over the processes (SyncBatchNorm's statistics): one process here, the identity
    Case(
        "all_reduce",
        ("all_reduce",),
        lambda x: call("all_reduce", x * x, reduce="sum", bucket_cap=None, order=None),
        UNARY,
    ),
]

PARAMS = [
    pytest.param(
        case, shapes, id=f"{case.name}-" + "-".join("x".join(map(str, s)) or "0d" for s in shapes)
    )
    for case in CASES
    for shapes in case.shapes
]


def make_inputs(case: Case, shapes) -> list[tg.Tensor]:
    """Float inputs become float64 leaves requiring grad; integer and bool ones stay constant."""
    rng = np.random.default_rng(zlib.crc32(f"{case.name}{shapes}".encode()))
    gens = case.gens + (normal,) * (len(shapes) - len(case.gens))
    arrays = [np.asarray(gen(rng, shape)) for gen, shape in zip(gens, shapes, strict=True)]
    return [
        tg.tensor(a.astype(np.float64), requires_grad=True) if a.dtype.kind == "f" else tg.tensor(a)
        for a in arrays
    ]


def squared(fn):
    """``fn(x) ** 2``: the second-order check then runs through the VJP of each op's VJP
    even for ops linear in their input, whose plain second derivative is zero."""

    def wrapped(*xs):
        out = fn(*xs)
        return out * out

    return wrapped


@pytest.mark.parametrize(("case", "shapes"), PARAMS)
def test_gradcheck(case, shapes):
    assert gradcheck(case.fn, make_inputs(case, shapes), **case.tol)


@pytest.mark.parametrize(("case", "shapes"), [p for p in PARAMS if p.values[0].smooth])
def test_gradgradcheck(case, shapes):
    assert gradgradcheck(squared(case.fn), make_inputs(case, shapes), **case.tol)


def _float_positions(inputs):
    return [i for i, t in enumerate(inputs) if t.dtype.is_floating_point]


MULTI_INPUT = [c for c in CASES if len(_float_positions(make_inputs(c, c.shapes[0]))) > 1]


@pytest.mark.parametrize("case", MULTI_INPUT, ids=[c.name for c in MULTI_INPUT])
def test_gradcheck_with_one_input_requiring_grad(case):
    """Rules must cope with cotangents that are not wanted (``needs_input_grad`` False)."""
    inputs = make_inputs(case, case.shapes[-1])
    for i in _float_positions(inputs):
        only = [
            t.detach().requires_grad_(j == i) if j in _float_positions(inputs) else t
            for j, t in enumerate(inputs)
        ]
        assert gradcheck(case.fn, only, **case.tol)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_float32_gradients_match_float64_and_keep_float32(case):
    """The same rule in float32: gradients come back float32 and close to the float64 ones."""
    inputs = make_inputs(case, case.shapes[0])
    weight = None
    grads = {}
    for dtype in (tg.float64, tg.float32):
        xs = [
            tg.tensor(t.detach().numpy(), dtype=dtype, requires_grad=True)
            if t.dtype.is_floating_point
            else t
            for t in inputs
        ]
        out = case.fn(*xs)
        if weight is None:
            weight = np.random.default_rng(1).standard_normal(tuple(out.shape))
        (out * tg.tensor(weight, dtype=dtype)).sum().backward()
        floats = [x for x in xs if x.dtype.is_floating_point]
        assert all(x.grad is not None and x.grad.dtype == dtype for x in floats)
        grads[dtype] = [x.grad.numpy().astype(np.float64) for x in floats]
    for g32, g64 in zip(grads[tg.float32], grads[tg.float64], strict=True):
        np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_row_runs_the_ops_it_claims(case, op_recorder):
    """A row only counts toward coverage for ops its function really dispatches."""
    with op_recorder() as calls:
        case.fn(*make_inputs(case, case.shapes[0]))
    assert set(case.ops) <= {op.name for op, *_ in calls}


# Ops whose gradient rule is by design not the derivative of their forward, each with its own
# test of the rule
NOT_A_DERIVATIVE = {
    "keep_gradient": "the value of one input, the gradient of the other (a write under no_grad)",
    "svdvals_grad": "svdvals' gradient, whose own gradient raises (no second derivative)",
}


def test_keep_gradient_passes_the_value_and_sends_the_gradient_to_the_leaf():
    value = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    leaf = tg.tensor([5.0, 7.0], dtype=tg.float64, requires_grad=True)
    out = call("keep_gradient", value, leaf)
    assert out.tolist() == [1.0, 2.0]
    (out * tg.tensor([3.0, 4.0], dtype=tg.float64)).sum().backward()
    assert value.grad is None and leaf.grad.tolist() == [3.0, 4.0]


def test_svdvals_grad_refuses_a_second_derivative_instead_of_a_wrong_one():
    x = tg.tensor(np.random.default_rng(3).standard_normal((3, 2)), requires_grad=True)
    (first,) = tg.autograd.grad(tg.linalg.svdvals(x).sum(), [x], create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivative of singular values"):
        first.sum().backward()


def test_every_op_has_a_gradient_row_or_is_declared_nondifferentiable():
    covered = {name for case in CASES for name in case.ops}
    missing = set(OPS) - covered - NONDIFFERENTIABLE - set(NOT_A_DERIVATIVE)
    assert not missing, f"ops without a gradient test row: {sorted(missing)}"
    assert not covered & NONDIFFERENTIABLE, "a row for an op declared without a VJP rule"


# --- conventions at kinks and ties, where finite differences cannot decide ----------------------


def _grad(fn, *values):
    xs = [tg.tensor(np.asarray(v, np.float64), requires_grad=True) for v in values]
    fn(*xs).sum().backward()
    return [x.grad.numpy() for x in xs]


def test_amax_and_amin_share_the_gradient_between_ties():
    (g,) = _grad(lambda x: x.amax(1), [[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(g, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    (g,) = _grad(lambda x: x.amin(), [[1.0, 3.0], [1.0, 5.0]])
    np.testing.assert_allclose(g, [[0.5, 0.0], [0.5, 0.0]])


def test_maximum_and_minimum_split_ties_evenly():
    gx, gy = _grad(tg.maximum, [1.0, 2.0, 0.0], [1.0, 1.0, 3.0])
    np.testing.assert_allclose(gx, [0.5, 1.0, 0.0])
    np.testing.assert_allclose(gy, [0.5, 0.0, 1.0])
    gx, gy = _grad(tg.minimum, [[1.0], [4.0]], [1.0, 5.0])  # broadcast: sums over the row
    np.testing.assert_allclose(gx, [[1.5], [1.0]])
    np.testing.assert_allclose(gy, [1.5, 0.0])


def test_piecewise_ops_at_their_kinks_follow_pytorch():
    (g,) = _grad(lambda x: x.relu(), [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])
    (g,) = _grad(lambda x: x.abs(), [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(g, [-1.0, 0.0, 1.0])
    # clamp lets the gradient through at the bounds themselves
    (g,) = _grad(lambda x: x.clamp(-1.0, 1.0), [-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_pow_at_zero_base_and_zero_exponent_has_finite_gradients():
    # d/dx x**0 is 0 everywhere, including x = 0 (not 0 * 0**-1 = nan), as in PyTorch.
    (g,) = _grad(lambda x: x**0, [0.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 0.0])
    gx, gy = _grad(lambda x, y: x**y, [0.0, 0.0, 2.0], [0.0, 2.0, 3.0])
    np.testing.assert_allclose(gx, [0.0, 0.0, 12.0])
    np.testing.assert_allclose(gy, [0.0, 0.0, 8.0 * np.log(2.0)])


def test_pow_of_zero_base_is_flat_in_the_exponent_to_every_order():
    # 0**y = 0 for y > 0: the first and second derivatives in y are 0, not 0 * log(0) = nan
    def f(y):
        return tg.tensor(0.0, dtype=tg.float64) ** y

    y = tg.tensor([0.5, 1.0, 3.0], dtype=tg.float64)
    first = tg.grad(lambda y: f(y).sum())(y)
    second = tg.grad(lambda y: tg.grad(lambda y: f(y).sum())(y).sum())(y)
    np.testing.assert_array_equal(first.numpy(), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(second.numpy(), [0.0, 0.0, 0.0])
    leaf = y.detach().requires_grad_()
    (g,) = tg.autograd.grad(f(leaf).sum(), leaf, create_graph=True)
    (gg,) = tg.autograd.grad(g.sum(), leaf)
    np.testing.assert_array_equal(gg.numpy(), [0.0, 0.0, 0.0])
    # d/dx x**y is taken as the constant 0 where y == 0 (PyTorch's convention), so its
    # derivative in y is 0 there too, also at x = 0 (PyTorch: 0 * inf = nan)
    x = tg.tensor([0.0, 2.0], dtype=tg.float64, requires_grad=True)
    e = tg.tensor([0.0, 0.0], dtype=tg.float64, requires_grad=True)
    (gx,) = tg.autograd.grad((x**e).sum(), x, create_graph=True)
    (gxe,) = tg.autograd.grad(gx.sum(), e)
    np.testing.assert_array_equal(gxe.numpy(), [0.0, 0.0])


def test_getitem_repeated_indices_accumulate():
    (g,) = _grad(lambda x: x[tg.tensor([2, 0, 2, 2])] * tg.tensor([1.0, 2.0, 3.0, 4.0]), [0.0] * 3)
    np.testing.assert_array_equal(g, [2.0, 0.0, 8.0])


def test_cross_entropy_ignored_targets_get_no_gradient():
    logits = tg.tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    F.cross_entropy(logits, tg.tensor([1, -100, 2]), label_smoothing=0.3).backward()
    np.testing.assert_array_equal(logits.grad.numpy()[1], 0.0)
    assert np.all(logits.grad.numpy()[[0, 2]] != 0.0)
