"""The model zoo of the compiler tests (the ``zoo`` fixture in conftest.py hands it out).

Every model is built from a fixed seed, in float64 unless asked otherwise, with fixed example
inputs and a loss, so two builds are identical: one is run eagerly, the other compiled. This
module has a name of its own (not ``conftest``) so that classes defined here, such as the
custom Function, can be imported back by name when an IR graph holding them is parsed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn


class MLP(nn.Module):
    def __init__(self, sizes=(8, 16, 16, 4)):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU() if i % 2 == 0 else nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """conv - relu - maxpool - conv (padded) - relu - flatten - linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(self.flatten(x))


class CausalSelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).split(d, dim=2)
        q = q.reshape(b, t, self.heads, hd).transpose(1, 2)
        k = k.reshape(b, t, self.heads, hd).transpose(1, 2)
        v = v.reshape(b, t, self.heads, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        future = tg.tril(tg.ones(t, t)) == 0
        scores = scores.masked_fill(future, float("-inf"))
        att = F.softmax(scores, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU("tanh"), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A 2-block pre-LN causal transformer language model over token ids."""

    def __init__(self, vocab=11, ctx=8, d=16, heads=2, blocks=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(blocks)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(tg.arange(t))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class PromptedTransformer(nn.Module):
    """The transformer run on a token batch it holds as a buffer (the forward takes none)."""

    def __init__(self, tokens):
        super().__init__()
        self.lm = Transformer()
        self.register_buffer("tokens", tokens)

    def forward(self):
        return self.lm(self.tokens)


class SignSTE(tg.autograd.Function):
    """sign(x) forward, straight-through backward (passes g where |x| <= 1). The derived
    gradient of sign is zero, so a compiled model only trains if this backward is used."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sign()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1.0).to(grad.dtype)


class BinaryNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc2(SignSTE.apply(self.fc1(x)))


@dataclass
class Setup:
    """A model, its example inputs, and a loss of its output."""

    name: str
    model: nn.Module
    inputs: tuple
    target: tg.Tensor

    def loss(self, output):
        if output.ndim == 3:  # language model: (B, T, V) logits, (B, T) targets
            return F.cross_entropy(output.reshape(-1, output.shape[-1]), self.target.reshape(-1))
        return F.cross_entropy(output, self.target)


def build(name: str, dtype=tg.float64, batch: int = 4) -> Setup:
    """A fresh, seeded model with its inputs; two builds of one name are identical."""
    tg.manual_seed(1234)
    rng = np.random.default_rng(99)
    if name == "mlp":
        model = MLP()
        inputs = (tg.tensor(rng.standard_normal((batch, 8))),)
        target = tg.tensor(rng.integers(0, 4, batch))
    elif name == "cnn":
        model = CNN()
        inputs = (tg.tensor(rng.standard_normal((batch, 1, 10, 10))),)
        target = tg.tensor(rng.integers(0, 5, batch))
    elif name in ("transformer", "transformer_prompted"):
        tokens = tg.tensor(rng.integers(0, 11, (batch, 8)))
        target = tg.tensor(rng.integers(0, 11, (batch, 8)))
        if name == "transformer":
            model, inputs = Transformer(), (tokens,)
        else:
            model, inputs = PromptedTransformer(tokens), ()
    elif name == "ste":
        model = BinaryNet()
        inputs = (tg.tensor(rng.standard_normal((batch, 6))),)
        target = tg.tensor(rng.integers(0, 3, batch))
    else:
        raise KeyError(name)
    model = model.to(dtype)
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    return Setup(name, model, inputs, target)


# Model names, and known bugs that keep a model from compiling (name -> reason, for strict
# xfail marks; none at the moment).
MODELS = ["mlp", "cnn", "transformer", "transformer_prompted", "ste"]
MODEL_BUGS: dict[str, str] = {}


def train_step(model, opt, x, y):
    """The training step a PyTorch user writes, taking its model and optimizer as arguments."""
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss
