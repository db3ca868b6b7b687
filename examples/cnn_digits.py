"""A small CNN on the 8x8 digits: a compiled MODULE with an eager loss and optimizer.

`tg.compile(model)` compiles the forward and derives the backward; its outputs carry gradients
back through the generated backward, so the ordinary PyTorch loop (loss.backward(), opt.step())
runs unchanged around it.

    python examples/cnn_digits.py            # 8 epochs
    python examples/cnn_digits.py --eager    # the same loop without compiling, for comparison
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
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="do not compile the model")
    parser.add_argument("--quick", action="store_true", help="a few epochs, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 3)
    return args


def digits_cnn() -> nn.Module:
    # 8x8 -> (pad 1) 8x8 x8 -> 8x8 x16 -> pool 4x4 x16 = 256 features -> 10 classes
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def as_images(x):
    return x.reshape(-1, 1, 8, 8)


def train_epoch(net, opt, loader) -> float:
    total, batches = 0.0, 0
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)  # eager loss on the compiled model's logits
        loss.backward()  # runs the generated backward, then the eager loss's
        opt.step()
        total += loss.item()
        batches += 1
    return total / batches


def accuracy(net, x, y) -> float:
    net.eval()  # a new signature (eval mode, no grad): compiled once, forward only
    with tg.no_grad():
        hits = (net(x).argmax(1) == y).float().mean().item()
    net.train()
    return hits


def main(argv=None) -> float:
    args = parse_args(argv)
    tg.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = tg.data.load_digits()
    x_train, x_test = as_images(x_train), as_images(x_test)
    loader = tg.data.DataLoader(
        tg.data.TensorDataset(x_train, y_train), args.batch_size, shuffle=True, drop_last=True
    )
    model = digits_cnn()
    net = model if args.eager else tg.compile(model)  # shares the model's parameters
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    mode = "eager" if args.eager else "compiled module"
    print(f"digits as {tuple(x_train.shape[1:])} images; CNN ({mode}), SGD momentum 0.9")
    times = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        loss = train_epoch(net, opt, loader)
        times.append(time.perf_counter() - start)
        print(f"epoch {epoch + 1:3d}  loss {loss:.4f}  {times[-1] * 1000:7.1f} ms")

    if not args.eager:
        print_node_counts(net)  # before evaluating: the latest specialization is training's
    acc = accuracy(net, x_test, y_test)
    # a compiled model's first epoch includes tracing and code generation
    steady = times[1:] or times
    print(f"first epoch: {times[0]:.2f} s" + ("" if args.eager else " (includes compiling)"))
    print(f"time per epoch: {sum(steady) / len(steady) * 1000:.1f} ms (epochs 2 on)")
    print(f"test accuracy: {acc:.2%}")
    if not args.eager:
        # evaluating added an eval-mode, no-grad specialization: one recompile, by design
        print(f"recompiles: {len(net.recompile_reasons)}")
    return acc


def print_node_counts(net) -> None:
    """Node counts of the training specialization, as explain() reports them."""
    for line in net.explain().splitlines():
        if line.startswith(("  forward:", "  backward:", "saved for")):
            print(line.strip())


if __name__ == "__main__":
    main()
