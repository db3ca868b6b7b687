"""Eager optimizer updates run on the arrays (Adam's bias corrections on NumPy float64
scalars); traced, they are tensor ops (so a compiled step reads the step count). Both must
give the same numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import optim
from tracegrad.optim import adam, sgd
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


OPTIONS = {
    "adam": dict(),
    "weight decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
    "adamw": dict(decoupled=True, weight_decay=0.05),
}


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_eager_update_on_arrays_equals_the_tensor_ops(monkeypatch, options, dtype):
    """Adam's eager update runs its kernels on the arrays directly; the tensor-op form (what
    a compiled step traces) must give the same bits, step after step."""
    options = dict(options)
    kind = optim.AdamW if options.pop("decoupled", False) else optim.Adam
    runs = []
    for arrays in (True, False):
        if not arrays:
            monkeypatch.setattr(adam, "_plain", lambda *args: False)
        tg.manual_seed(0)
        params = [tg.randn(3, 4, dtype=dtype, requires_grad=True), tg.randn(5, dtype=dtype)]
        params[1].requires_grad_()
        opt = kind(params, lr=0.01, **options)
        rng = np.random.default_rng(1)
        for _ in range(4):
            for p in params:
                p.grad = tg.tensor(rng.standard_normal(p.shape), dtype=dtype)
            opt.step()
        runs.append(
            [p.detach().numpy().copy() for p in params]
            + [s[k].numpy().copy() for p in params for s in [opt.state[p]] for k in sorted(s)]
        )
    for got, want in zip(*runs, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("lr", [0.1, 3])
def test_plain_sgd_on_arrays_equals_the_tensor_op(monkeypatch, lr, dtype):
    """Plain SGD's eager update on the arrays gives the bits of param.sub_(grad, alpha=lr)."""
    runs = []
    for arrays in (True, False):
        if not arrays:
            monkeypatch.setattr(sgd, "_plain", lambda *args: False)
        tg.manual_seed(0)
        params = [tg.randn(3, 4, dtype=dtype), tg.randn(5, dtype=dtype)]
        for p in params:
            p.requires_grad_()
        opt = optim.SGD(params, lr=lr)
        rng = np.random.default_rng(1)
        for _ in range(3):
            for p in params:
                p.grad = tg.tensor(rng.standard_normal(p.shape), dtype=dtype)
            opt.step()
        runs.append([p.detach().numpy().copy() for p in params])
    for got, want in zip(*runs, strict=True):
        np.testing.assert_array_equal(got, want)
