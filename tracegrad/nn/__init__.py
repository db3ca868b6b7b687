"""Neural-network building blocks with PyTorch's names: ``from tracegrad import nn``."""

from tracegrad.nn import functional, init, utils
from tracegrad.nn.containers import ModuleDict, ModuleList, Sequential
from tracegrad.nn.layers import (
    GELU,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    LayerNorm,
    Linear,
    LogSoftmax,
    MaxPool2d,
    MSELoss,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from tracegrad.nn.module import Module
from tracegrad.nn.parameter import Parameter

__all__ = [
    "GELU",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "Flatten",
    "Identity",
    "LayerNorm",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "ModuleDict",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "functional",
    "init",
    "utils",
]
