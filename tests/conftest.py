"""What tests in every directory share."""

from __future__ import annotations

import pytest

import tracegrad.nn.functional as F
from tracegrad.passes import pipeline

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
