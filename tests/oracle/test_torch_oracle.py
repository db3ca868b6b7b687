"""PyTorch as the oracle, in float64: every public op's values and gradients, 20-step training
trajectories, custom autograd Functions, and the training library's names and reprs.

Each case is one function ``f(lib, *tensors)`` written once and run with ``lib = tracegrad`` and
``lib = torch`` on tensors made from the same NumPy arrays.
"""

import numpy as np
import pytest

import tracegrad as tg

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-10, 1e-12


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(*shape, seed=0):
    return rng(seed).standard_normal(shape)


def pos(*shape, seed=0):
    return rng(seed).uniform(0.5, 2.0, shape)


def ints(high, *shape, seed=0):
    return rng(seed).integers(0, high, shape)


def as_np(t):
    return t.detach().numpy()


def dtype_name(t):
    return str(t.dtype).split(".")[-1]


def run(lib, f, arrays):
    inputs = [
        lib.tensor(a, requires_grad=a.dtype.kind == "f") if isinstance(a, np.ndarray) else a
        for a in arrays
    ]
    out = f(lib, *inputs)
    return inputs, list(out) if isinstance(out, (tuple, list)) else [out]


def check(f, *arrays, rtol=RTOL, atol=ATOL):
    """Forward values, dtypes and the gradient of a random projection of the outputs."""
    results = {lib: run(lib, f, arrays) for lib in (tg, torch)}
    (tg_in, tg_out), (th_in, th_out) = results[tg], results[torch]
    assert len(tg_out) == len(th_out)
    for a, b in zip(tg_out, th_out):
        assert tuple(a.shape) == tuple(b.shape)
        assert dtype_name(a) == dtype_name(b)
        np.testing.assert_allclose(as_np(a), as_np(b), rtol=rtol, atol=atol)
    wanted = [i for i, o in enumerate(th_out) if o.requires_grad]
    assert wanted == [i for i, o in enumerate(tg_out) if o.requires_grad]
    if not wanted:
        return
    cotangents = [randn(*th_out[i].shape, seed=100 + i) for i in wanted]
    for lib, (_, outs) in results.items():
        sum(
            (outs[i] * lib.tensor(c)).sum() for i, c in zip(wanted, cotangents, strict=True)
        ).backward()
    for a, b in zip(tg_in, th_in):
        if not isinstance(b, torch.Tensor) or not b.requires_grad:
            continue
        if b.grad is None:
            assert a.grad is None or not as_np(a.grad).any()
            continue
        assert a.grad is not None and tuple(a.grad.shape) == tuple(b.grad.shape)
        np.testing.assert_allclose(as_np(a.grad), as_np(b.grad), rtol=rtol, atol=atol)


def case(name, f, *arrays):
    return pytest.param(f, arrays, id=name)


def F(lib):
    return lib.nn.functional


# --- (a) ops: values and gradients ---------------------------------------------------------------

