"""Tensor methods that compose existing ops (mm, narrow, norm, roll, fill_diagonal_...):
values against NumPy and PyTorch, gradients by gradcheck, compiled runs against eager ones."""

import numpy as np
import pytest

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
