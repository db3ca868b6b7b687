"""Small float64 models and batches shared by the scripts that run under ``mpiexec``."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import nn

CLASSES = 3


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, CLASSES)).double()


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, CLASSES),
    ).double()


MODELS = {"mlp": (mlp, (6,)), "cnn": (cnn, (1, 8, 8))}


def batches(sample_shape: tuple, steps: int, global_batch: int, seed: int = 1):
    """The same list of (inputs, labels) on every rank."""
    rng = np.random.default_rng(seed)
    return [
        (
            tg.tensor(rng.normal(size=(global_batch, *sample_shape))),
            tg.tensor(rng.integers(0, CLASSES, size=global_batch)),
        )
        for _ in range(steps)
    ]


def shard(batch, rank: int, world: int):
    """Rank ``rank``'s contiguous share of a global batch."""
    n = batch[0].shape[0] // world
    return tuple(t[rank * n : (rank + 1) * n] for t in batch)


def flat_parameters(model: nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def flat_state(model: nn.Module) -> np.ndarray:
    """Parameters and floating buffers (BatchNorm's running statistics), flattened."""
    buffers = [b.numpy().ravel() for b in model.buffers() if b.is_floating_point()]
    return np.concatenate([flat_parameters(model), *buffers])
