"""A character-level transformer trained with one compiled function per step.

The model is a small GPT: token and position embeddings, pre-LayerNorm blocks of causal
multi-head self-attention (masked softmax) and a 4x GELU(tanh) MLP, trained with AdamW on the
public-domain text in examples/data/ (see its README). `tg.compile(train_step)` turns forward,
backward and the AdamW update into one generated NumPy function; sampling afterwards runs the
same module eagerly, in eval mode and under no_grad.

    python examples/char_transformer.py               # 600 steps, ~15 s
    python examples/char_transformer.py --ctx 64 --steps 600
"""

# ruff: noqa: E402
# (the imports below the thread setting come after it on purpose)

from __future__ import annotations

import os

# The models here are tiny: BLAS worker threads cost more than they save, and on a shared
# machine they spin against other processes (steps measured 6-8x slower on 2 busy cores).
# Set before NumPy is first imported; export the variables yourself to override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import math
import time
from pathlib import Path

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

TEXT = Path(__file__).with_name("data") / "gettysburg_sonnets.txt"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ctx", type=int, default=32, help="context length (32 or 64)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--sample", type=int, default=120, help="characters to generate")
    parser.add_argument("--prompt", default="Four score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.sample = min(args.steps, 30), min(args.sample, 20)
    return args


# --- the model ------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, ctx: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        # True above the diagonal: position t may not look at positions after it
        self.register_buffer("future", tg.tril(tg.ones(ctx, ctx)) == 0)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        scores = scores.masked_fill(self.future[:t, :t], float("-inf"))
        weights = self.drop(tg.softmax(scores, dim=-1))
        y = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.drop(self.proj(y))


class Block(nn.Module):
    """Pre-LN: normalise before each sublayer, add the sublayer's output to the residual."""

    def __init__(self, d_model: int, heads: int, ctx: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, ctx, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, ctx: int, d_model: int, heads: int, layers: int, dropout):
        super().__init__()
        self.ctx = ctx
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(ctx, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d_model, heads, ctx, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(tg.arange(t)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# --- data, training, sampling ------------------------------------------------------------------


class Vocab:
    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str):
        return tg.tensor([self.index[c] for c in text])

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


def random_batch(data, ctx: int, batch_size: int):
    """Windows at random offsets; the targets are the inputs shifted by one character."""
    starts = tg.randint(0, len(data) - ctx, (batch_size, 1))  # the last target is data[-1]
    offsets = starts + tg.arange(ctx)
    return data[offsets], data[offsets + 1]


def make_step(model: nn.Module, opt: optim.Optimizer):
    def train_step(x, y):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return tg.compile(train_step)


def generate(model: CharTransformer, vocab: Vocab, prompt: str, n: int) -> str:
    """Greedy decoding: always the most likely next character."""
    model.eval()  # dropout off
    ids = vocab.encode(prompt).tolist()
    with tg.no_grad():  # nothing to differentiate; no graph is recorded
        for _ in range(n):
            window = tg.tensor([ids[-model.ctx :]])
            ids.append(int(model(window)[0, -1].argmax().item()))
    model.train()
    return vocab.decode(ids)


def train(args, model, step, data) -> None:
    start = time.perf_counter()
    every = max(1, args.steps // 10)
    running = None
    for i in range(1, args.steps + 1):
        x, y = random_batch(data, args.ctx, args.batch_size)
        loss = step(x, y).item()
        running = loss if running is None else 0.9 * running + 0.1 * loss
        if i == 1:
            first = time.perf_counter() - start
            print(f"step {i:4d}  loss {loss:.4f}  (first call, with compiling: {first:.2f} s)")
        elif i % every == 0 or i == args.steps:
            print(f"step {i:4d}  loss {loss:.4f}  smoothed {running:.4f}")
    seconds = time.perf_counter() - start
    per_step = seconds / args.steps * 1000
    print(f"trained {args.steps} steps in {seconds:.1f} s ({per_step:.1f} ms/step)")


def main(argv=None) -> str:
    args = parse_args(argv)
    tg.manual_seed(args.seed)
    text = TEXT.read_text()
    vocab = Vocab(text)
    data = vocab.encode(text)
    model = CharTransformer(
        len(vocab.chars), args.ctx, args.d_model, args.heads, args.layers, args.dropout
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"text: {len(text)} characters, vocab {len(vocab.chars)}; model: ctx {args.ctx}, "
        f"d {args.d_model}, {args.heads} heads, {args.layers} blocks, {n_params} parameters"
    )
    print(f"uniform-guess loss would be ln({len(vocab.chars)}) = {math.log(len(vocab.chars)):.4f}")
    opt = optim.AdamW(model.parameters(), lr=args.lr)
    step = make_step(model, opt)
    train(args, model, step, data)
    # "  step: N nodes (op counts...)" in explain(); a second specialization is normal: the
    # first call runs before AdamW has any state, every later call has the same signature
    nodes = next(ln for ln in step.explain().splitlines() if ln.startswith("  step:"))
    count = nodes.split(":", 1)[1].split("(")[0].strip()
    print(f"compiled step: {count} in one function, {len(step.specializations)} specializations")
    sample = generate(model, vocab, args.prompt, args.sample)
    print(f"greedy sample:\n{sample}")
    return sample


if __name__ == "__main__":
    main()
