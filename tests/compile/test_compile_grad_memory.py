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
    assert not np.shares_memory(first.numpy(), model.w.grad.numpy())


def test_a_gradient_that_is_the_callers_array_is_copied():
    model = Shift()
    cm = tg.compile(model)
    seed = tg.tensor(np.array([0.5, -1.0, 2.0]))
    cm(tg.zeros(3)).backward(gradient=seed)
    np.testing.assert_array_equal(model.w.grad.numpy(), seed.numpy())
    assert not np.shares_memory(model.w.grad.numpy(), seed.numpy())
    model.w.grad.mul_(10.0)
    np.testing.assert_array_equal(seed.numpy(), [0.5, -1.0, 2.0])


def eager_and_compiled(seed: int, layers, batch: int, steps):
    """For an eager and then a compiled float64 nn.Sequential(*layers()) from one seed:
    ``steps(forward, x)`` on a (batch, inputs) input, then the parameters' .grad tensors.
    Returns both lists of .grad tensors and the compiled forward, its model and input."""
    grads = []
    for compiled in (False, True):
        tg.manual_seed(seed)
        model = nn.Sequential(*layers()).to(tg.float64)
        forward = tg.compile(model) if compiled else model
        x = tg.randn(batch, model[0].in_features, dtype=tg.float64)
        steps(forward, x)
        grads.append([p.grad for p in model.parameters()])
    return grads, forward, model, x


def test_accumulated_gradients_equal_eager():
    def three_steps(forward, x):  # no zero_grad: the later steps add into the first .grad
        for _ in range(3):
            (forward(x) ** 2).sum().backward()

    layers = lambda: (nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    (eager, compiled), *_ = eager_and_compiled(4, layers, 3, three_steps)
    for got, want in zip(compiled, eager, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


def test_a_gradient_that_is_a_whole_view_of_fresh_memory_is_taken_without_a_copy():
    """A batch of 2 through Linear(3, 8): the product runs transposed (wide-product), so the
    next layer's weight gradient comes out as a transposed view of a fresh product. It
    becomes .grad as it is, each call's in new memory, and equals eager."""
    layers = lambda: (nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    grads, forward, model, x = eager_and_compiled(
        2, layers, 2, lambda forward, x: forward(x).sum().backward()
    )
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    # A copy would be an array of its own; taken as they are, they are views.
    views = [g for g in grads[1] if g.numpy().base is not None]
    assert [g.shape for g in views] == [(2, 8)], "the transposed weight gradient"
    first = [g.numpy() for g in grads[1]]
    for p in model.parameters():
        p.grad = None
    forward(x).sum().backward()
    for old, p in zip(first, model.parameters(), strict=True):
        assert not np.shares_memory(old, p.grad.numpy())
