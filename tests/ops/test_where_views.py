"""``where`` writing into a view of its own input: generated row loops pass ``out`` and an input
as two distinct view objects of one buffer (``buffer[piece]`` twice), which must count as the
same array (it once overwrote the input with the other branch before reading it)."""

import numpy as np

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn
from tracegrad.ops import kernels as rt


def test_where_into_a_separate_view_of_x_or_y():
    rng = np.random.default_rng(0)
    cond = rng.random((6, 5)) > 0.5
    for into in ("x", "y"):
        x, y = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
        expected = np.where(cond[2:5], x[2:5], y[2:5])
        buffer = x if into == "x" else y
        result = rt.where(cond[2:5], x[2:5], y[2:5], out=buffer[2:5])
        np.testing.assert_array_equal(result, expected)
        np.testing.assert_array_equal(buffer[2:5], expected)


def test_compiled_step_with_bce_in_a_row_loop_equals_eager():
    """BCE's clamped logs run in a row loop at this size (the where writes into its input)."""
    rng = np.random.default_rng(0)
    target = tg.tensor(rng.random((128, 784)).astype(np.float32))
    w = nn.Parameter(tg.tensor(rng.standard_normal((128, 784)).astype(np.float32)))

    def step(t):
        w.grad = None
        loss = F.binary_cross_entropy(tg.sigmoid(w), t, reduction="sum")
        loss.backward()
        return loss

    eager_loss = step(target).item()
    eager_grad = w.grad.numpy().copy()
    compiled_loss = tg.compile(step)(target).item()
    assert compiled_loss == np.float32(eager_loss)
    np.testing.assert_allclose(w.grad.numpy(), eager_grad, rtol=1e-6, atol=1e-7)
