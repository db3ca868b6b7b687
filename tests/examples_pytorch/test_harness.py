"""The port harness itself: it runs a small PyTorch-style program four ways and notices when a
compiled run departs from the eager one."""

import numpy as np
import pytest
from harness import run_port


def make(lib):
    nn = lib.nn
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    return {"model": model, "opt": lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)}


def step(lib, state, x, y):
    state["opt"].zero_grad()
    loss = lib.nn.functional.cross_entropy(state["model"](x), y)
    loss.backward()
    state["opt"].step()
    return loss


def batches(count=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8))
        for _ in range(count)
    ]


def test_a_faithful_program_agrees_in_every_mode():
    runs = run_port(make, step, batches())
    assert {"eager", "module", "step"} <= set(runs)
    assert runs["eager"].losses[-1] < runs["eager"].losses[0]
    assert set(runs["step"].states["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_a_compiled_run_that_departs_from_eager_is_reported():
    calls = []

    def step_reading_python_state(lib, state, x, y):
        calls.append(1)  # a compiled step bakes the Python value in at trace time
        return step(lib, state, x * len(calls), y)

    with pytest.raises(AssertionError, match="step vs eager"):
        run_port(make, step_reading_python_state, batches(), modes=("step",))
