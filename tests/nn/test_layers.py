"""Each layer's output shape and values against NumPy formulas, and the errors users hit."""

import math

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn

RNG = np.random.default_rng(0)


def arr(*shape):
    return RNG.standard_normal(shape)


def t64(a, requires_grad=False):
    return tg.tensor(np.asarray(a, np.float64), requires_grad=requires_grad)


def val(t):
    return t.detach().numpy()


# --- NumPy references ----------------------------------------------------------------------------


def np_conv2d(x, w, b, stride, padding, dilation, groups):
    n, _, h, wd = x.shape
    oc, gc, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, oc, oh, ow))
    per_group = oc // groups
    for o in range(oc):
        g = o // per_group
        for i in range(oh):
            for j in range(ow):
                patch = xp[
                    :,
                    g * gc : (g + 1) * gc,
                    i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                    j * sw : j * sw + dw * (kw - 1) + 1 : dw,
                ]
                out[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3))
    return out + (b.reshape(1, -1, 1, 1) if b is not None else 0)


def np_max_pool2d(x, k, s, p):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = xp[:, :, i * s : i * s + k, j * s : j * s + k].max(axis=(2, 3))
    return out


def np_log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def np_cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    logp = np.moveaxis(np_log_softmax(logits, 1), 1, -1)  # (N, ..., C)
    valid = target != ignore_index
    safe = np.where(valid, target, 0)
    picked = np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    loss = -(1 - label_smoothing) * picked - label_smoothing * logp.mean(-1)
    loss = np.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() / valid.sum() if reduction == "mean" else loss.sum()


# --- Linear --------------------------------------------------------------------------------------


def test_linear_values_and_shapes():
    lin = nn.Linear(4, 3).double()
    x = arr(2, 5, 4)
    out = lin(t64(x))
    assert tuple(out.shape) == (2, 5, 3) and out.dtype == tg.float64
    W, b = val(lin.weight), val(lin.bias)
    np.testing.assert_allclose(val(out), x @ W.T + b, rtol=1e-12)
    nobias = nn.Linear(4, 3, bias=False).double()
    assert nobias.bias is None
    np.testing.assert_allclose(val(nobias(t64(x[0]))), x[0] @ val(nobias.weight).T, rtol=1e-12)


def test_linear_gradients_closed_form():
    lin = nn.Linear(4, 3).double()
    x = arr(6, 4)
    g = arr(6, 3)
    lin(t64(x)).backward(t64(g))
    np.testing.assert_allclose(val(lin.weight.grad), g.T @ x, rtol=1e-12)
    np.testing.assert_allclose(val(lin.bias.grad), g.sum(0), rtol=1e-12)


def test_linear_float32_by_default():
    lin = nn.Linear(3, 2)
    out = lin(tg.randn(4, 3))
    assert out.dtype == tg.float32 and tuple(out.shape) == (4, 2)


def test_linear_without_inputs_warns_and_outputs_the_bias():
    # As in PyTorch: kaiming init of a zero-element weight is a no-op with a warning, and the
    # bias bound 1/sqrt(fan_in) is taken as 0.
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
        lin = nn.Linear(0, 3)
    assert tuple(lin.weight.shape) == (3, 0) and lin.bias.tolist() == [0.0, 0.0, 0.0]
    assert lin(tg.randn(2, 0)).tolist() == [[0.0] * 3] * 2


def test_linear_shape_mismatch_names_both_shapes():
    lin = nn.Linear(4, 3)
    with pytest.raises(tg.ShapeError) as info:
        lin(tg.randn(2, 5))
    msg = str(info.value)
    assert "(2, 5)" in msg and "(3, 4)" in msg
    assert isinstance(info.value, RuntimeError)


# --- Conv2d and MaxPool2d ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding", "dilation", "groups", "hw"),
    [
        (1, 2, 3, 1, 0, 1, 1, (5, 6)),
        (2, 4, (3, 2), (2, 1), (1, 2), 1, 1, (7, 5)),
        (4, 6, 3, 1, 2, 2, 2, (6, 6)),
        (3, 3, 1, 2, 0, 1, 3, (5, 5)),
    ],
)
def test_conv2d_matches_direct_convolution(cin, cout, k, stride, padding, dilation, groups, hw):
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups).double()
    x = arr(2, cin, *hw)
    out = conv(t64(x))
    pair = lambda v: (v, v) if isinstance(v, int) else v
    expected = np_conv2d(
        x,
        val(conv.weight),
        val(conv.bias),
        pair(stride),
        pair(padding),
        pair(dilation),
        groups,
    )
    assert tuple(out.shape) == expected.shape
    np.testing.assert_allclose(val(out), expected, rtol=1e-10, atol=1e-12)


