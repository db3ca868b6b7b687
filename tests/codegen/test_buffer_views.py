"""Layout views of whole planned buffers (a transposed product, a reshaped sum) are made
once beside the buffers and read by every call: they must see each call's new values, and
a .grad that is such a view, kept by the caller, keeps its values as eagerly."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import nn, optim

TOL = 1e-12


def sgd_training(make_step, compiled: bool, steps: int = 4):
    tg.manual_seed(5)
    model = nn.Sequential(nn.Linear(300, 64), nn.ReLU(), nn.Linear(64, 10)).double()
    opt = optim.SGD(model.parameters(), lr=0.1)
    train_step = make_step(model, opt)
    step = tg.compile(train_step) if compiled else train_step
    rng = np.random.default_rng(1)
    losses, grads = [], []
    for _ in range(steps):
        x = tg.tensor(rng.standard_normal((16, 300)))
        y = tg.tensor(rng.integers(0, 10, 16))
        losses.append(step(x, y).item())
        grads.append([p.grad for p in model.parameters()])
    return model, losses, grads, step


def test_views_of_buffers_are_made_once_and_see_every_calls_values(training_step):
    model_e, losses_e, grads_e, _ = sgd_training(training_step, compiled=False)
    model_c, losses_c, grads_c, step = sgd_training(training_step, compiled=True)
    views = [line.split(" = ")[0] for line in step.code.splitlines() if "_v" in line[:8]]
    assert views, step.code  # e.g. step_v0 = step_b3.transpose((1, 0))
    assert any(f"= {name}  #" in step.code for name in views)  # read inside the step
    np.testing.assert_allclose(losses_c, losses_e, rtol=TOL, atol=TOL)
    for p, q in zip(model_c.parameters(), model_e.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=TOL, atol=TOL)
    # the caller kept every step's .grad tensors: each keeps its own step's values, and is or
    # is not the next step's .grad as eagerly (a .grad nobody keeps stays in its buffer: see
    # tests/compile/test_compile_step.py)
    for kept_c, kept_e in zip(grads_c, grads_e, strict=True):
        for c, e, now_c, now_e in zip(kept_c, kept_e, grads_c[-1], grads_e[-1], strict=True):
            np.testing.assert_allclose(c.numpy(), e.numpy(), rtol=TOL, atol=TOL)
            assert (c is now_c) == (e is now_e)


def test_a_view_of_a_buffer_read_by_a_function_follows_its_inputs():
    def f(x, w):
        h = x @ w  # (5, 3) in a planned buffer, then read transposed
        return (h.T * h.T).sum(1)

    compiled = tg.compile(f)
    rng = np.random.default_rng(2)
    w = tg.tensor(rng.standard_normal((4, 3)))
    for _ in range(3):
        x = tg.tensor(rng.standard_normal((5, 4)))
        np.testing.assert_allclose(compiled(x, w).numpy(), f(x, w).numpy(), rtol=TOL)
