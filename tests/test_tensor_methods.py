"""Tensor methods that compose existing ops (mm, narrow, norm, roll, fill_diagonal_...):
values against NumPy and PyTorch, gradients by gradcheck, compiled runs against eager ones."""

import math

import numpy as np
import pytest
from scipy import special

import tracegrad as tg
from tracegrad.autograd import gradcheck

RNG = np.random.default_rng(0)
A = RNG.standard_normal((2, 3, 4))
M = RNG.standard_normal((3, 4))


def t64(values):
    return tg.tensor(values, dtype=tg.float64, requires_grad=True)


# method call on a tensor of A -> the same on NumPy's array
VALUE_CASES = {
    "narrow": (lambda x: x.narrow(2, 1, 2), lambda a: a[:, :, 1:3]),
    "narrow_negative_start": (lambda x: x.narrow(-1, -3, 2), lambda a: a[:, :, 1:3]),
    "select": (lambda x: x.select(1, -1), lambda a: a[:, -1]),
    "index_select": (
        lambda x: x.index_select(2, tg.tensor([3, 0, 0])),
        lambda a: a[:, :, [3, 0, 0]],
    ),
    "flip": (lambda x: x.flip(0, 2), lambda a: a[::-1, :, ::-1]),
    "flip_list": (lambda x: x.flip([1]), lambda a: a[:, ::-1]),
    "roll_flat": (lambda x: x.roll(5), lambda a: np.roll(a, 5)),
    "roll_dims": (lambda x: x.roll((1, -3), (0, 2)), lambda a: np.roll(a, (1, -3), (0, 2))),
    "roll_whole_length": (lambda x: x.roll(-4, 2), lambda a: a),
    "roll_big_shift": (lambda x: x.roll(7, 1), lambda a: np.roll(a, 7, 1)),
    "tile": (lambda x: x.tile(2), lambda a: np.tile(a, 2)),
    "tile_more_dims": (lambda x: x.tile(2, 1, 1, 2), lambda a: np.tile(a, (2, 1, 1, 2))),
    "norm": (lambda x: x.norm(), lambda a: np.linalg.norm(a.ravel())),
    "norm_dim": (lambda x: x.norm(dim=1), lambda a: np.linalg.norm(a, axis=1)),
    "norm_p1_keepdim": (
        lambda x: x.norm(1, dim=(0, 2), keepdim=True),
        lambda a: np.abs(a).sum((0, 2), keepdims=True),
    ),
    "norm_p3": (lambda x: x.norm(3, 2), lambda a: (np.abs(a) ** 3).sum(2) ** (1 / 3)),
    "norm_inf": (lambda x: x.norm(float("inf"), 1), lambda a: np.abs(a).max(1)),
    "norm_fro": (lambda x: x.norm("fro", (1, 2)), lambda a: np.sqrt((a * a).sum((1, 2)))),
    "neg": (lambda x: x.neg(), lambda a: -a),
    "bmm": (lambda x: x.bmm(x.transpose(1, 2)), lambda a: a @ a.transpose(0, 2, 1)),
    "mm": (lambda x: x[0].mm(x[1].t()), lambda a: a[0] @ a[1].T),
}


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_values_match_numpy(case):
    method, expected = VALUE_CASES[case]
    np.testing.assert_allclose(method(tg.tensor(A)).numpy(), expected(A), rtol=1e-6)


def test_unbind_gives_a_tuple_of_slices():
    pieces = tg.tensor(A).unbind(2)
    assert isinstance(pieces, tuple) and len(pieces) == 4
    for i, piece in enumerate(pieces):
        np.testing.assert_array_equal(piece.numpy(), A[:, :, i])


NUMPY_COMPARISONS = {
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}


@pytest.mark.parametrize("name", sorted(NUMPY_COMPARISONS))
def test_comparison_methods(name):
    x, y = tg.tensor([1.0, 2.0, 3.0]), tg.tensor([2.0, 2.0, 2.0])
    out = getattr(x, name)(y)
    assert out.dtype is tg.bool
    expected = NUMPY_COMPARISONS[name]([1.0, 2.0, 3.0], 2.0)
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_array_equal(getattr(x, name)(2.0).numpy(), expected)


def test_attributes_and_new_tensors():
    x = tg.randn(3, 4)
    assert x.nelement() == 12 and x.element_size() == 4
    assert tg.zeros(2, dtype=tg.int64).element_size() == 8
    assert x.is_xpu is False
    empty = x.new_empty(2, 5)
    assert empty.shape == (2, 5) and empty.dtype is tg.float32
    made = x.new_tensor([1, 2])
    assert made.dtype is tg.float32 and made.tolist() == [1.0, 2.0]
    assert x.new_tensor([1, 2], dtype=tg.int64).dtype is tg.int64
    source = tg.tensor([1.0, 2.0], requires_grad=True)
    copied = x.new_tensor(source)
    assert not copied.requires_grad
    with tg.no_grad():
        source.add_(1.0)
    assert copied.tolist() == [1.0, 2.0]  # a copy, not a view


