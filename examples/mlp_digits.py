"""An MLP on the bundled 8x8 digits, trained with ONE compiled function per step.

`tg.compile(train_step)` traces zero_grad, the forward, loss.backward() and opt.step() into a
single generated NumPy function; parameters and Adam's state are updated in place by it.

    python examples/mlp_digits.py                      # 20 epochs
    python examples/mlp_digits.py --picture mlp.html   # also draw the compiled step
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
import time

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--picture", metavar="PATH", help="write an HTML/SVG/DOT view of the step")
    parser.add_argument("--quick", action="store_true", help="a few epochs, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 5)
    return args


def report_summary(explain: str) -> str:
    """explain() also lists every guard and the full recompile diffs; keep the passes, the
    generated functions and the recompile count, which is what a reader skims for."""
    keep, lines = False, []
    for line in explain.splitlines():
        if line.startswith(("passes on", "generated functions", "saved for")):
            keep = not line.startswith("saved for")
        if line.startswith("recompiles:"):
            lines.append(line)
            break
        if keep and line.strip():
            lines.append(line)
    return "\n".join(lines)


def make_step(model: nn.Module, opt: optim.Optimizer):
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss  # computed before the update, as in eager mode

    return tg.compile(train_step)


def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    with tg.no_grad():
        hits = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return hits


def main(argv=None) -> float:
    args = parse_args(argv)
    tg.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = tg.data.load_digits()
    # drop_last keeps every batch the same shape, so the step compiles for one signature only
    loader = tg.data.DataLoader(
        tg.data.TensorDataset(x_train, y_train), args.batch_size, shuffle=True, drop_last=True
    )
    model = nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10))
    opt = optim.Adam(model.parameters(), lr=args.lr)
    step = make_step(model, opt)

    print(f"digits: {len(y_train)} train, {len(y_test)} test; MLP 64-{args.hidden}-10, Adam")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        total, batches = 0.0, 0
        for x, y in loader:
            total += step(x, y).item()
            batches += 1
        print(f"epoch {epoch + 1:3d}  loss {total / batches:.4f}")
    seconds = time.perf_counter() - start

    acc = accuracy(model, x_test, y_test)
    print(f"train time: {seconds:.2f} s ({seconds / args.epochs * 1000:.1f} ms/epoch)")
    print(f"test accuracy: {acc:.2%}")
    print("\ncompile report (summary of step.explain()):")
    print(report_summary(step.explain()))
    if args.picture:
        print(f"\npicture of the compiled step: {step.visualize(args.picture)}")
    return acc


if __name__ == "__main__":
    main()
