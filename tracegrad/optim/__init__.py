"""Optimizers with PyTorch's update rules: ``from tracegrad import optim``."""

from tracegrad.optim import lr_scheduler
from tracegrad.optim.adam import Adam, AdamW
from tracegrad.optim.adaptive import Adadelta, Adagrad, RMSprop
from tracegrad.optim.lbfgs import LBFGS
from tracegrad.optim.optimizer import Optimizer
from tracegrad.optim.sgd import SGD

__all__ = [
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "lr_scheduler",
]
