"""The spatial layers (tracegrad/nn/spatial.py) and their functional forms: values and gradients
against PyTorch in float64, finite-difference gradient checks, output shapes, parameters and
state_dict keys as PyTorch's, a compiled module and a compiled whole training step equal to
eager ones (Dropout2d's channel masks included), and the errors bad sizes give."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.autograd import gradcheck
from tracegrad.errors import ShapeError

TOL = 1e-12

# name -> (call given the functional module and inputs, input shapes); the same call runs on
# tracegrad's F and on torch.nn.functional. Targets of the losses are fixed below.
SIGNS = np.array([1, -1, 1, -1, 1])
FUNCTIONAL = {
    "conv1d": (lambda f, x, w, b: f.conv1d(x, w, b, 2, 1, 2), [(2, 4, 11), (6, 4, 3), (6,)]),
    "conv1d_groups_same": (
        lambda f, x, w: f.conv1d(x, w, groups=2, padding="same"),
        [(2, 4, 9), (6, 2, 3)],
    ),
    "conv1d_unbatched": (lambda f, x, w: f.conv1d(x, w), [(4, 7), (3, 4, 2)]),
    "conv_transpose2d": (lambda f, x, w: f.conv_transpose2d(x, w), [(2, 4, 5, 6), (4, 3, 3, 2)]),
    "conv_transpose2d_stride_padding": (
        lambda f, x, w, b: f.conv_transpose2d(x, w, b, 2, 1),
        [(2, 4, 5, 6), (4, 3, 4, 4), (3,)],
    ),
    "conv_transpose2d_output_padding": (
        lambda f, x, w: f.conv_transpose2d(x, w, None, 2, 1, 1),
        [(2, 4, 5, 6), (4, 3, 3, 3)],
    ),
    "conv_transpose2d_groups_dilation": (
        lambda f, x, w, b: f.conv_transpose2d(x, w, b, (3, 2), (2, 0), (2, 1), 2, (1, 2)),
        [(2, 4, 5, 6), (4, 3, 3, 2), (6,)],
    ),
    "conv_transpose2d_unbatched": (
        lambda f, x, w: f.conv_transpose2d(x, w, stride=2),
        [(4, 3, 3), (4, 2, 2, 2)],
    ),
    "avg_pool2d": (lambda f, x: f.avg_pool2d(x, 2), [(2, 3, 7, 8)]),
    "avg_pool2d_padding": (lambda f, x: f.avg_pool2d(x, 3, 2, 1), [(2, 3, 7, 8)]),
    "avg_pool2d_exclude_pad": (
        lambda f, x: f.avg_pool2d(x, (3, 2), (2, 1), (1, 1), count_include_pad=False),
        [(2, 3, 7, 8)],
    ),
    "avg_pool2d_divisor": (lambda f, x: f.avg_pool2d(x, 2, divisor_override=3), [(3, 7, 8)]),
    "adaptive_avg_pool2d_1": (lambda f, x: f.adaptive_avg_pool2d(x, 1), [(2, 3, 7, 6)]),
    "adaptive_avg_pool2d_tiled": (lambda f, x: f.adaptive_avg_pool2d(x, (7, 2)), [(2, 3, 7, 6)]),
    "adaptive_avg_pool2d_uneven": (lambda f, x: f.adaptive_avg_pool2d(x, 4), [(2, 3, 7, 6)]),
    "adaptive_avg_pool2d_none": (
        lambda f, x: f.adaptive_avg_pool2d(x, (5, None)),
        [(3, 7, 6)],
    ),
    "adaptive_avg_pool2d_larger": (lambda f, x: f.adaptive_avg_pool2d(x, (9, 3)), [(1, 2, 4, 5)]),
    "pad_constant": (lambda f, x: f.pad(x, (1, 2, 0, 0, 2, 1), value=2.5), [(2, 3, 4, 5)]),
    "pad_constant_crop": (lambda f, x: f.pad(x, (-1, 2, 1, -2)), [(2, 3, 4, 5)]),
    "pad_reflect": (lambda f, x: f.pad(x, (2, 1, 3, 0), "reflect"), [(2, 3, 4, 5)]),
    "pad_reflect_crop": (lambda f, x: f.pad(x, (2, -1), "reflect"), [(3, 6)]),
    "pad_replicate": (lambda f, x: f.pad(x, (2, 3, 1, 4), "replicate"), [(3, 4, 5)]),
    "pad_circular": (lambda f, x: f.pad(x, (-1, 2, 1, 1), "circular"), [(2, 3, 4, 5)]),
    "nearest_scale": (lambda f, x: f.interpolate(x, scale_factor=2), [(2, 3, 4, 5)]),
    "nearest_fraction": (lambda f, x: f.interpolate(x, scale_factor=(1.7, 0.6)), [(2, 3, 6, 7)]),
    "nearest_recomputed_scale": (
        lambda f, x: f.interpolate(x, scale_factor=1.7, recompute_scale_factor=True),
        [(2, 3, 6, 7)],
    ),
    "bilinear_recomputed_scale": (
        lambda f, x: f.interpolate(
            x, scale_factor=1.7, mode="bilinear", recompute_scale_factor=True
        ),
        [(2, 3, 6, 7)],
    ),
    "nearest_size": (lambda f, x: f.interpolate(x, size=(5, 9)), [(2, 3, 6, 7)]),
    "nearest_1d": (lambda f, x: f.interpolate(x, size=8), [(2, 3, 5)]),
    "bilinear_scale": (
        lambda f, x: f.interpolate(x, scale_factor=2, mode="bilinear"),
        [(2, 3, 4, 5)],
    ),
    "bilinear_fraction": (
        lambda f, x: f.interpolate(x, scale_factor=1.7, mode="bilinear"),
        [(2, 3, 4, 5)],
    ),
    "bilinear_size_corners": (
        lambda f, x: f.interpolate(x, size=(7, 3), mode="bilinear", align_corners=True),
        [(2, 3, 4, 5)],
    ),
    "bilinear_scale_corners": (
        lambda f, x: f.interpolate(x, scale_factor=(2.5, 1), mode="bilinear", align_corners=True),
        [(2, 3, 4, 5)],
    ),
    "bilinear_to_one": (
        lambda f, x: f.interpolate(x, size=1, mode="bilinear", align_corners=True),
        [(2, 3, 4, 5)],
    ),
    "linear": (lambda f, x: f.interpolate(x, scale_factor=3, mode="linear"), [(2, 3, 5)]),
    "pixel_shuffle": (lambda f, x: f.pixel_shuffle(x, 3), [(2, 18, 4, 5)]),
    "pixel_shuffle_unbatched": (lambda f, x: f.pixel_shuffle(x, 2), [(8, 3, 2)]),
    "normalize": (lambda f, x: f.normalize(x), [(4, 5)]),
    "normalize_p1_dim0": (lambda f, x: f.normalize(x, 1.0, 0), [(4, 5, 2)]),
    "cosine_embedding_loss": (
        lambda f, a, b: f.cosine_embedding_loss(a, b, _signs(f), 0.1),
        [(5, 4), (5, 4)],
    ),
    "cosine_embedding_loss_none": (
        lambda f, a, b: f.cosine_embedding_loss(a, b, _signs(f), -0.5, reduction="none"),
        [(5, 4), (5, 4)],
    ),
    "triplet_margin_loss": (lambda f, a, p, n: f.triplet_margin_loss(a, p, n), [(5, 4)] * 3),
    "triplet_margin_loss_swap_p1": (
        lambda f, a, p, n: f.triplet_margin_loss(a, p, n, 0.5, 1, swap=True, reduction="sum"),
        [(5, 4)] * 3,
    ),
}


def _signs(f):
    """The cosine embedding loss's targets as a tensor of f's library."""
    if f is F:
        return tg.tensor(SIGNS)
    import torch

    return torch.tensor(SIGNS)


def arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in shapes]


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_functional_matches_torch(name):
    torch = pytest.importorskip("torch")
    function, shapes = FUNCTIONAL[name]
    data = arrays(shapes)
    ours = [tg.tensor(a, requires_grad=True) for a in data]
    theirs = [torch.tensor(a, requires_grad=True) for a in data]
    out, ref = function(F, *ours), function(torch.nn.functional, *theirs)
    assert tuple(out.shape) == tuple(ref.shape)
    cotangent = np.random.default_rng(1).standard_normal(tuple(ref.shape))
    (out * tg.tensor(cotangent)).sum().backward()
    (ref * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=TOL, atol=TOL)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(
            a.grad.numpy(), b.grad.numpy(), rtol=TOL, atol=TOL, err_msg=f"input {i}"
        )


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_functional_gradcheck(name):
    function, shapes = FUNCTIONAL[name]
    inputs = [tg.tensor(a, requires_grad=True) for a in arrays(shapes, seed=2)]
    assert gradcheck(lambda *xs: function(F, *xs), inputs)


# A few cross-entropy settings beyond the plain one: per-class weights, an ignored class and
# label smoothing, alone and together, over (N, C) and (N, C, L).
CROSS_ENTROPY = [
    ((6, 4), {"weight": True}),
    ((6, 4), {"ignore_index": 3}),
    ((6, 4), {"label_smoothing": 0.2}),
    ((6, 4), {"weight": True, "ignore_index": 1, "label_smoothing": 0.3}),
    ((6, 4), {"weight": True, "label_smoothing": 0.1, "reduction": "sum"}),
    ((6, 4), {"weight": True, "ignore_index": 0, "label_smoothing": 0.2, "reduction": "none"}),
    ((3, 4, 5), {"weight": True, "label_smoothing": 0.2}),
    ((3, 4, 5), {"ignore_index": 2, "label_smoothing": 0.2, "reduction": "none"}),
]


@pytest.mark.parametrize(("shape", "options"), CROSS_ENTROPY)
def test_cross_entropy_options_match_torch(shape, options):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(shape)
    target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    weight = rng.uniform(0.5, 2.0, shape[1])
    ours, theirs = tg.tensor(logits, requires_grad=True), torch.tensor(logits, requires_grad=True)

    def kwargs(lib):
        return {k: lib.tensor(weight) if k == "weight" else v for k, v in options.items()}

    out = F.cross_entropy(ours, tg.tensor(target), **kwargs(tg))
    ref = torch.nn.functional.cross_entropy(theirs, torch.tensor(target), **kwargs(torch))
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=TOL, atol=TOL)


# --- layers --------------------------------------------------------------------------------------

# name -> (constructor arguments, input shape); the same arguments build PyTorch's layer
LAYERS = {
    "Conv1d": ((4, 6, 3), {"stride": 2, "padding": 1}, (2, 4, 9)),
    "Conv1d_reflect": ((4, 6, 3), {"padding": 2, "padding_mode": "reflect", "bias": False}, None),
    "ConvTranspose2d": ((4, 6, 3), {"stride": 2, "padding": 1, "output_padding": 1}, None),
    "ConvTranspose2d_groups": ((4, 6, (3, 2)), {"groups": 2, "dilation": 2}, None),
    "AvgPool2d": ((3,), {"stride": 2, "padding": 1}, None),
    "AdaptiveAvgPool2d": (((3, 2),), {}, None),
    "ZeroPad2d": (((1, 2, 0, 3),), {}, None),
    "ConstantPad2d": ((2, 1.5), {}, None),
    "ReflectionPad2d": ((2,), {}, None),
    "ReplicationPad2d": (((3, 0, 1, 2),), {}, None),
    "Upsample": ((), {"scale_factor": 2, "mode": "bilinear"}, None),
    "Upsample_nearest": ((), {"size": (5, 7)}, None),
    "PixelShuffle": ((2,), {}, (2, 8, 3, 4)),
}
IMAGE = (2, 4, 5, 6)


def layer_pair(name):
    """tracegrad's layer and PyTorch's, with PyTorch's parameters copied in."""
    torch = pytest.importorskip("torch")
    args, kwargs, _ = LAYERS[name]
    cls = name.split("_")[0]
    ours, theirs = getattr(nn, cls)(*args, **kwargs), getattr(torch.nn, cls)(*args, **kwargs)
    theirs = theirs.double()
    ours.load_state_dict({k: tg.tensor(v.detach().numpy()) for k, v in theirs.state_dict().items()})
    return ours.double(), theirs


