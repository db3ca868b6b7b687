"""The workloads of DESIGN.md (W1 also in two other layouts: W1X written x @ W + b with
weights stored (in, out), W1F with F.linear on its own parameters), W5 (LSTM language model),
W6 (ResNet with BatchNorm) and W7 (VAE), and their implementations.

For each workload: a tracegrad model (built once, with a fixed seed), its optimizer and loss,
synthetic data of the right shapes (a fixed seed, labels from a random "teacher" so the loss
falls), and the implementations the harness times side by side:

    module        (a) tracegrad compiled module (``tg.compile(model)``) + eager loss/optimizer
    step          (b) tracegrad whole training step compiled into one generated function
    step_nopasses (c) the same with ``passes=None`` (the unoptimized reference)
    handwritten   (d) the hand-written NumPy step of ``benchmarks.handwritten``
    torch         (e) PyTorch eager (when installed)
    jax           (f) the step written in JAX under ``jax.jit`` (``benchmarks.jax_steps``; when
                      installed: the ``bench`` extra)
    eager         tracegrad eager (tape autograd), the reference the losses are checked against

Every implementation starts from the SAME initial weights: the tracegrad model's initial
parameters, taken once as NumPy arrays and copied into each implementation, and every one sees
the same sequence of batches.
"""

# Shapes are named as in PyTorch's docs and nanoGPT (B, T, C).
# ruff: noqa: N806

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import benchmarks
import tracegrad as tg
import tracegrad.nn.functional as F
from benchmarks import handwritten
from tracegrad import dtypes as tg_dtypes
from tracegrad import nn, optim
from tracegrad import random as tg_random

IMPLEMENTATIONS = ("module", "step", "step_nopasses", "handwritten", "torch", "jax", "eager")
LABELS = {
    "module": "tracegrad compiled module + eager loss/opt",
    "step": "tracegrad whole step",
    "step_nopasses": "tracegrad whole step, passes=None",
    "handwritten": "hand-written NumPy",
    "torch": "PyTorch eager",
    "jax": "JAX jax.jit",
    "eager": "tracegrad eager",
}
DEFAULT_IMPLEMENTATIONS = IMPLEMENTATIONS

MODEL_SEED = 0


# --- tracegrad models ---------------------------------------------------------------------------


def mlp_relu(cfg) -> nn.Module:
    return nn.Sequential(
        nn.Linear(cfg["inputs"], cfg["hidden"]), nn.ReLU(), nn.Linear(cfg["hidden"], cfg["classes"])
    )


def mlp_gelu(cfg) -> nn.Module:
    d_in, h, c = cfg["inputs"], cfg["hidden"], cfg["classes"]
    return nn.Sequential(
        nn.Linear(d_in, h),
        nn.GELU(approximate="tanh"),
        nn.Linear(h, h),
        nn.GELU(approximate="tanh"),
        nn.Linear(h, c),
    )


class MatmulMLP(nn.Module):
    """W1 as NumPy and JAX users write it: weights stored (in, out), ``x @ W + b``."""

    def __init__(self, cfg):
        super().__init__()
        linear = mlp_relu(cfg)  # (the same initial values as W1's layers)
        self.w1 = nn.Parameter(linear[0].weight.detach().t().contiguous())
        self.b1 = nn.Parameter(linear[0].bias.detach().clone())
        self.w2 = nn.Parameter(linear[2].weight.detach().t().contiguous())
        self.b2 = nn.Parameter(linear[2].bias.detach().clone())

    def forward(self, x):
        return F.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2


class FunctionalMLP(nn.Module):
    """W1 written with ``F.linear`` on parameters of its own, no nn.Linear."""

    def __init__(self, cfg):
        super().__init__()
        linear = mlp_relu(cfg)
        self.w1, self.b1 = linear[0].weight, linear[0].bias
        self.w2, self.b2 = linear[2].weight, linear[2].bias

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.w1, self.b1)), self.w2, self.b2)


