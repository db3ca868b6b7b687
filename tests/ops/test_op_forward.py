"""Forward values of every op against NumPy, naive loops or closed forms, in float32 and
float64; inputs at the edge of the float range staying finite; each op's shape/dtype rule
agreeing with what its implementation returns; and property tests of broadcasting ops.

A new op's rows come from the ``samples`` of its declaration: each sample carrying a NumPy
reference (``Sample.ref``, written apart from the op's implementation: an unshifted softmax,
a running product, products summed by broadcasting for matmul) gives a row per shape set and
float dtype (``test_declared_forward_matches_its_numpy_reference``), and the samples' calls
are the op's ``REPRESENTATIVE`` calls, which the shape/dtype-rule and ``out=`` tests replay
(in int64 too for ops in ``INTEGER_OK``). Completeness tests fail until every op has
representative calls and every op with samples has forward rows: a reference, a line in the
elementwise tables (``UNARY``, ``BINARY``, through the public methods) or a test of its own
named in ``FORWARD_BY_HAND``. Ops without samples (comparisons, fused gradients, random draws,
optimizer updates) keep a hand call in ``HAND_REPRESENTATIVE``.
"""

from __future__ import annotations

import itertools
import math
import operator
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import dtypes
from tracegrad.codegen.emit import expression
from tracegrad.errors import DTypeError, ShapeError
from tracegrad.ops import OPS, VIEW, fused, kernels, recurrent
from tracegrad.tensor import call

FLOATS = [np.float32, np.float64]
FLOAT_IDS = ["float32", "float64"]


def tol(dtype) -> dict:
    return {"rtol": 2e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-12}


def check(result: tg.Tensor, expected, dtype) -> None:
    """``result`` has ``expected``'s shape, the given dtype and its values within tolerance."""
    expected = np.asarray(expected)
    assert result.dtype == dtype
    assert tuple(result.shape) == expected.shape
    np.testing.assert_allclose(result.detach().numpy(), expected, **tol(dtype))


def rand(shape, dtype=np.float64, low=-2.0, high=2.0, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)


# --- elementwise -------------------------------------------------------------------------------

_vec_erf = np.vectorize(math.erf)


def gelu_exact_ref(x):
    return np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))(x)


def gelu_tanh_ref(x):
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return 0.5 * x * (1.0 + np.tanh(inner))


# name, tracegrad function, reference on float64, lower and upper bound of the inputs
UNARY = [
    ("neg", lambda x: -x, np.negative, -2, 2),
    ("exp", lambda x: x.exp(), np.exp, -3, 3),
    ("log", lambda x: x.log(), np.log, 0.1, 5),
    ("log1p", lambda x: x.log1p(), np.log1p, -0.9, 5),
    ("sqrt", lambda x: x.sqrt(), np.sqrt, 0, 5),
    ("tanh", lambda x: x.tanh(), np.tanh, -3, 3),
    ("sigmoid", lambda x: x.sigmoid(), lambda x: 0.5 * (1 + np.tanh(x / 2)), -6, 6),
    ("relu", lambda x: x.relu(), lambda x: np.where(x > 0, x, 0.0), -2, 2),
    ("abs", lambda x: x.abs(), lambda x: np.where(x < 0, -x, x), -2, 2),
    ("sign", lambda x: x.sign(), lambda x: (x > 0) * 1.0 - (x < 0), -2, 2),
    ("erf", lambda x: x.erf(), _vec_erf, -3, 3),
    ("sin", lambda x: x.sin(), np.sin, -4, 4),
    ("cos", lambda x: x.cos(), np.cos, -4, 4),
    ("gelu", F.gelu, gelu_exact_ref, -4, 4),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), gelu_tanh_ref, -4, 4),
    ("clamp", lambda x: x.clamp(-0.5, 1.0), lambda x: np.minimum(np.maximum(x, -0.5), 1.0), -2, 2),
    ("clamp_min", lambda x: x.clamp(min=0.25), lambda x: np.maximum(x, 0.25), -2, 2),
    ("clamp_max", lambda x: x.clamp(max=0.25), lambda x: np.minimum(x, 0.25), -2, 2),
    ("pow_scalar", lambda x: x**2.5, lambda x: np.exp(2.5 * np.log(x)), 0.1, 3),
    ("pow_scalar_int", lambda x: x**3, lambda x: x * x * x, -2, 2),
    ("pow_scalar_neg", lambda x: x**-0.5, lambda x: 1 / np.sqrt(x), 0.1, 3),
    ("clone", lambda x: x.clone(), lambda x: x, -2, 2),
    ("tan", lambda x: x.tan(), np.tan, -1.4, 1.4),
    ("asin", lambda x: x.asin(), np.arcsin, -0.99, 0.99),
    ("acos", lambda x: x.arccos(), np.arccos, -0.99, 0.99),
    ("atan", lambda x: x.atan(), np.arctan, -4, 4),
    ("sinh", lambda x: x.sinh(), np.sinh, -4, 4),
    ("cosh", lambda x: x.cosh(), np.cosh, -4, 4),
    ("asinh", lambda x: x.asinh(), np.arcsinh, -4, 4),
    ("acosh", lambda x: x.acosh(), np.arccosh, 1, 5),
    ("atanh", lambda x: x.arctanh(), np.arctanh, -0.99, 0.99),
    ("expm1", lambda x: x.expm1(), np.expm1, -1e-3, 1e-3),
    ("exp2", lambda x: x.exp2(), np.exp2, -4, 4),
    ("log2", lambda x: x.log2(), np.log2, 0.1, 5),
    ("log10", lambda x: x.log10(), np.log10, 0.1, 5),
    ("floor", lambda x: x.floor(), np.floor, -3, 3),
    ("ceil", lambda x: x.ceil(), np.ceil, -3, 3),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(2, 3), (), (5,)], ids=["2x3", "0d", "5"])
@pytest.mark.parametrize(("name", "fn", "ref", "low", "high"), UNARY, ids=[u[0] for u in UNARY])
def test_unary_forward(name, fn, ref, low, high, shape, dtype):
    x = rand(shape, dtype, low, high)
    check(fn(tg.tensor(x)), ref(x.astype(np.float64)), dtype)


def test_clone_copies_memory():
    x = tg.tensor([1.0, 2.0])
    y = x.clone()
    y[0] = 5.0
    assert x.tolist() == [1.0, 2.0]


def test_integer_unary_ops_keep_int64():
    x = np.array([-3, 0, 2, 7])
    t = tg.tensor(x)
    for result, expected in [
        (-t, -x),
        (t.relu(), np.maximum(x, 0)),
        (t.abs(), np.abs(x)),
        (t.sign(), np.sign(x)),
        (t.clamp(-1, 3), np.clip(x, -1, 3)),
        (t.clone(), x),
    ]:
        assert result.dtype == tg.int64
        np.testing.assert_array_equal(result.numpy(), expected)


def test_clamp_of_an_integer_tensor_does_not_truncate_a_float_bound():
    # PyTorch gives float32 [0.5, 1, 2]; silently clamping to int(0.5) = 0 would be wrong.
    t = tg.tensor([0, 1, 2])
    try:
        result = t.clamp(min=0.5)
    except DTypeError:
        return
    assert result.dtype == tg.float32
    np.testing.assert_array_equal(result.numpy(), [0.5, 1.0, 2.0])