@pytest.mark.parametrize(
    "shape, wrap", [((3, 4), False), ((7, 3), False), ((7, 3), True), ((3, 3, 3), False)]
)
def test_fill_diagonal(shape, wrap):
    x = tg.zeros(*shape)
    assert x.fill_diagonal_(5.0, wrap=wrap) is x
    expected = np.zeros(shape)
    if len(shape) == 3:
        expected[range(3), range(3), range(3)] = 5.0
    else:
        rows, cols = shape
        step = cols + 1
        end = rows * cols if wrap else min(rows, cols) * cols
        expected.reshape(-1)[:end:step] = 5.0
    np.testing.assert_array_equal(x.numpy(), expected)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: tg.randn(2, 3).mm(tg.randn(2, 3)), r"\(2, 3\) and \(2, 3\)"),
        (lambda: tg.randn(2, 3).mm(tg.randn(2, 3, 4)), r"\(2, 3\) and \(2, 3, 4\)"),
        (lambda: tg.randn(2, 3, 4).bmm(tg.randn(3, 4, 5)), r"\(2, 3, 4\) and \(3, 4, 5\)"),
        (lambda: tg.randn(2, 3).narrow(1, 2, 2), r"shape \(2, 3\)"),
        (lambda: tg.randn(2, 3).narrow(1, 2, -1), r"length -1 .* shape \(2, 3\)"),
        (lambda: tg.randn(2, 3, 4).fill_diagonal_(1.0), r"shape \(2, 3, 4\)"),
        (lambda: tg.randn(4).index_select(0, tg.tensor([[0]])), r"shape \(1, 1\)"),
    ],
)
def test_shape_errors(call, message):
    with pytest.raises(tg.ShapeError, match=message):
        call()


def test_roll_needs_one_shift_per_dim():
    with pytest.raises(ValueError, match="2 shifts for 1 dims"):
        tg.randn(2, 3).roll((1, 2), 0)


GRAD_CASES = {
    "narrow": lambda x: x.narrow(1, 1, 2),
    "index_select": lambda x: x.index_select(2, tg.tensor([3, 0, 0])),
    "flip": lambda x: x.flip(1),
    "roll": lambda x: x.roll((1, -1), (0, 2)),
    "roll_flat": lambda x: x.roll(3),
    "tile": lambda x: x.tile(2, 1),
    "norm": lambda x: x.norm(),
    "norm_p3": lambda x: x.norm(3, dim=1),
    "norm_inf": lambda x: x.norm(float("inf"), dim=2),
    "neg": lambda x: x.neg(),
    "bmm": lambda x: x.bmm(x.transpose(1, 2)),
    "unbind": lambda x: x.unbind(1)[2],
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradients(case):
    assert gradcheck(GRAD_CASES[case], (t64(A),))


def test_norm_gradient_at_zero_is_zero():
    x = tg.zeros(3, requires_grad=True)
    x.norm().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0]


def _composed(x, w):
    rolled = x.roll(1, 1).flip(0).narrow(1, 0, 3)
    picked = rolled.index_select(1, tg.tensor([2, 0]))
    return picked.mm(w).norm() + x.tile(2).unbind(0)[1].sum() + x.neg().norm(1)


def test_compiled_matches_eager_with_backward():
    def step(x, w):
        loss = _composed(x, w)
        loss.backward()
        return loss

    xs = [t64(M) for _ in range(2)]
    w_values = RNG.standard_normal((2, 5))
    ws = [t64(w_values) for _ in range(2)]
    eager = step(xs[0], ws[0])
    compiled = tg.compile(step)(xs[1], ws[1])
    np.testing.assert_allclose(compiled.item(), eager.item())
    np.testing.assert_allclose(xs[1].grad.numpy(), xs[0].grad.numpy())
    np.testing.assert_allclose(ws[1].grad.numpy(), ws[0].grad.numpy())


def _random_fill(x):
    x.normal_(2.0, 3.0)
    y = tg.zeros(4, 5)
    y.uniform_(-1.0, 1.0)
    return x * 1.0, y


