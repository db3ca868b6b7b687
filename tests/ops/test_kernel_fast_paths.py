"""The kernels' fast paths give what the plain NumPy computation gives:

- elementwise kernels run in cache-sized pieces of rows when their result is large
  (``runtime.chunked``), with inputs that broadcast along the rows, 0-d arrays, and ``out``
  being one of the inputs;
- pooling reductions compare one strided slice per window cell;
- clamps compare with a shared read-only array of the bound (``runtime.bound_like``) and
  give np.maximum's and np.fmax's values against the scalar, NaN and signed zeros included;
- sums and means over trailing dims are BLAS matrix-vector products (``runtime.row_sum``);
- scatter_add along axis 0 by an integer index array sorts and sums groups of equal rows."""

from __future__ import annotations

import numpy as np
import pytest

from tracegrad.ops import kernels, runtime
from tracegrad.ops.reduce import window_cells

ROWS, COLS = 301, 517  # several pieces of rows, the last one short
assert ROWS * COLS > 2 * kernels.CHUNK


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((ROWS, COLS)).astype(np.float32) for _ in range(3)]


def whole(kernel, *args, **attrs):
    """The kernel on the whole arrays at once: the function ``chunked`` wraps."""
    return kernel.__wrapped__(*args, out=np.empty((ROWS, COLS), np.float32), **attrs)