BINARY = [
    ("add", operator.add, np.add, None),
    ("sub", operator.sub, np.subtract, None),
    ("mul", operator.mul, np.multiply, None),
    ("div", operator.truediv, np.divide, "nonzero"),
    ("pow", operator.pow, np.power, "positive_base"),
    ("maximum", tg.maximum, np.maximum, None),
    ("minimum", tg.minimum, np.minimum, None),
    ("atan2", tg.atan2, np.arctan2, None),
    ("remainder", operator.mod, np.remainder, "nonzero"),
]
BROADCAST_SHAPES = [
    ((2, 3), (2, 3)),
    ((3, 1), (1, 4)),
    ((2, 3), (3,)),
    ((), (2, 3)),
    ((2, 1, 3), (4, 1)),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("xs", "ys"), BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize(("name", "fn", "ref", "domain"), BINARY, ids=[b[0] for b in BINARY])
def test_binary_forward_broadcasts(name, fn, ref, domain, xs, ys, dtype):
    x = rand(xs, dtype, 0.2 if domain == "positive_base" else -2, 2, seed=1)
    y = rand(ys, dtype, 0.5, 2, seed=2) if domain == "nonzero" else rand(ys, dtype, seed=2)
    check(fn(tg.tensor(x), tg.tensor(y)), ref(x.astype(np.float64), y.astype(np.float64)), dtype)


def test_integer_binary_ops():
    x, y = np.array([[5], [-7]]), np.array([2, 3, -4])
    tx, ty = tg.tensor(x), tg.tensor(y)
    for result, expected in [
        (tx + ty, x + y),
        (tx - ty, x - y),
        (tx * ty, x * y),
        (tg.maximum(tx, ty), np.maximum(x, y)),
        (tg.minimum(tx, ty), np.minimum(x, y)),
        (tx ** tg.tensor([2, 3, 0]), x ** np.array([2, 3, 0])),
        (tx % ty, x % y),
    ]:
        assert result.dtype == tg.int64
        np.testing.assert_array_equal(result.numpy(), expected)
    true_div = tx / ty  # true division promotes integers to the default float
    assert true_div.dtype == tg.float32
    np.testing.assert_allclose(true_div.numpy(), x / y, rtol=1e-6)


COMPARISONS = [
    ("eq", operator.eq, np.equal),
    ("ne", operator.ne, np.not_equal),
    ("lt", operator.lt, np.less),
    ("le", operator.le, np.less_equal),
    ("gt", operator.gt, np.greater),
    ("ge", operator.ge, np.greater_equal),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64], ids=str)
@pytest.mark.parametrize(("name", "fn", "ref"), COMPARISONS, ids=[c[0] for c in COMPARISONS])
def test_comparisons(name, fn, ref, dtype):
    x = np.array([[1, 2, 3], [3, 2, 1]], dtype)
    y = np.array([2, 2, 1], dtype)  # broadcast along rows, with ties
    result = fn(tg.tensor(x), tg.tensor(y))
    assert result.dtype == tg.bool
    np.testing.assert_array_equal(result.numpy(), ref(x, y))


def test_logical_ops():
    a = np.array([[True, False], [True, True]])
    b = np.array([True, False])
    ta, tb = tg.tensor(a), tg.tensor(b)
    for result, expected in [
        (ta & tb, a & b),
        (ta | tb, a | b),
        (ta ^ tb, a ^ b),
        (~ta, ~a),
        (tg.tensor([0.0, 2.0]).logical_not(), np.array([True, False])),
    ]:
        assert result.dtype == tg.bool
        np.testing.assert_array_equal(result.numpy(), expected)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_where_broadcasts_condition_and_operands(dtype):
    cond = np.array([[True], [False]])
    x, y = rand((3,), dtype), rand((2, 1), dtype, seed=3)
    check(tg.where(tg.tensor(cond), tg.tensor(x), tg.tensor(y)), np.where(cond, x, y), dtype)


def test_cast_between_dtypes():
    x64 = np.array([1.0 + 2.0**-40, -2.75, 3.5e38 * 10.0])
    down = tg.tensor(x64).float()
    assert down.dtype == tg.float32
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(down.numpy(), x64.astype(np.float32))  # rounds; inf
    up = tg.tensor(np.array([0.1, -3.0], np.float32)).double()
    assert up.dtype == tg.float64
    np.testing.assert_array_equal(up.numpy(), np.array([0.1, -3.0], np.float32).astype(np.float64))
    truncated = tg.tensor([-2.7, -0.5, 0.5, 2.7]).long()  # toward zero, as in PyTorch
    assert truncated.tolist() == [-2, 0, 0, 2]
    assert tg.tensor([True, False]).double().tolist() == [1.0, 0.0]
    assert tg.tensor([0, 3, -1]).bool().tolist() == [False, True, True]


# --- reductions --------------------------------------------------------------------------------

REDUCE_DIMS = [None, 0, -1, (0, 2), (2, 0, 1)]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", REDUCE_DIMS, ids=str)
def test_sum_amax_amin_mean(dim, keepdim, dtype):
    x = rand((2, 3, 4), dtype)
    t = tg.tensor(x)
    axis = dim if dim is None or isinstance(dim, int) else tuple(dim)
    x64 = x.astype(np.float64)
    check(t.sum(dim, keepdim), np.sum(x64, axis, keepdims=keepdim), dtype)
    check(t.amax(dim, keepdim), np.amax(x64, axis, keepdims=keepdim), dtype)
    check(t.amin(dim, keepdim), np.amin(x64, axis, keepdims=keepdim), dtype)
    check(t.mean(dim, keepdim), np.mean(x64, axis, keepdims=keepdim), dtype)


def test_sum_of_integers_and_bools_is_int64():
    assert tg.tensor([[1, 2], [3, 4]]).sum(0).tolist() == [4, 6]
    total = tg.tensor([True, True, False]).sum()
    assert total.dtype == tg.int64 and total.item() == 2


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("correction", [0, 1, 2])
@pytest.mark.parametrize(
    ("dim", "keepdim"), [(None, False), (1, False), ((0, 2), True), (-1, True)]
)
def test_var_and_std_with_correction(dim, keepdim, correction, dtype):
    x = rand((3, 4, 5), dtype)
    axis = dim if dim is None or isinstance(dim, int) else tuple(dim)
    ref = np.var(x.astype(np.float64), axis, ddof=correction, keepdims=keepdim)
    t = tg.tensor(x)
    check(t.var(dim, keepdim=keepdim, correction=correction), ref, dtype)
    check(t.std(dim, keepdim=keepdim, correction=correction), np.sqrt(ref), dtype)


def test_var_unbiased_flag_and_default():
    x = rand((4, 3))
    t = tg.tensor(x)
    np.testing.assert_allclose(t.var().item(), np.var(x, ddof=1))
    np.testing.assert_allclose(t.var(0, unbiased=False).numpy(), np.var(x, 0))
    np.testing.assert_allclose(t.std(1, True).numpy(), np.std(x, 1, ddof=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64], ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_min_with_dim_return_values_and_indices(dim, keepdim, dtype):
    x = np.array([[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 9, 9]], dtype)  # ties: first index wins
    t = tg.tensor(x)
    for method, np_values, np_index in [("max", np.max, np.argmax), ("min", np.min, np.argmin)]:
        values, indices = getattr(t, method)(dim, keepdim)
        assert values.dtype == dtype and indices.dtype == tg.int64
        np.testing.assert_array_equal(values.numpy(), np_values(x, dim, keepdims=keepdim))
        np.testing.assert_array_equal(indices.numpy(), np_index(x, dim, keepdims=keepdim))
    result = t.max(dim, keepdim)
    assert result.values is result[0] and result.indices is result[1]


def test_max_min_argmax_argmin_over_everything():
    x = np.array([[3.0, 7.0, -1.0], [7.0, 0.0, -1.0]])
    t = tg.tensor(x)
    assert t.max().item() == 7.0 and t.min().item() == -1.0
    assert t.argmax().item() == 1 and t.argmin().item() == 2
    assert t.argmax().shape == () and t.argmax().dtype == tg.int64
    np.testing.assert_array_equal(t.argmax(1, keepdim=True).numpy(), [[1], [0]])
    np.testing.assert_array_equal(t.argmin(0).numpy(), [0, 1, 0])


@pytest.mark.parametrize(
    "reduce",
    [
        lambda t: t.amax(0),
        lambda t: t.min(0),
        lambda t: t.argmax(0),
        lambda t: t.argmin(),
        lambda t: t.max(),
    ],
)
def test_a_maximum_or_minimum_over_an_empty_dim_is_a_shape_error(reduce):
    # PyTorch refuses too (IndexError); NumPy's own error would name neither op nor shape
    with pytest.raises(ShapeError, match=r"cannot reduce dim 0 of shape \(0, 3\)"):
        reduce(tg.zeros(0, 3))
    assert tuple(tg.zeros(0, 3).amax(1).shape) == (0,)  # the other dim: an empty result


@pytest.mark.parametrize("method", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1])
def test_softmax_of_an_empty_tensor_is_empty(method, dim):
    result = getattr(tg.zeros(0, 3), method)(dim)  # as in PyTorch, along either dim
    assert tuple(result.shape) == (0, 3) and result.dtype == tg.float32


