"""A custom autograd.Function whose hand-written backward is the one used, eager AND compiled.

`BinarizeSTE` binarizes activations to -1/+1 with `sign`, whose true derivative is zero almost
everywhere, so derived gradients would never reach the layers below it. Its backward is the
straight-through estimator instead: pass the gradient unchanged where |x| <= 1, block it where
the unit is saturated. The seed-style model (nn.Linear, nn.MSELoss, optim.SGD, a DataLoader) is
trained twice from the same start and on the same batches, once eagerly and once through
`tg.compile(model)`, and the two losses are printed side by side.

    python examples/custom_function.py
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

import numpy as np

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.data import DataLoader, TensorDataset


class BinarizeSTE(tg.autograd.Function):
    """sign(x) forward; straight-through backward (gradient 1 where |x| <= 1, else 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sign()

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1)


class BinaryNet(nn.Module):
    """Linear -> binary activation -> Linear; `ste=False` uses plain sign (derived gradient)."""

    def __init__(self, hidden: int = 32, ste: bool = True):
        super().__init__()
        self.ste = ste
        self.hidden = nn.Linear(4, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.hidden(x)
        return self.out(BinarizeSTE.apply(h) if self.ste else h.sign())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few epochs, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 3)
    return args


def make_data(n: int):
    inputs = tg.randn(n, 4)
    targets = (inputs @ tg.tensor([[1.0], [-2.0], [0.5], [3.0]])).tanh()
    return inputs, targets


def copy_of(model: BinaryNet, ste: bool = True) -> BinaryNet:
    """A model with the same parameter values, so runs can start from the same point."""
    twin = BinaryNet(model.hidden.weight.shape[0], ste)
    twin.load_state_dict(model.state_dict())
    return twin


def fixed_batches(loader, epochs: int) -> list[list]:
    """Every epoch's shuffled batches drawn once, so each model sees exactly the same ones."""
    return [list(loader) for _ in range(epochs)]


def train(net, params, batches, lr: float) -> tuple[list[float], float]:
    """SGD with momentum over the batches; returns the loss of every step and the seconds."""
    loss_fn = nn.MSELoss()
    opt = optim.SGD(params, lr=lr, momentum=0.9)
    losses, start = [], time.perf_counter()
    for epoch in batches:
        for x, y in epoch:
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, time.perf_counter() - start


def compare(eager: list[float], compiled: list[float], per_epoch: int) -> float:
    """Print the two loss curves side by side; returns the largest difference."""
    print(f"{'step':>5} {'eager loss':>12} {'compiled loss':>14} {'|difference|':>13}")
    shown = {0, 1, 2} | set(range(per_epoch - 1, len(eager), per_epoch))  # + each epoch's last
    for i in sorted(shown):
        e, c = eager[i], compiled[i]
        print(f"{i + 1:5d} {e:12.6f} {c:14.6f} {abs(e - c):13.2e}")
    worst = max(abs(a - b) for a, b in zip(eager, compiled, strict=True))
    print(f"steps: {len(eager)}; largest |eager - compiled| loss difference: {worst:.2e}")
    return worst


def hidden_grad(net, x, y) -> np.ndarray:
    """d loss / d hidden.weight for one batch; no gradient at all counts as zeros."""
    net.zero_grad()
    nn.MSELoss()(net(x), y).backward()
    grad = net.hidden.weight.grad
    return np.zeros(tuple(net.hidden.weight.shape)) if grad is None else grad.numpy()


def show_user_backward(eager, compiled, x, y) -> None:
    """The STE gradient (eager and compiled agree) vs what autograd derives from plain sign."""
    derived = copy_of(eager, ste=False)
    ste_eager, ste_compiled = hidden_grad(eager, x, y), hidden_grad(compiled, x, y)
    plain = hidden_grad(derived, x, y)
    print("\ngradient of the loss w.r.t. hidden.weight on one batch (Frobenius norm):")
    print(f"  user's straight-through backward, eager:    {np.linalg.norm(ste_eager):.6f}")
    print(f"  user's straight-through backward, compiled: {np.linalg.norm(ste_compiled):.6f}")
    print(f"  derived from sign() without the Function:   {np.linalg.norm(plain):.6f}")
    agree = np.allclose(ste_eager, ste_compiled, rtol=1e-4, atol=1e-6)
    print(f"  eager and compiled user gradients agree: {agree}")
    print(f"  user's backward differs from the derived one: {not np.allclose(ste_eager, plain)}")


def main(argv=None) -> float:
    args = parse_args(argv)
    tg.manual_seed(args.seed)
    inputs, targets = make_data(args.samples)
    eager = BinaryNet()
    model_c = copy_of(eager)
    plain = copy_of(eager, ste=False)  # plain sign(): what autograd derives without the Function
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=args.batch_size, shuffle=True)
    batches = fixed_batches(loader, args.epochs)
    compiled = tg.compile(model_c)  # shares model_c's parameters, which the optimizer updates

    losses_e, secs_e = train(eager, eager.parameters(), batches, args.lr)
    losses_c, secs_c = train(compiled, model_c.parameters(), batches, args.lr)
    losses_p, _ = train(plain, plain.parameters(), batches, args.lr)
    worst = compare(losses_e, losses_c, len(batches[0]))
    print(f"training time: eager {secs_e:.2f} s, compiled {secs_c:.2f} s (includes compiling)")
    # sign's derived gradient is zero, so with it only the output layer ever learns
    print(f"final loss with plain sign() instead (hidden layer never learns): {losses_p[-1]:.6f}")

    show_user_backward(eager, compiled, inputs[:64], targets[:64])
    for line in compiled.explain().splitlines():
        if line.startswith(("  forward:", "  backward:")):
            print("compiled " + line.strip())
    return worst


if __name__ == "__main__":
    main()