def test_random_fills_draw_the_same_compiled_and_eager():
    tg.manual_seed(7)
    eager = _random_fill(tg.zeros(3, 4))
    tg.manual_seed(7)
    compiled = tg.compile(_random_fill)(tg.zeros(3, 4))
    for got, want in zip(compiled, eager, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    low, high = eager[1].numpy().min(), eager[1].numpy().max()
    assert low >= -1.0 and high < 1.0 and eager[0].dtype is tg.float32


def test_random_fills_have_the_requested_moments():
    tg.manual_seed(0)
    x = tg.zeros(20000, dtype=tg.float64).normal_(2.0, 3.0).numpy()
    assert abs(x.mean() - 2.0) < 0.1 and abs(x.std() - 3.0) < 0.1
    u = tg.zeros(20000, dtype=tg.float64).uniform_(-2.0, 4.0).numpy()
    assert u.min() >= -2.0 and u.max() < 4.0 and abs(u.mean() - 1.0) < 0.1


TORCH_CASES = {
    "narrow": lambda x: x.narrow(2, 1, 2),
    "index_select": lambda x: x.index_select(2, x.new_tensor([3, 0, 0]).long()),
    "flip": lambda x: x.flip([0, 2]),
    "roll_flat": lambda x: x.roll(5),
    "roll_dims": lambda x: x.roll((1, -3), (0, 2)),
    "tile": lambda x: x.tile((2, 1, 1, 2)),
    "norm": lambda x: x.norm(),
    "norm_p3_dim": lambda x: x.norm(3, 1, True),
    "norm_inf": lambda x: x.norm(float("inf"), 2),
    "bmm": lambda x: x.bmm(x.transpose(1, 2)),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_values_and_gradients_match_torch(case):
    torch = pytest.importorskip("torch")
    ours, theirs = t64(A), torch.tensor(A, requires_grad=True)
    out_ours = TORCH_CASES[case](ours)
    out_theirs = TORCH_CASES[case](theirs)
    np.testing.assert_allclose(out_ours.detach().numpy(), out_theirs.detach().numpy(), rtol=1e-10)
    out_ours.sum().backward()
    out_theirs.sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-10)


# --- sorts, scans, gathers and scatters ------------------------------------------------------

TIES = np.array([[3.0, 1.0, 2.0, 1.0], [0.0, 5.0, 5.0, -1.0], [2.0, 2.0, 2.0, 2.0]])
IDX = np.array([[0, 3], [2, 2], [1, 0]])  # gather/scatter along dim 1 of a (3, 4) tensor
UNIQUE_IDX = np.array([[0, 3], [2, 1], [1, 0]])  # no repeats in a row: one writer each
MASK = np.array([True, False, True, True])


def _take(a, dim, index):
    return np.take_along_axis(a, index, dim)


def _scatter_np(a, dim, index, src, add=False):
    out = a.copy()
    for pos in np.ndindex(index.shape):
        target = list(pos)
        target[dim] = index[pos]
        if add:
            out[tuple(target)] += src[pos]
        else:
            out[tuple(target)] = src[pos]
    return out


def _scatter_multiply_np(a, dim, index, src):
    out = a.copy()
    for pos in np.ndindex(index.shape):
        target = list(pos)
        target[dim] = index[pos]
        out[tuple(target)] *= src[pos]
    return out


def _stable_descending(a, dim):
    n = a.shape[dim]
    return (n - 1) - np.flip(np.argsort(np.flip(a, dim), dim, kind="stable"), dim)


# method call on a tensor of TIES -> the same on NumPy's array
SORT_CASES = {
    "sort": (lambda x: x.sort().values, lambda a: np.sort(a, -1)),
    "sort_indices_stable": (lambda x: x.sort(0).indices, lambda a: np.argsort(a, 0, kind="stable")),
    "sort_descending": (
        lambda x: x.sort(1, descending=True).indices,
        lambda a: _stable_descending(a, 1),
    ),
    "argsort": (lambda x: x.argsort(dim=0), lambda a: np.argsort(a, 0, kind="stable")),
    "topk": (lambda x: x.topk(2).values, lambda a: -np.sort(-a, -1)[:, :2]),
    "topk_indices": (lambda x: x.topk(2).indices, lambda a: _stable_descending(a, 1)[:, :2]),
    "topk_smallest": (
        lambda x: x.topk(2, dim=0, largest=False).indices,
        lambda a: np.argsort(a, 0, kind="stable")[:2],
    ),
    "cumsum": (lambda x: x.cumsum(1), lambda a: np.cumsum(a, 1)),
    "cumsum_negative_dim": (lambda x: x.cumsum(-2), lambda a: np.cumsum(a, 0)),
    "cumprod": (lambda x: x.cumprod(0), lambda a: np.cumprod(a, 0)),
    "gather": (lambda x: x.gather(1, tg.tensor(IDX)), lambda a: _take(a, 1, IDX)),
    "gather_shorter": (
        lambda x: x.gather(0, tg.tensor(IDX[:2].T % 3)),
        lambda a: _take(a[:, :2], 0, IDX[:2].T % 3),
    ),
    "scatter": (
        lambda x: tg.zeros(3, 4, dtype=x.dtype).scatter(1, tg.tensor(UNIQUE_IDX), x),
        lambda a: _scatter_np(np.zeros((3, 4)), 1, UNIQUE_IDX, a),
    ),
    "scatter_value": (
        lambda x: x.scatter(1, tg.tensor(IDX), 7.0),
        lambda a: _scatter_np(a, 1, IDX, np.full(IDX.shape, 7.0)),
    ),
    "scatter_add": (
        lambda x: x.scatter_add(1, tg.tensor(IDX), x * 10),
        lambda a: _scatter_np(a, 1, IDX, a * 10, add=True),
    ),
    "scatter_reduce_multiply": (
        lambda x: (x + 2).scatter(1, tg.tensor(IDX), x, reduce="multiply"),
        lambda a: _scatter_multiply_np(a + 2, 1, IDX, a),
    ),
    "scatter_reduce_add": (
        lambda x: x.scatter(1, tg.tensor(IDX), x, reduce="add"),
        lambda a: _scatter_np(a, 1, IDX, a, add=True),
    ),
    "masked_scatter": (
        lambda x: x.masked_scatter(tg.tensor(MASK), x * 10),
        lambda a: np.where(
            MASK, (a * 10).reshape(-1)[: MASK.sum() * 3].reshape(3, 3)[:, np.cumsum(MASK) - 1], a
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(SORT_CASES))
def test_sort_scan_gather_values_match_numpy(case):
    method, expected = SORT_CASES[case]
    out = method(tg.tensor(TIES, dtype=tg.float64))
    np.testing.assert_allclose(out.numpy(), expected(TIES), rtol=1e-12)


def test_sort_and_topk_return_named_tuples():
    x = tg.tensor(TIES, dtype=tg.float32)
    values, indices = x.sort(1)
    assert indices.dtype is tg.int64 and values.dtype is tg.float32
    top = tg.topk(x, 1, dim=0)
    assert type(top).__name__ == "SortResult" and top.indices.tolist() == [[0, 1, 1, 2]]
    assert tg.sort(tg.tensor(3.0)).indices.item() == 0 and x[0].topk(0).values.shape == (0,)


def test_scans_of_integers_are_int64_and_take_a_dtype():
    assert tg.tensor([True, True, False]).cumsum(0).tolist() == [1, 2, 2]
    assert tg.tensor([1, 2, 3]).cumprod(0).dtype is tg.int64
    assert tg.tensor([1, 2, 3]).cumsum(0, dtype=tg.float64).dtype is tg.float64
    assert tg.cumsum(tg.tensor(2.0), 0).item() == 2.0


def test_in_place_squeeze_and_unsqueeze_change_the_shape():
    x = tg.zeros(3, 1)
    assert x.unsqueeze_(0) is x and x.shape == (1, 3, 1)
    assert x.squeeze_().shape == (3,)
    leaf = tg.ones(2, 1, requires_grad=True)
    y = leaf * 3.0
    y.squeeze_(1).sum().backward()
    assert leaf.grad.tolist() == [[3.0], [3.0]]
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        leaf.unsqueeze_(0)


def test_legacy_constructor_and_empty_with_size():
    made = tg.Tensor(2, 3)
    assert made.shape == (2, 3) and made.dtype is tg.float32
    assert tg.Tensor(tg.Size([4])).shape == (4,) and tg.Tensor().shape == (0,)
    data = tg.Tensor([1, 2])
    assert data.tolist() == [1.0, 2.0] and data.dtype is tg.float32
    assert tg.empty(size=(2, 3)).shape == (2, 3) and tg.zeros(size=[4]).shape == (4,)
    assert tg.randn(size=(3,)).shape == (3,) and tg.rand(size=(1, 2)).shape == (1, 2)
    with pytest.raises(TypeError, match="'shape'"):
        tg.zeros(shape=(2,))
    with pytest.raises(TypeError, match="not both"):
        tg.ones(2, size=(2,))


@pytest.mark.parametrize(
    "item",
    [range(0, 2), [1, 0], (slice(None), range(2, 0, -1)), ([1, 0], [2, 1]), [], (0, [2, 1])],
    ids=["range", "list", "range_negative_step", "two_lists", "empty_list", "int_and_list"],
)
def test_indexing_with_ranges_and_lists(item):
    def numpy_item(i):
        return np.arange(i.start, i.stop, i.step) if isinstance(i, range) else i

    expected = A[tuple(map(numpy_item, item)) if isinstance(item, tuple) else numpy_item(item)]
    np.testing.assert_array_equal(tg.tensor(A)[item].numpy(), expected)


def test_assignment_through_ranges_and_lists():
    x = tg.zeros(3, 4)
    x[range(2)] = 1.0
    x[[0, 2], 1] = 5.0
    expected = np.zeros((3, 4))
    expected[:2] = 1.0
    expected[[0, 2], 1] = 5.0
    np.testing.assert_array_equal(x.numpy(), expected)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x: x.gather(1, tg.tensor([[4]])), IndexError, "4 is out of range"),
        (lambda x: x.gather(1, tg.tensor([[-1]])), IndexError, "-1 is out of range"),
        (lambda x: x.gather(1, tg.tensor([0])), tg.ShapeError, r"index of shape \(1,\)"),
        (lambda x: x.gather(1, tg.zeros(4, 1, dtype=tg.int64)), tg.ShapeError, r"\(4, 1\)"),
        (lambda x: x.gather(0, tg.tensor([[0.0]])), tg.DTypeError, "int64"),
        (lambda x: x.scatter(1, tg.tensor([[0, 1]]), x[:1, :1]), tg.ShapeError, "src of shape"),
        (lambda x: x.scatter(1, tg.tensor([[0]]), 1.0, reduce="max"), ValueError, "'max'"),
        (lambda x: x.topk(5), tg.ShapeError, "k=5"),
        (lambda x: x.masked_scatter(x > 0, x[0]), tg.ShapeError, "has 4"),
        (lambda x: x.masked_scatter(tg.ones(4), x), tg.DTypeError, "bool"),
        (lambda x: x.cumsum(2), tg.ShapeError, "dim 2"),
    ],
)
def test_sort_scan_gather_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(tg.tensor(TIES + 0.5))


