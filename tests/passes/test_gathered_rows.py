"""An embedding's lookup, compiled: specialize_numpy's gathered-rows rule makes it a take_rows
writing into a planned buffer, and its gradient sorts the rows into a scratch array, so a
steady compiled step copies neither the looked-up rows nor the gradient into fresh arrays;
every result equals eager's, and a token out of range is still an IndexError."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

TOKENS, WIDTH = 50, 64


def make(dtype):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Embedding(TOKENS, WIDTH), nn.Flatten(), nn.Linear(3 * WIDTH, 5))
    model = model.to(dtype)
    return model, optim.Adam(model.parameters(), lr=0.01)


def training_step(model, opt):
    def step(idx, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(idx), y)
        loss.backward()
        opt.step()
        return loss

    return step


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    # repeated tokens: the gradient sums the rows of each
    return tg.tensor(rng.integers(0, 10, (n, 3))), tg.tensor(rng.integers(0, 5, n))


def test_compiled_lookup_equals_eager_and_is_a_take_rows():
    runs = []
    for compiled in (False, True):
        model, opt = make(tg.float64)
        step = training_step(model, opt)
        step = tg.compile(step) if compiled else step
        losses = [step(*batch(seed=i)).item() for i in range(3)]
        runs.append((losses, [p.detach().numpy().copy() for p in model.parameters()]))
    (eager_losses, eager_params), (losses, params) = runs
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-12)
    for got, expected in zip(params, eager_params, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)
    assert "rt.take_rows(" in step.code and "[rt.index(" not in step.code


def test_compiled_lookup_out_of_range_raises_index_error():
    model, opt = make(tg.float32)
    step = tg.compile(training_step(model, opt))
    idx, y = batch()
    step(idx, y)
    for bad in (TOKENS, -1):
        wrong = idx.numpy().copy()
        wrong[1, 2] = bad
        with pytest.raises(IndexError, match=f"index {bad} is out of range"):
            step(tg.tensor(wrong), y)


def test_steady_compiled_step_copies_no_rows():
    """A lookup of 4096 rows of 64 float32 is 1 MiB, and so are its gradient's rows; the
    steady step allocates less than a quarter of that."""
    model, opt = make(tg.float32)
    step = tg.compile(training_step(model, opt))
    idx, y = batch(n=4096 // 3 + 1)
    for _ in range(2):
        step(idx, y)
    rows_bytes = idx.numel() * WIDTH * 4
    tracemalloc.start()
    try:
        step(idx, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < rows_bytes // 4, f"a steady step allocated {peak} B"
