"""Activations and normalization layers against PyTorch in float64 (forward, gradients, running
statistics), finite-difference gradient checks, and the errors users hit."""

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn
from tracegrad.autograd import gradcheck
from tracegrad.errors import ShapeError

RNG = np.random.default_rng(0)
TOL = 1e-12

# Every activation: its functional form in tracegrad and in PyTorch (given torch.nn.functional),
# its layer, and where its derivative jumps (gradcheck samples away from those points).
ACTIVATIONS = {
    "leaky_relu": (
        lambda x: F.leaky_relu(x, 0.2),
        lambda tf, x: tf.leaky_relu(x, 0.2),
        nn.LeakyReLU(0.2),
        [0.0],
    ),
    "elu": (lambda x: F.elu(x, 1.5), lambda tf, x: tf.elu(x, 1.5), nn.ELU(1.5), [0.0]),
    "silu": (F.silu, lambda tf, x: tf.silu(x), nn.SiLU(), []),
    "softplus": (F.softplus, lambda tf, x: tf.softplus(x), nn.Softplus(), [20.0]),
    "softplus_beta": (
        lambda x: F.softplus(x, 3.0, 6.0),
        lambda tf, x: tf.softplus(x, 3.0, 6.0),
        nn.Softplus(3.0, 6.0),
        [2.0],
    ),
    "mish": (F.mish, lambda tf, x: tf.mish(x), nn.Mish(), []),
    "hardtanh": (
        lambda x: F.hardtanh(x, -0.5, 2.0),
        lambda tf, x: tf.hardtanh(x, -0.5, 2.0),
        nn.Hardtanh(-0.5, 2.0),
        [-0.5, 2.0],
    ),
    "relu6": (F.relu6, lambda tf, x: tf.relu6(x), nn.ReLU6(), [0.0, 6.0]),
    "softsign": (F.softsign, lambda tf, x: tf.softsign(x), nn.Softsign(), []),
    "logsigmoid": (F.logsigmoid, lambda tf, x: tf.logsigmoid(x), nn.LogSigmoid(), []),
}

# exact kinks and bounds, zero, tiny values, and magnitudes where a naive exp overflows
EDGES = [0.0, -0.0, 1e-9, -1e-9, -0.5, 2.0, 6.0, 20.0, 30.0, -30.0, 50.0, -50.0, 800.0, -800.0]


def edge_input():
    return np.concatenate([RNG.standard_normal(40) * 4, EDGES])


def smooth_input(kinks, n=12):
    """Random points at least 0.05 away from every kink (central differences across a kink
    see the jump)."""
    x = RNG.uniform(-7, 7, n)
    for k in kinks:
        x = np.where(np.abs(x - k) < 0.05, x + 0.1, x)
    return x


