"""Convolutions and pooling with padding, compiled: the padding is its own op (pad2d, from
specialize_numpy's padded-windows rule) writing into a planned buffer, so a steady compiled
step makes no padded copy, and every result equals eager's: losses, gradients, parameters
after steps, batch-norm running statistics; and PyTorch's where it is installed."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

# (padding, stride, dilation, groups) of the convolution under test
CONVS = [
    (0, 1, 1, 1),
    (1, 1, 1, 1),
    (2, 1, 1, 1),
    (1, 2, 1, 1),
    (2, 2, 2, 1),
    (1, 1, 1, 2),
    ((2, 1), (1, 2), (1, 2), 2),
]


class ConvBlock(nn.Module):
    """conv - batch norm - relu - padded max pool - padded average pool - linear."""

    def __init__(self, padding, stride, dilation, groups):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride, padding, dilation, groups)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        y = self.norm(self.conv(x)).relu()
        y = F.max_pool2d(y, 3, stride=1, padding=1)
        y = F.avg_pool2d(y, 3, stride=1, padding=1)
        return self.head(y.mean((2, 3)))


def run(config, compiled: bool, steps: int = 3, dtype=np.float64):
    """Losses, parameters and batch-norm buffers after ``steps`` SGD steps (momentum, weight
    decay), and the compiled step (or None)."""
    tg.manual_seed(0)
    model = ConvBlock(*config).to(tg.float64 if dtype == np.float64 else tg.float32)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step) if compiled else train_step
    rng = np.random.default_rng(1)
    x = tg.tensor(rng.standard_normal((3, 4, 9, 8)).astype(dtype))
    y = tg.tensor(rng.integers(0, 3, 3))
    losses = [step(x, y).item() for _ in range(steps)]
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    return losses, state, grads, (step if compiled else None)


@pytest.mark.parametrize("config", CONVS, ids=str)
def test_compiled_step_with_padded_windows_equals_eager(config):
    losses, state, grads, step = run(config, compiled=True)
    eager_losses, eager_state, eager_grads, _ = run(config, compiled=False)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-12)
    for name, want in eager_state.items():  # parameters and running statistics
        np.testing.assert_allclose(state[name], want, rtol=1e-10, atol=1e-13, err_msg=name)
    for name, want in eager_grads.items():
        np.testing.assert_allclose(grads[name], want, rtol=1e-10, atol=1e-13, err_msg=name)
    # the two pools' paddings, and the convolution's if it pads; no padded copy elsewhere
    assert step.code.count("rt.pad2d(") == 2 + (config[0] != 0)
    assert "np.pad(" not in step.code


def test_compiled_module_with_padded_windows_equals_eager():
    tg.manual_seed(0)
    model = ConvBlock(1, 1, 1, 1).double()
    compiled = tg.compile(model)
    x = tg.tensor(np.random.default_rng(2).standard_normal((2, 4, 7, 7)), requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    got = [x.grad.numpy().copy(), *(p.grad.numpy().copy() for p in model.parameters())]
    x.grad = None
    model.zero_grad()
    model(x).sum().backward()
    expected = [x.grad.numpy(), *(p.grad.numpy() for p in model.parameters())]
    np.testing.assert_allclose(out.detach().numpy(), model(x).detach().numpy(), rtol=1e-12)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-13)
    assert "rt.pad2d(" in compiled.code


def test_steady_compiled_step_makes_no_padded_copy():
    """A padded 3x3 convolution over (16, 16, 32, 32) float32: its padded copy is 1.2 MiB;
    the steady step allocates less than half of that (nothing of that size)."""
    tg.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    opt = optim.SGD(conv.parameters(), lr=0.01)

    def train_step(x):
        opt.zero_grad()
        loss = conv(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step)
    x = tg.tensor(np.random.default_rng(0).standard_normal((16, 16, 32, 32)).astype(np.float32))
    for _ in range(2):
        step(x)
    padded_bytes = 16 * 16 * 34 * 34 * 4
    tracemalloc.start()
    try:
        step(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < padded_bytes // 2, f"a steady step allocated {peak} B"


@pytest.mark.parametrize("config", CONVS[1:3], ids=str)
def test_padded_convolution_matches_pytorch(config):
    torch = pytest.importorskip("torch")
    padding, stride, dilation, groups = config
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 4 // groups, 3, 3))
    ours = tg.tensor(x, requires_grad=True)
    compiled = tg.compile(
        lambda a: F.conv2d(a, tg.tensor(w), None, stride, padding, dilation, groups)
    )
    out = compiled(ours)
    out.square().sum().backward()
    theirs = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.conv2d(
        theirs, torch.tensor(w), None, stride, padding, dilation, groups
    )
    want.square().sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-10, atol=1e-12)