def layer_input(name):
    shape = LAYERS[name][2] or (IMAGE[:3] if name.startswith("Conv1d") else IMAGE)
    return np.random.default_rng(4).standard_normal(shape)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch(name):
    torch = pytest.importorskip("torch")
    ours, theirs = layer_pair(name)
    assert repr(ours) == repr(theirs)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()
    }
    data = layer_input(name)
    x, y = tg.tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    out, ref = ours(x), theirs(y)
    out.square().sum().backward()
    ref.square().sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), rtol=TOL, atol=TOL)
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-10, err_msg=n)


@pytest.mark.parametrize(
    ("cls", "args", "fan_in"),
    [(nn.Conv1d, (4, 6, 3), 12), (nn.ConvTranspose2d, (4, 6, 3, 1, 0, 0, 2), 27)],
)
def test_conv_initialization_is_pytorchs(cls, args, fan_in):
    """kaiming_uniform_(a=sqrt(5)): weight and bias uniform in +-1/sqrt(fan_in), where a
    transposed convolution's fan_in counts its (out_channels / groups) * kernel."""
    tg.manual_seed(0)
    layer = cls(*args)
    bound = 1 / np.sqrt(fan_in)
    for p in (layer.weight, layer.bias):
        values = p.detach().numpy()
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.7 * bound
    assert layer.weight.dtype == tg.float32