def ours_and_theirs(tg_fn, torch_fn, *arrays):
    """Outputs and input gradients (for one random cotangent) of both libraries."""
    torch = pytest.importorskip("torch")
    ours = [tg.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, ref = tg_fn(*ours), torch_fn(*theirs)
    cotangent = RNG.standard_normal(tuple(ref.shape))
    (out * tg.tensor(cotangent)).sum().backward()
    (ref * torch.tensor(cotangent)).sum().backward()
    return (out, ours), (ref, theirs)


def assert_matches_torch(tg_fn, torch_fn, *arrays, tol=TOL):
    (out, ours), (ref, theirs) = ours_and_theirs(tg_fn, torch_fn, *arrays)
    assert tuple(out.shape) == tuple(ref.shape)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(
            a.grad.numpy(), b.grad.numpy(), rtol=tol, atol=tol, err_msg=f"gradient {i}"
        )


# --- activations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_torch_including_edge_values(name):
    torch = pytest.importorskip("torch")
    ours, theirs, _, _ = ACTIVATIONS[name]
    x = edge_input()
    assert_matches_torch(ours, lambda t: theirs(torch.nn.functional, t), x)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradcheck(name):
    ours, _, _, kinks = ACTIVATIONS[name]
    assert gradcheck(ours, tg.tensor(smooth_input(kinks), requires_grad=True))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_layer_is_its_function(name):
    ours, _, layer, _ = ACTIVATIONS[name]
    x = tg.tensor(RNG.standard_normal((3, 4)) * 4)
    np.testing.assert_array_equal(layer(x).numpy(), ours(x).numpy())


def test_softplus_and_logsigmoid_stay_finite_with_finite_gradients_at_extremes():
    x = tg.tensor([-1000.0, -100.0, 100.0, 1000.0], requires_grad=True)
    (F.softplus(x, 1.0, 1e9) + F.logsigmoid(x)).sum().backward()
    assert np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(
        F.logsigmoid(x).detach().numpy(), [-1000.0, -100.0, 0.0, 0.0], atol=1e-40
    )


@pytest.mark.parametrize("shape, num_parameters", [((5, 3, 2, 2), 3), ((5, 3), 3), ((4,), 1)])
def test_prelu_matches_torch_with_its_weight_gradient(shape, num_parameters):
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal(shape)
    x.flat[0] = 0.0  # the kink: PyTorch's gradient there is the slope
    w = RNG.uniform(0.1, 0.5, num_parameters)
    assert_matches_torch(F.prelu, torch.nn.functional.prelu, x, w)
    layer = nn.PReLU(num_parameters).double()
    np.testing.assert_array_equal(layer.weight.detach().numpy(), np.full(num_parameters, 0.25))
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    assert gradcheck(
        F.prelu,
        (
            tg.tensor(smooth_input([0.0], 6), requires_grad=True),
            tg.tensor(w[:1], requires_grad=True),
        ),
    )


def test_prelu_weight_count_must_match_the_channels():
    with pytest.raises(ShapeError, match=r"prelu: 2 parameters .* with 3 channels"):
        nn.PReLU(2)(tg.zeros(4, 3))


def test_unflatten_and_identity():
    x = tg.randn(2, 12)
    assert tuple(nn.Unflatten(1, (3, 4))(x).shape) == (2, 3, 4)
    assert tuple(nn.Unflatten(-1, (2, -1))(x).shape) == (2, 2, 6)
    assert nn.Identity(54, unused="x")(x) is x


# --- normalization -------------------------------------------------------------------------------


def _state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _run_like_torch(ours, theirs, inputs, modes):
    """Run both modules in the given train/eval modes, one input each, comparing outputs, input
    and parameter gradients, and every buffer after each call."""
    torch = pytest.importorskip("torch")
    for x, training in zip(inputs, modes, strict=True):
        ours.train(training)
        theirs.train(training)
        assert_matches_torch(ours, theirs, x)
        for name, p in theirs.named_parameters():
            mine = dict(ours.named_parameters())[name]
            np.testing.assert_allclose(mine.grad.numpy(), p.grad.numpy(), rtol=TOL, atol=TOL)
            mine.grad, p.grad = None, None
        state, ref = _state(ours), theirs.state_dict()
        assert state.keys() == ref.keys()
        for name, value in ref.items():
            assert state[name].dtype == value.numpy().dtype, name
            np.testing.assert_allclose(state[name], value.numpy(), rtol=TOL, atol=TOL, err_msg=name)
        assert torch.is_tensor(ref.get("num_batches_tracked", torch.zeros(())))


BATCH_NORMS = [("BatchNorm1d", (6, 3)), ("BatchNorm1d", (6, 3, 5)), ("BatchNorm2d", (4, 3, 3, 2))]


@pytest.mark.parametrize("kind, shape", BATCH_NORMS)
@pytest.mark.parametrize("momentum", [0.1, 0.35, None])
def test_batch_norm_train_and_eval_match_torch(kind, shape, momentum):
    torch = pytest.importorskip("torch")
    ours = getattr(nn, kind)(3, momentum=momentum).double()
    theirs = getattr(torch.nn, kind)(3, momentum=momentum).double()
    with torch.no_grad():  # affine parameters away from their (1, 0) start
        theirs.weight.uniform_(0.5, 2.0)
        theirs.bias.normal_()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    inputs = [RNG.standard_normal(shape) * 2 + 1 for _ in range(6)]
    _run_like_torch(ours, theirs, inputs, [True, True, False, True, False, False])
    assert ours.num_batches_tracked.item() == 3


@pytest.mark.parametrize("affine, track", [(False, True), (True, False), (False, False)])
def test_batch_norm_without_affine_or_running_stats_matches_torch(affine, track):
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm2d(2, affine=affine, track_running_stats=track).double()
    theirs = torch.nn.BatchNorm2d(2, affine=affine, track_running_stats=track).double()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    inputs = [RNG.standard_normal((3, 2, 2, 2)) for _ in range(3)]
    _run_like_torch(ours, theirs, inputs, [True, False, True])


def test_batch_norm_running_stats_are_updated_in_place():
    bn = nn.BatchNorm1d(2)
    mean, var = bn.running_mean, bn.running_var
    bn(tg.randn(4, 2))
    assert bn.running_mean is mean and bn.running_var is var
    assert not mean.requires_grad and np.abs(mean.numpy()).sum() > 0


def test_batch_norm_gradcheck_in_training():
    x = tg.tensor(RNG.standard_normal((5, 3, 2)), requires_grad=True)
    w = tg.tensor(RNG.uniform(0.5, 2, 3), requires_grad=True)
    b = tg.tensor(RNG.standard_normal(3), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, True), (x, w, b))