X = randn(3, 4)
UNARY = [
    case("neg", lambda lib, x: -x, X),
    case("exp", lambda lib, x: x.exp(), X),
    case("log", lambda lib, x: x.log(), pos(3, 4)),
    case("log1p", lambda lib, x: x.log1p(), pos(3, 4)),
    case("sqrt", lambda lib, x: x.sqrt(), pos(3, 4)),
    case("rsqrt", lambda lib, x: x.rsqrt(), pos(3, 4)),
    case("tanh", lambda lib, x: x.tanh(), X),
    case("sigmoid", lambda lib, x: x.sigmoid(), X),
    case("sin", lambda lib, x: x.sin(), X),
    case("cos", lambda lib, x: x.cos(), X),
    case("erf", lambda lib, x: x.erf(), X),
    case("relu", lambda lib, x: x.relu(), X),
    case("abs", lambda lib, x: x.abs(), X),
    case("sign", lambda lib, x: x.sign() * x, X),
    case("square", lambda lib, x: x.square(), X),
    case("clamp", lambda lib, x: x.clamp(-0.5, 0.7), X),
    case("clamp_min", lambda lib, x: x.clamp(min=0.1), X),
    case("clamp_max", lambda lib, x: x.clamp(max=0.1), X),
    case("pow_int", lambda lib, x: x**3, X),
    case("pow_half", lambda lib, x: x**0.5, pos(3, 4)),
    case("pow_neg", lambda lib, x: x**-1.5, pos(3, 4)),
    case("pow_method", lambda lib, x: x.pow(2), X),
    case("module_exp", lambda lib, x: lib.exp(x) + lib.tanh(x) * lib.sigmoid(x), X),
    case("softmax", lambda lib, x: x.softmax(1), X),
    case("softmax0", lambda lib, x: x.softmax(dim=0), X),
    case("log_softmax", lambda lib, x: x.log_softmax(-1), X * 10),
    case("logsumexp", lambda lib, x: x.logsumexp(1), X * 10),
    case("logsumexp_keep", lambda lib, x: x.logsumexp(0, keepdim=True), X),
    case("detach", lambda lib, x: x * x.detach(), X),
    case("clone", lambda lib, x: x.clone() * 2, X),
]

A34, B4, B31, B134 = randn(3, 4), randn(4, seed=1), randn(3, 1, seed=2), randn(1, 3, 4, seed=3)
BINARY = [
    case("add", lambda lib, a, b: a + b, A34, B4),
    case("sub", lambda lib, a, b: a - b, A34, B31),
    case("mul", lambda lib, a, b: a * b, A34, B134),
    case("div", lambda lib, a, b: a / b, A34, pos(3, 1)),
    case("rdiv", lambda lib, a, b: b / a, pos(3, 4), B31),
    case("pow", lambda lib, a, b: a**b, pos(3, 4), B4),
    case("maximum", lambda lib, a, b: lib.maximum(a, b), A34, B31),
    case("minimum", lambda lib, a, b: lib.minimum(a, b), A34, B134),
    case("scalar_add", lambda lib, a: 2 + a - 0.5, A34),
    case("scalar_rsub", lambda lib, a: 1 - a, A34),
    case("scalar_mul", lambda lib, a: a * 3 * 0.5, A34),
    case("scalar_rdiv", lambda lib, a: 3 / a, pos(3, 4)),
    case("scalar_rpow", lambda lib, a: 2.0**a, A34),
    case("where", lambda lib, c, a, b: lib.where(c, a, b), A34 > 0, A34, B4),
    case("where_scalar", lambda lib, a: lib.where(a > 0, a, 0.0), A34),
    case("masked_fill", lambda lib, a, m: a.masked_fill(m, -1.0), A34, B4 > 0),
    case("chain", lambda lib, a, b: ((a * b).exp() / (1 + a * a)).sum(0), A34, B31),
    case("reuse", lambda lib, a: a * a + a.sin() * a, A34),
]

COMPARISONS = [
    case(name, f, A34, B31)
    for name, f in [
        ("eq", lambda lib, a, b: a == b),
        ("ne", lambda lib, a, b: a != b),
        ("lt", lambda lib, a, b: a < b),
        ("le", lambda lib, a, b: a <= b),
        ("gt", lambda lib, a, b: a > b),
        ("ge", lambda lib, a, b: a >= b),
        ("logic", lambda lib, a, b: ~(a > b) | (a < 0) & (b > 0)),
    ]
]

