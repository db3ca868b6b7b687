"""Optimizers with PyTorch's update rules: ``from tracegrad import optim``."""

from tracegrad.optim.adam import Adam, AdamW
from tracegrad.optim.optimizer import Optimizer
from tracegrad.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]
