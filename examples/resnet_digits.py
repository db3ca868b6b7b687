"""A small ResNet with BatchNorm on the 8x8 digits, trained by a compiled WHOLE STEP.

Residual blocks as torchvision's BasicBlock (two 3x3 convolutions with BatchNorm, a 1x1
convolution on the shortcut where the shape changes), global average pooling
(AdaptiveAvgPool2d) and a linear classifier. `tg.compile(train_step)` turns zero_grad, the
forward, loss.backward() and the SGD update (momentum, weight decay) into one generated NumPy
function; BatchNorm's running statistics are state it updates in place, and evaluation runs
the module eagerly in eval mode, on those statistics.

    python examples/resnet_digits.py            # 10 epochs
    python examples/resnet_digits.py --eager    # the same loop without compiling
"""

# ruff: noqa: E402
# (the imports below the thread setting come after it on purpose)

from __future__ import annotations

import os

# Tiny models: BLAS worker threads cost more than they save (see cnn_digits.py).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import time

from tqdm import tqdm

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="do not compile the step")
    parser.add_argument("--quick", action="store_true", help="a few epochs, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 4)
    return args


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a strided 1x1
    convolution with BatchNorm when the block changes the width or the size."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def digits_resnet(num_classes: int = 10) -> nn.Module:
    # 1x8x8 -> 16x8x8 -> block 16x8x8 -> block 32x4x4 -> average 32 -> 10 classes
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        BasicBlock(16, 16),
        BasicBlock(16, 32, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


def make_train_step(model, opt, compiled: bool):
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return train_step if not compiled else tg.compile(train_step)


def accuracy(model, x, y) -> float:
    model.eval()  # BatchNorm normalizes by its running statistics
    with tg.no_grad():
        hits = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return hits


def main(argv=None) -> float:
    args = parse_args(argv)
    tg.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = tg.data.load_digits()
    x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    loader = tg.data.DataLoader(
        tg.data.TensorDataset(x_train, y_train), args.batch_size, shuffle=True, drop_last=True
    )
    model = digits_resnet()
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    step = make_train_step(model, opt, compiled=not args.eager)
    mode = "eager step" if args.eager else "compiled whole step"
    print(f"digits as {tuple(x_train.shape[1:])} images; ResNet with BatchNorm ({mode})")

    start = time.perf_counter()
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for epoch in bar:
        losses = [step(x, y).item() for x, y in loader]
        bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
        tqdm.write(f"epoch {epoch + 1:3d}  loss {sum(losses) / len(losses):.4f}")
    print(f"train time: {time.perf_counter() - start:.2f} s")
    acc = accuracy(model, x_test, y_test)
    print(f"test accuracy: {acc:.2%}")
    if not args.eager:
        print(f"recompiles: {len(step.recompile_reasons)}")
    return acc


if __name__ == "__main__":
    main()
