"""Smoke test of an installed package (wheel or sdist), run by .ci/run in a fresh virtual
environment: the package imports from site-packages and compiled training steps equal eager
ones."""

import numpy as np

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

assert "site-packages" in tg.__file__, tg.__file__


def run(compiled: bool) -> np.ndarray:
    tg.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step) if compiled else train_step
    x, y = tg.randn(8, 4), tg.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for _ in range(3):
        step(x, y)
    return model.weight.detach().numpy()


np.testing.assert_allclose(run(compiled=True), run(compiled=False), rtol=1e-6, atol=1e-7)
print(f"tracegrad {tg.__version__} installed: import and a compiled step OK")