def test_conv_transpose_output_size_picks_the_output_padding():
    torch = pytest.importorskip("torch")
    ours, theirs = layer_pair("ConvTranspose2d")
    data = layer_input("ConvTranspose2d")
    for size in [(9, 11), (10, 12), (2, 4, 10, 11)]:
        out = ours(tg.tensor(data), output_size=size)
        ref = theirs(torch.tensor(data), output_size=size)
        np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="valid sizes"):
        ours(tg.tensor(data), output_size=(12, 12))


@pytest.mark.parametrize("name", ["CosineEmbeddingLoss", "TripletMarginLoss"])
def test_embedding_losses_as_layers_match_torch(name):
    torch = pytest.importorskip("torch")
    data = arrays([(5, 4)] * 3, seed=5)
    options = {"margin": 0.3, "reduction": "sum"}
    ours, theirs = getattr(nn, name)(**options), getattr(torch.nn, name)(**options)
    third = (SIGNS,) if name == "CosineEmbeddingLoss" else (data[2],)
    out = ours(*[tg.tensor(a) for a in (*data[:2], *third)])
    ref = theirs(*[torch.tensor(a) for a in (*data[:2], *third)])
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=TOL)
    # the deprecated arguments read as PyTorch reads them
    assert getattr(nn, name)(size_average=False).reduction == "sum"
    assert getattr(nn, name)(reduce=False).reduction == "none"


