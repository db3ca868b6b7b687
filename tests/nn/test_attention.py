"""Attention: F.scaled_dot_product_attention, nn.MultiheadAttention and the Transformer layers,
against PyTorch in float64 (weights loaded by state_dict; outputs, attention weights, input and
parameter gradients), finite-difference gradient checks, initialisation, the errors users hit,
and compiled modules and whole compiled training steps equal to eager ones."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.autograd import gradcheck
from tracegrad.errors import DTypeError, ShapeError

# PyTorch warns when a bool padding mask meets a float attention mask (both are supported)
# and about its fast path
pytestmark = [
    pytest.mark.filterwarnings("ignore:Support for mismatched"),
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
]

TOL = 1e-10
E, H = 8, 2  # embed_dim, num_heads


def rng(seed=0):
    return np.random.default_rng(seed)


def close(actual, expected, what="", tol=TOL):
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol, err_msg=what
    )


def to_tg(value):
    return tg.tensor(value) if isinstance(value, np.ndarray) else value


def to_torch(torch, value):
    return torch.tensor(value) if isinstance(value, np.ndarray) else value


# --- scaled_dot_product_attention ----------------------------------------------------------------

Q, K, V = (2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)
SDPA_CASES = {
    "plain": {},
    "causal": {"is_causal": True},
    "scale": {"scale": 0.3},
    "float_mask": {"attn_mask": rng(1).standard_normal((4, 6))},
    "bool_mask": {"attn_mask": np.eye(4, 6, dtype=bool) | (rng(2).random((4, 6)) > 0.5)},
    "bool_mask_per_head": {"attn_mask": rng(3).random((3, 4, 6)) > 0.3},
    "float_mask_batched": {"attn_mask": rng(4).standard_normal((2, 1, 4, 6))},
    "grouped_query": {"enable_gqa": True, "is_causal": True},
}
# Grouped-query attention: one key and value head serves all three query heads
SHAPES = {"grouped_query": (Q, (2, 1, 6, 5), (2, 1, 6, 7))}


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_matches_torch_with_gradients(case):
    torch = pytest.importorskip("torch")
    kwargs = SDPA_CASES[case]
    arrays = [rng(5).standard_normal(s) for s in SHAPES.get(case, (Q, K, V))]
    ours = [tg.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = F.scaled_dot_product_attention(*ours, **{k: to_tg(v) for k, v in kwargs.items()})
    ref = torch.nn.functional.scaled_dot_product_attention(
        *theirs, **{k: to_torch(torch, v) for k, v in kwargs.items()}
    )
    assert tuple(out.shape) == tuple(ref.shape) == (2, 3, 4, 7)
    close(out.detach().numpy(), ref.detach().numpy(), "output")
    cotangent = rng(6).standard_normal(tuple(ref.shape))
    (out * tg.tensor(cotangent)).sum().backward()
    (ref * torch.tensor(cotangent)).sum().backward()
    for name, a, b in zip("qkv", ours, theirs, strict=True):
        close(a.grad.numpy(), b.grad.numpy(), f"gradient of {name}")


@pytest.mark.parametrize("case", ["plain", "causal", "float_mask", "bool_mask", "grouped_query"])
def test_sdpa_gradcheck(case):
    kwargs = {k: to_tg(v) for k, v in SDPA_CASES[case].items()}
    shapes = SHAPES.get(case, (Q, K, V))
    inputs = [tg.tensor(rng(7).standard_normal(s), requires_grad=True) for s in shapes]
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kwargs), inputs)


def test_sdpa_causal_is_the_lower_triangular_bool_mask_and_dropout_zeroes_weights():
    q, k, v = (tg.tensor(rng(8).standard_normal(s)) for s in (Q, K, V))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=tg.ones(4, 6, dtype=tg.bool).tril())
    close(causal.numpy(), masked.numpy(), tol=0)
    # all weights dropped: the output is zero, whatever the mode (as in PyTorch)
    close(F.scaled_dot_product_attention(q, k, v, dropout_p=1.0).numpy(), np.zeros((2, 3, 4, 7)))


@pytest.mark.parametrize(
    "shapes, kwargs, error, words",
    [
        ((Q, (2, 3, 6, 4), V), {}, ShapeError, "same number of features"),
        ((Q, K, (2, 3, 5, 7)), {}, ShapeError, "same length"),
        (((5,), K, V), {}, ShapeError, "at least 2 dims"),
        ((Q, K, V), {"attn_mask": np.zeros((5, 6))}, ShapeError, "does not broadcast"),
        ((Q, K, V), {"attn_mask": np.zeros((4, 6), np.int64)}, DTypeError, "bool or floating"),
        ((Q, K, V), {"attn_mask": np.zeros((4, 6)), "is_causal": True}, ValueError, "is_causal"),
        ((Q, (2, 2, 6, 5), V), {"enable_gqa": True}, ShapeError, "dividing the query's"),
    ],
)
def test_sdpa_errors_name_the_problem(shapes, kwargs, error, words):
    q, k, v = (tg.tensor(np.zeros(s)) for s in shapes)
    with pytest.raises(error, match=words):
        F.scaled_dot_product_attention(q, k, v, **{k: to_tg(v) for k, v in kwargs.items()})


# --- MultiheadAttention --------------------------------------------------------------------------

# name -> (constructor keywords, (query, key, value) shapes, forward keywords as arrays)
MHA_CASES = {
    "plain": ({}, ((4, 3, E), (5, 3, E), (5, 3, E)), {}),
    "masks": (
        {},
        ((4, 3, E), (5, 3, E), (5, 3, E)),
        {
            "key_padding_mask": np.array([[0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]) > 0,
            "attn_mask": rng(1).standard_normal((4, 5)),
            "average_attn_weights": False,
        },
    ),
    "bool_mask_per_head": (
        {"batch_first": True},
        ((3, 4, E), (3, 5, E), (3, 5, E)),
        {"attn_mask": (rng(2).random((3 * H, 4, 5)) > 0.6) & ~np.eye(4, 5, dtype=bool)},
    ),
    "kdim_vdim_no_bias": (
        {"kdim": 3, "vdim": 5, "bias": False},
        ((4, 3, E), (5, 3, 3), (5, 3, 5)),
        {"need_weights": False},
    ),
    "bias_kv_zero_attn": (
        {"add_bias_kv": True, "add_zero_attn": True},
        ((4, 3, E), (5, 3, E), (5, 3, E)),
        {"key_padding_mask": rng(3).random((3, 5)) > 0.7, "attn_mask": np.zeros((4, 5))},
    ),
    "unbatched": (
        {},
        ((4, E), (5, E), (5, E)),
        {"key_padding_mask": np.array([0, 1, 0, 0, 0]) > 0},
    ),
    "causal_hint": (
        {},
        ((4, 3, E), (4, 3, E), (4, 3, E)),
        {
            "attn_mask": np.triu(np.full((4, 4), -np.inf), 1),
            "is_causal": True,
            "need_weights": False,
        },
    ),
}


def pair(torch, tg_class, torch_class, *args, **kwargs):
    """Our module and PyTorch's, in float64, with PyTorch's weights loaded by state_dict."""
    torch.manual_seed(0)
    theirs = torch_class(*args, **kwargs).double()
    ours = tg_class(*args, **kwargs).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def compare(torch, ours, theirs, arrays, kwargs, seed=9):
    """Outputs, input gradients and parameter gradients of both modules, for one cotangent."""
    inputs = [tg.tensor(a, requires_grad=True) for a in arrays]
    torch_inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = ours(*inputs, **{k: to_tg(v) for k, v in kwargs.items()})
    ref = theirs(*torch_inputs, **{k: to_torch(torch, v) for k, v in kwargs.items()})
    out, ref = (out, ref) if isinstance(ref, tuple) else ((out,), (ref,))
    total, torch_total = 0, 0
    for i, (a, b) in enumerate(zip(out, ref, strict=True)):
        if b is None:
            assert a is None
            continue
        assert tuple(a.shape) == tuple(b.shape), f"output {i}"
        close(a.detach().numpy(), b.detach().numpy(), f"output {i}")
        cotangent = rng(seed + i).standard_normal(tuple(b.shape))
        total = total + (a * tg.tensor(cotangent)).sum()
        torch_total = torch_total + (b * torch.tensor(cotangent)).sum()
    total.backward()
    torch_total.backward()
    for i, (a, b) in enumerate(zip(inputs, torch_inputs, strict=True)):
        close(a.grad.numpy(), b.grad.numpy(), f"gradient of input {i}")
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        close(p.grad.numpy(), theirs_grads[name].grad.numpy(), f"gradient of {name}")


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multihead_attention_matches_torch(case):
    torch = pytest.importorskip("torch")
    settings, shapes, kwargs = MHA_CASES[case]
    ours, theirs = pair(torch, nn.MultiheadAttention, torch.nn.MultiheadAttention, E, H, **settings)
    arrays = [rng(4).standard_normal(s) for s in shapes]
    compare(torch, ours, theirs, arrays, kwargs)


def test_multihead_attention_gradcheck_with_masks_extra_keys_and_kdim():
    tg.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2, kdim=3, vdim=5, add_bias_kv=True, add_zero_attn=True)
    mha.double()
    padding = tg.tensor(np.array([[False, True, False], [False, False, False]]))
    shapes = ((2, 2, 4), (3, 2, 3), (3, 2, 5))
    inputs = [tg.tensor(rng(5).standard_normal(s), requires_grad=True) for s in shapes]
    mask = tg.tensor(rng(6).standard_normal((2, 3)))

    def attend(query, key, value):
        out, weights = mha(query, key, value, key_padding_mask=padding, attn_mask=mask)
        return out.sum() + (weights * weights).sum()

    assert gradcheck(attend, inputs)


def test_multihead_attention_initialisation_is_torchs():
    tg.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, kdim=6)
    assert mha.in_proj_weight is None and mha.bias_k is None
    bound = np.sqrt(6 / (16 + 6))  # xavier_uniform_ of the (16, 6) key projection
    weight = mha.k_proj_weight.detach().numpy()
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.8 * bound
    close(mha.in_proj_bias.detach().numpy(), np.zeros(48), tol=0)
    close(mha.out_proj.bias.detach().numpy(), np.zeros(16), tol=0)
    linear_bound = 1 / np.sqrt(16)  # the output projection keeps Linear's initialisation
    assert np.abs(mha.out_proj.weight.detach().numpy()).max() <= linear_bound


def test_multihead_attention_dropout_only_in_training():
    tg.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, dropout=0.5).double()
    x = tg.tensor(rng(7).standard_normal((4, 3, E)))
    mha.eval()
    evaluated = mha(x, x, x)[0].detach().numpy()
    plain = nn.MultiheadAttention(E, H).double()
    plain.load_state_dict(mha.state_dict())
    close(evaluated, plain(x, x, x)[0].detach().numpy(), tol=0)
    mha.train()
    weights = mha(x, x, x, average_attn_weights=False)[1].detach().numpy()
    assert (weights == 0).mean() > 0.3  # dropped weights, the rest scaled by 2
    assert weights.sum(-1).max() > 1.2


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda m, x: m(x, x[:, :2], x), ShapeError, "same length and batch"),
        (lambda m, x: m(x, x[:, :2], x[:, :2]), ShapeError, "query and key of the same batch"),
        (lambda m, x: m(x[..., :4], x, x), ShapeError, "embed_dim=8"),
        (lambda m, x: m(x[0], x, x), ShapeError, "3-d"),
        (lambda m, x: m(x, x, x, attn_mask=tg.zeros(4, 3)), ShapeError, r"should be \(4, 4\)"),
        (
            lambda m, x: m(x, x, x, key_padding_mask=tg.zeros(4, 3, dtype=tg.bool)),
            ShapeError,
            r"should be \(3, 4\)",
        ),
        (lambda m, x: m(x, x, x, attn_mask=tg.zeros(4, 4, dtype=tg.int64)), TypeError, "bool"),
        (lambda m, x: m(x, x, x, is_causal=True), ValueError, "pass attn_mask"),
    ],
)
def test_multihead_attention_errors_name_the_problem(call, error, words):
    mha = nn.MultiheadAttention(E, H)
    with pytest.raises(error, match=words):
        call(mha, tg.zeros(4, 3, E))


def test_multihead_attention_rejects_heads_not_dividing_the_embedding():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        nn.MultiheadAttention(6, 4)


# --- Transformer layers --------------------------------------------------------------------------

CAUSAL4 = np.triu(np.full((4, 4), -np.inf), 1)
LAYER_SETTINGS = {
    "post_norm_relu": {},
    "pre_norm_gelu_batch_first": {"norm_first": True, "activation": "gelu", "batch_first": True},
    "no_bias": {"bias": False, "layer_norm_eps": 1e-3},
}


@pytest.mark.parametrize("settings", list(LAYER_SETTINGS))
def test_encoder_layer_matches_torch(settings):
    torch = pytest.importorskip("torch")
    kwargs = {"dim_feedforward": 16, "dropout": 0.0, **LAYER_SETTINGS[settings]}
    ours, theirs = pair(
        torch, nn.TransformerEncoderLayer, torch.nn.TransformerEncoderLayer, E, H, **kwargs
    )
    padding = np.array([[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]) > 0
    compare(
        torch,
        ours,
        theirs,
        [rng(1).standard_normal((4, 3, E) if "batch_first" not in kwargs else (3, 4, E))],
        {"src_mask": CAUSAL4, "src_key_padding_mask": padding},
    )


@pytest.mark.parametrize("settings", list(LAYER_SETTINGS))
def test_decoder_layer_matches_torch(settings):
    torch = pytest.importorskip("torch")
    kwargs = {"dim_feedforward": 16, "dropout": 0.0, **LAYER_SETTINGS[settings]}
    ours, theirs = pair(
        torch, nn.TransformerDecoderLayer, torch.nn.TransformerDecoderLayer, E, H, **kwargs
    )
    first = "batch_first" in kwargs
    shapes = [(3, 4, E), (3, 5, E)] if first else [(4, 3, E), (5, 3, E)]
    memory_padding = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]]) > 0
    forward = {"tgt_mask": CAUSAL4, "tgt_is_causal": True}
    forward["memory_key_padding_mask"] = memory_padding
    compare(torch, ours, theirs, [rng(2).standard_normal(s) for s in shapes], forward)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_layers_gradcheck(norm_first):
    tg.manual_seed(0)
    settings = {"dim_feedforward": 6, "dropout": 0.0, "norm_first": norm_first}
    encoder = nn.TransformerEncoderLayer(4, 2, activation="gelu", **settings).double()
    decoder = nn.TransformerDecoderLayer(4, 2, **settings).double()
    mask = nn.Transformer.generate_square_subsequent_mask(3, dtype=tg.float64)
    padding = tg.tensor(np.array([[False, False, True, False], [False, False, False, False]]))

    def encode_decode(tgt, src):
        memory = encoder(src, src_key_padding_mask=padding)
        return decoder(tgt, memory, tgt_mask=mask, memory_key_padding_mask=padding)

    shapes = ((3, 2, 4), (4, 2, 4))
    inputs = [tg.tensor(rng(8).standard_normal(s), requires_grad=True) for s in shapes]
    assert gradcheck(encode_decode, inputs)


def test_stacks_and_transformer_match_torch():
    torch = pytest.importorskip("torch")
    settings = {"dim_feedforward": 16, "dropout": 0.0}
    ours, theirs = pair(
        torch,
        lambda: nn.TransformerEncoder(
            nn.TransformerEncoderLayer(E, H, **settings), 2, nn.LayerNorm(E)
        ),
        lambda: torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(E, H, **settings), 2, torch.nn.LayerNorm(E)
        ),
    )
    compare(torch, ours, theirs, [rng(3).standard_normal((4, 3, E))], {"mask": CAUSAL4})
    ours, theirs = pair(
        torch,
        lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(E, H, **settings), 2),
        lambda: torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(E, H, **settings), 2),
    )
    shapes = [(4, 3, E), (5, 3, E)]
    compare(torch, ours, theirs, [rng(4).standard_normal(s) for s in shapes], {"tgt_mask": CAUSAL4})
    ours, theirs = pair(torch, nn.Transformer, torch.nn.Transformer, E, H, 2, 1, 16, 0.0)
    forward = {"tgt_mask": CAUSAL4, "src_key_padding_mask": rng(5).random((3, 5)) > 0.7}
    compare(
        torch, ours, theirs, [rng(6).standard_normal(s) for s in [(5, 3, E), (4, 3, E)]], forward
    )


def test_callable_activation_and_layer_copies_are_independent():
    layer = nn.TransformerEncoderLayer(E, H, 16, activation=nn.GELU(approximate="tanh"))
    assert "activation" in dict(layer.named_children())  # a module is registered, as in PyTorch
    encoder = nn.TransformerEncoder(layer, 2)
    first, second = encoder.layers[0].linear1.weight, encoder.layers[1].linear1.weight
    assert first is not second and np.array_equal(first.detach().numpy(), second.detach().numpy())
    assert first is not layer.linear1.weight
    with pytest.raises(ValueError, match="relu/gelu"):
        nn.TransformerEncoderLayer(E, H, activation="swish")


def test_transformer_initialisation_and_square_subsequent_mask():
    torch = pytest.importorskip("torch")
    tg.manual_seed(0)
    model = nn.Transformer(16, 4, 1, 1, 32)
    weight = model.encoder.layers[0].linear1.weight.detach().numpy()
    bound = np.sqrt(6 / (16 + 32))  # xavier_uniform_ of every matrix, not Linear's default
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.8 * bound
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    assert mask.dtype == tg.float32
    expected = torch.nn.Transformer.generate_square_subsequent_mask(5).numpy()
    np.testing.assert_array_equal(mask.numpy(), expected)
    double = nn.Transformer.generate_square_subsequent_mask(3, dtype=tg.float64)
    assert double.dtype == tg.float64


@pytest.mark.parametrize(
    "src, tgt, words",
    [((5, 3, E), (4, 2, E), "batch number"), ((5, 3, E), (4, 3, 6), "feature number")],
)
def test_transformer_rejects_mismatched_inputs(src, tgt, words):
    model = nn.Transformer(E, H, 1, 1, 16)
    with pytest.raises(ShapeError, match=words):
        model(tg.zeros(*src), tg.zeros(*tgt))


# --- compiled ------------------------------------------------------------------------------------


class Seq2Seq(nn.Module):
    """A Transformer between embeddings and a classifier, masks given as arguments."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, E)
        self.transformer = nn.Transformer(E, H, 1, 1, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(E, 11)

    def forward(self, src, tgt, tgt_mask, src_key_padding_mask):
        out = self.transformer(
            self.embed(src),
            self.embed(tgt),
            tgt_mask=tgt_mask,
            src_key_padding_mask=src_key_padding_mask,
            memory_key_padding_mask=src_key_padding_mask,
        )
        return self.head(out)


def seq2seq_batch(seed):
    r = rng(seed)
    src, tgt = tg.tensor(r.integers(0, 11, (3, 5))), tg.tensor(r.integers(0, 11, (3, 4)))
    padding = tg.tensor(np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]) > 0)
    mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=tg.float64)
    return src, tgt, mask, padding, tg.tensor(r.integers(0, 11, (3, 4)))