@pytest.mark.parametrize(
    ("shape", "target"),
    [((2, 3), (3,)), ((2, 3), (1, 3)), ((4, 2, 3), (2, 1)), ((2, 3), (2, 3)), ((3,), ())],
)
def test_sum_to_reduces_broadcast_dims(shape, target):
    x = rand(shape)
    lead = len(shape) - len(target)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(target) if s == 1 and shape[lead + i] != 1
    )
    expected = np.sum(x, axis=axes).reshape(target)
    check(tg.tensor(x).sum_to(target), expected, np.float64)
    # the defining property: sum_to is the transpose of broadcast_to
    y = rand(target, seed=5)
    lhs = np.sum(np.broadcast_to(y, shape) * x)
    np.testing.assert_allclose(lhs, np.sum(y * expected))


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_shape_ops(dtype):
    x = rand((2, 3, 4), dtype)
    t = tg.tensor(x)
    check(t.reshape(4, -1), x.reshape(4, -1), dtype)
    check(t.reshape(24), x.reshape(24), dtype)
    check(t.permute(2, 0, 1), x.transpose(2, 0, 1), dtype)
    check(t.transpose(0, -1), x.swapaxes(0, -1), dtype)
    check(t[:, :1].broadcast_to((2, 2, 3, 4)), np.broadcast_to(x[:, :1], (2, 2, 3, 4)), dtype)
    check(t.unsqueeze(1).squeeze(1), x, dtype)
    y = rand((2, 1, 4), dtype, seed=1)
    check(tg.cat([t, tg.tensor(y)], dim=1), np.concatenate([x, y], 1), dtype)
    check(tg.cat([t, t, t], dim=-1), np.concatenate([x, x, x], -1), dtype)
    check(tg.stack([t, t], dim=1), np.stack([x, x], 1), dtype)


GETITEM_KEYS = [
    (1,),
    (-1, 2),
    (slice(1, None), slice(None, None, 2)),
    (slice(None, None, -1), slice(-1, 0, -2)),
    (None, Ellipsis, 1),
    (Ellipsis, None),
    (0, None, slice(None), -2),
    (np.array([0, 2, 0, 0]),),
    (slice(None), np.array([[1, 1], [0, 3]])),
    (np.array([0, 1, 1]), np.array([2, 2, 0])),
    (np.array([1, 0]), slice(None), np.array([0, 4])),  # split: NumPy puts their dim first
    (slice(None), np.array([1, 2]), np.array([0, 3])),
    (np.array([True, False, True]),),
    (slice(None), np.array([False, True, True, False])),
]


@pytest.mark.parametrize("key", GETITEM_KEYS, ids=str)
def test_getitem_matches_numpy(key):
    x = rand((3, 4, 5))
    t_key = tuple(tg.tensor(k) if isinstance(k, np.ndarray) else k for k in key)
    check(tg.tensor(x)[t_key], x[key], np.float64)


def test_getitem_of_a_scalar_and_mask_of_full_shape():
    x = rand((3, 4))
    check(tg.tensor(x)[1, 2], x[1, 2], np.float64)
    m = x > 0
    check(tg.tensor(x)[tg.tensor(m)], x[m], np.float64)


def test_one_hot():
    t = tg.tensor([[0, 2], [1, 2]])
    result = F.one_hot(t, 4)
    assert result.dtype == tg.int64
    np.testing.assert_array_equal(result.numpy(), np.eye(4, dtype=np.int64)[t.numpy()])
    assert tuple(F.one_hot(tg.tensor([1, 4])).shape) == (2, 5)  # classes inferred: max + 1


# --- products ----------------------------------------------------------------------------------

EINSUM = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk->i", [(2, 3), (3, 4)]),
    ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]),
    ("i,j->ij", [(2,), (3,)]),
    ("ijk->kj", [(2, 3, 4)]),
    ("ij,jk", [(2, 3), (3, 2)]),
    ("ij,ij->", [(2, 3), (2, 3)]),
    ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 2)]),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("equation", "shapes"), EINSUM, ids=[e[0] for e in EINSUM])
def test_einsum_matches_numpy(equation, shapes, dtype):
    xs = [rand(s, dtype, seed=i) for i, s in enumerate(shapes)]
    expected = np.einsum(equation, *(x.astype(np.float64) for x in xs))
    check(tg.einsum(equation, *(tg.tensor(x) for x in xs)), expected, dtype)


# --- sliding windows, convolution, pooling -----------------------------------------------------

WINDOWS = [  # kernel, stride, padding, dilation
    ((2, 2), (1, 1), (0, 0), (1, 1)),
    ((3, 2), (2, 1), (1, 0), (1, 1)),
    ((2, 2), (1, 2), (1, 1), (2, 1)),
    ((1, 3), (3, 1), (0, 2), (1, 2)),
]


def unfold_ref(x, kernel, stride, padding, dilation, pad_value):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * padding[0], w + 2 * padding[1]), pad_value, x.dtype)
    xp[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w] = x
    oh = (xp.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (xp.shape[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    out = np.empty((n, c, oh, ow, *kernel), x.dtype)
    for i, j, ki, kj in itertools.product(range(oh), range(ow), *map(range, kernel)):
        out[:, :, i, j, ki, kj] = xp[
            :, :, i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]
        ]
    return out


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), WINDOWS, ids=str)
def test_unfold_and_fold(kernel, stride, padding, dilation, dtype):
    x = rand((2, 2, 5, 6), dtype)
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    cols = call("unfold", tg.tensor(x), pad_value=-7.0, **attrs)
    check(cols, unfold_ref(x, pad_value=-7.0, **attrs), dtype)
    # fold is unfold's transpose: <unfold(x), y> == <x, fold(y)> (with zero padding)
    y = rand(tuple(cols.shape), dtype, seed=1)
    folded = call("fold", tg.tensor(y), size=(5, 6), **attrs)
    lhs = np.sum(unfold_ref(x, pad_value=0.0, **attrs).astype(np.float64) * y)
    np.testing.assert_allclose(np.sum(folded.numpy().astype(np.float64) * x), lhs, **tol(dtype))
    assert folded.dtype == dtype and tuple(folded.shape) == x.shape


def conv2d_ref(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    out_c, group_c, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, out_c, oh, ow))
    per_group = out_c // groups
    for b_, o, i, j in itertools.product(range(n), range(out_c), range(oh), range(ow)):
        g = o // per_group
        acc = 0.0 if b is None else float(b[o])
        for ci, ki, kj in itertools.product(range(group_c), range(kh), range(kw)):
            acc += xp[b_, g * group_c + ci, i * sh + ki * dh, j * sw + kj * dw] * w[o, ci, ki, kj]
        out[b_, o, i, j] = acc
    return out


