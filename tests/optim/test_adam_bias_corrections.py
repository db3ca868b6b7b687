"""Eagerly, Adam's bias corrections run on Python floats; traced, on tensors (so a compiled
step reads the step count). Both must give the same numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad.optim.adam import bias_corrections


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.99), (0.5, 0.95)])
def test_python_float_corrections_equal_the_tensor_formula(dtype, betas):
    lr, (beta1, beta2) = 3e-3, betas
    for count in [1, 2, 3, 10, 77, 1000, 12345]:
        step = tg.tensor(float(count))  # float32, as Adam keeps it
        step_size, bias2_sqrt = bias_corrections(step, lr, beta1, beta2, dtype)
        t = step.double()
        want_size = (lr / (1 - beta1**t)).to(dtype)
        want_sqrt = (1 - beta2**t).sqrt().to(dtype)
        assert step_size.dtype == dtype and bias2_sqrt.dtype == dtype
        np.testing.assert_array_equal(step_size.numpy(), want_size.numpy())
        np.testing.assert_array_equal(bias2_sqrt.numpy(), want_sqrt.numpy())