# functions of a float64 tensor of the shape of TIES, no ties (gradients are unique there)
SORT_GRAD_CASES = {
    "sort": lambda x: x.sort(1, descending=True).values,
    "topk": lambda x: x.topk(2, dim=0).values,
    "cumsum": lambda x: x.cumsum(1) * x.cumsum(0),
    "cumprod": lambda x: x.cumprod(1),
    "gather": lambda x: x.gather(1, tg.tensor(IDX)),
    "scatter": lambda x: x.scatter(1, tg.tensor(UNIQUE_IDX), x[:, 1:] * 3),
    "scatter_add": lambda x: x.scatter_add(0, tg.tensor(IDX.T[:, :3] % 3), x * x),
    "masked_scatter": lambda x: x.masked_scatter(tg.tensor(MASK), x.flip(0) * 2),
    "index_add": lambda x: x.index_add(0, tg.tensor([2, 2]), x[:2] ** 2),
    "scatter_multiply": lambda x: x.scatter(1, tg.tensor(IDX), x[:, 1:] * 2, reduce="multiply"),
}


@pytest.mark.parametrize("case", sorted(SORT_GRAD_CASES))
def test_sort_scan_gather_gradients(case):
    distinct = RNG.permutation(12).reshape(3, 4) * 0.3 - 1.5
    assert gradcheck(SORT_GRAD_CASES[case], (t64(distinct),))