def test_conv2d_unbatched_input_and_same_padding():
    conv = nn.Conv2d(2, 3, 3, padding="same").double()
    x = arr(2, 5, 4)
    out = conv(t64(x))
    assert tuple(out.shape) == (3, 5, 4)
    expected = np_conv2d(x[None], val(conv.weight), val(conv.bias), (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(val(out), expected[0], rtol=1e-10, atol=1e-12)


def test_conv2d_channel_mismatch_error():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(tg.ShapeError, match="channels"):
        conv(tg.randn(1, 2, 5, 5))
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 3, groups=2)


@pytest.mark.parametrize(("k", "s", "p"), [(2, None, 0), (3, 2, 1), (3, 1, 0), (2, 1, 1)])
def test_max_pool2d_values(k, s, p):
    x = arr(2, 3, 7, 6)
    out = nn.MaxPool2d(k, s, p)(t64(x))
    expected = np_max_pool2d(x, k, s or k, p)
    assert tuple(out.shape) == expected.shape
    np.testing.assert_array_equal(val(out), expected)


def test_max_pool2d_gradient_goes_to_the_max():
    x = t64([[[[1.0, 5.0], [3.0, 2.0]]]], requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    np.testing.assert_array_equal(val(x.grad), [[[[0.0, 1.0], [0.0, 0.0]]]])


# --- shape and elementwise layers ----------------------------------------------------------------


def test_flatten():
    x = t64(arr(2, 3, 4, 5))
    assert tuple(nn.Flatten()(x).shape) == (2, 60)
    assert tuple(nn.Flatten(0, 1)(x).shape) == (6, 4, 5)
    assert tuple(nn.Flatten(2)(x).shape) == (2, 3, 20)
    np.testing.assert_array_equal(val(nn.Flatten()(x)), val(x).reshape(2, 60))


def _gelu_exact(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize(
    ("layer", "fn"),
    [
        (nn.ReLU(), lambda x: np.maximum(x, 0)),
        (nn.GELU(), _gelu_exact),
        (nn.GELU(approximate="tanh"), _gelu_tanh),
        (nn.Tanh(), np.tanh),
        (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    ],
)
def test_activations(layer, fn):
    x = arr(3, 4, 5) * 3
    out = layer(t64(x))
    assert tuple(out.shape) == x.shape and out.dtype == tg.float64
    np.testing.assert_allclose(val(out), fn(x), rtol=1e-12, atol=1e-14)


def test_functional_activations_match_layers():
    x = t64(arr(4, 3))
    np.testing.assert_array_equal(val(F.relu(x)), val(nn.ReLU()(x)))
    # the kernel cubes by multiplying (np.power is slow): the same value up to rounding
    np.testing.assert_allclose(
        val(F.gelu(x, approximate="tanh")), _gelu_tanh(val(x)), rtol=1e-14, atol=1e-15
    )
    np.testing.assert_allclose(val(F.softmax(x, 1)), np.exp(np_log_softmax(val(x), 1)))
    np.testing.assert_allclose(val(F.log_softmax(x, dim=0)), np_log_softmax(val(x), 0))
    with pytest.raises(ValueError):
        F.gelu(x, approximate="fast")


def test_sigmoid_and_tanh_are_stable_at_extremes():
    x = t64([-1000.0, 0.0, 1000.0])
    np.testing.assert_array_equal(val(nn.Sigmoid()(x)), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(val(nn.Tanh()(x)), [-1.0, 0.0, 1.0])


# --- LayerNorm and Embedding ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (3, 4)])
def test_layer_norm(shape):
    ln = nn.LayerNorm(shape, eps=1e-3).double()
    with tg.no_grad():
        ln.weight.copy_(t64(arr(*shape)))
        ln.bias.copy_(t64(arr(*shape)))
    x = arr(2, 3, 4) * 5 + 2
    axes = tuple(range(3 - len(shape), 3))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased, as in PyTorch
    expected = (x - mean) / np.sqrt(var + 1e-3) * val(ln.weight) + val(ln.bias)
    out = ln(t64(x))
    assert tuple(out.shape) == x.shape
    np.testing.assert_allclose(val(out), expected, rtol=1e-10, atol=1e-12)


def test_layer_norm_without_affine_and_shape_error():
    x = arr(5, 6)
    out = nn.LayerNorm(6, elementwise_affine=False).double()(t64(x))
    np.testing.assert_allclose(val(out).mean(1), 0, atol=1e-12)
    var = x.var(1)
    np.testing.assert_allclose(val(out).var(1), var / (var + 1e-5), rtol=1e-10)
    with pytest.raises(tg.ShapeError, match="normalized_shape"):
        nn.LayerNorm(5)(t64(x))


def test_embedding_lookup_and_gradient_accumulation():
    emb = nn.Embedding(5, 3).double()
    idx = tg.tensor([[0, 4, 4], [2, 0, 0]])
    out = emb(idx)
    assert tuple(out.shape) == (2, 3, 3)
    np.testing.assert_array_equal(val(out), val(emb.weight)[idx.numpy()])
    g = arr(2, 3, 3)
    out.backward(t64(g))
    expected = np.zeros((5, 3))
    np.add.at(expected, idx.numpy(), g)
    np.testing.assert_allclose(val(emb.weight.grad), expected, rtol=1e-12)


def test_embedding_errors():
    emb = nn.Embedding(5, 3)
    with pytest.raises(IndexError, match="5") as info:
        emb(tg.tensor([1, 5]))
    assert "out of range" in str(info.value)
    with pytest.raises(IndexError):
        emb(tg.tensor([-1]))
    with pytest.raises(TypeError, match="float32"):
        emb(tg.tensor([1.0, 2.0]))


class _Lookup(nn.Module):
    """An embedding followed by a class loss: both read indices only known at run time."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)

    def forward(self, tokens, target):
        return F.cross_entropy(self.emb(tokens), target)


def _lookup_step(model, opt, tokens, target):
    opt.zero_grad()
    loss = model(tokens, target)
    loss.backward()
    opt.step()
    return loss


BAD_INDICES = {
    # (tokens, target, what the message names)
    "token -1": ([1, -1], [0, 1], "index -1 is out of range for a table of 5 rows"),
    "token 5": ([5, 1], [0, 1], "index 5 is out of range for a table of 5 rows"),
    "target -1": ([1, 2], [0, -1], "Target -1 is out of bounds"),
    "target 3": ([1, 2], [3, 0], r"Target 3 is out of bounds: class indices must lie in \[0, 3\)"),
}


@pytest.mark.parametrize(
    ("tokens", "target", "message"), BAD_INDICES.values(), ids=list(BAD_INDICES)
)
@pytest.mark.parametrize("form", ["eager", "compiled module", "compiled step"])
def test_out_of_range_indices_raise_in_eager_and_generated_code(form, tokens, target, message):
    # NumPy reads -1 as the last row or class; PyTorch raises IndexError, and so must the
    # generated code, which sees the values only when it runs (compiled with good ones first).
    torch = pytest.importorskip("torch")
    with pytest.raises(IndexError, match=r"out of bounds|out of range"):
        torch.nn.functional.cross_entropy(
            torch.nn.functional.embedding(torch.tensor(tokens), torch.randn(5, 3)),
            torch.tensor(target),
        )
    model = _Lookup()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    step = tg.compile(_lookup_step)
    run = {
        "eager": model,
        "compiled module": tg.compile(model),
        "compiled step": lambda *args: step(model, opt, *args),
    }[form]
    good = (tg.tensor([1, 4]), tg.tensor([2, -100]))  # ignore_index stays allowed
    loss = run(*good)
    assert np.isfinite(loss.item())
    weights = model.emb.weight.detach().numpy().copy()
    with pytest.raises(IndexError, match=message):
        run(tg.tensor(tokens), tg.tensor(target))
    assert np.array_equal(model.emb.weight.detach().numpy(), weights)  # no update happened


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_matches_torch_and_checks_targets(reduction):
    torch = pytest.importorskip("torch")
    logp = np.log(RNG.dirichlet(np.ones(4), size=3))
    target = np.array([3, -100, 0])
    x = t64(logp, requires_grad=True)
    ours = F.nll_loss(x, tg.tensor(target), reduction=reduction)
    xt = torch.tensor(logp, requires_grad=True)
    theirs = torch.nn.functional.nll_loss(xt, torch.tensor(target), reduction=reduction)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-12)
    ours.sum().backward()
    theirs.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)
    with pytest.raises(IndexError, match="nll_loss: Target -1 is out of bounds"):
        F.nll_loss(x, tg.tensor([3, -1, 0]))


def test_embedding_padding_idx_gets_zero_row_and_no_gradient():
    emb = nn.Embedding(4, 2, padding_idx=1)
    np.testing.assert_array_equal(val(emb.weight)[1], [0.0, 0.0])
    emb(tg.tensor([1, 2, 1])).sum().backward()
    np.testing.assert_array_equal(val(emb.weight.grad), [[0, 0], [0, 0], [1, 1], [0, 0]])
    # the padding row is still read as it is (here after the user changed it)
    with tg.no_grad():
        emb.weight.fill_(1.0)
    np.testing.assert_array_equal(val(F.embedding(tg.tensor([1]), emb.weight, -3)), [[1, 1]])
    with pytest.raises(ValueError):
        nn.Embedding(4, 2, padding_idx=4)


# --- Dropout -------------------------------------------------------------------------------------


def test_dropout_train_scales_survivors_and_drops_about_p():
    tg.manual_seed(0)
    drop = nn.Dropout(0.3)
    x = np.full((200, 500), 2.0)
    out = val(drop(t64(x)))
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(out[kept], 2.0 / 0.7, rtol=1e-12)
    # a new mask each call
    assert not np.array_equal(out, val(drop(t64(x))))


def test_dropout_gradient_uses_the_same_mask():
    tg.manual_seed(1)
    x = t64(np.ones((10, 10)), requires_grad=True)
    out = F.dropout(x, 0.5)
    out.sum().backward()
    np.testing.assert_array_equal(val(x.grad), val(out))


def test_dropout_eval_and_edge_probabilities():
    x = t64(arr(4, 5))
    drop = nn.Dropout(0.5)
    drop.eval()
    np.testing.assert_array_equal(val(drop(x)), val(x))
    np.testing.assert_array_equal(val(F.dropout(x, 0.5, training=False)), val(x))
    np.testing.assert_array_equal(val(nn.Dropout(0.0)(x)), val(x))
    assert not val(nn.Dropout(1.0)(x)).any()
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    with pytest.raises(ValueError):
        F.dropout(x, -0.1)


def test_dropout_is_reproducible_under_manual_seed():
    x = tg.ones(50)
    tg.manual_seed(7)
    a = val(F.dropout(x, 0.5))
    tg.manual_seed(7)
    np.testing.assert_array_equal(a, val(F.dropout(x, 0.5)))


# --- losses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction):
    a, b = arr(4, 3), arr(4, 3)
    out = nn.MSELoss(reduction=reduction)(t64(a), t64(b))
    sq = (a - b) ** 2
    expected = {"mean": sq.mean(), "sum": sq.sum(), "none": sq}[reduction]
    assert tuple(out.shape) == np.shape(expected)
    np.testing.assert_allclose(val(out), expected, rtol=1e-12)


def test_mse_loss_gradient_and_bad_reduction():
    a, b = arr(5), arr(5)
    x = t64(a, requires_grad=True)
    F.mse_loss(x, t64(b)).backward()
    np.testing.assert_allclose(val(x.grad), 2 * (a - b) / 5, rtol=1e-12)
    with pytest.raises(ValueError):
        F.mse_loss(x, t64(b), reduction="avg")


def test_mse_loss_warns_when_shapes_broadcast():
    with pytest.warns(UserWarning, match="broadcast"):
        F.mse_loss(t64(arr(4, 1)), t64(arr(4)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy(reduction, label_smoothing):
    logits = arr(6, 5) * 3
    target = np.array([0, 4, 2, -100, 1, 4])
    loss_fn = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=label_smoothing)
    out = loss_fn(t64(logits), tg.tensor(target))
    expected = np_cross_entropy(logits, target, -100, label_smoothing, reduction)
    assert tuple(out.shape) == np.shape(expected)
    np.testing.assert_allclose(val(out), expected, rtol=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
    logits = arr(4, 3)
    target = np.array([2, 0, 1, 1])
    x = t64(logits, requires_grad=True)
    F.cross_entropy(x, tg.tensor(target)).backward()
    expected = (np.exp(np_log_softmax(logits, 1)) - np.eye(3)[target]) / 4
    np.testing.assert_allclose(val(x.grad), expected, rtol=1e-12, atol=1e-15)


def test_cross_entropy_spatial_and_ignore_index():
    logits = arr(2, 4, 3, 3)
    target = RNG.integers(0, 4, (2, 3, 3))
    target[0, 0, 0] = 3
    out = F.cross_entropy(t64(logits), tg.tensor(target), ignore_index=3)
    np.testing.assert_allclose(val(out), np_cross_entropy(logits, target, 3), rtol=1e-12)
    single = F.cross_entropy(t64(logits[0, :, 0, 0]), tg.tensor(target[0, 0, 0]))
    assert single.shape == ()


def test_cross_entropy_float_target_is_a_dtype_error_naming_the_dtype():
    with pytest.raises(TypeError, match="float32") as info:
        F.cross_entropy(tg.randn(3, 4), tg.tensor([0.0, 1.0, 2.0]))
    assert isinstance(info.value, tg.DTypeError)
    with pytest.raises(tg.DTypeError, match="float64"):
        nn.CrossEntropyLoss()(t64(arr(3, 4)), t64([0.0, 1.0, 2.0]))


def test_cross_entropy_target_shape_error():
    with pytest.raises(tg.ShapeError, match=r"\(3,\)"):
        F.cross_entropy(tg.randn(3, 4), tg.tensor([0, 1]))
