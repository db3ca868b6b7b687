"""W5 (LSTM language model), W6 (ResNet with BatchNorm) and W7 (VAE): the hand-written NumPy
step and tracegrad's compiled whole step train exactly as tracegrad eager does, in float64 at
reduced sizes (losses and weights to float64 rounding, batch-norm running statistics too), and
PyTorch's model matches in float32."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tracegrad as tg  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks import workloads as W  # noqa: E402

NEW = ("W5", "W6", "W7")
STEPS = 3


def _train(key: str, setup: W.Setup):
    """Losses of STEPS steps and the implementation; the noise generator seeded alike."""
    impl = W.make_implementation(key, setup)
    tg.manual_seed(7)
    losses = [impl.loss_value(impl.step(i)) for i in range(STEPS)]
    return losses, impl


def _assert_same_weights(ours: dict, ref: dict, init: dict, tol: float) -> None:
    """Equal weights, relative to how far the weights moved from their initial values."""
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        moved = np.abs(value - init[key]).max()
        assert moved > 0, key
        assert ours[key].shape == value.shape, key
        assert np.abs(ours[key] - value).max() <= tol * moved, key


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("key", ["handwritten", "step"])
def test_trains_as_eager_in_float64(name, key):
    setup = W.make_setup(W.get_workload(name, **harness.SMALL[name]), np.float64)
    ref_losses, ref = _train("eager", setup)
    losses, impl = _train(key, setup)
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    assert len(set(losses)) == STEPS  # the weights change, so the losses do
    _assert_same_weights(impl.parameters(), ref.parameters(), setup.init, 1e-9)


@pytest.mark.parametrize("key", ["handwritten", "step"])
def test_resnet_running_statistics_as_eager(key):
    """W6's batch norms update their running mean and (unbiased) variance in the step."""
    setup = W.make_setup(W.get_workload("W6", **harness.SMALL["W6"]), np.float64)
    _, ref = _train("eager", setup)
    _, impl = _train(key, setup)
    expected = {
        k: v.numpy() for k, v in ref.model.state_dict().items() if k.endswith(("_mean", "_var"))
    }
    assert len(expected) == 2 * (1 + 2 * 4 + 2)  # stem, two per block, two shortcuts
    if key == "handwritten":
        got = impl.impl.running_stats()
    else:
        got = {k: v.numpy() for k, v in impl.model.state_dict().items() if k in expected}
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert not np.array_equal(v, np.zeros_like(v)) and not np.array_equal(v, np.ones_like(v))
        np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("name", ["W5", "W6"])
def test_torch_trains_as_eager(name):
    """PyTorch's model (W7 draws its noise from PyTorch's generator, so it is left out)."""
    pytest.importorskip("torch")
    setup = W.make_setup(W.get_workload(name, **harness.SMALL[name]))
    ref_losses, ref = _train("eager", setup)
    losses, impl = _train("torch", setup)
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    _assert_same_weights(impl.parameters(), ref.parameters(), setup.init, 2e-2)


def test_vae_noise_comes_from_tracegrad_generator():
    """The hand-written VAE step draws the reparameterization noise as tg.randn_like does:
    seeded differently, the same step gives a different loss."""
    setup = W.make_setup(W.get_workload("W7", **harness.SMALL["W7"]), np.float64)
    losses = []
    for seed in (7, 7, 8):
        impl = W.make_implementation("handwritten", setup)
        tg.manual_seed(seed)
        losses.append(impl.step(0))
    assert losses[0] == losses[1] != losses[2]