def test_cumprod_gradient_with_zeros_matches_torch_and_finite_differences():
    torch = pytest.importorskip("torch")
    values = np.array([[2.0, 0.0, 3.0, 0.0, 1.5], [0.0, -1.0, 2.0, 0.5, 3.0]])
    assert gradcheck(lambda x: x.cumprod(1), (t64(values),))
    ours, theirs = t64(values), torch.tensor(values, requires_grad=True)
    weights = RNG.standard_normal(values.shape)
    (ours.cumprod(1) * tg.tensor(weights)).sum().backward()
    (theirs.cumprod(1) * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-12)


SORT_TORCH_CASES = {
    "sort_desc": lambda x, lib: x.sort(dim=1, descending=True),
    "sort_dim0": lambda x, lib: lib.sort(x, 0),
    "argsort": lambda x, lib: (x.argsort(dim=1),),
    "topk": lambda x, lib: x.topk(3, dim=1),
    "topk_smallest": lambda x, lib: lib.topk(x, 2, dim=0, largest=False),
    "cumsum": lambda x, lib: (x.cumsum(0),),
    "cumprod": lambda x, lib: (lib.cumprod(x, 1),),
    "gather": lambda x, lib: (x.gather(1, lib.tensor(IDX)),),
    # (src of index's shape: torch's backward rejects a larger one)
    "scatter": lambda x, lib: (lib.zeros_like(x).scatter(1, lib.tensor(UNIQUE_IDX), x[:, :2]),),
    "scatter_value": lambda x, lib: (x.scatter(1, lib.tensor(IDX), 2.5),),
    "scatter_add": lambda x, lib: (lib.scatter_add(x, 1, lib.tensor(IDX), x[:, 1:3] ** 2),),
    "masked_scatter": lambda x, lib: (x.masked_scatter(lib.tensor(MASK), x * 2),),
    "index_add": lambda x, lib: (x.index_add(1, lib.tensor([0, 2, 0]), x[:, 1:] * 2, alpha=3),),
}


