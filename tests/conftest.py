"""What tests in every directory share."""

from __future__ import annotations

import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad.passes import pipeline
from tracegrad.passes import threads as threads_pass

# Every graph a pass returns, in every test, must pass lint (tracegrad.ir.lint).
pipeline.LINT_AFTER_EACH_PASS = True


@pytest.fixture
def training_step():
    """``make(model, opt)``: the training step a PyTorch user writes (zero_grad, the
    cross-entropy of the model's output, backward, step), returning the loss."""

    def make(model, opt):
        def train_step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return train_step

    return make


@pytest.fixture
def restore_blas_threads():
    previous = tg.get_num_threads()
    yield
    tg.set_num_threads(previous)


@pytest.fixture
def always_pays(monkeypatch, restore_blas_threads):
    """A cost model of the threads pass under which every candidate pays, so that small
    programs use the pool too: no hand-off cost, no GIL waits; BLAS on one thread, so that
    products go to the pool too (restored after)."""
    monkeypatch.setattr(threads_pass, "HANDOFF_US", 0.0)
    monkeypatch.setattr(threads_pass, "MIN_SAVING_US", -1.0)
    monkeypatch.setattr(threads_pass, "GIL_US", 0.0)
    tg.set_num_threads(1)
