"""``tg.linalg`` norms and ``svdvals``: values and gradients against PyTorch and finite
differences, eagerly, compiled as a module and in a compiled training step; their errors."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn
from tracegrad.autograd import gradcheck

RNG = np.random.default_rng(11)
MATRIX_ORDS = ["fro", "nuc", 2, -2, 1, -1, math.inf, -math.inf]

# call(lib, x) with lib tg or torch -> a norm; x of shape (2, 3, 4)
TORCH_CASES = {
    **{
        f"matrix_norm_{ord}": lambda lib, x, ord=ord: lib.linalg.matrix_norm(x, ord)
        for ord in MATRIX_ORDS
    },
    **{
        f"matrix_norm_{ord}_dims_keepdim": lambda lib, x, ord=ord: lib.linalg.matrix_norm(
            x, ord, dim=(2, 0), keepdim=True
        )
        for ord in MATRIX_ORDS
    },
    "vector_norm": lambda lib, x: lib.linalg.vector_norm(x),
    "vector_norm_3_dims": lambda lib, x: lib.linalg.vector_norm(x, 3, dim=(0, 2)),
    "vector_norm_half_keepdim": lambda lib, x: lib.linalg.vector_norm(x, 0.5, 1, True),
    "vector_norm_inf": lambda lib, x: lib.linalg.vector_norm(x, math.inf, dim=-1),
    "vector_norm_0": lambda lib, x: lib.linalg.vector_norm(x, 0, dim=1),
    "norm_flat": lambda lib, x: lib.linalg.norm(x),
    "norm_dim": lambda lib, x: lib.linalg.norm(x, dim=1),
    "norm_ord_dim": lambda lib, x: lib.linalg.norm(x, -1, dim=2, keepdim=True),
    "norm_matrix_dims": lambda lib, x: lib.linalg.norm(x, dim=(0, 1)),
    "norm_2d_spectral": lambda lib, x: lib.linalg.norm(x[0], 2),
    "norm_2d_nuclear": lambda lib, x: lib.linalg.norm(x[1].T, "nuc"),
    "norm_1d": lambda lib, x: lib.linalg.norm(x[0, 0], 1),
    "svdvals": lambda lib, x: lib.linalg.svdvals(x),
    "svdvals_wide": lambda lib, x: lib.linalg.svdvals(x[:, :2]),
    "tensor_norm_nuc": lambda lib, x: x[0].norm("nuc"),
    "tensor_norm_nuc_dims": lambda lib, x: x.norm(p="nuc", dim=(0, 2), keepdim=True),
    "tensor_norm_fro_dims": lambda lib, x: x.norm("fro", dim=(1, 2)),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_values_and_gradients_match_torch(case):
    torch = pytest.importorskip("torch")
    values = RNG.standard_normal((2, 3, 4))
    ours = tg.tensor(values, requires_grad=True)
    theirs = torch.tensor(values, requires_grad=True)
    out, expected = TORCH_CASES[case](tg, ours), TORCH_CASES[case](torch, theirs)
    assert tuple(out.shape) == tuple(expected.shape) and out.dtype is tg.float64
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-12)
    weights = RNG.standard_normal(tuple(expected.shape))
    if out.requires_grad:  # (ord 0 counts elements: no gradient; PyTorch's is zero)
        (out * tg.tensor(weights)).sum().backward()
        (expected * torch.tensor(weights)).sum().backward()
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ord", MATRIX_ORDS, ids=str)
@pytest.mark.parametrize("shape", [(3, 4), (4, 2), (2, 3, 3)], ids=str)
def test_matrix_norm_gradients_match_finite_differences(ord, shape):
    # entries apart, so the extreme row/column sums and singular values are unique
    x = tg.tensor(RNG.permutation(np.prod(shape)).reshape(shape) * 0.31 - 1.1, requires_grad=True)
    assert gradcheck(lambda a: tg.linalg.matrix_norm(a, ord), (x,))


def test_float32_stays_float32_and_dtype_converts():
    x = tg.tensor(RNG.standard_normal((3, 3)), dtype=tg.float32)
    assert tg.linalg.matrix_norm(x, 2).dtype is tg.float32
    assert tg.linalg.matrix_norm(x, "nuc", dtype=tg.float64).dtype is tg.float64
    assert tg.linalg.svdvals(x).dtype is tg.float32


@pytest.mark.parametrize("name", ["norm", "vector_norm", "matrix_norm", "svdvals"])
def test_signatures_are_pytorchs(name):
    """PyTorch's functions are builtins: their signature is the first line of the docstring."""
    torch = pytest.importorskip("torch")
    documented = getattr(torch.linalg, name).__doc__.strip().splitlines()[0]
    theirs = documented.removeprefix("linalg.").split(" -> ")[0]
    ours = f"{name}{inspect.signature(getattr(tg.linalg, name))}".split(" -> ")[0]
    assert _parameters(ours) == _parameters(theirs)


def _parameters(signature: str):
    """Positional parameters in order, keyword-only ones as a set, with their defaults."""
    positional, _, keyword = signature[signature.index("(") + 1 : -1].partition(", *, ")
    return positional.split(", "), set(keyword.split(", "))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x: tg.linalg.matrix_norm(x, 3), ValueError, "ord=3 is not a matrix norm"),
        (lambda x: tg.linalg.matrix_norm(x, dim=(1, -2)), tg.ShapeError, r"dim=\(1, -2\)"),
        (lambda x: tg.linalg.matrix_norm(x[0, 0]), tg.ShapeError, r"shape \(4,\)"),
        (lambda x: tg.linalg.norm(x, 2), tg.ShapeError, "must be 1-d or 2-d"),
        (lambda x: tg.linalg.norm(x, dim=(0, 1, 2)), tg.ShapeError, "1 or 2 dims"),
        (lambda x: tg.linalg.vector_norm(x, "fro"), ValueError, "must be a number"),
        (lambda x: tg.linalg.vector_norm(x.long()), tg.DTypeError, "int64"),
        (lambda x: tg.linalg.svdvals(x[0, 0]), tg.ShapeError, "svdvals"),
        (lambda x: tg.linalg.norm(x, out=x), TypeError, "out="),
        (lambda x: np.linalg.norm(x[0], 3), ValueError, "ord=3"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(tg.ones(2, 3, 4))


class _LowRank(nn.Module):
    """A linear layer whose loss adds its weight's nuclear and spectral norms."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        weight = self.linear.weight
        out = self.linear(x)
        penalty = tg.linalg.matrix_norm(weight, "nuc") + np.linalg.norm(weight, 2)
        return out.square().mean() + 0.1 * penalty - 0.05 * tg.linalg.norm(out, -2)


def _pair():
    tg.manual_seed(4)
    models = [_LowRank().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    return models


def test_compiled_module_matches_eager_with_backward():
    models = _pair()
    x = tg.tensor(RNG.standard_normal((5, 4)))
    eager, compiled = models[0](x), tg.compile(models[1])(x)
    np.testing.assert_allclose(compiled.item(), eager.item(), rtol=1e-12)
    eager.backward()
    compiled.backward()
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_compiled_training_step_matches_eager():
    models = _pair()
    opts = [tg.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    x = tg.tensor(RNG.standard_normal((5, 4)))

    def train_step(model, opt):
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        opt.step()
        return loss

    compiled_step = tg.compile(train_step)
    for _ in range(3):
        want = train_step(models[0], opts[0])
        got = compiled_step(models[1], opts[1])
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-12)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-10)
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-10, atol=1e-12)
