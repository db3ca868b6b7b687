"""Binary cross entropy on a sigmoid's probabilities (W7's loss), where the sigmoid saturates.

F.binary_cross_entropy is one op with a gradient op; in a compiled step fuse_training_step's
sigmoid-bce-gradient rule joins that gradient with the sigmoid's into one kernel computing
g (p - t) where no log is clamped and eager's own formula where one is (p = 0 or 1, or a log
below -100). These tests hold the kernel and whole compiled training steps to eager at
saturated logits, in float64 and float32, and the op to the composition it replaced."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.ir.graph import Graph
from tracegrad.ops import fused
from tracegrad.ops import nn as nn_ops
from tracegrad.ops.kernels import CHUNK

DTYPES = [np.float64, np.float32]


def saturated_probabilities(dtype, n: int) -> np.ndarray:
    """sigmoid of logits spread over [-120, 120]: exact 0s and 1s, subnormal probabilities
    whose log is below -100 (float32), and ordinary ones."""
    logits = np.linspace(-120.0, 120.0, n)
    return (1 / (1 + np.exp(-logits))).astype(dtype)


def near_0_or_1(p: np.ndarray) -> np.ndarray:
    """Where p or 1 - p is below e^-99 or sqrt(tiny): every clamped log is there (the kernel
    computes eager's formula there)."""
    safe = max(np.exp(-99.0), np.sqrt(np.finfo(p.dtype).tiny))
    return ~((p >= safe) & (1 - p >= safe))


@pytest.mark.parametrize("n", [301, 4 * CHUNK + 7], ids=["small", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_fused_gradient_equals_eager_formula_at_saturated_logits(dtype, n):
    rng = np.random.default_rng(0)
    p = saturated_probabilities(dtype, n).reshape(-1, 1) * np.ones((1, 3), dtype)
    t = rng.uniform(0, 1, p.shape).astype(dtype)
    g = rng.uniform(0.5, 2, p.shape).astype(dtype)
    with np.errstate(over="ignore"):  # float32: t / p overflows where p is subnormal
        eager = fused.sigmoid_grad(p, fused.binary_cross_entropy_grad(p, t, g))
    with np.errstate(over="ignore"):
        got = fused.sigmoid_binary_cross_entropy_grad(p, t, g, out=np.empty_like(p))
    near = near_0_or_1(p)
    with np.errstate(divide="ignore"):
        clamped = ~((np.log(p) >= -100) & (np.log(1 - p) >= -100))
    assert clamped.any() and not (clamped & ~near).any()  # every clamp binds near 0 or 1
    assert (clamped & (p > 0) & (p < 1)).any()  # a log below -100 of a positive p too
    # near 0 and 1 the kernel computes eager's formula itself: the same bits
    np.testing.assert_array_equal(got[near], eager[near])
    # elsewhere g (p - t), equal up to the rounding of eager's longer formula
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got[~near], eager[~near], rtol=0, atol=16 * eps * g.max())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_op_equals_the_composition_it_replaced(dtype):
    """Forward bit for bit (also at 0, 1, nan and out of range); the gradient op equals the
    composition's gradient within rounding and is 0 exactly where it is."""
    special = np.array([0.0, 1.0, np.nan, -0.5, 1.5, 1e-45, 3e-44, 1e-300, 1 - 1e-7], dtype)
    p = np.concatenate([special, np.linspace(0.01, 0.99, 23, dtype=dtype)])
    t = np.random.default_rng(1).uniform(0, 1, p.shape).astype(dtype)
    ours = tg.tensor(p, requires_grad=True)
    theirs = tg.tensor(p, requires_grad=True)
    loss = F.binary_cross_entropy(ours, tg.tensor(t), reduction="none")
    reference = nn_ops.binary_cross_entropy_reference(theirs, tg.tensor(t))
    np.testing.assert_array_equal(loss.detach().numpy(), reference.detach().numpy())
    g = tg.tensor(np.random.default_rng(2).uniform(0.5, 2, p.shape).astype(dtype))
    loss.backward(g)
    reference.backward(g)
    got, want = ours.grad.numpy(), theirs.grad.numpy()
    assert ((got == 0) == (want == 0)).all()
    # within rounding of the two terms g (1 - t) / (1 - p) and g t / p, which may cancel
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        terms = g.numpy() * (np.abs((1 - t) / (1 - p)) + np.abs(t / p))
    finite = np.isfinite(want) & np.isfinite(terms)
    error = np.abs(got - want)[finite]
    assert (error <= 8 * np.finfo(dtype).eps * terms[finite]).all(), error


class Decoder(nn.Module):
    """A VAE's decoder and its loss: linear, sigmoid, binary cross entropy (sum)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 40)

    def forward(self, z, x):
        return F.binary_cross_entropy(tg.sigmoid(self.fc(z)), x, reduction="sum")


def run(dtype, compiled: bool, steps: int = 3):
    """Losses, parameters and gradients after Adam steps on logits up to about +-500 (the
    weights scaled up), so many sigmoids saturate."""
    tg.manual_seed(0)
    model = Decoder().to(tg.float64 if dtype == np.float64 else tg.float32)
    with tg.no_grad():
        model.fc.weight.mul_(200.0)
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def train_step(z, x):
        opt.zero_grad()
        loss = model(z, x)
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step) if compiled else train_step
    rng = np.random.default_rng(3)
    z = tg.tensor(rng.standard_normal((16, 6)).astype(dtype))
    x = tg.tensor(rng.uniform(0, 1, (16, 40)).astype(dtype))
    logits = model.fc(z).detach().numpy()
    losses = [step(z, x).item() for _ in range(steps)]
    params = [p.detach().numpy().copy() for p in model.parameters()]
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    return losses, params, grads, logits, (step if compiled else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_compiled_step_equals_eager_at_saturated_logits(dtype):
    losses, params, grads, logits, step = run(dtype, compiled=True)
    eager_losses, eager_params, eager_grads, _, _ = run(dtype, compiled=False)
    assert (np.abs(logits) > 100).mean() > 0.2  # saturated: logs clamped there
    assert "rt.sigmoid_binary_cross_entropy_grad(" in step.code
    assert "np.log(" not in step.code  # the loss's passes are its kernel's
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(losses, eager_losses, rtol=rtol)
    for got, want in zip(grads + params, eager_grads + eager_params, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_loss_and_unsaturated_gradient_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    logits, x = rng.normal(0, 4, (8, 5)), rng.uniform(0, 1, (8, 5))
    ours = tg.tensor(logits, requires_grad=True)
    step = tg.compile(lambda a, b: F.binary_cross_entropy(tg.sigmoid(a), b, reduction="sum"))
    loss = step(ours, tg.tensor(x))
    loss.backward()
    theirs = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.binary_cross_entropy(
        torch.sigmoid(theirs), torch.tensor(x), reduction="sum"
    )
    want.backward()
    np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-12)
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-9, atol=1e-12)


SIGMOID_AFTER_BCE = """graph(%x:f64[2,3], %t:f64[2,3], %g:f64[2,3]) {
  %1:f64[2,3] = sigmoid %x
  %2:f64[2,3] = binary_cross_entropy_grad %1, %t, %g
  %3:f64[2,3] = sigmoid_grad %1, %2
  return %3%s
}"""


@pytest.mark.parametrize(
    "returned, fires", [("", True), (", %2", False)], ids=["alone", "loss-gradient-also-read"]
)
def test_rule_fires_only_where_the_loss_gradient_has_no_other_reader(returned, fires):
    graph = Graph.parse(SIGMOID_AFTER_BCE.replace("%s", returned))
    after = tg.passes.run(graph, ["fuse_training_step", "dce"])
    counts = after.op_counts()
    assert counts.get("sigmoid_binary_cross_entropy_grad", 0) == fires
    assert counts.get("binary_cross_entropy_grad", 0) == (not fires)