def linear_names(init: dict[str, np.ndarray], transposed: bool) -> dict[str, np.ndarray]:
    """A W1-layout model's parameters under nn.Sequential's names and shapes (for the
    hand-written step and PyTorch, which hold W1 as two nn.Linear)."""
    weight = (lambda w: np.ascontiguousarray(w.T)) if transposed else (lambda w: w)
    return {
        "0.weight": weight(init["w1"]),
        "0.bias": init["b1"],
        "2.weight": weight(init["w2"]),
        "2.bias": init["b2"],
    }


def cnn(cfg) -> nn.Module:
    c1, c2, k, size = cfg["c1"], cfg["c2"], cfg["kernel"], cfg["image"]
    pooled = (size - 2 * (k - 1)) // 2
    return nn.Sequential(
        nn.Conv2d(1, c1, k),
        nn.ReLU(),
        nn.Conv2d(c1, c2, k),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * pooled * pooled, cfg["classes"]),
    )


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, ctx: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        causal = tg.tril(tg.ones(ctx, ctx)).reshape(1, 1, ctx, ctx) == 0
        self.register_buffer("mask", causal, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        hd = C // self.n_heads
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.reshape(B, T, self.n_heads, hd).transpose(1, 2)
        k = k.reshape(B, T, self.n_heads, hd).transpose(1, 2)
        v = v.reshape(B, T, self.n_heads, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, ctx: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_heads, ctx)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """Token + learned position embeddings, pre-LN blocks, final LayerNorm, linear head."""

    def __init__(self, vocab: int, ctx: int, d: int, n_heads: int, n_layers: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(d, n_heads, ctx) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(tg.arange(T))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def char_transformer(cfg) -> nn.Module:
    return CharTransformer(cfg["vocab"], cfg["ctx"], cfg["d"], cfg["heads"], cfg["layers"])


def classification_loss(logits, y):
    return F.cross_entropy(logits, y)


def sequence_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class LSTMLanguageModel(nn.Module):
    """word_language_model's RNNModel with an LSTM (no dropout, untied weights): encoder
    embedding, ``nn.LSTM``, linear decoder; time-major (T, B) tokens in, (T, B, V) logits out."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab)
        # the example's init_weights
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, idx):
        output, _ = self.rnn(self.encoder(idx))
        return self.decoder(output)


class BasicBlock(nn.Module):
    """ResNet's basic block: conv3x3-bn-relu, conv3x3-bn, plus the input (or its 1x1 conv-bn
    when the shape changes), relu."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small CIFAR-style ResNet: conv3x3-bn-relu stem, BasicBlocks, global average pool,
    linear."""

    def __init__(self, channels: int, stem: int, widths, strides, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, cin = [], stem
        for width, stride in zip(widths, strides):
            blocks.append(BasicBlock(cin, width, stride))
            cin = width
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(out.mean(dim=(2, 3)))


def resnet(cfg) -> nn.Module:
    return ResNet(cfg["channels"], cfg["stem"], cfg["widths"], cfg["strides"], cfg["classes"])


def lstm_language_model(cfg) -> nn.Module:
    return LSTMLanguageModel(cfg["vocab"], cfg["emb"], cfg["hidden"], cfg["layers"])


class VAE(nn.Module):
    """PyTorch's examples/vae model: 784-400 relu, 400-20 (mu, logvar), a reparameterized
    sample, 20-400 relu, 400-784 sigmoid; forward returns (reconstruction, mu, logvar)."""

    def __init__(self, inputs: int, hidden: int, latent: int):
        super().__init__()
        self.inputs = inputs
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, inputs)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = tg.exp(0.5 * logvar)
        return mu + tg.randn_like(std) * std

    def decode(self, z):
        return tg.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.inputs))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae(cfg) -> nn.Module:
    return VAE(cfg["inputs"], cfg["hidden"], cfg["latent"])


def vae_loss(outputs, x):
    """The example's loss: reconstruction BCE summed over the batch plus the KL divergence."""
    recon, mu, logvar = outputs
    bce = F.binary_cross_entropy(recon, x.view(-1, recon.shape[-1]), reduction="sum")
    return bce - 0.5 * tg.sum(1 + logvar - mu.pow(2) - logvar.exp())


# --- synthetic data -------------------------------------------------------------------------------


def teacher_batches(rng, n_batches, x_shape, classes):
    """Gaussian inputs; labels from a fixed random linear teacher (learnable, not trivial)."""
    features = int(np.prod(x_shape[1:]))
    teacher = rng.standard_normal((features, classes)).astype(np.float32)
    batches = []
    for _ in range(n_batches):
        x = rng.standard_normal(x_shape).astype(np.float32)
        scores = x.reshape(x.shape[0], -1) @ teacher
        scores += rng.standard_normal(scores.shape).astype(np.float32) * scores.std()
        batches.append((x, scores.argmax(1).astype(np.int64)))
    return batches


def markov_text_batches(rng, n_batches, batch, ctx, vocab):
    """Windows of a token stream from a random sparse Markov chain; targets are the next token."""
    successors = rng.integers(0, vocab, (vocab, 4))
    length = n_batches * batch * (ctx + 1) + 1
    choices = rng.integers(0, 4, length)
    stream = np.empty(length, np.int64)
    stream[0] = 0
    for i in range(1, length):
        stream[i] = successors[stream[i - 1], choices[i]]
    windows = stream[: n_batches * batch * (ctx + 1)].reshape(n_batches, batch, ctx + 1)
    return [(w[:, :-1].copy(), w[:, 1:].copy()) for w in windows]


def w1_data(cfg, rng):
    return teacher_batches(rng, cfg["n_batches"], (cfg["batch"], cfg["inputs"]), cfg["classes"])


def w2_data(cfg, rng):
    return teacher_batches(rng, cfg["n_batches"], (cfg["batch"], cfg["inputs"]), cfg["classes"])


def w3_data(cfg, rng):
    shape = (cfg["batch"], 1, cfg["image"], cfg["image"])
    return teacher_batches(rng, cfg["n_batches"], shape, cfg["classes"])


def w4_data(cfg, rng):
    return markov_text_batches(rng, cfg["n_batches"], cfg["batch"], cfg["ctx"], cfg["vocab"])


def w5_data(cfg, rng):
    """W4's kind of text, time-major (T, B) as word_language_model batches it."""
    batches = markov_text_batches(rng, cfg["n_batches"], cfg["batch"], cfg["ctx"], cfg["vocab"])
    return [(x.T.copy(), y.T.copy()) for x, y in batches]


def w6_data(cfg, rng):
    shape = (cfg["batch"], cfg["channels"], cfg["image"], cfg["image"])
    return teacher_batches(rng, cfg["n_batches"], shape, cfg["classes"])


def w7_data(cfg, rng):
    """Images in [0, 1] from a random 2-layer generator of the VAE's own shape (learnable:
    they lie near a low-dimensional manifold); the input is its own target."""
    n, d, latent = cfg["batch"], cfg["inputs"], cfg["latent"]
    basis = rng.standard_normal((latent, 64)) / math.sqrt(latent)
    pixels = rng.standard_normal((64, d)) * (3.0 / math.sqrt(64))
    batches = []
    for _ in range(cfg["n_batches"]):
        code = np.tanh(rng.standard_normal((n, latent)) @ basis)
        x = (1.0 / (1.0 + np.exp(-(code @ pixels)))).astype(np.float32)
        batches.append((x, x))
    return batches


# --- workload table -----------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    title: str
    config: dict
    build_model: Callable  # cfg -> tracegrad nn.Module
    make_optimizer: Callable  # (cfg, params) -> tracegrad optimizer
    loss_fn: Callable  # (outputs, targets) -> scalar loss, the same for every tracegrad variant
    make_data: Callable  # (cfg, rng) -> list of (x, y) NumPy batches
    make_handwritten: Callable  # (cfg, init) -> object with step(x, y) -> float
    torch_model: Callable  # (torch, cfg) -> torch.nn.Module with the same parameter names
    torch_optimizer: Callable  # (torch, cfg, params) -> torch optimizer
    torch_loss: Callable  # (torch, outputs, targets) -> loss
    targets: dict = field(default_factory=dict)
    data_seed: int = 1234
    # The model's initial parameters as the hand-written step and PyTorch's model name them
    linear_layout: Callable[[dict], dict] = lambda init: init


def _sgd(cfg, params):
    return optim.SGD(
        params,
        lr=cfg["lr"],
        momentum=cfg.get("momentum", 0.0),
        weight_decay=cfg.get("weight_decay", 0.0),
    )


def _adam(cfg, params):
    return optim.Adam(params, lr=cfg["lr"])


def _adamw(cfg, params):
    return optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _torch_sgd(torch, cfg, params):
    return torch.optim.SGD(
        params,
        lr=cfg["lr"],
        momentum=cfg.get("momentum", 0.0),
        weight_decay=cfg.get("weight_decay", 0.0),
    )


def _torch_adam(torch, cfg, params):
    return torch.optim.Adam(params, lr=cfg["lr"])


def _torch_adamw(torch, cfg, params):
    return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _torch_classification_loss(torch, logits, y):
    return torch.nn.functional.cross_entropy(logits, y)


def _torch_sequence_loss(torch, logits, y):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _torch_mlp_relu(torch, cfg):
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Linear(cfg["inputs"], cfg["hidden"]),
        tnn.ReLU(),
        tnn.Linear(cfg["hidden"], cfg["classes"]),
    )


