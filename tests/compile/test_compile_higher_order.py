"""Compiled function transforms: ``tg.grad`` and ``tg.value_and_grad``, nested for higher-order
derivatives, against analytic derivatives and the eager tape."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tracegrad as tg

TOL = 1e-10

# f, f'', f''' (analytic)
FUNCTIONS = {
    "cube": (lambda x: x**3, lambda x: 6 * x, lambda x: 6.0),
    "sin": (lambda x: x.sin(), lambda x: -math.sin(x), lambda x: -math.cos(x)),
    "tanh": (
        lambda x: x.tanh(),
        lambda x: -2 * math.tanh(x) * (1 - math.tanh(x) ** 2),
        lambda x: -2 * (1 - math.tanh(x) ** 2) * (1 - 3 * math.tanh(x) ** 2),
    ),
    "exp_times_x": (
        lambda x: x.exp() * x,
        lambda x: math.exp(x) * (x + 2),
        lambda x: math.exp(x) * (x + 3),
    ),
}
POINTS = [-1.3, 0.0, 0.4, 2.0]


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_second_derivative_is_analytic(name):
    f, d2, _ = FUNCTIONS[name]
    second = tg.grad(tg.grad(f))
    for v in POINTS:
        got = second(tg.tensor(v, dtype=tg.float64))
        assert got.dtype == tg.float64 and got.ndim == 0
        assert abs(got.item() - d2(v)) <= TOL * max(1.0, abs(d2(v))), (name, v)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_third_derivative_is_analytic(name):
    f, _, d3 = FUNCTIONS[name]
    third = tg.grad(tg.grad(tg.grad(f)))
    for v in POINTS:
        got = third(tg.tensor(v, dtype=tg.float64)).item()
        assert abs(got - d3(v)) <= 1e-9 * max(1.0, abs(d3(v))), (name, v)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_second_derivative_matches_eager_double_backward(name):
    f = FUNCTIONS[name][0]
    x = tg.tensor(0.7, dtype=tg.float64, requires_grad=True)
    (g,) = tg.autograd.grad(f(x), [x], create_graph=True)
    (gg,) = tg.autograd.grad(g, [x])
    assert abs(tg.grad(tg.grad(f))(tg.tensor(0.7, dtype=tg.float64)).item() - gg.item()) < TOL


def test_second_derivative_float32():
    second = tg.grad(tg.grad(lambda x: x**3))
    got = second(tg.tensor(1.5))
    assert got.dtype == tg.float32
    assert abs(got.item() - 9.0) < 1e-5


def test_grad_of_vector_function_with_inner_grad():
    # d/dx sum(d/dx sum(x^3)) = d/dx sum(3 x^2) = 6 x
    def inner_sum(x):
        return tg.grad(lambda y: (y**3).sum())(x).sum()

    x = tg.tensor([1.0, -2.0, 0.5], dtype=tg.float64)
    np.testing.assert_allclose(tg.grad(inner_sum)(x).numpy(), 6 * x.numpy(), rtol=TOL)


def test_mixed_partials():
    def f(x, y):
        return (x * x * y.sin()).sum()

    x = tg.tensor([0.3, -1.1], dtype=tg.float64)
    y = tg.tensor([2.0, 0.7], dtype=tg.float64)
    # d/dy (df/dx summed) = d/dy sum(2 x sin y) = 2 x cos y
    dxy = tg.grad(lambda x, y: tg.grad(f, argnums=0)(x, y).sum(), argnums=1)(x, y)
    np.testing.assert_allclose(dxy.numpy(), 2 * x.numpy() * np.cos(y.numpy()), rtol=TOL)


def test_value_and_grad_multiple_argnums():
    def f(a, b):
        return (a * b.exp()).sum()

    a = tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64)
    b = tg.tensor([0.5, -0.5, 0.0], dtype=tg.float64)
    value, (ga, gb) = tg.value_and_grad(f, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(value.item(), (a.numpy() * np.exp(b.numpy())).sum(), rtol=TOL)
    np.testing.assert_allclose(ga.numpy(), np.exp(b.numpy()), rtol=TOL)
    np.testing.assert_allclose(gb.numpy(), a.numpy() * np.exp(b.numpy()), rtol=TOL)


def test_grad_is_compiled_and_cached():
    calls = []

    def f(x):
        calls.append(1)
        return (x**2).sum()

    g = tg.grad(f)
    for v in (1.0, 2.0, 3.0):
        np.testing.assert_allclose(g(tg.tensor([v, v])).numpy(), [2 * v, 2 * v])
    assert len(calls) == 1, "traced once, then the generated code runs"
    assert "def " in g.compiled.code
