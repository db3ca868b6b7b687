"""nn.init's orthogonal_, trunc_normal_ and eye_: PyTorch's shapes, properties and errors."""

import math

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn


@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6), (4, 2, 3)])
def test_orthogonal_rows_or_columns_are_orthonormal_times_gain(shape):
    tg.manual_seed(0)
    w = nn.init.orthogonal_(tg.empty(*shape, dtype=tg.float64), gain=2.0).numpy()
    flat = w.reshape(shape[0], -1) / 2.0
    small = min(flat.shape)
    gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_orthogonal_draws_from_the_seed_and_refuses_vectors():
    tg.manual_seed(3)
    a = nn.init.orthogonal_(tg.empty(3, 3)).numpy()
    tg.manual_seed(3)
    np.testing.assert_array_equal(nn.init.orthogonal_(tg.empty(3, 3)).numpy(), a)
    with pytest.raises(ValueError, match="at least 2 dims"):
        nn.init.orthogonal_(tg.empty(3))


def test_trunc_normal_stays_in_bounds_with_the_truncated_moments():
    tg.manual_seed(0)
    x = nn.init.trunc_normal_(tg.empty(200_000, dtype=tg.float64), a=-2.0, b=2.0).numpy()
    assert x.min() >= -2.0 and x.max() <= 2.0
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)  # the standard normal's density at 2
    mass = math.erf(2 / math.sqrt(2))  # P(-2 < z < 2)
    variance = 1 - 2 * 2 * phi / mass
    assert abs(x.mean()) < 0.01
    assert abs(x.var() - variance) < 0.01


def test_trunc_normal_bounds_are_absolute_and_must_be_ordered():
    tg.manual_seed(0)
    x = nn.init.trunc_normal_(tg.empty(1000), mean=5.0, std=1.0, a=4.5, b=6.0).numpy()
    assert x.min() >= 4.5 and x.max() <= 6.0
    with pytest.raises(ValueError, match="a < b"):
        nn.init.trunc_normal_(tg.empty(3), a=1.0, b=0.0)


def test_eye_fills_rectangles_and_refuses_other_ranks():
    np.testing.assert_array_equal(nn.init.eye_(tg.empty(2, 3)).numpy(), np.eye(2, 3))
    with pytest.raises(ValueError, match="2-D"):
        nn.init.eye_(tg.empty(2, 2, 2))


def test_initialisers_match_torch_shapes_and_properties():
    torch = pytest.importorskip("torch")
    t = torch.nn.init.orthogonal_(torch.empty(5, 3, dtype=torch.float64))
    w = nn.init.orthogonal_(tg.empty(5, 3, dtype=tg.float64)).numpy()
    np.testing.assert_allclose(w.T @ w, (t.T @ t).numpy(), atol=1e-12)
