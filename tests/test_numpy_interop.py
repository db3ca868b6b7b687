"""NumPy ufuncs and functions on tensors dispatch to tracegrad ops and are differentiated."""

import numpy as np
import pytest

import tracegrad as tg


def test_ufuncs_dispatch_and_differentiate():
    x = tg.tensor([0.5, 1.5], dtype=tg.float64, requires_grad=True)
    y = np.exp(x) * np.sin(x)
    assert isinstance(y, tg.Tensor)
    y.sum().backward()
    data = np.array([0.5, 1.5])
    np.testing.assert_allclose(x.grad.numpy(), np.exp(data) * (np.sin(data) + np.cos(data)))


def test_array_functions_dispatch():
    a = tg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = tg.tensor([[0.5], [1.0]])
    total = np.sum(np.matmul(a, b), axis=0)
    assert isinstance(total, tg.Tensor) and total.shape == (1,)
    total.sum().backward()
    assert a.grad.tolist() == [[0.5, 1.0], [0.5, 1.0]]
    assert np.mean(a).item() == 2.5
    assert np.concatenate([a, a], axis=1).shape == (2, 4)
    assert np.where(a > 2, a, 0.0).detach().tolist() == [[0.0, 0.0], [3.0, 4.0]]


def test_numpy_operators_with_tensor_on_the_right_return_tensors():
    t = tg.tensor([1.0, 2.0], requires_grad=True)
    out = np.array([3.0, 4.0]) * t
    assert isinstance(out, tg.Tensor) and out.requires_grad


def test_asarray_of_tensor_without_grad():
    t = tg.tensor([1.0, 2.0])
    assert np.asarray(t).tolist() == [1.0, 2.0]
    assert np.asarray(t, dtype=np.float64).dtype == np.float64


def test_unsupported_numpy_function_names_itself():
    with pytest.raises(TypeError, match=r"numpy\.fft|fft"):
        np.fft.fft(tg.ones(4))
    with pytest.raises(TypeError, match=r"'numpy.cumsum'"):
        np.cumsum(tg.ones(3))
    with pytest.raises(TypeError, match=r"'arctan2'"):
        np.arctan2(tg.ones(2), tg.ones(2))


DOT_SHAPES = [
    ((), ()),
    ((), (3,)),
    ((2, 3), ()),
    ((3,), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((2, 3), (3, 4)),
    ((4,), (2, 4, 5)),
    ((2, 3), (2, 3, 4)),
    ((2, 2, 3), (2, 3, 4)),
    ((2, 1, 3), (3,)),
    ((1, 2, 3), (4, 3, 2)),
]


def _dot_operands(shape_a, shape_b):
    rng = np.random.default_rng(len(shape_a) * 7 + len(shape_b))
    return rng.standard_normal(shape_a), rng.standard_normal(shape_b)


@pytest.mark.parametrize(("shape_a", "shape_b"), DOT_SHAPES)
def test_dot_follows_numpy_not_matmul(shape_a, shape_b):
    # np.dot contracts a's last axis with b's second-to-last and does not broadcast: for
    # (2,3) . (2,3,4) it is (2,2,4), where matmul would give (2,2,4) with other values.
    a, b = _dot_operands(shape_a, shape_b)
    expected = np.dot(a, b)
    got = np.dot(tg.tensor(a), tg.tensor(b))
    assert isinstance(got, tg.Tensor) and tuple(got.shape) == np.shape(expected)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    mixed = np.dot(a, tg.tensor(b))
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape_a", "shape_b"), DOT_SHAPES)
def test_dot_gradients_match_finite_differences(shape_a, shape_b):
    a, b = _dot_operands(shape_a, shape_b)
    ta, tb = (tg.tensor(v, requires_grad=True) for v in (a, b))
    assert tg.autograd.gradcheck(lambda x, y: np.dot(x, y), (ta, tb))


class _Dot(tg.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = tg.nn.Parameter(tg.tensor(a))

    def forward(self, b):
        return np.dot(self.a, b)


@pytest.mark.parametrize(("shape_a", "shape_b"), [((2, 3), (2, 3, 4)), ((3,), (3,)), ((), (2,))])
def test_dot_compiled_equals_eager(shape_a, shape_b):
    a, b = _dot_operands(shape_a, shape_b)
    results = []
    for module in (_Dot(a), tg.compile(_Dot(a))):
        tb = tg.tensor(b, requires_grad=True)
        out = module(tb)
        out.sum().backward()
        results.append((out.detach().numpy(), module.a.grad.numpy(), tb.grad.numpy()))
    for compiled, eager in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(compiled, eager, rtol=1e-12)


@pytest.mark.parametrize(
    ("values", "axis"),
    [([2.0], None), ([2.0, 2.0, 2.0], None), ([[1.0, 1.0], [0.5, 2.0]], 1), ([[3.0], [4.0]], 1)],
)
def test_std_gradient_is_zero_where_the_values_are_constant(values, axis):
    # std is flat at constant values (a kink): PyTorch's std rule gives 0 there, and HIPS
    # autograd's suite expects 0 for np.std of a single element; sqrt's inf times 0 gives nan.
    torch = pytest.importorskip("torch")
    x = tg.tensor(np.array(values), requires_grad=True)
    out = np.std(x, axis=axis)
    out.sum().backward()
    xt = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    expected = xt.std(dim=axis, correction=0) if axis is not None else xt.std(correction=0)
    expected.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12, atol=0)
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize(("axis", "ddof"), [(None, 0), (0, 1), (1, 0), ((0, 1), 1)])
def test_std_and_var_gradients_match_finite_differences(axis, ddof):
    x = tg.tensor(np.random.default_rng(3).standard_normal((3, 4)), requires_grad=True)
    assert tg.autograd.gradcheck(lambda a: np.std(a, axis=axis, ddof=ddof), (x,))
    assert tg.autograd.gradcheck(lambda a: np.var(a, axis=axis, ddof=ddof), (x,))
    np.testing.assert_allclose(
        np.std(x, axis=axis, ddof=ddof).detach().numpy(),
        np.std(x.detach().numpy(), axis=axis, ddof=ddof),
        rtol=1e-12,
    )
