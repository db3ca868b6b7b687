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