def build_seq2seq():
    tg.manual_seed(0)
    return Seq2Seq().double()


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_compiled_module_equals_eager(passes):
    results = []
    for compiled in (False, True):
        model = build_seq2seq()
        target = tg.compile(model, passes=passes) if compiled else model
        record = []
        for seed in (1, 2):
            model.zero_grad()
            src, tgt, mask, padding, labels = seq2seq_batch(seed)
            logits = target(src, tgt, mask, padding)
            F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1)).backward()
            record.append(logits.detach().numpy())
            record += [p.grad.numpy().copy() for p in model.parameters()]
        results.append(record)
    for i, (c, e) in enumerate(zip(results[1], results[0], strict=True)):
        close(c, e, f"value {i}")


def training_run(compiled: bool, passes) -> tuple[list, list]:
    """Three Adam steps on one batch: the losses and the parameters afterwards."""
    model = build_seq2seq()
    opt = optim.Adam(model.parameters(), lr=1e-2)

    def step(src, tgt, mask, padding, labels):
        opt.zero_grad()
        logits = model(src, tgt, mask, padding)
        loss = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    run = tg.compile(step, passes=passes) if compiled else step
    batch = seq2seq_batch(1)
    losses = [run(*batch).item() for _ in range(3)]
    return losses, [p.detach().numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_compiled_training_step_equals_eager(passes):
    (losses_e, params_e), (losses_c, params_c) = (training_run(c, passes) for c in (False, True))
    close(losses_c, losses_e, "losses")
    assert losses_e[2] < losses_e[0]
    for i, (c, e) in enumerate(zip(params_c, params_e, strict=True)):
        close(c, e, f"parameter {i}")


def test_compiled_multihead_attention_weights_and_sdpa_equal_eager():
    tg.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).double()
    x = tg.tensor(rng(3).standard_normal((3, 4, E)), requires_grad=True)
    padding = tg.tensor(rng(4).random((3, 4)) > 0.7) & tg.tensor(np.arange(4) > 0)
    eager = mha(x, x, x, key_padding_mask=padding, average_attn_weights=False)
    compiled = tg.compile(mha)(x, x, x, key_padding_mask=padding, average_attn_weights=False)
    for c, e in zip(compiled, eager, strict=True):
        close(c.detach().numpy(), e.detach().numpy())
    q, k, v = (tg.tensor(rng(5).standard_normal(s), requires_grad=True) for s in (Q, K, V))
    grads = []
    for fn in (F.scaled_dot_product_attention, tg.compile(F.scaled_dot_product_attention)):
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v, is_causal=True).sum().backward()
        grads.append([t.grad.numpy().copy() for t in (q, k, v)])
    for c, e in zip(grads[1], grads[0], strict=True):
        close(c, e)
