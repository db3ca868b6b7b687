"""Compiled modules and functions called from several threads at once give each thread its
own results: the arrays are big enough for NumPy to release the GIL inside each call."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import tracegrad as tg
from tracegrad import nn


def _run_threads(call, inputs, threads=8):
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, inputs))


def test_a_compiled_module_under_threads_matches_eager_per_call():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 64))
    cm = tg.compile(model)
    rng = np.random.default_rng(0)
    inputs = [tg.tensor(rng.standard_normal((64, 256)).astype(np.float32)) for _ in range(48)]
    with tg.no_grad():
        expected = [model(x).numpy().copy() for x in inputs]

    def call(x):
        with tg.no_grad():  # (grad mode is each thread's own)
            return cm(x).numpy().copy()

    got = _run_threads(call, inputs)  # the first calls compile under threads too
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_a_compiled_function_with_backward_under_threads():
    tg.manual_seed(1)
    w = tg.randn(256, 256, requires_grad=True)
    f = tg.compile(lambda x: (x @ w).tanh().sum())
    rng = np.random.default_rng(1)
    inputs = [tg.tensor(rng.standard_normal((128, 256)).astype(np.float32)) for _ in range(24)]

    def value_and_input_grad(x):
        x = x.clone().requires_grad_()
        out = f(x)
        (g,) = tg.autograd.grad(out, [x])
        return out.item(), g.numpy().copy()

    got = _run_threads(value_and_input_grad, inputs)
    for x, (value, grad) in zip(inputs, got, strict=True):
        x = x.clone().requires_grad_()
        out = (x @ w).tanh().sum()
        (want,) = tg.autograd.grad(out, [x])
        assert value == np.float32(out.item()) or abs(value - out.item()) < 1e-3
        np.testing.assert_allclose(grad, want.numpy(), rtol=1e-4, atol=1e-5)


def test_eager_code_in_another_thread_runs_eagerly_while_one_traces():
    import threading

    w = tg.ones(2)
    started, done = threading.Event(), threading.Event()
    seen = []

    def other():
        started.wait(5)
        seen.append((tg.ones(2) * 3 + w).numpy().copy())  # reads a tensor made before the trace
        done.set()

    def f(x):
        started.set()
        done.wait(5)  # (the other thread computes while this one traces)
        return x * 2

    thread = threading.Thread(target=other)
    thread.start()
    assert tg.compile(f)(tg.ones(2)).tolist() == [2.0, 2.0]
    thread.join()
    np.testing.assert_array_equal(seen[0], [4.0, 4.0])