@pytest.mark.parametrize("case", sorted(SORT_TORCH_CASES))
def test_sort_scan_gather_match_torch(case):
    torch = pytest.importorskip("torch")
    values = np.array([[3.0, 1.0, 2.0, 0.5], [0.0, 5.0, 4.0, -1.0], [2.0, -2.0, 1.0, 0.0]])
    ours, theirs = t64(values), torch.tensor(values, requires_grad=True)
    out_ours = SORT_TORCH_CASES[case](ours, tg)
    out_theirs = SORT_TORCH_CASES[case](theirs, torch)
    for got, want in zip(out_ours, out_theirs, strict=True):
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-12)
    weights = RNG.standard_normal(values.shape)
    first, first_t = out_ours[0], out_theirs[0]
    if first.dtype is tg.float64:
        (first * tg.tensor(weights[: first.shape[0], : first.shape[1]])).sum().backward()
        (first_t * torch.tensor(weights[: first.shape[0], : first.shape[1]])).sum().backward()
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-12)


def _sorted_scanned(x, w):
    top = x.topk(2, dim=1).values
    order = x.argsort(dim=0, descending=True)
    picked = x.gather(0, order) * w
    scattered = x.scatter(1, tg.tensor(UNIQUE_IDX), top) + x.scatter_add(1, tg.tensor(IDX), x)
    masked = x.masked_scatter(tg.tensor(MASK), picked)
    return (x.cumsum(1).cumprod(0) * scattered).sum() + masked.norm() + x.sort(1).values[:, 0].sum()


def test_sorts_scans_and_scatters_compiled_match_eager_with_backward():
    def step(x, w):
        loss = _sorted_scanned(x, w)
        loss.backward()
        return loss

    values = RNG.standard_normal((3, 4))
    values[1, 2] = 0.0  # a zero in cumprod
    xs, ws = [t64(values) for _ in range(2)], [t64(RNG.standard_normal((3, 4)))] * 1
    ws.append(t64(ws[0].detach().numpy()))
    eager = step(xs[0], ws[0])
    compiled = tg.compile(step)(xs[1], ws[1])
    np.testing.assert_allclose(compiled.item(), eager.item(), rtol=1e-12)
    np.testing.assert_allclose(xs[1].grad.numpy(), xs[0].grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ws[1].grad.numpy(), ws[0].grad.numpy(), rtol=1e-12)


