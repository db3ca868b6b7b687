"""A small model trained by an optimizer, eagerly or as a compiled whole step, for tests that
compare the two bit for bit.

The model has no matrix product: a compiled step may compute a product in its transposed form
(b^T a^T for (a b)^T, see specialize_numpy's rules), which some BLAS builds (OpenBLAS on
AVX-512) round differently from the eager product; every other op rounds as eagerly."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import nn


class Diagonal(nn.Module):
    """x * weight + bias, elementwise: a layer of ``n`` features with no matrix product."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(tg.randn(n))
        self.bias = nn.Parameter(0.1 * tg.randn(n))

    def forward(self, x):
        return x * self.weight + self.bias


class Run:
    """A model of ``dtype``, its optimizer and a training step, eager or compiled; the same
    weights and data on every instance. With ``groups``, the first layer is a parameter group
    of its own (learning rate 0.05)."""

    def __init__(self, make_opt, compiled: bool, dtype=np.float32, groups: bool = False):
        tg.manual_seed(0)
        self.model = model = nn.Sequential(Diagonal(6), nn.Tanh(), Diagonal(6))
        if dtype == np.float64:
            model.double()
        params = list(model.parameters())
        if groups:
            params = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}]
        self.opt = opt = make_opt(params)
        rng = np.random.default_rng(1)
        self.x = tg.tensor(rng.standard_normal((16, 6)).astype(dtype))
        self.y = tg.tensor(rng.standard_normal((16, 6)).astype(dtype))

        def train_step(x, y):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        self.step = tg.compile(train_step) if compiled else train_step

    def __call__(self):
        return self.step(self.x, self.y).detach().numpy().copy()

    def state(self) -> list[np.ndarray]:
        """Parameters, then every optimizer state tensor, as arrays."""
        arrays = [p.detach().numpy().copy() for p in self.model.parameters()]
        for p in self.model.parameters():
            for key in sorted(self.opt.state.get(p, {})):
                arrays.append(self.opt.state[p][key].detach().numpy().copy())
        return arrays


def assert_identical(compiled: Run, eager: Run, what: str) -> None:
    got, want = compiled.state(), eager.state()
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype, what
        assert np.array_equal(g, w), f"{what}: array {i} differs by {np.abs(g - w).max()}"