R = randn(3, 4, 5)
REDUCTIONS = [
    case("sum", lambda lib, x: x.sum(), R),
    case("sum_dim", lambda lib, x: x.sum(1), R),
    case("sum_dims_keep", lambda lib, x: x.sum((0, 2), keepdim=True), R),
    case("sum_neg_dim", lambda lib, x: x.sum(dim=-1), R),
    case("mean", lambda lib, x: x.mean(), R),
    case("mean_dims", lambda lib, x: x.mean((1, 2)), R),
    case("mean_keep", lambda lib, x: x.mean(0, keepdim=True), R),
    case("var", lambda lib, x: x.var(), R),
    case("var_dim", lambda lib, x: x.var(1), R),
    case("var_biased", lambda lib, x: x.var(2, unbiased=False, keepdim=True), R),
    case("var_correction", lambda lib, x: x.var((0, 1), correction=0), R),
    case("std", lambda lib, x: x.std(), R),
    case("std_dim", lambda lib, x: x.std(0, keepdim=True), R),
    case("std_biased", lambda lib, x: x.std(-1, unbiased=False), R),
    case("max", lambda lib, x: x.max(), R),
    case("min", lambda lib, x: x.min(), R),
    case("max_dim", lambda lib, x: tuple(x.max(1)), R),
    case("max_dim_keep", lambda lib, x: tuple(x.max(dim=-1, keepdim=True)), R),
    case("min_dim", lambda lib, x: tuple(x.min(0)), R),
    case("max_dim_fields", lambda lib, x: (x.max(2).values, x.max(2).indices), R),
    case("amax", lambda lib, x: x.amax((0, 2)), R),
    case("amin", lambda lib, x: x.amin(1, keepdim=True), R),
    case("argmax", lambda lib, x: x.argmax(), R),
    case("argmax_dim", lambda lib, x: x.argmax(1), R),
    case("argmin_dim", lambda lib, x: x.argmin(-1, keepdim=True), R),
    case("module_sum", lambda lib, x: lib.sum(x, 0) + lib.mean(x, 0), R),
    case("module_max", lambda lib, x: tuple(lib.max(x, 1)), R),
]

S = randn(2, 3, 4)
SHAPES = [
    case("reshape", lambda lib, x: x.reshape(4, 6), S),
    case("reshape_infer", lambda lib, x: x.reshape(-1, 3), S),
    case("view", lambda lib, x: x.view(6, 4), S),
    case("flatten", lambda lib, x: x.flatten(), S),
    case("flatten_1", lambda lib, x: x.flatten(1), S),
    case("transpose", lambda lib, x: x.transpose(0, 2), S),
    case("transpose_neg", lambda lib, x: x.transpose(-1, -2), S),
    case("permute", lambda lib, x: x.permute(2, 0, 1), S),
    case("T", lambda lib, x: x.T, randn(3, 5)),
    case("unsqueeze", lambda lib, x: x.unsqueeze(1), S),
    case("unsqueeze_neg", lambda lib, x: x.unsqueeze(-1), S),
    case("squeeze", lambda lib, x: x.squeeze(), randn(2, 1, 3, 1)),
    case("squeeze_dim", lambda lib, x: x.squeeze(1), randn(2, 1, 3, 1)),
    case("expand", lambda lib, x: x.expand(2, 3, 4), randn(3, 1)),
    case("expand_neg", lambda lib, x: x.expand(5, -1, -1), randn(3, 4)),
    case("repeat", lambda lib, x: x.repeat(2, 3), randn(2, 3)),
    case("cat", lambda lib, a, b: lib.cat([a, b], 1), S, randn(2, 2, 4, seed=1)),
    case("cat_neg", lambda lib, a, b: lib.cat((a, b), dim=-1), S, randn(2, 3, 1, seed=1)),
    case("stack", lambda lib, a, b: lib.stack([a, b], 1), S, randn(2, 3, 4, seed=1)),
    case("split", lambda lib, x: x.split(2, 2), S),
    case("split_sizes", lambda lib, x: x.split([1, 3], dim=2), S),
    case("chunk", lambda lib, x: x.chunk(2, 1), S),
    case("tril", lambda lib, x: lib.tril(x), randn(4, 5)),
    case("triu", lambda lib, x: lib.triu(x, 1), randn(4, 5)),
    case("tril_method", lambda lib, x: x.tril(-1), randn(2, 4, 4)),
]