def _torch_mlp_gelu(torch, cfg):
    tnn = torch.nn
    d_in, h, c = cfg["inputs"], cfg["hidden"], cfg["classes"]
    return tnn.Sequential(
        tnn.Linear(d_in, h),
        tnn.GELU(approximate="tanh"),
        tnn.Linear(h, h),
        tnn.GELU(approximate="tanh"),
        tnn.Linear(h, c),
    )


def _torch_cnn(torch, cfg):
    tnn = torch.nn
    c1, c2, k, size = cfg["c1"], cfg["c2"], cfg["kernel"], cfg["image"]
    pooled = (size - 2 * (k - 1)) // 2
    return tnn.Sequential(
        tnn.Conv2d(1, c1, k),
        tnn.ReLU(),
        tnn.Conv2d(c1, c2, k),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(c2 * pooled * pooled, cfg["classes"]),
    )


def _torch_char_transformer(torch, cfg):
    """The same architecture and parameter names as ``CharTransformer``, in PyTorch."""
    tnn, tF = torch.nn, torch.nn.functional
    vocab, ctx, d, n_heads, n_layers = (cfg[k] for k in ("vocab", "ctx", "d", "heads", "layers"))

    class TorchAttention(tnn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = tnn.Linear(d, 3 * d)
            self.proj = tnn.Linear(d, d)
            causal = torch.tril(torch.ones(ctx, ctx)).reshape(1, 1, ctx, ctx) == 0
            self.register_buffer("mask", causal, persistent=False)

        def forward(self, x):
            B, T, C = x.shape
            hd = C // n_heads
            q, k, v = self.qkv(x).split(C, dim=2)
            q = q.reshape(B, T, n_heads, hd).transpose(1, 2)
            k = k.reshape(B, T, n_heads, hd).transpose(1, 2)
            v = v.reshape(B, T, n_heads, hd).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(self.mask[:, :, :T, :T], float("-inf"))
            att = tF.softmax(att, dim=-1)
            return self.proj((att @ v).transpose(1, 2).reshape(B, T, C))

    class TorchMLP(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc = tnn.Linear(d, 4 * d)
            self.act = tnn.GELU(approximate="tanh")
            self.proj = tnn.Linear(4 * d, d)

        def forward(self, x):
            return self.proj(self.act(self.fc(x)))

    class TorchBlock(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = tnn.LayerNorm(d)
            self.attn = TorchAttention()
            self.ln2 = tnn.LayerNorm(d)
            self.mlp = TorchMLP()

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class TorchCharTransformer(tnn.Module):
        def __init__(self):
            super().__init__()
            self.tok = tnn.Embedding(vocab, d)
            self.pos = tnn.Embedding(ctx, d)
            self.blocks = tnn.ModuleList([TorchBlock() for _ in range(n_layers)])
            self.ln_f = tnn.LayerNorm(d)
            self.head = tnn.Linear(d, vocab)

        def forward(self, idx):
            T = idx.shape[1]
            x = self.tok(idx) + self.pos(torch.arange(T))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    return TorchCharTransformer()


def _torch_lstm_language_model(torch, cfg):
    tnn = torch.nn

    class TorchLSTMLanguageModel(tnn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = tnn.Embedding(cfg["vocab"], cfg["emb"])
            self.rnn = tnn.LSTM(cfg["emb"], cfg["hidden"], cfg["layers"])
            self.decoder = tnn.Linear(cfg["hidden"], cfg["vocab"])

        def forward(self, idx):
            output, _ = self.rnn(self.encoder(idx))
            return self.decoder(output)

    return TorchLSTMLanguageModel()


def _torch_resnet(torch, cfg):
    """``ResNet`` in PyTorch, with the same parameter and buffer names."""
    tnn, tF = torch.nn, torch.nn.functional

    class TorchBasicBlock(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.shortcut = tnn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = tnn.Sequential(
                    tnn.Conv2d(cin, cout, 1, stride=stride, bias=False), tnn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = tF.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return tF.relu(out + self.shortcut(x))

    class TorchResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(cfg["channels"], cfg["stem"], 3, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cfg["stem"])
            blocks, cin = [], cfg["stem"]
            for width, stride in zip(cfg["widths"], cfg["strides"]):
                blocks.append(TorchBasicBlock(cin, width, stride))
                cin = width
            self.layers = tnn.Sequential(*blocks)
            self.linear = tnn.Linear(cin, cfg["classes"])

        def forward(self, x):
            out = self.layers(tF.relu(self.bn1(self.conv1(x))))
            return self.linear(out.mean(dim=(2, 3)))

    return TorchResNet()


def _torch_vae(torch, cfg):
    tnn, tF = torch.nn, torch.nn.functional
    d, h, latent = cfg["inputs"], cfg["hidden"], cfg["latent"]

    class TorchVAE(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = tnn.Linear(d, h)
            self.fc21 = tnn.Linear(h, latent)
            self.fc22 = tnn.Linear(h, latent)
            self.fc3 = tnn.Linear(latent, h)
            self.fc4 = tnn.Linear(h, d)

        def forward(self, x):
            h1 = tF.relu(self.fc1(x.view(-1, d)))
            mu, logvar = self.fc21(h1), self.fc22(h1)
            std = torch.exp(0.5 * logvar)
            z = mu + torch.randn_like(std) * std
            return torch.sigmoid(self.fc4(tF.relu(self.fc3(z)))), mu, logvar

    return TorchVAE()


def _torch_vae_loss(torch, outputs, x):
    recon, mu, logvar = outputs
    tF = torch.nn.functional
    bce = tF.binary_cross_entropy(recon, x.view(-1, recon.shape[-1]), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def _hw_w1(cfg, init):
    return handwritten.MLPReLUSGD(init, cfg["batch"], cfg["lr"])


def _hw_w2(cfg, init):
    return handwritten.MLPGELUAdam(init, cfg["batch"], cfg["lr"])


def _hw_w3(cfg, init):
    return handwritten.CNNSGDMomentum(init, cfg["batch"], cfg["lr"], cfg["momentum"], cfg["image"])


def _hw_w4(cfg, init):
    return handwritten.CharTransformerAdamW(
        init,
        cfg["batch"],
        cfg["ctx"],
        cfg["heads"],
        cfg["layers"],
        cfg["lr"],
        cfg["weight_decay"],
    )


def _hw_w5(cfg, init):
    return handwritten.LSTMLanguageModelSGD(
        init, cfg["batch"], cfg["ctx"], cfg["layers"], cfg["lr"], cfg["clip"]
    )


def _hw_w6(cfg, init):
    return handwritten.ResNetSGD(
        init,
        cfg["batch"],
        cfg["image"],
        cfg["widths"],
        cfg["strides"],
        cfg["lr"],
        cfg["momentum"],
        cfg["weight_decay"],
    )


def _hw_w7(cfg, init):
    return handwritten.VAEAdam(init, cfg["batch"], cfg["lr"], tg_random.generator)


def _w1_written(name: str, title: str, model: Callable, transposed: bool) -> Workload:
    """W1 (its data, optimizer, hand-written step and PyTorch model) with another model
    class: the same network written another way."""
    return Workload(
        name,
        title,
        dict(inputs=784, hidden=128, classes=10, batch=32, lr=0.01, n_batches=50),
        model,
        _sgd,
        classification_loss,
        w1_data,
        _hw_w1,
        _torch_mlp_relu,
        _torch_sgd,
        _torch_classification_loss,
        targets=dict(step_ratio=1.10, module_ratio=2.0, first_call_s=0.5, alloc_mib=2.0),
        data_seed=1001,
        linear_layout=lambda init: linear_names(init, transposed),
    )


WORKLOADS: dict[str, Workload] = {
    "W1": Workload(
        "W1",
        "MLP 784-128-10 ReLU, batch 32, SGD",
        dict(inputs=784, hidden=128, classes=10, batch=32, lr=0.01, n_batches=50),
        mlp_relu,
        _sgd,
        classification_loss,
        w1_data,
        _hw_w1,
        _torch_mlp_relu,
        _torch_sgd,
        _torch_classification_loss,
        targets=dict(step_ratio=1.10, module_ratio=2.0, first_call_s=0.5, alloc_mib=2.0),
        data_seed=1001,
    ),
    "W1X": _w1_written("W1X", "W1 written x @ W + b, weights stored (in, out)", MatmulMLP, True),
    "W1F": _w1_written(
        "W1F", "W1 written with F.linear on its own parameters", FunctionalMLP, False
    ),
    "W2": Workload(
        "W2",
        "MLP 1024-2048-2048-10 GELU(tanh), batch 256, Adam",
        dict(inputs=1024, hidden=2048, classes=10, batch=256, lr=1e-3, n_batches=50),
        mlp_gelu,
        _adam,
        classification_loss,
        w2_data,
        _hw_w2,
        _torch_mlp_gelu,
        _torch_adam,
        _torch_classification_loss,
        targets=dict(step_ratio=1.03, module_ratio=1.05, first_call_s=1.0, alloc_mib=2.0),
        data_seed=1002,
    ),
    "W3": Workload(
        "W3",
        "CNN conv(1->8,3)-relu-conv(8->16,3)-relu-maxpool2-linear, 28x28, batch 32, SGD momentum",
        dict(
            image=28,
            c1=8,
            c2=16,
            kernel=3,
            classes=10,
            batch=32,
            lr=0.01,
            momentum=0.9,
            n_batches=50,
        ),
        cnn,
        _sgd,
        classification_loss,
        w3_data,
        _hw_w3,
        _torch_cnn,
        _torch_sgd,
        _torch_classification_loss,
        targets=dict(step_ratio=1.15, module_ratio=1.3, first_call_s=1.0, alloc_mib=2.0),
        data_seed=1003,
    ),
    "W4": Workload(
        "W4",
        "char transformer, vocab 65, ctx 64, d 64, 4 heads, 2 pre-LN blocks, batch 16, AdamW",
        dict(
            vocab=65,
            ctx=64,
            d=64,
            heads=4,
            layers=2,
            batch=16,
            lr=1e-3,
            weight_decay=0.01,
            n_batches=50,
        ),
        char_transformer,
        _adamw,
        sequence_loss,
        w4_data,
        _hw_w4,
        _torch_char_transformer,
        _torch_adamw,
        _torch_sequence_loss,
        targets=dict(step_ratio=1.10, module_ratio=1.3, first_call_s=2.0, alloc_mib=2.0),
        data_seed=1004,
    ),
    "W5": Workload(
        "W5",
        "LSTM language model: vocab 96, embedding 256, 2-layer LSTM 256, seq 64, batch 32, SGD "
        "with gradient clipping",
        dict(
            vocab=96,
            emb=256,
            hidden=256,
            layers=2,
            ctx=64,
            batch=32,
            lr=20.0,
            clip=0.25,
            n_batches=50,
        ),
        lstm_language_model,
        _sgd,
        sequence_loss,
        w5_data,
        _hw_w5,
        _torch_lstm_language_model,
        _torch_sgd,
        _torch_sequence_loss,
        targets=dict(step_ratio=1.00, module_ratio=1.1, first_call_s=5.0, alloc_mib=2.0),
        data_seed=1005,
    ),
    "W6": Workload(
        "W6",
        "ResNet: conv-bn-relu stem 16, 4 BasicBlocks 16-32-64-64 with BatchNorm (train mode), "
        "avg pool, linear; 32x32x3, batch 64, SGD momentum 0.9, weight decay 5e-4",
        dict(
            image=32,
            channels=3,
            stem=16,
            widths=(16, 32, 64, 64),
            strides=(1, 2, 2, 1),
            classes=10,
            batch=64,
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            n_batches=50,
        ),
        resnet,
        _sgd,
        classification_loss,
        w6_data,
        _hw_w6,
        _torch_resnet,
        _torch_sgd,
        _torch_classification_loss,
        targets=dict(step_ratio=1.00, module_ratio=1.1, first_call_s=2.0, alloc_mib=2.0),
        data_seed=1006,
    ),
    "W7": Workload(
        "W7",
        "VAE 784-400-20-400-784, reparameterized sample, BCE (sum) + KL, batch 128, Adam",
        dict(inputs=784, hidden=400, latent=20, batch=128, lr=1e-3, n_batches=50),
        vae,
        _adam,
        vae_loss,
        w7_data,
        _hw_w7,
        _torch_vae,
        _torch_adam,
        _torch_vae_loss,
        targets=dict(step_ratio=1.00, module_ratio=1.1, first_call_s=1.0, alloc_mib=2.0),
        data_seed=1007,
    ),
}


def get_workload(name: str, **overrides) -> Workload:
    """The workload ``name`` ('W1'..'W7', 'W1X', 'W1F'), with config entries replaced by
    ``overrides`` (e.g. ``batch=8`` for a reduced smoke-test size)."""
    base = WORKLOADS[name.upper()]
    unknown = set(overrides) - set(base.config)
    if unknown:
        raise ValueError(f"{name}: unknown config keys {sorted(unknown)}")
    config = {**base.config, **overrides}
    return Workload(**{**base.__dict__, "config": config})


# --- setup shared by the implementations --------------------------------------------------------


@dataclass
class Setup:
    """One workload's starting point: initial weights (NumPy) and the batches (NumPy)."""

    workload: Workload
    init: dict[str, np.ndarray]
    batches: list[tuple[np.ndarray, np.ndarray]]
    dtype: type = np.float32  # of the weights and the floating-point data


def make_setup(workload: Workload, dtype=np.float32) -> Setup:
    """The starting point; ``dtype=np.float64`` runs everything in double precision (the tests
    that check implementations against each other to float64 rounding)."""
    tg.manual_seed(MODEL_SEED)
    model = workload.build_model(workload.config)
    init = {name: p.detach().numpy().astype(dtype) for name, p in model.named_parameters()}
    batches = workload.make_data(workload.config, np.random.default_rng(workload.data_seed))
    batches = [tuple(_as_float(a, dtype) for a in batch) for batch in batches]
    return Setup(workload, init, batches, dtype)


def _as_float(a: np.ndarray, dtype) -> np.ndarray:
    return a.astype(dtype) if a.dtype.kind == "f" and a.dtype != dtype else a


# --- implementations ----------------------------------------------------------------------------


class Implementation:
    """A training step the harness can time: ``step(i)`` runs step ``i`` on batch
    ``i % n_batches`` and returns the loss (whatever object the implementation returns);
    ``loss_value`` turns it into a float."""

    key = ""

    def step(self, i: int):
        raise NotImplementedError

    @staticmethod
    def loss_value(result) -> float:
        return float(result.item()) if hasattr(result, "item") else float(result)

    def parameters(self) -> dict[str, np.ndarray]:
        raise NotImplementedError


class TracegradImplementation(Implementation):
    def __init__(self, setup: Setup, key: str, threads: int | None = None):
        """``threads``: what ``tg.compile`` may run on (``--threads``, 1 by default)."""
        threads = benchmarks.THREADS if threads is None else threads
        self.key = key
        wl, cfg = setup.workload, setup.workload.config
        tg.manual_seed(MODEL_SEED)
        model = wl.build_model(cfg).to(tg_dtypes.from_numpy(setup.dtype))
        model.load_state_dict(setup.init, strict=False)
        opt = wl.make_optimizer(cfg, model.parameters())
        loss_fn = wl.loss_fn
        self.model = model
        self.batches = [(tg.tensor(x), tg.tensor(y)) for x, y in setup.batches]
        forward = tg.compile(model, threads=threads) if key == "module" else model
        clip = cfg.get("clip")

        def train_step(x, y):
            opt.zero_grad()
            loss = loss_fn(forward(x), y)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            return loss

        if key in ("eager", "module"):
            self.compiled = forward if key == "module" else None
            self.train_step = train_step
        else:
            passes = "default" if key == "step" else None
            self.compiled = self.train_step = tg.compile(train_step, passes=passes, threads=threads)

    def step(self, i: int):
        x, y = self.batches[i % len(self.batches)]
        return self.train_step(x, y)

    def parameters(self) -> dict[str, np.ndarray]:
        return {n: p.detach().numpy().copy() for n, p in self.model.named_parameters()}


class HandwrittenImplementation(Implementation):
    key = "handwritten"

    def __init__(self, setup: Setup):
        wl = setup.workload
        init = wl.linear_layout(setup.init)
        self.impl = wl.make_handwritten(wl.config, {k: v.copy() for k, v in init.items()})
        self.batches = setup.batches

    def step(self, i: int):
        x, y = self.batches[i % len(self.batches)]
        return self.impl.step(x, y)

    @staticmethod
    def loss_value(result) -> float:
        return float(result)

    def parameters(self) -> dict[str, np.ndarray]:
        return self.impl.parameters()


def torch_module():
    """PyTorch, limited to the benchmark's thread count, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(benchmarks.THREADS)
    return torch


class TorchImplementation(Implementation):
    key = "torch"

    def __init__(self, setup: Setup):
        torch = torch_module()
        if torch is None:
            raise ImportError("PyTorch is not installed")
        wl, cfg = setup.workload, setup.workload.config
        torch.manual_seed(0)
        model = wl.torch_model(torch, cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(wl.linear_layout(setup.init)[name]))
        opt = wl.torch_optimizer(torch, cfg, model.parameters())
        self.model = model
        self.batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in setup.batches]

        clip = cfg.get("clip")

        def train_step(x, y):
            opt.zero_grad()
            loss = wl.torch_loss(torch, model(x), y)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            return loss

        self.train_step = train_step

    def step(self, i: int):
        x, y = self.batches[i % len(self.batches)]
        return self.train_step(x, y)

    def parameters(self) -> dict[str, np.ndarray]:
        return {n: p.detach().numpy().copy() for n, p in self.model.named_parameters()}


class NotInstalledError(ImportError):
    """An optional comparator's library is missing: the harness shows its row as skipped."""


def jax_steps_module():
    """``benchmarks.jax_steps`` (which imports JAX), or None when JAX is not installed."""
    try:
        from benchmarks import jax_steps
    except ModuleNotFoundError as exc:
        if exc.name != "jax" and not (exc.name or "").startswith(("jax.", "jaxlib")):
            raise
        return None
    return jax_steps


def make_implementation(key: str, setup: Setup) -> Implementation:
    if key == "jax":
        jax_steps = jax_steps_module()
        if jax_steps is None:
            raise NotInstalledError("jax not installed")
        return jax_steps.JaxImplementation(setup)
    if key == "handwritten":
        return HandwrittenImplementation(setup)
    if key == "torch":
        return TorchImplementation(setup)
    if key in ("module", "step", "step_nopasses", "eager"):
        return TracegradImplementation(setup, key)
    raise ValueError(f"unknown implementation {key!r}; expected one of {IMPLEMENTATIONS}")
