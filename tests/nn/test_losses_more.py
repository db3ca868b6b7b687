"""Losses against PyTorch in float64 (values and gradients for every reduction, edge values),
finite-difference gradient checks, and the errors users hit."""

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn
from tracegrad.autograd import gradcheck
from tracegrad.errors import ShapeError

RNG = np.random.default_rng(1)
TOL = 1e-12
REDUCTIONS = ["mean", "sum", "none"]


def probabilities(*shape):
    return RNG.uniform(0.02, 0.98, shape)


def log_probabilities(*shape):
    logits = RNG.standard_normal(shape)
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def compare(tg_fn, torch_fn, grad_args, const_args=(), tol=TOL):
    """tg_fn(*grad_args, *const_args) against torch_fn, values and the gradients of
    ``grad_args`` for a random cotangent."""
    torch = pytest.importorskip("torch")
    ours = [tg.tensor(a, requires_grad=True) for a in grad_args]
    theirs = [torch.tensor(a, requires_grad=True) for a in grad_args]
    out = tg_fn(*ours, *[tg.tensor(a) for a in const_args])
    ref = torch_fn(*theirs, *[torch.tensor(a) for a in const_args])
    assert tuple(out.shape) == tuple(ref.shape)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)
    cotangent = RNG.standard_normal(tuple(ref.shape))
    (out * tg.tensor(cotangent)).sum().backward()
    (ref * torch.tensor(cotangent)).sum().backward()
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(
            a.grad.numpy(), b.grad.numpy(), rtol=tol, atol=tol, err_msg=f"gradient {i}"
        )


# --- class losses with weights ---------------------------------------------------------------


CLASS_SHAPES = [((6, 4), (6,)), ((3, 4, 2, 3), (3, 2, 3))]


def class_targets(target_shape, ignore=True):
    target = RNG.integers(0, 4, target_shape)
    if ignore:
        target.flat[1] = -100
    return target