IDX = randn(4, 5, 3)
INDEXING = [
    case("int", lambda lib, x: x[1], IDX),
    case("neg_int", lambda lib, x: x[-1, 2], IDX),
    case("slice", lambda lib, x: x[1:3], IDX),
    case("slice_step", lambda lib, x: x[::2, 1:5:2], IDX),
    case("slice_neg", lambda lib, x: x[:-1, -3:], IDX),
    case("ellipsis", lambda lib, x: x[..., 0], IDX),
    case("none", lambda lib, x: x[None, :, None, 1], IDX),
    case("int_array", lambda lib, x, i: x[i], IDX, np.array([3, 0, 3, 1])),
    case("int_array_2d", lambda lib, x, i: x[i], IDX, np.array([[0, 1], [1, 3]])),
    case("int_array_dim1", lambda lib, x, i: x[:, i], IDX, np.array([4, 4, 0])),
    case(
        "int_array_pair",
        lambda lib, x, i, j: x[i, j],
        IDX,
        np.array([0, 2, 0]),
        np.array([1, 1, 4]),
    ),
    case("int_array_neg", lambda lib, x, i: x[i], IDX, np.array([-1, 0])),
    case("int_array_and_slice", lambda lib, x, i: x[i, 1:4], IDX, np.array([2, 2])),
    case("list", lambda lib, x: x[[0, 2]], IDX),
    case("bool_mask", lambda lib, x, m: x[m], IDX, IDX[..., 0] > 0),
    case("bool_mask_rows", lambda lib, x, m: x[m], IDX, np.array([True, False, True, True])),
    case("bool_mask_full", lambda lib, x, m: x[m], IDX, IDX > 0.5),
    case("bool_mask_dim1", lambda lib, x, m: x[:, m], IDX, np.array([1, 0, 0, 1, 1], bool)),
    case("index_of_index", lambda lib, x, i: x[1:][i][:, ::2], IDX, np.array([0, 0, 2])),
]

MATMUL = [
    case("mm", lambda lib, a, b: a @ b, randn(3, 4), randn(4, 5, seed=1)),
    case("mv", lambda lib, a, b: a @ b, randn(3, 4), randn(4, seed=1)),
    case("vm", lambda lib, a, b: a @ b, randn(4), randn(4, 5, seed=1)),
    case("dot", lambda lib, a, b: a @ b, randn(4), randn(4, seed=1)),
    case("bmm", lambda lib, a, b: lib.matmul(a, b), randn(2, 3, 4), randn(2, 4, 5, seed=1)),
    case("broadcast_batch", lambda lib, a, b: a @ b, randn(2, 1, 3, 4), randn(5, 4, 2, seed=1)),
    case("batch_times_matrix", lambda lib, a, b: a @ b, randn(2, 3, 4), randn(4, 5, seed=1)),
    case("vector_times_batch", lambda lib, a, b: a @ b, randn(4), randn(3, 4, 2, seed=1)),
    case("einsum_mm", lambda lib, a, b: lib.einsum("ij,jk->ik", a, b), randn(3, 4), randn(4, 2)),
    case(
        "einsum_attention",
        lambda lib, q, k: lib.einsum("bhqd,bhkd->bhqk", q, k),
        randn(2, 2, 3, 4),
        randn(2, 2, 5, 4, seed=1),
    ),
    case("einsum_outer", lambda lib, a, b: lib.einsum("i,j->ij", a, b), randn(3), randn(4, seed=1)),
    case("einsum_transpose", lambda lib, a: lib.einsum("ij->ji", a), randn(3, 4)),
    case("einsum_sum", lambda lib, a: lib.einsum("ijk->j", a), randn(2, 3, 4)),
    case("einsum_list", lambda lib, a, b: lib.einsum("bi,bi->b", [a, b]), randn(3, 4), randn(3, 4)),
]

