"""pytorch/examples regression/main.py: a linear fit of a degree-4 polynomial with
F.smooth_l1_loss and a hand-written SGD update through ``param.data``. The features are built
in the step as the example builds them (``make_features``); the random inputs are NumPy's."""

import numpy as np
from harness import run_port

POLY_DEGREE = 4


def make_features(lib, x):
    """Builds features i.e. a matrix with columns [x, x^2, x^3, x^4]."""
    x = x.unsqueeze(1)
    return lib.cat([x**i for i in range(1, POLY_DEGREE + 1)], 1)


def make(lib):
    return {"fc": lib.nn.Linear(POLY_DEGREE, 1)}


def step(lib, state, random, batch_y):
    F = lib.nn.functional
    fc = state["fc"]
    batch_x = make_features(lib, random)

    # Reset gradients
    fc.zero_grad()

    # Forward pass
    output = F.smooth_l1_loss(fc(batch_x), batch_y)

    # Backward pass
    output.backward()

    # Apply gradients
    for param in fc.parameters():
        param.data.add_(-0.1 * param.grad)
    return output


def batches(count=20, batch_size=32, seed=0):
    rng = np.random.default_rng(seed)
    w_target = (rng.standard_normal((POLY_DEGREE, 1)) * 5).astype(np.float32)
    b_target = np.float32(rng.standard_normal() * 5)
    out = []
    for _ in range(count):
        random = rng.standard_normal(batch_size).astype(np.float32)
        x = np.stack([random**i for i in range(1, POLY_DEGREE + 1)], 1)
        out.append((random, x @ w_target + b_target))
    return out


def test_regression_port_matches_eager_compiled_and_torch():
    runs = run_port(make, step, batches())
    losses = runs["eager"].losses
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])  # it learns
