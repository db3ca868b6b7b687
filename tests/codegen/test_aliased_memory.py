"""The memory plan never writes over memory an op still reads through a view.

A result written ``out=`` into the memory of one of its inputs is wrong when another input of
the same op (a later member of a fused kernel, a member of a row loop) reads that memory
through a transposed, reshaped, sliced or broadcast view: it reads elements already
overwritten. Random programs reading values through views of themselves (``aliased_programs``)
run as whole compiled steps and as compiled modules, at batch sizes 1 to 3, and their loss
and gradients must equal eager tracegrad, ``passes=None`` and PyTorch (float64, 1e-10); three
programs where the plan once did so are pinned below.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from aliased_programs import aliased_programs
from hypothesis import HealthCheck, given, settings

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn

try:
    import torch
except ImportError:  # PyTorch is an oracle only: its tests skip without it
    torch = None

EXAMPLES = int(os.environ.get("TRACEGRAD_PASSES_EXAMPLES", "60"))
random_programs = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TOL = 1e-10


def loss_of(y):
    """A loss whose gradient reads ``y`` itself (not only ones): ``(y*y + y).sum()``."""
    return (y * y + y).sum()


class Net(nn.Module):
    def __init__(self, program, arrays):
        super().__init__()
        self.program = program.function(F)
        self.w = nn.Parameter(tg.tensor(arrays["w"]))
        self.bias = nn.Parameter(tg.tensor(arrays["bias"]))

    def forward(self, x):
        return self.program(x, self.w, self.bias)


def run(program, how: str) -> list[np.ndarray]:
    """Loss, then the gradients of x, w and bias (zeros for None), computed ``how``: "eager",
    "step" or "module" (compiled with the default passes and check=True), or "step none",
    "module none" (passes=None)."""
    arrays = program.arrays()
    net = Net(program, arrays)
    x = tg.tensor(arrays["x"], requires_grad=True)
    kind, *none = how.split()
    options = {"passes": None} if none else {"check": True}
    if kind == "module":
        loss = loss_of(tg.compile(net, **options)(x))
        loss.backward()
    else:

        def step(x):
            loss = loss_of(net(x))
            loss.backward()
            return loss

        loss = (step if kind == "eager" else tg.compile(step, **options))(x)
    grads = [t.grad for t in (x, net.w, net.bias)]
    grads = [np.zeros(t.shape) if g is None else g.numpy() for g, t in zip(grads, arrays.values())]
    return [loss.detach().numpy(), *grads]


def torch_run(program) -> list[np.ndarray]:
    tensors = {k: torch.tensor(a, requires_grad=True) for k, a in program.arrays().items()}
    loss = loss_of(program.function(torch.nn.functional)(**tensors))
    loss.backward()
    grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in tensors.values()]
    return [loss.detach().numpy(), *(g.numpy() for g in grads)]


def assert_same(got, want, what: str):
    for name, a, b in zip(["loss", "x.grad", "w.grad", "bias.grad"], got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL, err_msg=f"{name}, {what}")


@pytest.mark.parametrize("kind", ["step", "module"])
@random_programs
@given(program=aliased_programs())
def test_compiled_programs_reading_views_of_themselves_equal_eager(kind, program):
    eager = run(program, "eager")
    assert_same(run(program, kind), eager, f"compiled {kind} vs eager")
    assert_same(run(program, f"{kind} none"), eager, f"{kind}, passes=None vs eager")


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@random_programs
@given(program=aliased_programs())
def test_programs_reading_views_of_themselves_equal_pytorch(program):
    assert_same(run(program, "step"), torch_run(program), "compiled step vs PyTorch")


# --- the programs where the plan once wrote over a view ------------------------------------------


def square_batch(x):
    """A fused kernel wrote ``out=`` into the memory of its first input, which its second
    read as a transposed view made once beside the buffers."""
    return ((x.T - x) ** 2).sum()


def test_difference_with_its_own_transpose():
    a = np.arange(1.0, 10.0).reshape(3, 3) / 10
    x = tg.tensor(a, dtype=tg.float64, requires_grad=True)

    def step(x):
        loss = square_batch(x)
        loss.backward()
        return loss

    tg.compile(step)(x)
    d = a.T - a
    want = 2 * (d.T - d)  # d/dx sum((x^T - x)^2), antisymmetric: +-0.8, +-1.6
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12, atol=1e-12)
    assert np.abs(want).max() == pytest.approx(1.6)


class Linear1(nn.Module):
    """Batch 1: the bias gradient's kernel read the product's buffer through a (1, 3)
    transposed view after writing into it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x)


class ResidualGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return x + F.gelu(self.lin(x))


@pytest.mark.parametrize("model", [Linear1, ResidualGELU])
@pytest.mark.parametrize("kind", ["step", "module"])
@pytest.mark.parametrize("batch", [1, 2])
def test_batch_one_linear_layers(model, kind, batch):
    def gradients(compiled: bool):
        tg.manual_seed(0)
        net = model().double()
        x = tg.tensor(np.linspace(-1, 1, 4 * batch).reshape(batch, 4), requires_grad=True)
        if kind == "module":
            loss_of((tg.compile(net) if compiled else net)(x)).backward()
        else:

            def step(x):
                loss = loss_of(net(x))
                loss.backward()
                return loss

            (tg.compile(step) if compiled else step)(x)
        return [x.grad.numpy(), *(p.grad.numpy() for p in net.parameters())]

    for got, want in zip(gradients(True), gradients(False), strict=True):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