CONV = [
    case(
        f"conv2d_s{s}_p{p}_d{d}_g{g}",
        lambda lib, x, w, b, s=s, p=p, d=d, g=g: F(lib).conv2d(x, w, b, s, p, d, g),
        randn(2, cin, 7, 6),
        randn(cout, cin // g, kh, kw, seed=1),
        randn(cout, seed=2),
    )
    for cin, cout, kh, kw, s, p, d, g in [
        (3, 4, 3, 3, 1, 0, 1, 1),
        (3, 4, 3, 2, 2, 1, 1, 1),
        (2, 3, 2, 3, (2, 1), (0, 2), 1, 1),
        (2, 2, 3, 3, 1, 1, 2, 1),
        (4, 6, 3, 3, 1, 1, 1, 2),
        (4, 4, 3, 3, 2, 0, (1, 2), 4),
    ]
] + [
    case(
        "conv2d_no_bias",
        lambda lib, x, w: F(lib).conv2d(x, w),
        randn(1, 2, 5, 5),
        randn(3, 2, 3, 3),
    ),
    case(
        "conv2d_same",
        lambda lib, x, w: F(lib).conv2d(x, w, padding="same", dilation=2),
        randn(1, 2, 6, 5),
        randn(3, 2, 3, 3),
    ),
    case(
        "conv2d_unbatched", lambda lib, x, w: F(lib).conv2d(x, w), randn(2, 5, 5), randn(3, 2, 2, 2)
    ),
]

POOL = [
    case("max_pool2d_2", lambda lib, x: F(lib).max_pool2d(x, 2), randn(2, 3, 6, 7)),
    case("max_pool2d_3s2p1", lambda lib, x: F(lib).max_pool2d(x, 3, 2, 1), randn(2, 3, 7, 6)),
    case("max_pool2d_rect", lambda lib, x: F(lib).max_pool2d(x, (2, 3), (1, 2)), randn(1, 2, 5, 7)),
    case("max_pool2d_dilated", lambda lib, x: F(lib).max_pool2d(x, 2, 1, 0, 2), randn(1, 2, 6, 6)),
    case("max_pool2d_unbatched", lambda lib, x: F(lib).max_pool2d(x, 2), randn(3, 4, 4)),
]

LOGITS, TARGET = randn(6, 5) * 2, np.array([0, 4, 2, 2, 1, 3])
SPATIAL, SPATIAL_T = randn(2, 4, 3, 2), ints(4, 2, 3, 2)
NN = [
    case(
        "linear", lambda lib, x, w, b: F(lib).linear(x, w, b), randn(2, 3, 4), randn(5, 4), randn(5)
    ),
    case("linear_no_bias", lambda lib, x, w: F(lib).linear(x, w), randn(3, 4), randn(2, 4)),
    case("relu", lambda lib, x: F(lib).relu(x), X),
    case("tanh", lambda lib, x: F(lib).tanh(x), X),
    case("sigmoid", lambda lib, x: F(lib).sigmoid(x), X),
    case("gelu", lambda lib, x: F(lib).gelu(x), X * 3),
    case("gelu_tanh", lambda lib, x: F(lib).gelu(x, approximate="tanh"), X * 3),
    case("softmax", lambda lib, x: F(lib).softmax(x, dim=-1), randn(2, 3, 4)),
    case("log_softmax", lambda lib, x: F(lib).log_softmax(x, 1), randn(2, 3, 4) * 20),
    case("mse_mean", lambda lib, a, b: F(lib).mse_loss(a, b), randn(4, 3), randn(4, 3, seed=1)),
    case("mse_sum", lambda lib, a, b: F(lib).mse_loss(a, b, reduction="sum"), randn(5), randn(5)),
    case(
        "mse_none",
        lambda lib, a, b: F(lib).mse_loss(a, b, reduction="none"),
        randn(2, 3),
        X[:2, :3],
    ),
    case(
        "layer_norm",
        lambda lib, x, w, b: F(lib).layer_norm(x, (4,), w, b, 1e-5),
        randn(2, 3, 4) * 3 + 1,
        randn(4, seed=1),
        randn(4, seed=2),
    ),
    case(
        "layer_norm_2d",
        lambda lib, x, w, b: F(lib).layer_norm(x, (3, 4), w, b, eps=1e-3),
        randn(2, 3, 4),
        randn(3, 4, seed=1),
        randn(3, 4, seed=2),
    ),
    case("layer_norm_plain", lambda lib, x: F(lib).layer_norm(x, [4]), randn(5, 4)),
    case(
        "embedding",
        lambda lib, i, w: F(lib).embedding(i, w),
        np.array([[0, 3, 3], [1, 0, 4]]),
        randn(5, 3),
    ),
    case(
        "embedding_padding",
        lambda lib, i, w: F(lib).embedding(i, w, padding_idx=3),
        np.array([[0, 3, 3], [1, 0, 4]]),
        randn(5, 3),
    ),
]
for reduction in ("mean", "sum", "none"):
    for ignore, smoothing in [(-100, 0.0), (2, 0.0), (-100, 0.1), (2, 0.25)]:
        NN.append(
            case(
                f"cross_entropy_{reduction}_ignore{ignore}_smooth{smoothing}",
                lambda lib, x, t, r=reduction, i=ignore, s=smoothing: F(lib).cross_entropy(
                    x, t, ignore_index=i, reduction=r, label_smoothing=s
                ),
                LOGITS,
                TARGET,
            )
        )
NN += [
    case(
        "cross_entropy_spatial",
        lambda lib, x, t: F(lib).cross_entropy(x, t, ignore_index=1, label_smoothing=0.1),
        SPATIAL,
        SPATIAL_T,
    ),
    case(
        "cross_entropy_unbatched",
        lambda lib, x, t: F(lib).cross_entropy(x, t),
        randn(5),
        np.array(TARGET[1]),
    ),
    case(
        "cross_entropy_large_logits",
        lambda lib, x, t: F(lib).cross_entropy(x, t),
        LOGITS * 1000,
        TARGET,
    ),
]


@pytest.mark.parametrize(("f", "arrays"), UNARY + BINARY + COMPARISONS)
def test_elementwise(f, arrays):
    check(f, *arrays)


@pytest.mark.parametrize(("f", "arrays"), REDUCTIONS)
def test_reductions(f, arrays):
    check(f, *arrays)


@pytest.mark.parametrize(("f", "arrays"), SHAPES + INDEXING)
def test_shapes_and_indexing(f, arrays):
    check(f, *arrays)


@pytest.mark.parametrize(("f", "arrays"), MATMUL)
def test_matmul_and_einsum(f, arrays):
    check(f, *arrays)


@pytest.mark.parametrize(("f", "arrays"), CONV + POOL)
def test_conv_and_pool(f, arrays):
    check(f, *arrays)


@pytest.mark.parametrize(("f", "arrays"), NN)
def test_nn_functional(f, arrays):
    check(f, *arrays)


def test_second_order_gradients():
    x = randn(3, 4)
    grads = {}
    for lib in (tg, torch):
        t = lib.tensor(x, requires_grad=True)
        y = (t.tanh() * t * t).sum()
        (g,) = lib.autograd.grad(y, [t], create_graph=True)
        (g * g).sum().backward()
        grads[lib] = (as_np(g), as_np(t.grad))
    for a, b in zip(grads[tg], grads[torch]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


# --- (b) training trajectories -------------------------------------------------------------------


def mlp(lib):
    nn = lib.nn
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.Tanh(),
        nn.Linear(16, 12),
        nn.GELU(),
        nn.LayerNorm(12),
        nn.Linear(12, 3),
    )


def cnn(lib):
    nn = lib.nn
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def make_optimizer(lib, name, params):
    if name == "sgd":
        return lib.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)
    if name == "adam":
        return lib.optim.Adam(params, lr=0.01)
    if name == "adam_wd_amsgrad":
        return lib.optim.Adam(params, lr=0.01, weight_decay=1e-2, amsgrad=True)
    return lib.optim.AdamW(params, lr=0.01, weight_decay=0.1)


