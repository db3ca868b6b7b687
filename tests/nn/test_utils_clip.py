"""Gradient clipping: clip_grad_norm_ and clip_grad_value_ against PyTorch in float64 (every
norm type, the returned total norm, the scaled gradients), by hand, and inside compiled whole
steps, equal to the eager steps bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.nn.utils import clip_grad_norm_, clip_grad_value_

GRADS = [np.random.default_rng(i).standard_normal(shape) for i, shape in
         enumerate([(3, 4), (4,), (2, 2, 2)])]  # fmt: skip


def params_with_grads(lib, scale=1.0):
    params = []
    for g in GRADS:
        p = lib.nn.Parameter(lib.tensor(np.zeros_like(g)))
        p.grad = lib.tensor(g * scale)
        params.append(p)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1, 3.5, math.inf, 0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    params, twins = params_with_grads(tg), params_with_grads(torch)
    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    twin_total = torch.nn.utils.clip_grad_norm_(twins, max_norm, norm_type=norm_type)
    assert isinstance(total, tg.Tensor) and total.shape == ()
    np.testing.assert_allclose(total.item(), twin_total.item(), rtol=1e-12)
    for p, q in zip(params, twins, strict=True):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_clip_grad_norm_by_hand():
    p = nn.Parameter(tg.tensor(np.zeros(3)))
    p.grad = tg.tensor(np.array([3.0, 4.0, 0.0]))
    total = clip_grad_norm_(p, 1.0)  # a single tensor is accepted too
    assert total.item() == 5.0
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.8, 0.0], rtol=1e-6)
    assert np.linalg.norm(p.grad.numpy()) < 1.0
    total = clip_grad_norm_([p], 10.0)  # below max_norm: unchanged
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.8, 0.0], rtol=1e-6)


def test_clip_grad_norm_without_gradients_is_zero():
    p = nn.Parameter(tg.zeros(2))
    assert clip_grad_norm_([p], 1.0).item() == 0.0


def test_clip_grad_norm_non_finite():
    params = params_with_grads(tg)
    params[1].grad = tg.tensor(np.array([1.0, np.inf, 0.0, 0.0]))
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert np.isinf(params[1].grad.numpy()[1])  # nothing was scaled
    assert math.isinf(clip_grad_norm_(params, 1.0).item())  # scaled by the infinite norm


@pytest.mark.parametrize("clip_value", [0.3, 2])
def test_clip_grad_value_matches_torch(clip_value):
    torch = pytest.importorskip("torch")
    params, twins = params_with_grads(tg), params_with_grads(torch)
    assert clip_grad_value_(params, clip_value) is None
    torch.nn.utils.clip_grad_value_(twins, clip_value)
    for p, q in zip(params, twins, strict=True):
        assert np.array_equal(p.grad.numpy(), q.grad.numpy())
        assert np.abs(p.grad.numpy()).max() <= clip_value


# --- in compiled whole steps ---------------------------------------------------------------------


def make_run(clip, compiled: bool, dtype=np.float32):
    """A training step clipping the gradients between backward and the update."""
    tg.manual_seed(0)
    # (layers without a matrix product: a compiled step may compute one transposed, which
    # some BLAS builds round differently, and this test compares bit for bit)
    model = nn.Sequential(nn.LayerNorm(6), nn.Tanh(), nn.LayerNorm(6))
    if dtype == np.float64:
        model.double()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(1)
    # large targets: gradients far above the clipping bound on early steps
    x = tg.tensor(rng.standard_normal((16, 6)).astype(dtype))
    y = tg.tensor((20 * rng.standard_normal((16, 6))).astype(dtype))

    def train_step(x, y, max_norm):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        norm = clip(model.parameters(), max_norm)
        opt.step()
        return loss, norm

    step = tg.compile(train_step) if compiled else train_step
    return model, opt, lambda max_norm: step(x, y, max_norm), step


CLIPS = {
    "norm": lambda ps, m: clip_grad_norm_(ps, m),
    "norm-inf": lambda ps, m: clip_grad_norm_(ps, m, norm_type=math.inf),
    "norm-3": lambda ps, m: clip_grad_norm_(ps, m, norm_type=3),
    "value": lambda ps, m: (clip_grad_value_(ps, 0.5), m)[1],
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", list(CLIPS))
def test_clipping_in_a_compiled_step_equals_eager(clip, dtype):
    runs = [make_run(CLIPS[clip], compiled, dtype) for compiled in (False, True)]
    (eager_model, _, eager_step, _), (model, opt, step, compiled) = runs
    clipped = 0
    for i in range(8):
        # a tensor argument, read on each call (a float argument is guarded by its value)
        max_norm = tg.tensor(np.array(1.0 if i < 6 else 50.0, dtype))
        (loss, norm), (eager_loss, eager_norm) = step(max_norm), eager_step(max_norm)
        assert np.array_equal(loss.detach().numpy(), eager_loss.detach().numpy()), (
            f"loss of step {i}"
        )
        assert np.array_equal(norm.numpy(), eager_norm.numpy()), f"norm of step {i}"
        clipped += clip.startswith("norm") and norm.item() > max_norm.item()
        for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
            assert np.array_equal(p.detach().numpy(), q.detach().numpy()), f"step {i}"
            assert np.array_equal(p.grad.numpy(), q.grad.numpy()), f"clipped .grad, step {i}"
    if clip.startswith("norm"):
        assert clipped >= 3  # the clipping did act
    buffers = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(np.isfinite(b.numpy()).all() for b in buffers)
    assert len(compiled.specializations) <= 2


def test_error_if_nonfinite_in_a_compiled_step_names_the_problem():
    def clip(ps, m):
        return clip_grad_norm_(ps, m, error_if_nonfinite=True)

    _, _, step, _ = make_run(clip, compiled=True)
    with pytest.raises(tg.TraceError, match="error_if_nonfinite=False") as error:
        step(tg.tensor(1.0))
    assert "test_utils_clip.py" in str(error.value)