CASES = {
    "sigmoid": lambda a, b, c: ((a,), {}),
    "relu": lambda a, b, c: ((a,), {}),
    "gelu": lambda a, b, c: ((a,), {"approximate": "tanh"}),
    "relu_grad": lambda a, b, c: ((a, b), {}),
    "tanh_grad": lambda a, b, c: ((np.tanh(a), b), {}),
    "sigmoid_grad": lambda a, b, c: ((1 / (1 + np.exp(-a)), b), {}),
    "gelu_grad": lambda a, b, c: ((a, b), {"approximate": "tanh"}),
    "gelu_tanh": lambda a, b, c: ((a,), {}),
    "gelu_with_tanh": lambda a, b, c: ((a, np.tanh(b)), {}),
    "gelu_grad_with_tanh": lambda a, b, c: ((a, np.tanh(b), c), {}),
    "lerp": lambda a, b, c: ((a, b), {"weight": 0.1}),
    "ema_square": lambda a, b, c: ((a * a, b), {"beta": 0.999}),
    "adam_step": lambda a, b, c: (
        (a, b, c * c, np.asarray(0.01, np.float32), np.asarray(0.3, np.float32)),
        {"eps": 1e-8},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pieces_equal_one_whole_call(name):
    kernel = getattr(kernels, name)
    args, attrs = CASES[name](*arrays())
    expected = whole(kernel, *args, **attrs)
    out = np.full((ROWS, COLS), np.nan, np.float32)
    assert kernel(*args, out=out, **attrs) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "name",
    ["lerp", "ema_square", "adam_step", "relu_grad", "gelu_with_tanh", "gelu_grad_with_tanh"],
)
def test_pieces_write_in_place_into_an_input(name):
    kernel = getattr(kernels, name)
    args, attrs = CASES[name](*arrays(1))
    expected = whole(kernel, *args, **attrs)
    first = args[0].copy()
    result = kernel(first, *args[1:], out=first, **attrs)
    assert result is first
    np.testing.assert_array_equal(first, expected)


def test_inputs_broadcasting_along_the_rows_go_to_every_piece_whole():
    a, b, _ = arrays(2)
    row, column = b[0], b[:, :1]  # (COLS,) and (ROWS, 1)
    for other in (row, column, b[:1]):
        expected = kernels.lerp.__wrapped__(a, other, weight=0.25, out=np.empty_like(a))
        out = kernels.lerp(a, other, weight=0.25, out=np.empty_like(a))
        np.testing.assert_array_equal(out, expected)


def test_small_results_and_results_without_out_run_whole():
    a, b, _ = arrays(3)
    np.testing.assert_array_equal(kernels.relu_grad(a, b), kernels.relu_grad.__wrapped__(a, b))
    small = a[:3, :5]
    np.testing.assert_array_equal(
        kernels.relu_grad(small, small, out=np.empty_like(small)), np.where(small > 0, small, 0)
    )


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("dims", [(3, 5), (4, 5)])
@pytest.mark.parametrize("name", ["amax", "amin"])
def test_pooling_reductions_by_cells_equal_numpy_reductions(name, dims, ties):
    """Over a small window of a large result, amax/amin and their gradient compare one
    strided slice per window cell; they must equal NumPy's reductions, with and without ties
    (the gradient is shared evenly between tied extremes)."""
    rng = np.random.default_rng(4)
    shape = (16, 8, 6, 2, 6, 2)
    x = rng.integers(0, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    assert window_cells(x, dims, False) is not None
    reduce = np.maximum if name == "amax" else np.minimum
    y = getattr(kernels, name)(x, dims, False)
    np.testing.assert_array_equal(y, reduce.reduce(x, axis=dims))
    out = np.empty(y.shape)
    assert getattr(kernels, name)(x, dims, False, out=out) is out
    np.testing.assert_array_equal(out, y)
    g = rng.standard_normal(y.shape)
    hits = x == np.expand_dims(y, dims)
    expected = hits * np.expand_dims(g / hits.sum(axis=dims), dims)
    out = np.full(x.shape, np.nan)
    assert kernels.extreme_grad(x, y, g, dims, False, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    np.testing.assert_allclose(kernels.extreme_grad(x, y, g, dims, False), expected, rtol=1e-15)


@pytest.mark.parametrize(
    "shape, dims",
    [((16, 4, 9, 7), (3,)), ((6, 5, 4), (1, 2)), ((6, 5, 4), (-1,)), ((3, 4), (0,)), ((5,), (0,))],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_sums_and_means_equal_numpy(shape, dims, dtype):
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    expected = np.sum(x, axis=dims, keepdims=True)
    np.testing.assert_allclose(runtime.row_sum(x, dims), expected, rtol=rtol, atol=rtol)
    mean = runtime.row_sum(x, dims, 0.25)
    assert mean.dtype == dtype and mean.shape == expected.shape
    np.testing.assert_allclose(mean, 0.25 * expected, rtol=rtol, atol=rtol)
    strided = x[..., ::2] if x.ndim > 1 else x[::2]  # not contiguous: NumPy's own sum
    np.testing.assert_allclose(
        runtime.row_sum(strided, dims), np.sum(strided, axis=dims, keepdims=True), rtol=rtol
    )


@pytest.mark.parametrize("index_shape", [(40,), (5, 8)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_add_by_rows_equals_add_at(index_shape, dtype):
    """Repeated rows sum, negative indices name the same rows as positive ones, and rows no
    index names stay zero (as np.add.at into zeros gives)."""
    rng = np.random.default_rng(6)
    rows = rng.integers(-7, 7, index_shape)  # -7..6 into 9 rows: repeats, negatives, gaps
    g = rng.standard_normal((*index_shape, 3, 2)).astype(dtype)
    expected = np.zeros((9, 3, 2), dtype)
    np.add.at(expected, rows, g)
    out = np.full((9, 3, 2), np.nan, dtype)
    got = kernels.scatter_add(g, (("tensor", 0),), (9, 3, 2), rows, out=out)
    assert got is out
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    fresh = kernels.scatter_add(g, (("tensor", 0),), (9, 3, 2), rows)
    np.testing.assert_allclose(fresh, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize(
    "shape", [(16, 4, 64, 64), (3, 40, 70), (1024, 10), (700, 32), (300, 65), (5, 7)]
)
def test_row_max_equals_numpy_max(shape):
    """Rows turned into columns (square blocks, or narrow matrices whole) give NumPy's max,
    infinities included (masked attention scores)."""
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    x[..., 0] = -np.inf
    got = runtime.row_max(x, -1)
    np.testing.assert_array_equal(got, x.max(-1, keepdims=True))
    np.testing.assert_array_equal(runtime.row_max(x, 0), x.max(0, keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (ROWS, COLS)])
def test_relu_against_an_array_of_zeros_equals_maximum_with_zero(shape, dtype):
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(dtype)
    if dtype != np.int64 and x.size > 3:
        x.flat[:3] = [np.nan, -0.0, 0.0]
    expected = np.maximum(x, 0)
    got = kernels.relu(x)
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))
    out = np.empty_like(x)
    np.testing.assert_array_equal(kernels.relu(x, out=out), expected)


def test_bounds_are_shared_and_read_only():
    x = np.ones((4, 6), np.float32)
    bound = runtime.bound_like(x, -100.0)
    assert bound.shape == x.shape and bound.dtype == x.dtype and (bound == -100).all()
    assert np.shares_memory(bound, runtime.bound_like(np.zeros(24, np.float32), -100.0))
    with pytest.raises(ValueError, match="read-only"):
        bound[0, 0] = 1.0
    assert runtime.bound_like(np.float32(2.0), 0.0) == 0.0  # a scalar keeps the scalar


def test_clamped_log_maps_zero_negative_and_nan_to_the_floor():
    from tracegrad.ops.nn import LOG_FLOOR, clamped_log_into

    q = np.array([0.0, -1.0, np.nan, 1e-45, 0.5, 1.0], np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.fmax(np.log(q), LOG_FLOOR)
    np.testing.assert_array_equal(clamped_log_into(q, np.empty_like(q)), expected)
    assert expected[:3].tolist() == [LOG_FLOOR] * 3


def test_sigmoid_divides_like_reciprocal():
    x = np.random.default_rng(2).standard_normal((ROWS, COLS)).astype(np.float32) * 10
    expected = np.reciprocal(np.exp(-x) + np.float32(1.0))
    np.testing.assert_array_equal(kernels.sigmoid(x), expected)


def test_bounds_of_large_arrays_stay_scalars():
    assert runtime.bound_like(np.zeros(kernels.CHUNK + 1, np.float32), 0.0) == 0.0