@pytest.mark.parametrize("shapes", CLASS_SHAPES, ids=["NC", "NCHW"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_weighted_cross_entropy_matches_torch(shapes, reduction, label_smoothing):
    torch = pytest.importorskip("torch")
    input_shape, target_shape = shapes
    logits, weight = RNG.standard_normal(input_shape) * 3, RNG.uniform(0.1, 2.0, 4)
    target = class_targets(target_shape)

    def ours(x, w, t):
        return F.cross_entropy(x, t, w, reduction=reduction, label_smoothing=label_smoothing)

    def theirs(x, w, t):
        return torch.nn.functional.cross_entropy(
            x, t, w, reduction=reduction, label_smoothing=label_smoothing
        )

    compare(ours, theirs, (logits,), (weight, target))
    assert gradcheck(
        lambda x: ours(x, tg.tensor(weight), tg.tensor(target)),
        tg.tensor(logits, requires_grad=True),
    )


@pytest.mark.parametrize("shapes", CLASS_SHAPES, ids=["NC", "NCHW"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_matches_torch(shapes, reduction, weighted):
    torch = pytest.importorskip("torch")
    input_shape, target_shape = shapes
    weight = RNG.uniform(0.1, 2.0, 4) if weighted else None
    target = class_targets(target_shape)
    layer = nn.NLLLoss(None if weight is None else tg.tensor(weight), reduction=reduction)
    ref = torch.nn.NLLLoss(None if weight is None else torch.tensor(weight), reduction=reduction)
    compare(layer, ref, (log_probabilities(*input_shape),), (target,))
    assert gradcheck(
        lambda x: layer(x, tg.tensor(target)),
        tg.tensor(log_probabilities(*input_shape), requires_grad=True),
    )


def test_weighted_cross_entropy_without_weights_equals_the_unweighted_primitive():
    logits, target = tg.tensor(RNG.standard_normal((5, 3))), tg.tensor([0, 2, 1, 1, -100])
    ones = tg.ones(3, dtype=tg.float64)
    for reduction in REDUCTIONS:
        np.testing.assert_allclose(
            F.cross_entropy(logits, target, ones, reduction=reduction).numpy(),
            F.cross_entropy(logits, target, reduction=reduction).numpy(),
            rtol=1e-14,
        )


def test_weighted_class_loss_errors():
    logits = tg.randn(3, 4)
    with pytest.raises(IndexError, match="cross_entropy: Target 4 is out of bounds"):
        F.cross_entropy(logits, tg.tensor([0, 4, 1]), tg.ones(4))
    with pytest.raises(IndexError, match="nll_loss: Target -1 is out of bounds"):
        F.nll_loss(logits, tg.tensor([0, -1, 1]), tg.ones(4))
    with pytest.raises(ShapeError, match=r"weight of shape \(3,\) must have one entry"):
        F.cross_entropy(logits, tg.tensor([0, 1, 1]), tg.ones(3))


def test_cross_entropy_loss_module_takes_a_weight():
    weight = tg.tensor([1.0, 3.0])
    loss = nn.CrossEntropyLoss(weight)(tg.tensor([[0.0, 0.0], [0.0, 0.0]]), tg.tensor([0, 1]))
    np.testing.assert_allclose(loss.item(), np.log(2), rtol=1e-6)  # a weighted mean of log 2


# --- binary cross entropy --------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_matches_torch(reduction, weighted):
    torch = pytest.importorskip("torch")
    p, t = probabilities(4, 3), RNG.uniform(0, 1, (4, 3))
    ours = F.binary_cross_entropy
    theirs = torch.nn.functional.binary_cross_entropy
    if weighted:
        compare(
            lambda p, t, w: ours(p, t, w, reduction),
            lambda p, t, w: theirs(p, t, w, reduction=reduction),
            (p, t),
            (RNG.uniform(0.5, 2, (1, 3)),),
        )
    else:
        compare(
            lambda p, t: ours(p, t, reduction=reduction),
            lambda p, t: theirs(p, t, reduction=reduction),
            (p, t),
        )
    assert gradcheck(
        lambda p: F.binary_cross_entropy(p, tg.tensor(t), reduction=reduction),
        tg.tensor(p, requires_grad=True),
    )


def test_bce_clamps_the_log_of_certain_probabilities_like_torch():
    torch = pytest.importorskip("torch")
    p, t = np.array([0.0, 1.0, 0.0, 1.0, 1e-60]), np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    ours_p = tg.tensor(p, requires_grad=True)
    ours = nn.BCELoss(reduction="none")(ours_p, tg.tensor(t))
    theirs = torch.nn.BCELoss(reduction="none")(torch.tensor(p), torch.tensor(t))
    np.testing.assert_array_equal(ours.detach().numpy(), theirs.detach().numpy())  # 0 0 100 ...
    ours.sum().backward()
    # The derivative of the clamped loss: -log(1 - p) has slope 1 at p = 0, and where the log
    # is clamped, 0. (PyTorch's formula (p - t) / max(p (1 - p), 1e-12) gives 0 and +-1e12.)
    np.testing.assert_array_equal(ours_p.grad.numpy(), [1.0, -1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pos_weight", [None, "per_class"])
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_with_logits_matches_torch_including_large_logits(reduction, pos_weight, weighted):
    torch = pytest.importorskip("torch")
    logits = RNG.standard_normal((5, 3)) * 4
    logits[0] = [0.0, 800.0, -800.0]
    logits[1] = [40.0, -40.0, 1e-9]
    target = RNG.uniform(0, 1, (5, 3))
    pw = RNG.uniform(0.5, 3, 3) if pos_weight else None
    w = RNG.uniform(0.5, 2, (5, 1)) if weighted else None

    def ours(x, t):
        return nn.BCEWithLogitsLoss(
            w if w is None else tg.tensor(w), reduction, pw if pw is None else tg.tensor(pw)
        )(x, t)

    def theirs(x, t):
        return torch.nn.BCEWithLogitsLoss(
            w if w is None else torch.tensor(w),
            reduction=reduction,
            pos_weight=pw if pw is None else torch.tensor(pw),
        )(x, t)

    compare(ours, theirs, (logits, target))
    assert gradcheck(lambda x: ours(x, tg.tensor(target)), tg.tensor(logits, requires_grad=True))


def test_bce_shape_mismatch_is_refused():
    with pytest.raises(ShapeError, match=r"target of shape \(3, 1\) must have the shape"):
        F.binary_cross_entropy_with_logits(tg.zeros(3), tg.zeros(3, 1))


# --- regression losses -----------------------------------------------------------------------


REGRESSION = {
    "l1": (lambda r: nn.L1Loss(r), lambda torch, r: torch.nn.L1Loss(reduction=r)),
    "smooth_l1": (
        lambda r: nn.SmoothL1Loss(r),
        lambda torch, r: torch.nn.SmoothL1Loss(reduction=r),
    ),
    "smooth_l1_beta": (
        lambda r: nn.SmoothL1Loss(r, beta=0.5),
        lambda torch, r: torch.nn.SmoothL1Loss(reduction=r, beta=0.5),
    ),
    "smooth_l1_beta0": (
        lambda r: nn.SmoothL1Loss(r, beta=0.0),
        lambda torch, r: torch.nn.SmoothL1Loss(reduction=r, beta=0.0),
    ),
    "huber": (lambda r: nn.HuberLoss(r), lambda torch, r: torch.nn.HuberLoss(reduction=r)),
    "huber_delta": (
        lambda r: nn.HuberLoss(r, delta=2.0),
        lambda torch, r: torch.nn.HuberLoss(reduction=r, delta=2.0),
    ),
}


@pytest.mark.parametrize("name", list(REGRESSION))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_regression_loss_matches_torch(name, reduction):
    torch = pytest.importorskip("torch")
    ours, theirs = REGRESSION[name]
    x, y = RNG.standard_normal((4, 5)) * 2, RNG.standard_normal((4, 5)) * 2
    y[0, :4] = x[0, :4] + [0.0, 0.5, 1.0, -2.0]  # differences at the kink and the thresholds
    y[1, 0] = x[1, 0] + 1e-3
    compare(ours(reduction), theirs(torch, reduction), (x, y))
    smooth = tg.tensor(RNG.standard_normal((3, 4)) * 2, requires_grad=True)
    assert gradcheck(lambda a: ours(reduction)(a, tg.tensor(x[:3, :4])), smooth)


def test_smooth_l1_and_huber_reject_bad_thresholds():
    with pytest.raises(ValueError, match="beta must be non-negative"):
        F.smooth_l1_loss(tg.zeros(2), tg.zeros(2), beta=-1.0)
    with pytest.raises(ValueError, match="delta must be positive"):
        F.huber_loss(tg.zeros(2), tg.zeros(2), delta=0.0)


@pytest.mark.filterwarnings("ignore:.*'batchmean'")  # both libraries warn about 'mean'
@pytest.mark.parametrize("reduction", [*REDUCTIONS, "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_torch(reduction, log_target):
    torch = pytest.importorskip("torch")
    logp = log_probabilities(4, 5)
    target = np.exp(log_probabilities(4, 5))
    target[0, :2] = 0.0  # 0 log 0 = 0
    if log_target:
        target = np.log(target + 1e-3)
    layer = nn.KLDivLoss(reduction, log_target)
    ref = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)
    compare(layer, ref, (logp,), (target,))
    if log_target:  # the target's gradient too (not at t = 0, where PyTorch's xlogy's is -inf)
        compare(layer, ref, (logp, target))
    assert gradcheck(lambda a: layer(a, tg.tensor(target)), tg.tensor(logp, requires_grad=True))


def test_kl_div_warns_that_mean_is_not_batchmean():
    with pytest.warns(UserWarning, match="reduction='batchmean' gives the KL divergence"):
        F.kl_div(tg.zeros(2, 3), tg.ones(2, 3))


def test_reduction_names_are_checked():
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        nn.HuberLoss("average")(tg.zeros(2), tg.zeros(2))