DATA = {
    "mlp": (randn(16, 6, seed=5), randn(16, 3, seed=6), "mse"),
    "cnn": (randn(8, 2, 8, 8, seed=7), ints(3, 8, seed=8), "ce"),
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adam_wd_amsgrad", "adamw"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_training_trajectory_matches_torch(arch, optimizer):
    tg.manual_seed(0)
    build = {"mlp": mlp, "cnn": cnn}[arch]
    tg_model = build(tg).double()
    th_model = build(torch).double()
    th_model.load_state_dict({k: torch.tensor(v.numpy()) for k, v in tg_model.state_dict().items()})
    x, y, loss_kind = DATA[arch]
    losses = {}
    for lib, model in ((tg, tg_model), (torch, th_model)):
        opt = make_optimizer(lib, optimizer, model.parameters())
        loss_fn = lib.nn.MSELoss() if loss_kind == "mse" else lib.nn.CrossEntropyLoss()
        xs, ys = lib.tensor(x), lib.tensor(y)
        losses[lib] = []
        for _ in range(20):
            opt.zero_grad()
            loss = loss_fn(model(xs), ys)
            loss.backward()
            opt.step()
            losses[lib].append(loss.item())
    np.testing.assert_allclose(losses[tg], losses[torch], rtol=1e-6, atol=1e-9)
    assert losses[tg][-1] < 0.8 * losses[tg][0]  # it trained
    th_params = dict(th_model.named_parameters())
    for name, p in tg_model.named_parameters():
        np.testing.assert_allclose(as_np(p), as_np(th_params[name]), rtol=1e-6, atol=1e-9)


# --- (c) custom autograd.Function ----------------------------------------------------------------


def straight_through_sign(lib):
    """sign() forward; the backward passes the gradient through where |x| <= 1 (a straight-
    through estimator): the derived gradient of sign() would be zero everywhere."""

    class SignSTE(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sign()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (x.abs() <= 1).to(grad.dtype)

    return SignSTE


def scaled_clip(lib):
    """Two inputs, one of them a non-tensor; backward returns None for what needs no grad."""

    class ScaledClip(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, scale, limit):
            ctx.save_for_backward(x, scale)
            ctx.limit = limit
            return (x * scale).clamp(-limit, limit)

        @staticmethod
        def backward(ctx, grad):
            x, scale = ctx.saved_tensors
            inside = ((x * scale).abs() < ctx.limit).to(grad.dtype)
            gx = grad * scale * inside if ctx.needs_input_grad[0] else None
            gs = (grad * x * inside).sum(0) if ctx.needs_input_grad[1] else None
            return gx, gs, None

    return ScaledClip


def test_custom_function_straight_through_estimator_matches_torch():
    x, w, c = randn(5, 4) * 0.8, randn(4, 3, seed=1) * 0.5, randn(5, 3, seed=2)
    results = {}
    for lib in (tg, torch):
        xt, wt = lib.tensor(x, requires_grad=True), lib.tensor(w, requires_grad=True)
        ste = straight_through_sign(lib)
        out = ste.apply(xt @ wt)
        loss = (out * lib.tensor(c)).sum() + (ste.apply(xt) ** 2).sum()
        loss.backward()
        results[lib] = (as_np(out), as_np(xt.grad), as_np(wt.grad), loss.item())
    for a, b in zip(results[tg], results[torch]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    # the user's backward ran: the gradient through sign() is not zero
    assert np.abs(results[tg][2]).sum() > 0.1


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_custom_function_with_several_inputs_matches_torch(needs):
    x, s = randn(4, 3), pos(3, seed=1)
    results = {}
    for lib in (tg, torch):
        xt = lib.tensor(x, requires_grad=needs[0])
        st = lib.tensor(s, requires_grad=needs[1])
        out = scaled_clip(lib).apply(xt, st, 1.2)
        (out * out.sum(0)).sum().backward()
        grads = [as_np(t.grad) if t.grad is not None else None for t in (xt, st)]
        results[lib] = (as_np(out), *grads)
    for a, b in zip(results[tg], results[torch]):
        assert (a is None) == (b is None)
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


# --- names and reprs of the training library -----------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda lib: lib.nn.Linear(3, 4),
        lambda lib: lib.nn.Linear(3, 4, bias=False),
        lambda lib: lib.nn.Conv2d(1, 8, 3),
        lambda lib: lib.nn.Conv2d(
            2, 4, (3, 5), stride=2, padding=1, dilation=2, groups=2, bias=False
        ),
        lambda lib: lib.nn.Conv2d(2, 4, 3, padding="same"),
        lambda lib: lib.nn.MaxPool2d(2),
        lambda lib: lib.nn.MaxPool2d(3, 1, 1),
        lambda lib: lib.nn.Flatten(),
        lambda lib: lib.nn.ReLU(),
        lambda lib: lib.nn.GELU(approximate="tanh"),
        lambda lib: lib.nn.Tanh(),
        lambda lib: lib.nn.Sigmoid(),
        lambda lib: lib.nn.LayerNorm(4),
        lambda lib: lib.nn.LayerNorm((2, 3), eps=1e-3, elementwise_affine=False),
        lambda lib: lib.nn.Embedding(10, 3),
        lambda lib: lib.nn.Dropout(0.1),
        lambda lib: lib.nn.MSELoss(),
        lambda lib: lib.nn.CrossEntropyLoss(),
        lambda lib: lib.nn.Softmax(dim=1),
        lambda lib: lib.nn.Sequential(lib.nn.Linear(2, 3), lib.nn.Sequential(lib.nn.ReLU())),
        lambda lib: lib.nn.ModuleList([lib.nn.Linear(2, 3), lib.nn.Tanh()]),
    ],
)
def test_layer_repr_matches_torch(make):
    assert repr(make(tg)) == repr(make(torch))


def shared_model(lib):
    class Model(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = lib.nn.Embedding(5, 4)
            self.blocks = lib.nn.ModuleList([lib.nn.Linear(4, 4), lib.nn.LayerNorm(4)])
            self.blocks.append(self.blocks[0])  # a shared module
            self.head = lib.nn.Linear(4, 5, bias=False)
            self.head.weight = self.embed.weight  # tied weights
            self.register_buffer("mask", lib.zeros(3))
            self.register_buffer("cache", lib.zeros(2), persistent=False)

    return Model()


def test_traversal_names_match_torch():
    a, b = shared_model(tg), shared_model(torch)
    assert list(a.state_dict()) == list(b.state_dict())
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
    assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
    assert [type(m).__name__ for m in a.children()] == [type(m).__name__ for m in b.children()]
    assert a.load_state_dict(b.state_dict()) == ([], [])
    seq_a, seq_b = (
        lib.nn.Sequential(lib.nn.Linear(2, 2), lib.nn.ReLU(), lib.nn.Linear(2, 2))
        for lib in (tg, torch)
    )
    assert list(seq_a[1:].state_dict()) == list(seq_b[1:].state_dict())


def test_collate_matches_torch_default_collate():
    from torch.utils.data import default_collate

    samples = [(np.arange(3.0) + i, i, i / 4, {"m": np.float32(i)}) for i in range(3)]
    ours = tg.data.DataLoader(samples, batch_size=3)
    theirs = default_collate(samples)
    for a, b in zip(next(iter(ours)), theirs):
        a, b = (a["m"], b["m"]) if isinstance(b, dict) else (a, b)
        assert dtype_name(a) == dtype_name(b)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