class _TopKHead(tg.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = tg.nn.Linear(4, 6)

    def forward(self, x):
        scores = self.linear(x).cumsum(-1)
        return scores.topk(3, dim=-1).values.sum(-1) + scores.sort(-1).values[..., 0]


def test_compiled_module_and_training_step_match_eager():
    tg.manual_seed(0)
    models = [_TopKHead() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = tg.tensor(RNG.standard_normal((5, 4)), dtype=tg.float32)
    eager_out, compiled_out = models[0](x), tg.compile(models[1])(x)
    np.testing.assert_allclose(compiled_out.detach().numpy(), eager_out.detach().numpy(), 1e-6)

    def train_step(model, opt):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    opts = [tg.optim.SGD(m.parameters(), lr=0.1) for m in models]
    compiled_step = tg.compile(train_step)
    for _ in range(3):
        want = train_step(models[0], opts[0])
        got = compiled_step(models[1], opts[1])
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_in_place_squeeze_compiles_on_locals_and_refuses_inputs():
    def local(x):
        y = x * 2.0
        y.unsqueeze_(0)
        return y

    assert tg.compile(local)(tg.ones(3)).shape == (1, 3)

    def of_input(x):
        x.unsqueeze_(0)
        return x * 1.0

    with pytest.raises(tg.TraceError, match="cannot be compiled"):
        tg.compile(of_input)(tg.ones(3))


def test_index_add_in_place_and_its_errors():
    x = tg.zeros(3, 2)
    assert x.index_add_(0, tg.tensor([2, 0, 2]), tg.ones(3, 2)) is x
    assert x.tolist() == [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]
    with pytest.raises(tg.ShapeError, match=r"index of shape \(2,\)"):
        x.index_add(0, tg.tensor([0, 1]), tg.ones(3, 2))


# --- math methods PyTorch and NumPy share, against PyTorch ---------------------------------

# function of (x, y, lib) with x of shape (3, 4) in (-0.9, 0.9) and y of shape (4,) in
# (0.5, 1.5), written once for tracegrad and torch (same names)
MATH_TORCH_CASES = {
    "tan": lambda x, y, lib: x.tan(),
    "asin_acos_atan": lambda x, y, lib: x.asin() + x.arccos() * x.atan(),
    "sinh_cosh_tanh": lambda x, y, lib: x.sinh() * x.cosh(),
    "asinh_acosh_atanh": lambda x, y, lib: x.asinh() + (y + 1).acosh() + x.arctanh(),
    "expm1_exp2": lambda x, y, lib: x.expm1() + x.exp2(),
    "log2_log10": lambda x, y, lib: y.log2() * y.log10(),
    "floor_ceil": lambda x, y, lib: (x * 3).floor() * x + (x * 3).ceil(),
    "atan2": lambda x, y, lib: lib.atan2(x, y) + x.arctan2(-y),
    "remainder": lambda x, y, lib: x.remainder(y) + (x * 5) % y + lib.remainder(x, 0.3),
    "reciprocal": lambda x, y, lib: y.reciprocal(),
    "logaddexp": lambda x, y, lib: x.logaddexp(y) + lib.logaddexp2(x, y * 2),
    "hypot": lambda x, y, lib: x.hypot(y),
    "fmax_fmin": lambda x, y, lib: x.fmax(y - 1) + lib.fmin(x, y - 1),
    "deg2rad_rad2deg": lambda x, y, lib: x.deg2rad() + x.rad2deg(),
    "sinc": lambda x, y, lib: (x * 3).sinc(),
    "prod": lambda x, y, lib: x.prod(1) + x.prod(0, keepdim=True).sum() + x.prod(),
    "diagonal": lambda x, y, lib: x.diagonal(1) + lib.diagonal(x, -1)[:2].sum(),
    "diag_vector": lambda x, y, lib: lib.diag(y, -1),
    "diag_matrix": lambda x, y, lib: x.diag(1),
    "trace": lambda x, y, lib: x.trace(),
    "kron": lambda x, y, lib: x.kron(y.reshape(2, 2)),
    "outer_inner": lambda x, y, lib: y.outer(y) + lib.inner(x, y).sum(),
    "tensordot": lambda x, y, lib: lib.tensordot(x, x, dims=([0], [0])),
    "diff": lambda x, y, lib: x.diff(dim=0) * 2 + x.diff(2, dim=1).sum(),
    "movedim": lambda x, y, lib: (
        x.reshape(3, 2, 2).movedim(0, 2) + x.reshape(3, 2, 2).moveaxis([0, 1], [1, 0]).sum()
    ),
    "swapaxes": lambda x, y, lib: x.swapaxes(0, 1),
    "fliplr_flipud_rot90": lambda x, y, lib: x.fliplr().flipud().rot90() + x.rot90(-1),
    "nan_to_num": lambda x, y, lib: (x.log()).nan_to_num(nan=0.5, neginf=-3.0),
    "ravel": lambda x, y, lib: x.ravel() * 2,
    "einsum_ellipsis_diagonal": lambda x, y, lib: (
        lib.einsum("ii->i", x[:, :3]) + lib.einsum("...j,j->...", x, y).sum()
    ),
}


@pytest.mark.parametrize("case", sorted(MATH_TORCH_CASES))
def test_math_methods_match_torch(case):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x, y = rng.uniform(-0.9, 0.9, (3, 4)), rng.uniform(0.5, 1.5, 4)
    ours = [t64(v) for v in (x, y)]
    theirs = [torch.tensor(v, requires_grad=True) for v in (x, y)]
    out = MATH_TORCH_CASES[case](*ours, tg)
    out_t = MATH_TORCH_CASES[case](*theirs, torch)
    np.testing.assert_allclose(out.detach().numpy(), out_t.detach().numpy(), rtol=1e-10)
    weights = rng.standard_normal(tuple(out.shape))
    (out * tg.tensor(weights)).sum().backward()
    (out_t * torch.tensor(weights)).sum().backward()
    for mine, torch_leaf in zip(ours, theirs, strict=True):
        want = torch_leaf.grad.numpy() if torch_leaf.grad is not None else np.zeros_like(x)
        got = mine.grad.numpy() if mine.grad is not None else np.zeros_like(want)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_exact_gelu_runs_vectorized(monkeypatch):
    """F.gelu's exact form (PyTorch's default) takes erf from SciPy's ufunc, not math.erf
    element by element."""

    def refuse(_):
        raise AssertionError("math.erf called per element")

    monkeypatch.setattr(math, "erf", refuse)
    x = tg.tensor(RNG.standard_normal(1000), requires_grad=True)
    out = tg.nn.functional.gelu(x, approximate="none")
    out.sum().backward()
    a = x.detach().numpy()
    np.testing.assert_allclose(out.detach().numpy(), a * 0.5 * (1 + special.erf(a / np.sqrt(2))))


def test_in_place_scatters_match_torch():
    torch = pytest.importorskip("torch")
    labels = np.array([2, 0, 3])

    def fill(lib):
        one_hot = lib.zeros(3, 4).scatter_(1, lib.tensor(labels).unsqueeze(1), 1)
        added = lib.ones(3, 4).scatter_add_(1, lib.tensor(IDX), lib.full((3, 2), 2.0))
        masked = lib.zeros(3, 4).masked_scatter_(lib.tensor(MASK), lib.arange(12.0).view(3, 4))
        return one_hot, added, masked

    for ours, theirs in zip(fill(tg), fill(torch), strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_in_place_scatter_compiled_with_backward():
    def step(x):
        y = x * 1.0
        y.scatter_(1, tg.tensor(UNIQUE_IDX), x[:, :2] * 3)
        y.scatter_add_(0, tg.tensor([[1, 0, 2, 1]]), x[:1] ** 2)
        loss = (y * y).sum()
        loss.backward()
        return loss

    xs = [t64(A[0]) for _ in range(2)]
    eager, compiled = step(xs[0]), tg.compile(step)(xs[1])
    np.testing.assert_allclose(compiled.item(), eager.item(), rtol=1e-12)
    np.testing.assert_allclose(xs[1].grad.numpy(), xs[0].grad.numpy(), rtol=1e-12)
    assert gradcheck(
        lambda x: (x * 1.0).scatter_(1, tg.tensor(UNIQUE_IDX), x[:, 1:3]), (t64(A[0]),)
    )


@pytest.mark.filterwarnings("ignore:The reduce argument of torch.scatter")
def test_scatter_multiply_matches_torch_and_compiles():
    torch = pytest.importorskip("torch")
    values = RNG.standard_normal((3, 4))
    values[0, 0] = 0.0
    index = np.array([[0, 0, 3], [1, 1, 1], [2, 0, 2]])

    def scatter(lib, x):
        return x.scatter(1, lib.tensor(index), x[:, 1:] * 3, reduce="multiply")

    expected = scatter(torch, torch.tensor(values)).numpy()
    np.testing.assert_allclose(scatter(tg, tg.tensor(values)).numpy(), expected, rtol=1e-12)
    compiled = tg.compile(lambda x: scatter(tg, x))(tg.tensor(values))
    np.testing.assert_allclose(compiled.numpy(), expected, rtol=1e-12)

    def step(x):
        loss = scatter(tg, x).square().sum()
        loss.backward()
        return loss

    xs = [t64(values) for _ in range(2)]
    np.testing.assert_allclose(tg.compile(step)(xs[1]).item(), step(xs[0]).item(), rtol=1e-12)
    np.testing.assert_allclose(xs[1].grad.numpy(), xs[0].grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", ["any", "all"])
@pytest.mark.parametrize("dim, keepdim", [(None, False), (0, False), (1, True), (-1, False)])
def test_any_and_all_reduce_like_numpy_eagerly_and_compiled(name, dim, keepdim):
    data = np.array([[0.0, 2.0, 0.0], [1.0, 3.0, 0.0]])
    expected = getattr(np, name)(data != 0, axis=dim, keepdims=keepdim)
    method = lambda x: getattr(x, name)(dim, keepdim=keepdim)
    np.testing.assert_array_equal(method(tg.tensor(data)).numpy(), expected)
    np.testing.assert_array_equal(tg.compile(method)(tg.tensor(data)).numpy(), expected)
    assert getattr(tg, name)(tg.tensor(data)).item() == bool(getattr(np, name)(data != 0))


def test_contiguous_copies_a_transposed_tensor_into_row_major_memory_and_keeps_gradients():
    x = tg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert x.contiguous() is x and x.is_contiguous()
    transposed = x.t()
    assert not transposed.is_contiguous()
    copied = transposed.contiguous()
    assert copied.is_contiguous() and copied.array.flags.c_contiguous
    np.testing.assert_array_equal(copied.detach().numpy(), np.arange(6.0).reshape(2, 3).T)
    (copied * tg.tensor(np.arange(6.0).reshape(3, 2))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(6.0).reshape(3, 2).T)
    torch = pytest.importorskip("torch")
    assert torch.ones(2, 3).t().is_contiguous() is False