# --- Dropout2d -----------------------------------------------------------------------------------


def test_dropout2d_zeroes_whole_channels_and_scales_the_rest():
    tg.manual_seed(3)
    x = tg.ones(8, 16, 3, 3)
    out = nn.Dropout2d(0.25)(x).numpy()
    per_channel = out.reshape(8, 16, 9)
    assert set(np.unique(per_channel)) == {0.0, np.float32(1 / 0.75)}
    assert (per_channel.min(-1) == per_channel.max(-1)).all()  # one value per channel
    assert 0.1 < (per_channel[..., 0] == 0).mean() < 0.4
    layer = nn.Dropout2d(0.25).eval()
    assert layer(x) is x


def test_dropout2d_gradient_follows_the_mask():
    tg.manual_seed(4)
    x = tg.randn(4, 6, 2, 2, dtype=tg.float64, requires_grad=True)
    out = F.dropout2d(x, 0.5)
    out.sum().backward()
    kept = out.detach().numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, 2.0, 0.0))


def test_dropout2d_of_3d_input_is_channel_dropout_over_n_c_l_as_in_pytorch():
    tg.manual_seed(5)
    with pytest.warns(UserWarning, match="as shape \\(N, C, L\\)"):
        out = F.dropout2d(tg.ones(6, 8, 5), 0.5).numpy()
    assert (out.min(-1) == out.max(-1)).all()


