import numpy as np

import tracegrad as tg


def test_linear_layer_gradient_matches_closed_form():
    x = tg.tensor(np.arange(6.0).reshape(2, 3))
    w = tg.tensor(np.ones((3, 1)), requires_grad=True)
    (x @ w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), x.numpy().sum(0, keepdims=True).T)
