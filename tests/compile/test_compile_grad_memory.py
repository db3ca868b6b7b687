"""A compiled module's backward hands its gradients to ``.grad`` without a copy when their
memory is its own fresh result (as PyTorch's AccumulateGrad steals an unreferenced gradient),
and copies anything else: the gradient the caller passed in, saved values, planned memory."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import nn


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tg.tensor(np.array([1.0, 2.0, 3.0])))

    def forward(self, x):
        return self.w * x


class Shift(nn.Module):
    """d out / d w is the incoming gradient itself."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tg.tensor(np.array([1.0, 2.0, 3.0])))

    def forward(self, x):
        return x + self.w


def test_fresh_gradients_become_grad_and_each_step_gets_its_own():
    model = Scale()
    cm = tg.compile(model)
    x = tg.tensor(np.array([4.0, 5.0, 6.0]))
    cm(x).sum().backward()
    first = model.w.grad
    np.testing.assert_array_equal(first.numpy(), [4.0, 5.0, 6.0])
    model.w.grad = None
    cm(x * 2.0).sum().backward()
    np.testing.assert_array_equal(model.w.grad.numpy(), [8.0, 10.0, 12.0])
    np.testing.assert_array_equal(first.numpy(), [4.0, 5.0, 6.0])  # not reused memory
    assert not np.shares_memory(first._data, model.w.grad._data)


def test_a_gradient_that_is_the_callers_array_is_copied():
    model = Shift()
    cm = tg.compile(model)
    seed = tg.tensor(np.array([0.5, -1.0, 2.0]))
    cm(tg.zeros(3)).backward(gradient=seed)
    np.testing.assert_array_equal(model.w.grad.numpy(), seed.numpy())
    assert not np.shares_memory(model.w.grad._data, seed._data)
    model.w.grad.mul_(10.0)
    np.testing.assert_array_equal(seed.numpy(), [0.5, -1.0, 2.0])


def test_accumulated_gradients_equal_eager():
    results = []
    for compiled in (False, True):
        tg.manual_seed(4)
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).to(tg.float64)
        forward = tg.compile(model) if compiled else model
        x = tg.randn(3, 5, dtype=tg.float64)
        for _ in range(3):  # no zero_grad: the later steps add into the first .grad
            (forward(x) ** 2).sum().backward()
        results.append([p.grad.numpy().copy() for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)