def test_batch_norm_errors():
    with pytest.raises(ShapeError, match=r"BatchNorm2d: expected 4D input, got .* \(2, 3, 4\)"):
        nn.BatchNorm2d(3)(tg.zeros(2, 3, 4))
    with pytest.raises(ShapeError, match="BatchNorm1d: expected 2D or 3D input"):
        nn.BatchNorm1d(3)(tg.zeros(3))
    with pytest.raises(ValueError, match="more than 1 value per channel when training"):
        nn.BatchNorm1d(3)(tg.zeros(1, 3))
    nn.BatchNorm1d(3).eval()(tg.zeros(1, 3))  # one sample is fine with running statistics


@pytest.mark.parametrize("groups, affine", [(1, True), (2, True), (4, False)])
def test_group_norm_matches_torch_and_gradchecks(groups, affine):
    torch = pytest.importorskip("torch")
    ours = nn.GroupNorm(groups, 4, affine=affine).double()
    theirs = torch.nn.GroupNorm(groups, 4, affine=affine).double()
    if affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 2.0)
            theirs.bias.normal_()
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for shape in [(3, 4), (3, 4, 5), (2, 4, 3, 2)]:
        _run_like_torch(ours, theirs, [RNG.standard_normal(shape) * 3], [True])
    x = tg.tensor(RNG.standard_normal((2, 4, 3)), requires_grad=True)
    assert gradcheck(lambda x: F.group_norm(x, groups), x)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        nn.GroupNorm(3, 4)


@pytest.mark.parametrize("affine, track", [(False, False), (True, False), (False, True)])
def test_instance_norm_matches_torch(affine, track):
    torch = pytest.importorskip("torch")
    ours = nn.InstanceNorm2d(3, affine=affine, track_running_stats=track).double()
    theirs = torch.nn.InstanceNorm2d(3, affine=affine, track_running_stats=track).double()
    inputs = [RNG.standard_normal((2, 3, 4, 3)) * 2 + 1 for _ in range(4)]
    inputs[3] = inputs[3][0]  # unbatched (C, H, W)
    _run_like_torch(ours, theirs, inputs, [True, True, False, True])
    x = tg.tensor(RNG.standard_normal((2, 2, 3, 2)), requires_grad=True)
    assert gradcheck(lambda x: F.instance_norm(x), x)


@pytest.mark.parametrize(
    "layer, shape", [(nn.BatchNorm1d(3), (4, 5)), (nn.BatchNorm2d(3), (4, 5, 2, 2))]
)
def test_batch_norm_names_a_channel_count_that_does_not_fit(layer, shape):
    with pytest.raises(tg.ShapeError, match=r"C matching the \(3,\).*\(4, 5"):
        layer(tg.randn(*shape))