CONVS = [  # input shape, weight shape, stride, padding, dilation, groups, bias
    ((1, 1, 4, 4), (1, 1, 3, 3), 1, 0, 1, 1, True),
    ((2, 3, 5, 6), (4, 3, 2, 3), (2, 1), (1, 2), 1, 1, True),
    ((1, 2, 7, 6), (3, 2, 3, 2), 1, 1, (2, 3), 1, False),
    ((2, 4, 5, 5), (6, 2, 3, 3), 2, 1, 1, 2, True),
    ((1, 6, 6, 5), (6, 1, 2, 2), (1, 2), 0, 2, 6, True),  # depthwise
]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("xs", "ws", "stride", "padding", "dilation", "groups", "bias"), CONVS)
def test_conv2d_matches_naive_loops(xs, ws, stride, padding, dilation, groups, bias, dtype):
    x, w = rand(xs, dtype), rand(ws, dtype, seed=1)
    b = rand((ws[0],), dtype, seed=2) if bias else None
    pair = lambda v: (v, v) if isinstance(v, int) else v
    expected = conv2d_ref(x, w, b, pair(stride), pair(padding), pair(dilation), groups)
    result = F.conv2d(
        tg.tensor(x),
        tg.tensor(w),
        tg.tensor(b) if bias else None,
        stride,
        padding,
        dilation,
        groups,
    )
    check(result, expected, dtype)


def test_conv2d_unbatched_and_same_padding():
    x, w = rand((2, 5, 4)), rand((3, 2, 3, 3), seed=1)
    expected = conv2d_ref(x[None], w, None, (1, 1), (1, 1), (1, 1), 1)[0]
    check(F.conv2d(tg.tensor(x), tg.tensor(w), padding="same"), expected, np.float64)


def max_pool2d_ref(x, kernel, stride, padding):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * padding[0], w + 2 * padding[1]), -np.inf)
    xp[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w] = x
    oh = (xp.shape[2] - kernel[0]) // stride[0] + 1
    ow = (xp.shape[3] - kernel[1]) // stride[1] + 1
    out = np.empty((n, c, oh, ow))
    for i, j in itertools.product(range(oh), range(ow)):
        r, s = i * stride[0], j * stride[1]
        out[:, :, i, j] = xp[:, :, r : r + kernel[0], s : s + kernel[1]].max(axis=(2, 3))
    return out


POOLS = [  # kernel, stride, padding
    ((2, 2), None, (0, 0)),
    ((3, 3), (2, 2), (1, 1)),
    ((2, 3), (1, 2), (1, 0)),
    ((3, 2), (3, 1), (0, 1)),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("kernel", "stride", "padding"), POOLS, ids=str)
def test_max_pool2d_matches_naive_loops(kernel, stride, padding, dtype):
    x = rand((2, 3, 5, 6), dtype, low=-5.0, high=-1.0)  # all negative: padding must be -inf
    expected = max_pool2d_ref(x, kernel, stride or kernel, padding)
    check(F.max_pool2d(tg.tensor(x), kernel, stride, padding), expected, dtype)


# --- softmax family, losses, normalization -----------------------------------------------------


def softmax_ref(x, dim):
    e = np.exp(x)
    return e / e.sum(dim, keepdims=True)


