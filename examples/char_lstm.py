"""A character-level LSTM language model trained with one compiled function per step.

An embedding, a two-layer `nn.LSTM` and a linear head read windows of the public-domain text in
examples/data/ (see its README) and learn to predict each next character. `tg.compile` turns
the whole training step (forward through the unrolled LSTM, backward, gradient clipping and the
Adam update) into one generated NumPy function. Afterwards the same module generates text
eagerly, one character at a time, carrying the LSTM's (h, c) state from step to step.

    python examples/char_lstm.py                # 250 steps, ~15 s (compiling ~3 s of it)
    python examples/char_lstm.py --steps 1000 --temperature 0.5
"""

# ruff: noqa: E402
# (the imports below the thread setting come after it on purpose)

from __future__ import annotations

import os

# The model is tiny: BLAS worker threads cost more than they save, and on a shared machine they
# spin against other processes. Set before NumPy is first imported; export them to override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import math
import time
from pathlib import Path

from tqdm import tqdm

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

TEXT = Path(__file__).with_name("data") / "gettysburg_sonnets.txt"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=24, help="characters per window")
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm limit")
    parser.add_argument("--sample", type=int, default=200, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 picks the likeliest")
    parser.add_argument("--prompt", default="Four score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.sample = min(args.steps, 60), min(args.sample, 40)
    return args


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx, state=None):
        """Logits (batch, time, vocab) for token ids (batch, time), and the LSTM's (h, c)."""
        out, state = self.lstm(self.embed(idx), state)
        return self.head(out), state


class Vocab:
    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str):
        return tg.tensor([self.index[c] for c in text])

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


def random_batch(data, seq_len: int, batch_size: int):
    """Windows at random offsets; the targets are the inputs shifted by one character."""
    starts = tg.randint(0, len(data) - seq_len, (batch_size, 1))
    offsets = starts + tg.arange(seq_len)
    return data[offsets], data[offsets + 1]


def make_step(model: CharLSTM, opt: optim.Optimizer, clip: float):
    def train_step(x, y):
        opt.zero_grad()
        logits, _ = model(x)  # every window starts from a zero state
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)  # LSTMs can have gradient spikes
        opt.step()
        return loss

    return tg.compile(train_step)


def train(args, step, data) -> list[float]:
    losses = []
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for _ in bar:
        x, y = random_batch(data, args.seq_len, args.batch_size)
        losses.append(step(x, y).item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def generate(model: CharLSTM, vocab: Vocab, prompt: str, n: int, temperature: float) -> str:
    """Read the prompt, then append one character at a time, feeding the LSTM state forward
    (an eager loop: each call sees a sequence of length 1)."""
    model.eval()
    ids = vocab.encode(prompt).tolist()
    with tg.no_grad():
        logits, state = model(tg.tensor([ids]))
        for _ in range(n):
            last = logits[0, -1]
            if temperature > 0:
                probs = tg.softmax(last / temperature, dim=-1)
                next_id = int(tg.distributions.Categorical(probs=probs).sample().item())
            else:
                next_id = int(last.argmax().item())
            ids.append(next_id)
            logits, state = model(tg.tensor([[next_id]]), state)
    model.train()
    return vocab.decode(ids)


def main(argv=None) -> str:
    args = parse_args(argv)
    tg.manual_seed(args.seed)
    text = TEXT.read_text()
    vocab = Vocab(text)
    data = vocab.encode(text)
    model = CharLSTM(len(vocab.chars), args.embed, args.hidden, args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"text: {len(text)} characters, vocab {len(vocab.chars)}; model: embed {args.embed}, "
        f"LSTM {args.layers}x{args.hidden}, {n_params} parameters; windows of {args.seq_len}"
    )
    print(f"uniform-guess loss would be ln({len(vocab.chars)}) = {math.log(len(vocab.chars)):.4f}")
    step = make_step(model, optim.Adam(model.parameters(), lr=args.lr), args.clip)
    start = time.perf_counter()
    losses = train(args, step, data)
    seconds = time.perf_counter() - start
    tail = losses[-10:]
    print(f"first loss {losses[0]:.4f}, last 10 steps' mean {sum(tail) / len(tail):.4f}")
    print(
        f"trained {args.steps} steps in {seconds:.1f} s ({seconds / args.steps * 1000:.1f} ms/step)"
    )
    nodes = next(ln for ln in step.explain().splitlines() if ln.startswith("  step:"))
    count = nodes.split(":", 1)[1].split("(")[0].strip()
    print(f"compiled step: {count} in one function (the LSTM unrolled over {args.seq_len} steps)")
    sample = generate(model, vocab, args.prompt, args.sample, args.temperature)
    print(f"sample:\n{sample}")
    return sample


if __name__ == "__main__":
    main()