class SpatialNet(nn.Module):
    """Every spatial layer in one differentiable model."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1)
        self.pad = nn.ReflectionPad2d((1, 0, 2, 1))
        self.zero = nn.ZeroPad2d(1)
        self.drop = nn.Dropout2d(0.3)
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.shuffle = nn.PixelShuffle(2)
        self.resize = nn.Upsample(size=(5, 7), mode="bilinear")
        self.near = nn.Upsample(scale_factor=1.5)
        self.adaptive = nn.AdaptiveAvgPool2d((3, 2))
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        h = self.conv1d(x.flatten(2)).reshape(x.shape[0], 4, *x.shape[2:])
        h = self.drop(self.zero(self.pad(self.up(h))).tanh())
        h = self.resize(self.shuffle(self.pool(h)))
        h = self.adaptive(self.near(h))
        return F.normalize(self.head(h.flatten(1)))


def spatial_net():
    tg.manual_seed(7)
    return SpatialNet().double()


def spatial_batch(seed):
    rng = np.random.default_rng(seed)
    return tg.tensor(rng.standard_normal((2, 3, 4, 5))), tg.tensor(rng.integers(0, 5, 2))


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_compiled_module_equals_eager(passes):
    """Outputs and gradients of every call equal, dropout masks included (same seed, same
    draws), in train and in eval mode."""
    eager, model = spatial_net(), spatial_net()
    compiled = tg.compile(model, passes=passes)
    for step, training in enumerate([True, True, False, True]):
        x, _ = spatial_batch(step)
        results = []
        for net, run in ((eager, eager), (model, compiled)):
            net.train(training)
            net.zero_grad()
            tg.manual_seed(100 + step)
            xg = x.detach().requires_grad_()
            out = run(xg)
            (out * out.detach().sign()).sum().backward()
            grads = [p.grad.numpy().copy() for p in net.parameters()]
            results.append((out.detach().numpy(), xg.grad.numpy(), grads))
        (out_e, xg_e, grads_e), (out_c, xg_c, grads_c) = results
        np.testing.assert_allclose(out_c, out_e, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xg_c, xg_e, rtol=1e-10, atol=1e-12)
        for a, b in zip(grads_c, grads_e, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_compiled_training_step_equals_eager(passes):
    def make_step(model, opt):
        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x) * 3.0, y, label_smoothing=0.1)
            loss.backward()
            opt.step()
            return loss

        return step

    runs = []
    for compiled in (False, True):
        model = spatial_net()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = make_step(model, opt)
        step = tg.compile(step, passes=passes) if compiled else step
        tg.manual_seed(11)
        losses = [step(*spatial_batch(i)).item() for i in range(4)]
        runs.append((losses, [p.detach().numpy().copy() for p in model.parameters()]))
    (losses_e, params_e), (losses_c, params_c) = runs
    np.testing.assert_allclose(losses_c, losses_e, rtol=1e-10)
    assert losses_e[0] != losses_e[-1]
    for a, b in zip(params_c, params_e, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# --- errors --------------------------------------------------------------------------------------

BAD_CALLS = [
    (lambda: F.conv1d(tg.ones(2, 4, 9), tg.ones(6, 3, 3)), ShapeError, r"conv1d.*\(6, 3, 3\)"),
    (lambda: F.conv1d(tg.ones(2, 4, 5, 9), tg.ones(6, 4, 3)), ShapeError, "conv1d"),
    (
        lambda: F.conv_transpose2d(tg.ones(2, 3, 5, 5), tg.ones(4, 2, 3, 3)),
        ShapeError,
        r"conv_transpose2d: input of shape \(2, 3, 5, 5\) has 3 channels",
    ),
    (
        lambda: F.conv_transpose2d(tg.ones(1, 4, 5, 5), tg.ones(4, 2, 3, 3), output_padding=1),
        ValueError,
        "output_padding",
    ),
    (
        lambda: F.conv_transpose2d(tg.ones(1, 4, 1, 1), tg.ones(4, 2, 1, 1), padding=1),
        ShapeError,
        "output size",
    ),
    (lambda: F.avg_pool2d(tg.ones(2, 3), 2), ShapeError, "avg_pool2d: expected a 3-D or 4-D"),
    (lambda: F.avg_pool2d(tg.ones(1, 1, 4, 4), 2, padding=2), ValueError, "at most half"),
    (lambda: F.avg_pool2d(tg.ones(1, 1, 2, 2), 3), ShapeError, "does not fit"),
    (lambda: F.avg_pool2d(tg.ones(1, 1, 4, 4), 3, ceil_mode=True), NotImplementedError, "ceil"),
    (lambda: F.adaptive_avg_pool2d(tg.ones(1, 2, 4, 4), 0), ShapeError, "must be positive"),
    (lambda: F.pad(tg.ones(2, 3), (1, 1, 1)), ValueError, "pairs"),
    (lambda: F.pad(tg.ones(2, 3, 4), (1, 1), "bogus"), ValueError, "mode must be one of"),
    (lambda: F.pad(tg.ones(1, 2, 3, 4), (4, 0, 0, 0), "reflect"), ShapeError, "at most 3"),
    (lambda: F.pad(tg.ones(1, 2, 3, 4), (1, 1), "replicate"), ShapeError, "needs a 2-D or 3-D"),
    (lambda: F.pad(tg.ones(2, 3), (-2, -2)), ShapeError, "leaves nothing"),
    (lambda: F.interpolate(tg.ones(1, 1, 2, 2)), ValueError, "exactly one of size"),
    (lambda: F.interpolate(tg.ones(1, 1, 2), size=4, mode="bilinear"), ShapeError, "bilinear"),
    (
        lambda: F.interpolate(tg.ones(1, 1, 2, 2), size=4, mode="bicubic"),
        NotImplementedError,
        "'bicubic' is not supported",
    ),
    (
        lambda: F.interpolate(tg.ones(1, 1, 2, 2), size=4, align_corners=True),
        ValueError,
        "align_corners",
    ),
    (lambda: F.interpolate(tg.ones(1, 1, 2, 2), size=(4, 4, 4)), ShapeError, "2 entries"),
    (lambda: F.pixel_shuffle(tg.ones(1, 6, 2, 2), 2), ShapeError, "divisible by"),
    (lambda: F.dropout2d(tg.ones(2, 3), 1.5), ValueError, "between 0 and 1"),
    (
        lambda: F.cosine_embedding_loss(tg.ones(3, 4), tg.ones(3, 5), tg.ones(3)),
        ShapeError,
        r"\(3, 4\) and \(3, 5\)",
    ),
    (
        lambda: F.triplet_margin_loss(tg.ones(3, 4), tg.ones(3, 4), tg.ones(2, 4)),
        ShapeError,
        "triplet_margin_loss",
    ),
    (lambda: nn.Conv1d(3, 4, 3, groups=2), ValueError, "groups=2"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect"), ValueError, "zeros"),
    (lambda: nn.ZeroPad2d((1, 2)), ValueError, "4 sizes"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS)
def test_bad_sizes_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