def cross_entropy_ref(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Sample by sample, with the class dim moved last."""
    one_sample = logits.ndim == 1
    logits = np.moveaxis(logits, 1, -1) if not one_sample else logits[None]
    target = np.asarray(target).reshape(-1)
    rows = logits.reshape(-1, logits.shape[-1])
    losses, count = [], 0
    for row, t in zip(rows, target, strict=True):
        if t == ignore_index:
            losses.append(0.0)
            continue
        logp = row - math.log(sum(math.exp(v) for v in row))
        losses.append(-(1 - label_smoothing) * logp[t] - label_smoothing * logp.mean())
        count += 1
    losses = np.array(losses)
    if reduction == "none":
        return losses[0] if one_sample else losses.reshape(logits.shape[:-1])
    return losses.sum() / count if reduction == "mean" else losses.sum()


CE_CASES = [  # logits shape, target, keyword arguments
    ((4, 3), [0, 2, 1, 2], {}),
    ((4, 3), [0, 2, 1, 2], {"reduction": "sum"}),
    ((4, 3), [0, 2, 1, 2], {"reduction": "none"}),
    ((4, 3), [0, -100, 1, -100], {}),
    ((4, 3), [0, 1, 1, 2], {"ignore_index": 1, "reduction": "sum"}),
    ((4, 3), [0, 2, 1, 2], {"label_smoothing": 0.25}),
    ((4, 3), [0, -100, 1, 2], {"label_smoothing": 0.1, "reduction": "none"}),
    ((2, 3, 4), [[0, 1, 2, 0], [2, 2, 1, -100]], {"label_smoothing": 0.2}),
    ((2, 3, 4), [[0, 1, 2, 0], [2, 2, 1, 1]], {"reduction": "none"}),
    ((3,), 1, {}),
    ((3,), 2, {"label_smoothing": 0.3, "reduction": "none"}),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("shape", "target", "kwargs"), CE_CASES, ids=str)
def test_cross_entropy(shape, target, kwargs, dtype):
    x = rand(shape, dtype, -3, 3)
    expected = cross_entropy_ref(x.astype(np.float64), target, **kwargs)
    check(F.cross_entropy(tg.tensor(x), tg.tensor(target), **kwargs), expected, dtype)


def _loss_attrs(kwargs) -> dict:
    return {"ignore_index": -100, "label_smoothing": 0.0, "reduction": "mean", **kwargs}


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("shape", "target", "kwargs"), CE_CASES, ids=str)
def test_nll_loss_of_log_probabilities_is_the_cross_entropy(shape, target, kwargs, dtype):
    x = rand(shape, dtype, -3, 3)
    logp = tg.tensor(x).log_softmax(kernels.class_dim(len(shape)))
    expected = cross_entropy_ref(x.astype(np.float64), target, **kwargs)
    check(call("nll_loss", logp, tg.tensor(target), **_loss_attrs(kwargs)), expected, dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("shape", "target", "kwargs"), CE_CASES, ids=str)
def test_gradient_from_log_probabilities_is_the_cross_entropy_gradient(
    shape, target, kwargs, dtype
):
    """Each kernel path (2-D rows, smoothing, ignored targets, N-D, one sample) of
    log_softmax_nll_grad agrees with cross_entropy_grad on the same logits."""
    x, target = tg.tensor(rand(shape, dtype, -3, 3)), tg.tensor(target)
    attrs = _loss_attrs(kwargs)
    g = _f(target.shape if attrs["reduction"] == "none" else (), dtype, seed=2)
    logp = x.log_softmax(kernels.class_dim(len(shape)))
    got = call("log_softmax_nll_grad", logp, target, g, **attrs)
    want = call("cross_entropy_grad", x, target, g, **attrs)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tol, atol=tol)


MASK_23 = np.array([[False, True, True], [True, True, True]])  # the second row masked whole


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("dim", [0, 1])
def test_masked_softmax_is_softmax_of_the_filled_scores(dim, dtype):
    """Masked entries get exactly 0; a row (or column) masked whole is nan, as PyTorch's
    softmax of masked_fill(-inf) gives."""
    x = rand((2, 3), dtype, -3, 3)
    filled = np.where(MASK_23, -np.inf, x.astype(np.float64))
    with np.errstate(invalid="ignore"):
        expected = softmax_ref(filled, dim)
    got = call("masked_softmax", tg.tensor(x), tg.tensor(MASK_23), dim=dim)
    check(got, expected, dtype)
    assert np.all(got.numpy()[MASK_23 & ~np.isnan(expected)] == 0.0)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("dim", [1, 2])
def test_masked_softmax_of_a_broadcast_mask_ignores_any_score_it_masks(dim, dtype):
    """A mask broadcast over the scores (causal attention's): masked entries get exactly 0
    whatever their score (+inf and nan too, as masked_fill's -inf hides them); an unmasked
    nan still makes its row nan."""
    mask = np.triu(np.ones((4, 4), bool), 1)
    x = rand((3, 4, 4), dtype, -3, 3)
    x[0][mask] = np.inf
    x[1][mask] = np.nan
    x[2, 3, 0] = np.nan  # unmasked (below the diagonal)
    filled = np.where(mask, -np.inf, x.astype(np.float64))
    with np.errstate(invalid="ignore"):
        expected = softmax_ref(filled, dim)
    got = call("masked_softmax", tg.tensor(x), tg.tensor(mask), dim=dim)
    check(got, expected, dtype)
    assert np.all(got.numpy()[:2][:, mask] == 0.0)


def layer_norm_ref(x, ndims, w, b, eps):
    axes = tuple(range(x.ndim - ndims, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + eps)
    return out * (1.0 if w is None else w) + (0.0 if b is None else b)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(
    ("shape", "ndims", "affine"),
    [((3, 5), 1, True), ((2, 3, 4), 2, True), ((4, 6), 1, False), ((2, 3, 4), 1, False)],
)
def test_layer_norm(shape, ndims, affine, dtype):
    x = rand(shape, dtype, -3, 5)
    w = rand(shape[-ndims:], dtype, seed=1) if affine else None
    b = rand(shape[-ndims:], dtype, seed=2) if affine else None
    expected = layer_norm_ref(
        x.astype(np.float64),
        ndims,
        None if w is None else w.astype(np.float64),
        None if b is None else b.astype(np.float64),
        1e-3,
    )
    result = F.layer_norm(
        tg.tensor(x),
        shape[-ndims:],
        None if w is None else tg.tensor(w),
        None if b is None else tg.tensor(b),
        eps=1e-3,
    )
    check(result, expected, dtype)


def test_dropout_in_eval_mode_is_the_identity():
    x = tg.tensor(rand((3, 4)))
    np.testing.assert_array_equal(F.dropout(x, 0.7, training=False).numpy(), x.numpy())


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_mask_keeps_with_probability_1_minus_p_and_rescales(p, dtype):
    tg.manual_seed(7)
    mask = call("dropout_mask", shape=(100, 50), p=p, dtype=np.dtype(dtype).name)
    assert mask.dtype == dtype and tuple(mask.shape) == (100, 50)
    values = mask.numpy()
    kept = values != 0
    if p < 1.0:
        np.testing.assert_allclose(values[kept], 1.0 / (1.0 - p), rtol=1e-6)
    assert abs(kept.mean() - (1.0 - p)) < 0.03  # 5000 draws: the std of the mean is < 0.007
    tg.manual_seed(7)
    again = call("dropout_mask", shape=(100, 50), p=p, dtype=np.dtype(dtype).name)
    np.testing.assert_array_equal(again.numpy(), values)


def test_embedding_gathers_rows():
    w = rand((5, 3))
    idx = np.array([[4, 0], [4, 4]])
    check(F.embedding(tg.tensor(idx), tg.tensor(w)), w[idx], np.float64)


# --- extreme inputs stay finite ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_softmax_of_large_logits_is_finite(dtype):
    x = tg.tensor(np.array([1000.0, 1001.0, 1002.0], dtype), requires_grad=dtype == np.float64)
    y = x.softmax(0)
    check(y, softmax_ref(np.array([0.0, 1.0, 2.0]), 0), dtype)
    check(x.log_softmax(0), np.log(softmax_ref(np.array([0.0, 1.0, 2.0]), 0)), dtype)
    if x.requires_grad:
        (y * tg.tensor([1.0, 0.0, 0.0], dtype=tg.float64)).sum().backward()
        assert np.all(np.isfinite(x.grad.numpy()))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_log_softmax_of_very_negative_logits_is_finite(dtype):
    x = np.array([[-1000.0, -1000.0, -1000.0], [-1000.0, -1001.0, -2000.0]], dtype)
    expected = [
        [-math.log(3.0)] * 3,
        [
            -math.log1p(math.exp(-1)),
            -1 - math.log1p(math.exp(-1)),
            -1000 - math.log1p(math.exp(-1)),
        ],
    ]
    check(tg.tensor(x).log_softmax(-1), expected, dtype)
    check(tg.tensor(x).softmax(-1)[0], [1 / 3] * 3, dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_cross_entropy_of_huge_logits_is_finite(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [-1e4, 1e4, 1e4]], dtype)
    target = tg.tensor([0, 2, 1])
    t = tg.tensor(logits, requires_grad=True)
    losses = F.cross_entropy(t, target, reduction="none")
    check(losses, [0.0, 2e4, math.log(2.0)], dtype)
    loss = F.cross_entropy(t, target, label_smoothing=0.1)
    # smoothing mixes in the mean over classes of -log p: 1e4, 1e4 and (2e4 + 3 log 2) / 3
    smoothed = 0.9 * np.array([0.0, 2e4, math.log(2.0)]) + 0.1 * np.array(
        [1e4, 1e4, (2e4 + 3 * math.log(2.0)) / 3]
    )
    np.testing.assert_allclose(loss.item(), smoothed.mean(), rtol=1e-5)
    loss.backward()
    assert np.all(np.isfinite(t.grad.numpy()))


def test_sigmoid_and_tanh_saturate_without_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    for dtype in FLOATS:
        t = tg.tensor(x.astype(dtype))
        check(t.sigmoid(), [0.0, math.exp(-50.0), 0.5, 1.0, 1.0], dtype)
        check(t.tanh(), [-1.0, -1.0, 0.0, 1.0, 1.0], dtype)


# --- shape/dtype rules agree with the implementations ------------------------------------------


def _f(shape, dtype, low=-2.0, high=2.0, seed=0):
    return tg.tensor(rand(shape, dtype, low, high, seed))


def _hyper(value):
    """An optimizer update op's hyperparameter input: 0-d float64, as a compiled step passes it."""
    return tg.tensor(np.float64(value))


def _binary_calls(fn):
    return lambda dt: (fn(_f((3, 1), dt, 0.5), _f((4,), dt, 0.5)), fn(_f((), dt), _f((2,), dt)))


def _comparison_call(fn):
    return lambda dt: fn(_f((2, 1), dt), _f((3,), dt))


def _fused_inputs(name, dt):
    """Inputs for a fused gradient op: (output-or-input, ..., cotangent), floats of ``dt``."""
    if name == "cross_entropy_grad":
        return (_f((4, 3), dt), tg.tensor([0, 2, 1, 1]), _f((), dt, seed=1)), {
            "ignore_index": 1,
            "label_smoothing": 0.1,
            "reduction": "mean",
        }
    if name in ("nll_loss", "log_softmax_nll_grad"):
        logp = _f((4, 3), dt).log_softmax(1)
        cotangent = (_f((), dt, seed=1),) if name == "log_softmax_nll_grad" else ()
        return (logp, tg.tensor([0, 2, 1, 1]), *cotangent), {
            "ignore_index": 1,
            "label_smoothing": 0.1,
            "reduction": "mean",
        }
    if name == "masked_softmax_grad":
        # y is the masked softmax of the same mask: exactly 0 where masked
        keep_first = tg.tensor(np.array([[False, True, True], [False, False, True]]))
        y = call("masked_softmax", _f((2, 3), dt), keep_first, dim=1)
        return (y, _f((2, 3), dt, seed=1), keep_first), {"dim": 1}
    if name == "layer_norm_grad":
        x = _f((3, 4), dt)
        return (x, F.layer_norm(x, (4,)), _f((3, 4), dt, seed=1)), {"ndims": 1, "eps": 1e-5}
    if name == "gelu_tanh":
        return (_f((2, 3), dt),), {}
    if name in ("gelu_with_tanh", "gelu_grad_with_tanh"):
        x = _f((2, 3), dt)
        cotangent = (_f((2, 3), dt, seed=1),) if name == "gelu_grad_with_tanh" else ()
        return (x, call("gelu_tanh", x), *cotangent), {}
    if name == "layer_norm_center":
        return (_f((3, 4), dt),), {"ndims": 1}
    if name == "layer_norm_std":
        return (call("layer_norm_center", _f((2, 3, 4), dt), ndims=2),), {"ndims": 2, "eps": 1e-5}
    if name == "layer_norm_grad_from_std":
        x = _f((3, 4), dt)
        std = call("layer_norm_std", call("layer_norm_center", x, ndims=1), ndims=1, eps=1e-5)
        return (F.layer_norm(x, (4,)), _f((3, 4), dt, seed=1), std), {"ndims": 1}
    if name == "extreme_grad":
        x = _f((3, 4), dt)
        return (x, x.amax(1), _f((3,), dt, seed=1)), {"dims": (1,), "keepdim": False}
    if name == "lstm_sequence_grad":  # record: the forward's, of the same inputs
        ins = (_f((3, 2, 8), dt), _f((2, 2), dt, seed=1), _f((2, 2), dt, seed=2), _f((8, 2), dt))
        record = call("lstm_sequence", *ins, reverse=True)
        return (*ins, record, _f((84,), dt, seed=3)), {"reverse": True}
    if name == "gru_sequence_grad":  # record: the forward's, of the same inputs
        ins = (_f((3, 2, 6), dt), _f((2, 2), dt, seed=1), _f((6, 2), dt), _f((6,), dt, seed=2))
        record = call("gru_sequence", *ins, reverse=False)
        return (*ins, record, _f((60,), dt, seed=3)), {"reverse": False}
    attrs = {
        "gelu_grad": {"approximate": "tanh"},
        "softmax_grad": {"dim": 1},
        "log_softmax_grad": {"dim": 0},
    }.get(name, {})
    return (_f((2, 3), dt), _f((2, 3), dt, seed=1)), attrs


FUSED_REFERENCES = {
    "relu_grad": fused._relu_reference,
    "tanh_grad": fused._tanh_reference,
    "sigmoid_grad": fused._sigmoid_reference,
    "gelu_grad": fused.gelu_reference,
    "gelu_tanh": fused._gelu_tanh_reference,
    "gelu_with_tanh": fused._gelu_with_tanh_reference,
    "gelu_grad_with_tanh": fused._gelu_grad_with_tanh_reference,
    "softmax_grad": fused._softmax_reference,
    "masked_softmax_grad": fused._masked_softmax_reference,
    "log_softmax_grad": fused._log_softmax_reference,
    "cross_entropy_grad": fused.cross_entropy_reference,
    "nll_loss": fused._nll_loss_reference,
    "log_softmax_nll_grad": fused._log_softmax_nll_reference,
    "layer_norm_grad": fused.layer_norm_reference,
    "layer_norm_center": fused._layer_norm_center_reference,
    "layer_norm_std": fused._layer_norm_std_reference,
    "layer_norm_grad_from_std": fused._layer_norm_grad_from_std_reference,
    "extreme_grad": fused.extreme_reference,
    "lstm_sequence_grad": recurrent._grad_reference,
    "gru_sequence_grad": recurrent._gru_grad_reference,
}


def _fused_call(name):
    def run(dt):
        inputs, attrs = _fused_inputs(name, dt)
        return call(name, *inputs, **attrs)

    return run


@pytest.mark.parametrize("name", sorted(FUSED_REFERENCES))
@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_fused_kernel_equals_its_reference(name, dt):
    """A fused op's kernel computes exactly the formula its reference composition states."""
    inputs, attrs = _fused_inputs(name, dt)
    fused_out = call(name, *inputs, **attrs)
    reference = FUSED_REFERENCES[name](*inputs, **attrs)
    tol = 1e-12 if dt == np.float64 else 1e-5
    np.testing.assert_allclose(fused_out.numpy(), reference.numpy(), rtol=tol, atol=tol)
    assert fused_out.dtype == reference.dtype


@pytest.mark.parametrize("ignore_index", [-100, 7])  # below every target; above, absent
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_usual_class_loss_kernels_equal_their_references(ignore_index, reduction, dt):
    """No target ignored, no smoothing, a scalar loss: the loss and gradient kernels take
    their short path, and still compute what their references state."""
    logp = _f((5, 3), dt).log_softmax(1)
    target = tg.tensor([0, 2, 1, 1, 0])
    attrs = {"ignore_index": ignore_index, "label_smoothing": 0.0, "reduction": reduction}
    g = _f((), dt, seed=1)
    tol = 1e-12 if dt == np.float64 else 1e-5
    for name, inputs in (("nll_loss", (logp, target)), ("log_softmax_nll_grad", (logp, target, g))):
        got = call(name, *inputs, **attrs).numpy()
        want = FUSED_REFERENCES[name](*inputs, **attrs).numpy()
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)


def declared_inputs(name: str, sample, shapes, dtype) -> list[np.ndarray]:
    """A declared sample's inputs on one shape set, drawn as it says, floats cast to ``dtype``."""
    rng = np.random.default_rng(zlib.crc32(f"{sample.label(name)}{shapes}".encode()))
    drawn = [np.asarray(draw(rng, s)) for draw, s in zip(sample.drawers(), shapes, strict=True)]
    return [a.astype(dtype) if a.dtype.kind == "f" else a for a in drawn]


def _declared_calls(name):
    """The op on every shape set of every sample it declares (in int64, the samples whose
    attributes hold no float, which an integer tensor would refuse)."""

    def run(dt):
        samples = [
            s
            for s in OPS[name].samples
            if dt != np.int64 or not any(isinstance(v, float) for v in s.attrs.values())
        ]
        return [
            call(name, *map(tg.tensor, declared_inputs(name, s, shapes, dt)), **s.attrs)
            for s in samples
            for shapes in s.shapes
        ]

    return run


# Ops without samples (and clamp, whose samples' float bounds an int64 tensor refuses): calls
# through the public API; every other op's calls are generated from its samples.
HAND_REPRESENTATIVE = {  # op name -> function of a dtype that calls the op
    "clamp": lambda dt: (_f((3,), dt).clamp(-1, 1), _f((2, 2), dt).clamp(max=0)),
    **{name: _binary_calls(fn) for name, fn, _, _ in BINARY if not OPS[name].samples},
    **{name: _comparison_call(fn) for name, fn, _ in COMPARISONS},
    "logical_and": lambda dt: (_f((3, 1), dt) > 0) & (_f((2,), dt) > 0),
    "logical_or": lambda dt: (_f((3, 1), dt) > 0) | (_f((2,), dt) > 0),
    "logical_xor": lambda dt: (_f((3,), dt) > 0) ^ (_f((), dt) > 0),
    "logical_not": lambda dt: ~(_f((3,), dt) > 0),
    "where": lambda dt: tg.where(_f((2, 1), dt) > 0, _f((3,), dt), _f((), dt)),
    "cast": lambda dt: (
        _f((2,), dt).double(),
        _f((2,), dt).float(),
        _f((2,), dt).long(),
        (_f((2,), dt) > 0).to(dt),
    ),
    "keep_gradient": lambda dt: call("keep_gradient", _f((2, 3), dt), _f((2, 3), dt, seed=1)),
    "random_normal": lambda dt: tg.randn(3, 4, dtype=dt),
    "random_uniform": lambda dt: tg.rand(2, dtype=dt),
    "random_integers": lambda dt: tg.randint(-3, 7, (2, 5)),
    "random_permutation": lambda dt: tg.randperm(6),
    "dropout_mask": lambda dt: call("dropout_mask", shape=(3, 4), p=0.25, dtype=np.dtype(dt).name),
    **{name: _fused_call(name) for name in FUSED_REFERENCES},
    "add_scaled": lambda dt: (
        _f((2, 3), dt).add_(_f((2, 3), dt, seed=1), alpha=0.5),
        _f((2, 3), dt).sub_(_f((2, 3), dt, seed=1), alpha=3),
        call("add_scaled", _f((), dt), _f((2, 3), dt, seed=1), alpha=-0.25),
    ),
    "lerp": lambda dt: call("lerp", _f((2, 3), dt), _f((2, 3), dt, seed=1), _hyper(0.1)),
    "ema_square": lambda dt: call(
        "ema_square", _f((2, 3), dt), _f((2, 3), dt, seed=1), _hyper(0.9)
    ),
    "adam_step": lambda dt: call(
        "adam_step",
        *(_f((2, 3), dt, 0.1, 1.0, seed=s) for s in range(3)),
        *(_f((), dt, 0.5, 1.0, seed=s) for s in (3, 4)),
        _hyper(1e-8),
    ),
    "svdvals_grad": lambda dt: call("svdvals_grad", _f((2, 4, 3), dt), _f((2, 3), dt, seed=1)),
}
REPRESENTATIVE = {
    **{name: _declared_calls(name) for name, op in OPS.items() if op.samples},
    **HAND_REPRESENTATIVE,
}
# The collectives of a data-parallel step: with one process (as here) each is the identity.
REPRESENTATIVE.update(
    {
        "all_reduce": lambda dt: call(
            "all_reduce", _f((2, 3), dt), reduce="avg", bucket_cap=1024, order=0
        ),
        "all_reduce_start": lambda dt: call(
            "all_reduce_start", _f((2, 3), dt), _f((4,), dt, seed=1), reduce="sum", bucket=0
        ),
        "all_reduce_wait": lambda dt: call("all_reduce_wait", _f((5,), dt), reduce="avg", bucket=0),
    }
)
INTEGER_OK = {
    "remainder",
    "prod",
    "cumsum",
    "cumprod",
    "argsort",
    "neg",
    "relu",
    "abs",
    "sign",
    "clone",
    "clamp",
    "add",
    "sub",
    "mul",
    "maximum",
    "minimum",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "logical_and",
    "logical_or",
    "logical_xor",
    "logical_not",
    "where",
    "cast",
    "sum",
    "amax",
    "amin",
    "argmax",
    "argmin",
    "sum_to",
    "reshape",
    "permute",
    "broadcast_to",
    "cat",
    "getitem",
    "one_hot",
    "matmul",
    "einsum",
}


def test_every_op_has_a_representative_call():
    assert set(REPRESENTATIVE) == set(OPS)
    # a hand call only where the samples cannot make one
    assert {name for name in HAND_REPRESENTATIVE if OPS[name].samples} == {"clamp"}


# --- forward values of the declared samples, against the NumPy references they carry -----------

# Ops declared with samples but without a reference, each with the test of its values.
FORWARD_BY_HAND = {
    "sum_to": "test_sum_to_reduces_broadcast_dims: the transpose of broadcast_to",
    "getitem": "test_getitem_matches_numpy: the public API against NumPy's own keys",
    "einsum": "test_einsum_matches_numpy: np.einsum is its definition",
    "unfold": "test_unfold_and_fold: naive loops",
    "fold": "test_unfold_and_fold: naive loops",
    "cross_entropy": "test_cross_entropy: a reference taking the same options",
}


def _shape_id(shapes) -> str:
    return "-".join("x".join(map(str, s)) or "0d" for s in shapes)


DECLARED_FORWARD = [
    pytest.param(name, sample, shapes, id=f"{sample.label(name)}-{_shape_id(shapes)}")
    for name, op in OPS.items()
    for sample in op.samples
    if sample.ref is not None
    for shapes in sample.shapes
]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize(("name", "sample", "shapes"), DECLARED_FORWARD)
def test_declared_forward_matches_its_numpy_reference(name, sample, shapes, dtype):
    """The op, called as the sample says, against the sample's NumPy reference computed in
    float64 from the same (rounded) inputs: values, shape, and the dtype kept (float32 stays
    float32; integer results, of argmax or one_hot, exactly equal)."""
    arrays = declared_inputs(name, sample, shapes, dtype)
    result = call(name, *map(tg.tensor, arrays), **sample.attrs)
    wide = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    expected = np.asarray(sample.ref(*wide, **sample.attrs))
    if expected.dtype.kind == "f":
        check(result, expected, dtype)
    else:
        assert result.dtype.np == expected.dtype and tuple(result.shape) == expected.shape
        np.testing.assert_array_equal(result.numpy(), expected)


def test_every_declared_op_has_forward_rows():
    """A sample with a reference, a row in the elementwise tables, or a test of its own."""
    tables = {entry[0] for entry in UNARY} | {entry[0] for entry in BINARY}
    unchecked = {
        name
        for name, op in OPS.items()
        if op.samples and all(s.ref is None for s in op.samples) and name not in tables
    }
    assert unchecked == set(FORWARD_BY_HAND), f"ops without forward rows: {unchecked}"


def recorded_calls(name: str, op_recorder) -> list:
    """(inputs, attrs, result) of every call of the op its representative calls make, in each
    dtype it takes."""
    op, found = OPS[name], []
    for dt in [np.float32, np.float64] + ([np.int64] if name in INTEGER_OK else []):
        with op_recorder() as calls:
            REPRESENTATIVE[name](dt)
        found += [(inputs, attrs, out) for recorded, inputs, attrs, out in calls if recorded is op]
    assert found, f"the representative calls never reached {name!r}"
    return found


@pytest.mark.parametrize("name", sorted(OPS))
def test_infer_agrees_with_the_implementation(name, op_recorder):
    """For every recorded call of the op: the raw NumPy result has exactly the shape and dtype
    the rule predicts (the tensor layer would silently cast a dtype mismatch away)."""
    op = OPS[name]
    for inputs, attrs, out in recorded_calls(name, op_recorder):
        rule = op.infer(*(t.tensor_type for t in inputs), **attrs)
        with np.errstate(all="ignore"):  # as the tensor layer calls it (nan, no warning)
            raw = np.asarray(op.impl(*(t.numpy() for t in inputs), **attrs))
        assert raw.shape == rule.shape, (attrs, [t.shape for t in inputs])
        assert raw.dtype == rule.dtype.np, (attrs, [t.dtype for t in inputs])
        assert tuple(out.shape) == rule.shape and out.dtype is rule.dtype
        # passes trust VIEW ("the output may alias an input"): no undeclared aliasing
        if any(np.may_share_memory(raw, t.numpy()) for t in inputs):
            assert VIEW in op.props, f"{name} returned a view of its input"


@pytest.mark.parametrize("name", sorted(n for n, op in OPS.items() if op.out is not None))
def test_the_out_form_writes_into_out_and_returns_it(name, op_recorder):
    """Generated code trusts an op's out= form: the result lands in ``out`` and ``out`` itself
    comes back (a view of a buffer made once reads it there, an update written in place is
    the parameter's own array)."""
    op = OPS[name]
    for inputs, attrs, result in recorded_calls(name, op_recorder):
        arrays = {f"a{i}": t.numpy().copy() for i, t in enumerate(inputs)}
        out = np.full(result.shape, 7, result.dtype.np)
        source = expression(SimpleNamespace(op=name, attrs=attrs), list(arrays), {}, "r", "out")
        with np.errstate(all="ignore"):
            expected = op.impl(*arrays.values(), **attrs)
            returned = eval(source, {"np": np, "rt": kernels, "out": out, **arrays})
        assert returned is out, source
        np.testing.assert_allclose(out, expected, rtol=1e-6, err_msg=source)


# --- property tests: broadcasting binary ops ----------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)

# name, tracegrad function, NumPy reference, generators for x and y (kept off kinks and poles)
_normal = lambda rng, s: rng.standard_normal(s)
_grid = lambda rng, s: rng.integers(-3, 4, s).astype(np.float64)
_half_grid = lambda rng, s: rng.integers(-3, 4, s) + 0.5
_positive = lambda rng, s: rng.uniform(0.5, 2.0, s)
_nonzero = lambda rng, s: rng.uniform(0.5, 2.0, s) * rng.choice([-1.0, 1.0], s)
PROPERTY_BINARY = [
    ("add", operator.add, np.add, _normal, _normal),
    ("sub", operator.sub, np.subtract, _normal, _normal),
    ("mul", operator.mul, np.multiply, _normal, _normal),
    ("div", operator.truediv, np.divide, _normal, _nonzero),
    ("pow", operator.pow, np.power, _positive, _normal),
    ("maximum", tg.maximum, np.maximum, _grid, _half_grid),
    ("minimum", tg.minimum, np.minimum, _half_grid, _grid),
]


def numeric_gradients(ref, arrays, weight, eps=1e-6):
    """Central differences of sum(weight * ref(*arrays)) with respect to each array."""
    grads = []
    for i, a in enumerate(arrays):
        g = np.zeros(a.shape)
        for k in np.ndindex(a.shape):
            shifted = []
            for sign in (1.0, -1.0):
                moved = [b.copy() for b in arrays]
                moved[i][k] += sign * eps
                shifted.append(np.sum(weight * ref(*moved)))
            g[k] = (shifted[0] - shifted[1]) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize(
    ("name", "fn", "ref", "gen_x", "gen_y"), PROPERTY_BINARY, ids=[p[0] for p in PROPERTY_BINARY]
)
@PROPERTY_SETTINGS
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_broadcasting_binary_gradients_property(name, fn, ref, gen_x, gen_y, shapes, seed):
    rng = np.random.default_rng(seed)
    (xs, ys), out_shape = shapes
    x, y = np.asarray(gen_x(rng, xs), float), np.asarray(gen_y(rng, ys), float)
    weight = rng.standard_normal(out_shape)
    tx, ty = tg.tensor(x, requires_grad=True), tg.tensor(y, requires_grad=True)
    out = fn(tx, ty)
    assert tuple(out.shape) == out_shape
    np.testing.assert_allclose(out.detach().numpy(), ref(x, y), rtol=1e-12)
    (out * tg.tensor(weight)).sum().backward()
    assert tuple(tx.grad.shape) == xs and tuple(ty.grad.shape) == ys
    gx, gy = numeric_gradients(ref, [x, y], weight)
    np.testing.assert_allclose(tx.grad.numpy(), gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ty.grad.numpy(), gy, rtol=1e-5, atol=1e-6)


@PROPERTY_SETTINGS
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_where_broadcasting_gradients_property(shapes, seed):
    rng = np.random.default_rng(seed)
    (cs, xs, ys), out_shape = shapes
    cond = rng.random(cs) < 0.5
    x, y = rng.standard_normal(xs), rng.standard_normal(ys)
    weight = rng.standard_normal(out_shape)
    tx, ty = tg.tensor(x, requires_grad=True), tg.tensor(y, requires_grad=True)
    out = tg.where(tg.tensor(cond), tx, ty)
    np.testing.assert_array_equal(out.detach().numpy(), np.where(cond, x, y))
    (out * tg.tensor(weight)).sum().backward()
    assert tuple(tx.grad.shape) == xs and tuple(ty.grad.shape) == ys
    gx, gy = numeric_gradients(lambda a, b: np.where(cond, a, b), [x, y], weight)
    np.testing.assert_allclose(tx.grad.numpy(), gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ty.grad.numpy(), gy, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_where_gives_its_untaken_branch_exact_zeros(compiled):
    """As in PyTorch, where's gradient is zero wherever a branch was not taken, even when
    the incoming gradient there is inf or nan (masked attention scores meet -inf)."""
    cond = tg.tensor(np.array([True, False, True]))
    weight = tg.tensor(np.array([np.inf, 2.0, np.nan]))

    def loss(a, b):
        return (tg.where(cond, a, b) * weight).sum()

    a = tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = tg.tensor(np.array([4.0, 5.0, 6.0]), requires_grad=True)
    grads = (
        tg.grad(loss, argnums=(0, 1))(a, b) if compiled else tg.autograd.grad(loss(a, b), [a, b])
    )
    np.testing.assert_array_equal(grads[0].numpy(), [np.inf, 0.0, np.nan])
    np.testing.assert_array_equal(grads[1].numpy(), [0.0, 2.0, 0.0])


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@PROPERTY_SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4))
def test_broadcast_result_shapes_and_dtypes_property(dtype, shapes):
    (xs, ys), out_shape = shapes
    x, y = tg.tensor(np.ones(xs, dtype)), tg.tensor(np.full(ys, 2.0, dtype))
    for result in (x + y, x * y, x / y, tg.maximum(x, y), x < y, tg.where(x < y, x, y)):
        assert tuple(result.shape) == out_shape
    assert (x - y).dtype == dtype and (x < y).dtype == tg.bool
    # PyTorch's promotion: a 0-d float64 does not widen a dimensioned float32
    wide = x.ndim > 0 or y.ndim == 0
    assert (x.double() + y).dtype is (dtypes.float64 if wide else dtypes.from_numpy(dtype))


@pytest.mark.parametrize("dt", FLOATS, ids=FLOAT_IDS)
def test_optimizer_update_ops_match_their_formulas(dt):
    x, y, v = (rand((3, 4), dt, 0.1, 1.0, seed) for seed in range(3))
    lerp = call("lerp", tg.tensor(x), tg.tensor(y), _hyper(0.1)).numpy()
    np.testing.assert_allclose(lerp, x + 0.1 * (y - x), rtol=1e-6)
    ema = call("ema_square", tg.tensor(v), tg.tensor(y), _hyper(0.99)).numpy()
    np.testing.assert_allclose(ema, 0.99 * v + 0.01 * y * y, rtol=1e-6)
    step, bias = np.asarray(0.3, dt), np.asarray(0.7, dt)
    args = (tg.tensor(x), tg.tensor(y), tg.tensor(v), tg.tensor(step), tg.tensor(bias))
    update = call("adam_step", *args, _hyper(1e-8)).numpy()
    np.testing.assert_allclose(update, x - 0.3 * y / (np.sqrt(v) / 0.7 + 1e-8), rtol=1e-5)
    assert update.dtype == dt


def test_the_cat_op_refuses_a_negative_dim():
    """tg.cat counts a negative dim from the end; the op itself takes an axis number only (its
    shape rule and gradient index by it)."""
    with pytest.raises(ShapeError, match="dim -1 is not an axis of"):
        call("cat", tg.ones(2, 1), tg.ones(2, 3), dim=-1)
    assert tg.cat([tg.ones(2, 1), tg.ones(2, 3)], dim=-1).shape == (2, 4)
