"""Model idioms as statement constructs: each adds its modules or parameters to the Holder
``m`` in ``setup`` and applies them to a pool matrix of the program's shape (rows, cols)."""

from __future__ import annotations

import math

from .builder import Builder


def add_module(b: Builder, spelling: str) -> str:
    """Register ``spelling`` (an nn module expression) on the Holder; its attribute path."""
    name = f"m.{b.fresh('mod')}"
    b.add_setup(f"{name} = {spelling}")
    return name


def input_matrix(b: Builder):
    return b.pick(shape=(b.rows, b.cols)) or b.pool[0]


def attention(b: Builder) -> None:
    """Single-head causal attention: softmax of q @ k^T, future positions masked."""
    x, c, r = input_matrix(b), b.cols, b.rows
    q, k, v = (add_module(b, f"nn.Linear({c}, {c})") for _ in range(3))
    s = b.let(f"({q}({x.name}) @ {k}({x.name}).t()) * {1 / math.sqrt(c)!r}", (r, r))
    mask = f"tg.tril(tg.ones({r}, {r})) == 0"
    a = b.let(f"F.softmax({s.name}.masked_fill({mask}, float('-inf')), dim=-1)", (r, r))
    b.let(f"{a.name} @ {v}({x.name})", (r, c))


def linear_b1(b: Builder) -> None:
    """A linear layer on a batch of one row."""
    x = input_matrix(b)
    lin = add_module(b, f"nn.Linear({b.cols}, {b.cols})")
    b.let(f"{lin}({x.name}[{b.rng.randrange(b.rows)}:][:1])", (1, b.cols))


def conv2d(b: Builder) -> None:
    """A padded 3x3 convolution over the matrix seen as a one-channel image."""
    x, r, c = input_matrix(b), b.rows, b.cols
    conv = add_module(b, "nn.Conv2d(1, 2, 3, padding=1)")
    b.let(f"{conv}({x.name}.reshape(1, 1, {r}, {c})).mean(1).reshape({r}, {c})", (r, c))


def embedding(b: Builder) -> None:
    """An embedding lookup of token ids the caller changes between calls (an argument)."""
    r, c, vocab = b.rows, b.cols, 5
    emb = add_module(b, f"nn.Embedding({vocab}, {c})")
    ids = b.fresh("ids")
    b.add_setup(f"{ids} = tg.tensor({[b.rng.randrange(vocab) for _ in range(r)]})")
    b.params.append(ids)
    b.args.append(ids)
    b.add_between(f"{ids}.copy_(tg.tensor({[b.rng.randrange(vocab) for _ in range(r)]}))")
    b.let(f"{emb}({ids})", (r, c))


def gelu_block(b: Builder) -> None:
    """Linear, GELU (exact or tanh), linear: a transformer's MLP."""
    x, c = input_matrix(b), b.cols
    form = b.rng.choice(["", "'tanh'"])
    mlp = add_module(
        b, f"nn.Sequential(nn.Linear({c}, {2 * c}), nn.GELU({form}), nn.Linear({2 * c}, {c}))"
    )
    b.let(f"{mlp}({x.name})", x.shape)


def layer_norm(b: Builder) -> None:
    """A layer norm over the last dim, as a module or functional without affine."""
    x = input_matrix(b)
    if b.rng.random() < 0.5:
        b.let(f"{add_module(b, f'nn.LayerNorm({b.cols})')}({x.name})", x.shape)
    else:
        b.let(f"F.layer_norm({x.name}, ({b.cols},))", x.shape)


def residual(b: Builder) -> None:
    """``x + f(x)`` around a linear layer and a tanh."""
    x = input_matrix(b)
    lin = add_module(b, f"nn.Linear({b.cols}, {b.cols})")
    b.let(f"{x.name} + {lin}({x.name}).tanh()", x.shape)


def buffer_ema(b: Builder) -> None:
    """A running mean kept in a module buffer as a moving average (like batch norm's), then
    used to center the input."""
    x, c = input_matrix(b), b.cols
    buf = b.fresh("running")
    b.add_setup(f"m.register_buffer({buf!r}, tg.zeros({c}, dtype=tg.float64))")
    b.line("with tg.no_grad():")
    b.line(f"    m.{buf}.mul_(0.9).add_(0.1 * {x.name}.detach().mean(0))")
    b.let(f"{x.name} - m.{buf}", x.shape)


def module_swap(b: Builder) -> None:
    """A linear layer the caller replaces by a new one between calls (a new head)."""
    x, c = input_matrix(b), b.cols
    lin = add_module(b, f"nn.Linear({c}, {c}).double()")
    b.add_between(f"{lin} = nn.Linear({c}, {c}).double()")
    b.let(f"{lin}({x.name})", x.shape)


def train_eval(b: Builder) -> None:
    """A dropout module the caller switches between eval and train mode between calls."""
    x = input_matrix(b)
    drop = add_module(b, "nn.Dropout(0.25)")
    b.add_setup(f"{drop}.eval()")
    b.add_between(f"{drop}.train(i % 2 == 0)")
    b.let(f"{drop}({x.name})", x.shape)


# Elementwise steps of wide_chain, each saving what its backward reads
WIDE_STEPS = [
    "{h}.sin() * {h}",
    "{h}.sigmoid() + {h}.cos()",
    "({h} * {h} + 1.0).sqrt()",
    "F.gelu({h})",
    "{h}.exp().tanh()",
]


def wide_chain(b: Builder) -> None:
    """A linear layer up to a wide hidden layer, a chain of elementwise steps there, and one
    back down: activations much larger than the program's other values."""
    x, r, c, width = input_matrix(b), b.rows, b.cols, 48
    h = b.let(f"{add_module(b, f'nn.Linear({c}, {width})')}({x.name}).tanh()", (r, width))
    for _ in range(b.rng.randint(2, 4)):
        h = b.let(b.rng.choice(WIDE_STEPS).format(h=h.name), (r, width))
    b.let(f"{add_module(b, f'nn.Linear({width}, {c})')}({h.name})", (r, c))


IDIOMS = {
    "attention": attention,
    "linear_b1": linear_b1,
    "conv2d": conv2d,
    "embedding": embedding,
    "gelu_block": gelu_block,
    "layer_norm": layer_norm,
    "residual": residual,
    "buffer_ema": buffer_ema,
    "module_swap": module_swap,
}
