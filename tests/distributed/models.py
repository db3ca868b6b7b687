"""Small float64 models, batches and checks shared by the scripts that run under ``mpiexec``."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import distributed as dist
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


def cnn_bn() -> nn.Module:
    """The CNN with batch normalization after the convolution and the hidden linear layer
    (SyncBatchNorm once converted, for data-parallel training)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.BatchNorm1d(8, momentum=None),
        nn.Tanh(),
        nn.Linear(8, CLASSES),
    ).double()


class TinyTransformer(nn.Module):
    """A pre-LN causal self-attention block and an MLP block over embedded tokens, mean-pooled
    into class scores."""

    def __init__(self, vocab: int = 11, d: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, CLASSES)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.proj(self.attend(self.norm1(x)))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))

    def attend(self, x):
        b, t, d = x.shape
        q, k, v = (
            part.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
            for part in self.qkv(x).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5
        causal = tg.ones((t, t)).triu(1).bool()
        weights = F.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
        return (weights @ v).transpose(1, 2).reshape(b, t, d)


def transformer() -> nn.Module:
    return TinyTransformer().double()


def normal_inputs(shape):
    return lambda rng, n: tg.tensor(rng.normal(size=(n, *shape)))


def token_inputs(rng, n):
    return tg.tensor(rng.integers(0, 11, size=(n, 5)))


# name: (build, inputs(rng, batch))
MODELS = {
    "mlp": (mlp, normal_inputs((6,))),
    "cnn": (cnn, normal_inputs((1, 8, 8))),
    "cnn_bn": (cnn_bn, normal_inputs((1, 8, 8))),
    "transformer": (transformer, token_inputs),
}


def batches(inputs, steps: int, global_batch: int, seed: int = 1):
    """The same list of (inputs, labels) on every rank."""
    rng = np.random.default_rng(seed)
    return [
        (inputs(rng, global_batch), tg.tensor(rng.integers(0, CLASSES, size=global_batch)))
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


def assert_same_on_every_rank(state: np.ndarray) -> None:
    """Every rank holds exactly this rank's ``state`` (an all_gather of it)."""
    gathered = [tg.zeros(state.shape, dtype=tg.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tg.tensor(state))
    for rank, other in enumerate(gathered):
        assert np.array_equal(other.numpy(), state), f"rank {rank} holds other parameters"
