"""Recurrent layers and cells: output shapes for every option, PyTorch's parameter names,
initialization and values (weights copied by state_dict key), float64 finite-difference
gradients, compiled module and compiled whole training step equal to eager, and the errors users
hit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.autograd import gradcheck
from tracegrad.errors import DTypeError, ShapeError

TOL = 1e-10
L, N, H_IN, H = 4, 3, 5, 6

# kind -> (layer factory given keyword options, name in torch.nn, its extra keywords)
KINDS = {
    "RNN_TANH": (lambda **kw: nn.RNN(H_IN, H, **kw), "RNN", {}),
    "RNN_RELU": (
        lambda **kw: nn.RNN(H_IN, H, nonlinearity="relu", **kw),
        "RNN",
        {"nonlinearity": "relu"},
    ),
    "LSTM": (lambda **kw: nn.LSTM(H_IN, H, **kw), "LSTM", {}),
    "GRU": (lambda **kw: nn.GRU(H_IN, H, **kw), "GRU", {}),
}
CELLS = {"RNNCell": {}, "RNNCell_relu": {"nonlinearity": "relu"}, "LSTMCell": {}, "GRUCell": {}}

# every combination of the layer options
OPTIONS = [
    dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    for layers, bias, batch_first, bidirectional in itertools.product(
        (1, 2), (True, False), (False, True), (False, True)
    )
]


def option_id(options: dict) -> str:
    return "-".join(f"{key}={value}" for key, value in options.items())


def rng(seed=0):
    return np.random.default_rng(seed)


def input_shape(options: dict, batched: bool) -> tuple:
    if not batched:
        return (L, H_IN)
    return (N, L, H_IN) if options["batch_first"] else (L, N, H_IN)


def state_shape(options: dict, batched: bool) -> tuple:
    layers = options["num_layers"] * (2 if options["bidirectional"] else 1)
    return (layers, N, H) if batched else (layers, H)


def make_state(kind: str, shape: tuple, lib, seed=1, requires_grad=False):
    """h0 (or LSTM's (h0, c0)) as float64 tensors of ``lib``."""
    parts = [
        lib.tensor(rng(seed + i).standard_normal(shape), requires_grad=requires_grad)
        for i in range(2 if kind == "LSTM" else 1)
    ]
    return tuple(parts) if kind == "LSTM" else parts[0]


def flat(value) -> list:
    """The tensors of an output: ``out, h`` or ``out, (h, c)``, in order."""
    if isinstance(value, (tuple, list)):
        return [t for part in value for t in flat(part)]
    return [value]


def weighted_sum(outputs, seed=7):
    """A scalar that depends on every output element with a different weight."""
    total = 0
    for i, out in enumerate(flat(outputs)):
        weights = rng(seed + i).standard_normal(tuple(out.shape))
        total = total + (out * out.new_tensor(weights)).sum()
    return total


def numpy_of(t) -> np.ndarray:
    return t.detach().numpy()


def close(actual, expected, what, tol=TOL):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("kind", list(KINDS))
def test_output_shapes_for_every_option(kind, options):
    layer = KINDS[kind][0](**options)
    directions = 2 if options["bidirectional"] else 1
    for batched, with_state in itertools.product((True, False), (False, True)):
        x = tg.tensor(rng().standard_normal(input_shape(options, batched)).astype(np.float32))
        hx = make_state(kind, state_shape(options, batched), tg) if with_state else None
        if hx is not None:
            hx = tuple(h.float() for h in hx) if kind == "LSTM" else hx.float()
        out, state = layer(x, hx)
        expected_out = (*input_shape(options, batched)[:-1], directions * H)
        assert tuple(out.shape) == expected_out, (batched, with_state)
        states = state if kind == "LSTM" else (state,)
        assert len(states) == (2 if kind == "LSTM" else 1)
        for part in states:
            assert tuple(part.shape) == state_shape(options, batched)
            assert part.dtype == tg.float32


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_output_shapes(name):
    cell = getattr(nn, name.split("_")[0])(H_IN, H, **CELLS[name])
    for batched, with_state in itertools.product((True, False), (False, True)):
        x = tg.randn(N, H_IN) if batched else tg.randn(H_IN)
        shape = (N, H) if batched else (H,)
        hx = None
        if with_state:
            hx = (tg.randn(*shape), tg.randn(*shape)) if name == "LSTMCell" else tg.randn(*shape)
        result = cell(x, hx)
        for part in result if name == "LSTMCell" else (result,):
            assert tuple(part.shape) == shape


# --- parameters: names, shapes, initialization --------------------------------------------------


def test_parameter_names_and_shapes_are_pytorchs():
    lstm = nn.LSTM(H_IN, H, num_layers=2, bidirectional=True)
    shapes = {name: tuple(p.shape) for name, p in lstm.state_dict().items()}
    expected = {}
    for layer, suffix in itertools.product((0, 1), ("", "_reverse")):
        columns = H_IN if layer == 0 else 2 * H
        expected[f"weight_ih_l{layer}{suffix}"] = (4 * H, columns)
        expected[f"weight_hh_l{layer}{suffix}"] = (4 * H, H)
        expected[f"bias_ih_l{layer}{suffix}"] = (4 * H,)
        expected[f"bias_hh_l{layer}{suffix}"] = (4 * H,)
    assert shapes == expected
    assert len(lstm.all_weights) == 4 and len(lstm.all_weights[0]) == 4
    assert [n for n, _ in nn.GRU(H_IN, H, bias=False).named_parameters()] == [
        "weight_ih_l0",
        "weight_hh_l0",
    ]
    cell = nn.GRUCell(H_IN, H)
    assert {n: tuple(p.shape) for n, p in cell.named_parameters()} == {
        "weight_ih": (3 * H, H_IN),
        "weight_hh": (3 * H, H),
        "bias_ih": (3 * H,),
        "bias_hh": (3 * H,),
    }


@pytest.mark.parametrize("factory", [lambda: nn.LSTM(3, 64, 2), lambda: nn.GRUCell(3, 64)])
def test_initialization_is_uniform_within_one_over_sqrt_hidden(factory):
    tg.manual_seed(0)
    bound = 1 / math.sqrt(64)
    for name, p in factory().named_parameters():
        values = p.detach().numpy()
        assert np.abs(values).max() <= bound, name
        assert np.abs(values).max() > 0.9 * bound, name  # spread over the whole range
        assert abs(values.mean()) < 0.2 * bound, name


def test_flatten_parameters_is_a_no_op():
    gru = nn.GRU(H_IN, H, 2)
    before = {n: p.detach().numpy().copy() for n, p in gru.named_parameters()}
    assert gru.flatten_parameters() is None
    after = gru.named_parameters()
    for (name, p), params in zip(after, gru.parameters(), strict=True):
        assert p is params
        assert np.array_equal(p.detach().numpy(), before[name])


def test_batch_first_and_unbatched_equal_the_time_major_batch():
    tg.manual_seed(0)
    gru = nn.GRU(H_IN, H, 2, bidirectional=True).double()
    x = tg.tensor(rng().standard_normal((L, N, H_IN)))
    out, h = gru(x)
    gru.batch_first = True
    out_bf, h_bf = gru(x.transpose(0, 1))
    close(numpy_of(out_bf.transpose(0, 1)), numpy_of(out), "batch_first output")
    close(numpy_of(h_bf), numpy_of(h), "batch_first h_n")
    out_1, h_1 = gru(x[:, 1])  # unbatched: (L, H_in); batch_first does not apply
    close(numpy_of(out_1), numpy_of(out[:, 1]), "unbatched output")
    close(numpy_of(h_1), numpy_of(h[:, 1]), "unbatched h_n")


# --- against PyTorch ---------------------------------------------------------------------------


def torch_twin(torch, ours, torch_name, extra, options):
    """PyTorch's layer with our weights, copied by state_dict key."""
    theirs = getattr(torch.nn, torch_name)(H_IN, H, **extra, **options).double()
    assert list(theirs.state_dict()) == list(ours.state_dict())
    theirs.load_state_dict({k: torch.tensor(numpy_of(v)) for k, v in ours.state_dict().items()})
    return theirs


def compare_with_torch(torch, ours, theirs, x_shape, hx_shape, kind):
    """Values and gradients (input, state, every parameter) of one call in both libraries."""
    x = rng(3).standard_normal(x_shape)
    runs = {}
    for lib, module in ((tg, ours), (torch, theirs)):
        xt = lib.tensor(x, requires_grad=True)
        hx = make_state(kind, hx_shape, lib, requires_grad=True) if hx_shape else None
        result = module(xt, hx)
        weighted_sum(result).backward()
        grads = [xt.grad] + ([h.grad for h in flat(hx)] if hx is not None else [])
        grads += [p.grad for p in module.parameters()]
        runs[lib.__name__] = ([numpy_of(t) for t in flat(result)], [numpy_of(g) for g in grads])
    (ours_values, ours_grads), (their_values, their_grads) = runs["tracegrad"], runs["torch"]
    for i, (a, e) in enumerate(zip(ours_values, their_values, strict=True)):
        assert a.shape == e.shape
        close(a, e, f"output {i}")
    for i, (a, e) in enumerate(zip(ours_grads, their_grads, strict=True)):
        close(a, e, f"gradient {i}")


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_matches_torch(kind, options):
    torch = pytest.importorskip("torch")
    factory, torch_name, extra = KINDS[kind]
    tg.manual_seed(0)
    ours = factory(**options).double()
    theirs = torch_twin(torch, ours, torch_name, extra, options)
    for batched in (True, False):
        x_shape = input_shape(options, batched)
        compare_with_torch(torch, ours, theirs, x_shape, state_shape(options, batched), kind)
    compare_with_torch(torch, ours, theirs, input_shape(options, True), None, kind)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_matches_torch(name, bias):
    torch = pytest.importorskip("torch")
    class_name = name.split("_")[0]
    tg.manual_seed(0)
    ours = getattr(nn, class_name)(H_IN, H, bias=bias, **CELLS[name]).double()
    theirs = torch_twin(torch, ours, class_name, CELLS[name], {"bias": bias})
    kind = "LSTM" if class_name == "LSTMCell" else "other"
    compare_with_torch(torch, ours, theirs, (N, H_IN), (N, H), kind)
    compare_with_torch(torch, ours, theirs, (H_IN,), (H,), kind)
    compare_with_torch(torch, ours, theirs, (N, H_IN), None, kind)


PROJECTED = [
    dict(proj_size=2),
    dict(proj_size=3, num_layers=2, bidirectional=True, batch_first=True),
]


@pytest.mark.parametrize("options", PROJECTED, ids=option_id)
def test_lstm_with_projections_matches_torch(options):
    torch = pytest.importorskip("torch")
    tg.manual_seed(0)
    ours = nn.LSTM(H_IN, H, **options).double()
    assert tuple(ours.weight_hr_l0.shape) == (options["proj_size"], H)
    theirs = torch_twin(torch, ours, "LSTM", {}, options)
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    h, c = (layers, N, options["proj_size"]), (layers, N, H)
    for batched, shapes in ((True, (h, c)), (False, (h[::2], c[::2]))):
        x = rng(3).standard_normal(
            input_shape({"batch_first": options.get("batch_first")}, batched)
        )
        results = []
        for lib, module in ((tg, ours), (torch, theirs)):
            module.zero_grad()
            xt = lib.tensor(x, requires_grad=True)
            hx = tuple(
                lib.tensor(rng(i).standard_normal(s), requires_grad=True)
                for i, s in enumerate(shapes)
            )
            result = module(xt, hx)
            weighted_sum(result).backward()
            grads = [xt.grad, *(part.grad for part in hx), *(p.grad for p in module.parameters())]
            results.append([numpy_of(t) for t in flat(result) + grads])
        for i, (a, e) in enumerate(zip(*results, strict=True)):
            assert a.shape == e.shape
            close(a, e, f"{batched}: tensor {i}")


def test_lstm_with_projections_gradcheck():
    layer = small_layer("LSTM", proj_size=1, num_layers=2, bidirectional=True)
    x = tg.tensor(rng().standard_normal((2, 2, 2)))
    call, weights = with_parameters(layer, lambda module, x: weighted_sum(module(x)))
    assert gradcheck(call, [x, *weights])


def test_repr_matches_torch():
    torch = pytest.importorskip("torch")
    pairs = [
        ("LSTM", (4, 6, 2), dict(batch_first=True, dropout=0.5, bidirectional=True)),
        ("LSTM", (4, 6), dict(proj_size=3)),
        ("RNN", (4, 6), dict(nonlinearity="relu", bias=False)),
        ("GRU", (4, 6), {}),
        ("RNNCell", (4, 6), dict(nonlinearity="relu")),
        ("LSTMCell", (4, 6), dict(bias=False)),
    ]
    for name, args, kwargs in pairs:
        assert repr(getattr(nn, name)(*args, **kwargs)) == repr(
            getattr(torch.nn, name)(*args, **kwargs)
        )


# --- float64 finite differences ------------------------------------------------------------------

SMALL = dict(features=2, hidden=2)


def small_layer(kind, **options):
    tg.manual_seed(0)
    constructor = {"RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}[kind]
    extra = {"nonlinearity": "relu"} if kind == "RNN_RELU" else {}
    return constructor(SMALL["features"], SMALL["hidden"], **extra, **options).double()


def with_parameters(module, fn):
    """``fn(module, *inputs)`` as a function of the inputs followed by the module's parameters,
    for gradcheck (which perturbs copies of its inputs): the copies are put in the parameters'
    places for the call."""
    names = [name for name, _ in module.named_parameters()]

    def call(*args):
        inputs, weights = args[: -len(names)], args[-len(names) :]
        saved = dict(module._parameters)
        module._parameters.update(zip(names, weights, strict=True))
        try:
            return fn(module, *inputs)
        finally:
            module._parameters.update(saved)

    return call, [p.detach().requires_grad_() for p in module.parameters()]


@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_gradcheck_input_and_state(kind):
    layer = small_layer(kind, num_layers=2, bidirectional=True)
    x = tg.tensor(rng().standard_normal((3, 2, 2)), requires_grad=True)
    hx = make_state(kind, (4, 2, 2), tg, requires_grad=True)
    states = list(flat(hx))
    assert gradcheck(lambda x, *hs: flat(layer(x, hs if kind == "LSTM" else hs[0])), [x, *states])


@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_gradcheck_parameters(kind):
    layer = small_layer(kind, num_layers=2, bidirectional=True, batch_first=True)
    x = tg.tensor(rng().standard_normal((2, 2, 2)))
    call, weights = with_parameters(layer, lambda module, x: weighted_sum(module(x)))
    assert gradcheck(call, [x, *weights])


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_gradcheck(name):
    tg.manual_seed(0)
    cell = getattr(nn, name.split("_")[0])(2, 3, **CELLS[name]).double()
    x = tg.tensor(rng().standard_normal((2, 2)), requires_grad=True)
    hx = make_state("LSTM" if name == "LSTMCell" else "other", (2, 3), tg, requires_grad=True)
    states = list(flat(hx))
    call, weights = with_parameters(
        cell, lambda module, x, *hs: flat(module(x, hs if len(hs) > 1 else hs[0]))
    )
    assert gradcheck(call, [x, *states, *weights])


# --- compiled ------------------------------------------------------------------------------------


class Tagger(nn.Module):
    """A recurrent layer under an embedding and over a linear head: what users build."""

    def __init__(self, kind, **options):
        super().__init__()
        self.embed = nn.Embedding(7, H_IN)
        self.rnn = KINDS[kind][0](**options)
        features = self.rnn.real_hidden_size * (2 if options.get("bidirectional") else 1)
        self.head = nn.Linear(features, 3)

    def forward(self, tokens, hx=None):
        out, state = self.rnn(self.embed(tokens), hx)
        return self.head(out), state


def tagger(kind, **options):
    tg.manual_seed(0)
    return Tagger(kind, **options).double()


def tokens(shape, seed=0):
    return tg.tensor(rng(seed).integers(0, 7, shape))


def call_record(model, target, kind, hx_shape):
    """One forward and backward: outputs, the state's and every parameter's gradient."""
    model.zero_grad()
    hx = make_state(kind, hx_shape, tg, requires_grad=True)
    logits, state = target(tokens((L, N)), hx)
    (weighted_sum(logits) + weighted_sum(state)).backward()
    record = {"logits": numpy_of(logits)}
    record.update({f"state{i}": numpy_of(s) for i, s in enumerate(flat(state))})
    record.update({f"hx{i}.grad": numpy_of(h.grad) for i, h in enumerate(flat(hx))})
    record.update({f"{n}.grad": numpy_of(p.grad) for n, p in model.named_parameters()})
    return record


COMPILED_OPTIONS = [
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, dropout=0.4),
    dict(bias=False),
]


@pytest.mark.parametrize(
    ("options", "passes"),
    [(options, "default") for options in COMPILED_OPTIONS] + [(COMPILED_OPTIONS[0], None)],
    ids=lambda value: option_id(value) if isinstance(value, dict) else str(value),
)
@pytest.mark.parametrize("kind", list(KINDS))
def test_compiled_module_equals_eager(kind, options, passes):
    hx_shape = (options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1), N, H)
    eager_model, compiled_model = tagger(kind, **options), tagger(kind, **options)
    compiled = tg.compile(compiled_model, passes=passes)
    for call in range(2):  # in train mode: dropout draws equal under the same seed
        tg.manual_seed(10 + call)
        expected = call_record(eager_model, eager_model, kind, hx_shape)
        tg.manual_seed(10 + call)
        actual = call_record(compiled_model, compiled, kind, hx_shape)
        assert actual.keys() == expected.keys()
        for key in expected:
            close(actual[key], expected[key], f"call {call}: {key}")
    assert not compiled.recompile_reasons


def test_lstm_and_gru_layers_are_one_node_whatever_the_sequence_length():
    """An LSTM or GRU layer's time loop runs in one op's kernel; an RNN is unrolled, each
    time step adding the same nodes."""
    for layer, op in ((nn.LSTM, "lstm_sequence"), (nn.GRU, "gru_sequence")):
        graphs = [tg.trace(layer(H_IN, H, 2), tg.randn(n, N, H_IN)) for n in (4, 8, 12)]
        assert len({len(g.nodes) for g in graphs}) == 1
        assert all(sum(n.op == op for n in g.nodes) == 2 for g in graphs)
    rnn = nn.RNN(H_IN, H, 2)
    counts = [len(tg.trace(rnn, tg.randn(length, N, H_IN)).nodes) for length in (4, 8, 12)]
    assert counts[2] - counts[1] == counts[1] - counts[0] > 0


def test_a_new_sequence_length_compiles_a_new_specialization():
    model = tagger("LSTM")
    compiled = tg.compile(model)
    for length in (3, 5, 3):
        x = tokens((length, N))
        close(numpy_of(compiled(x)[0]), numpy_of(model(x)[0]), f"length {length}")
    assert len(compiled.recompile_reasons) == 1
    assert "(3, 3) -> (5, 3)" in compiled.recompile_reasons[0]


def train_step(model, opt):
    def step(x, y):
        opt.zero_grad()
        logits, _ = model(x)
        loss = tg.nn.functional.cross_entropy(logits.reshape(-1, 3), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return step


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("kind", [*KINDS, "LSTM_projected"])
def test_compiled_training_step_equals_eager(kind, optimizer):
    options = dict(num_layers=2, bidirectional=kind in ("LSTM", "GRU"), batch_first=True)
    if kind == "LSTM_projected":
        kind, options = "LSTM", dict(options, proj_size=2, bidirectional=True)
    make_opt = {
        "SGD": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
        "Adam": lambda ps: optim.Adam(ps, lr=0.01),
    }[optimizer]
    models = [tagger(kind, **options) for _ in range(2)]
    eager = train_step(models[0], make_opt(models[0].parameters()))
    compiled = tg.compile(train_step(models[1], make_opt(models[1].parameters())))
    for i in range(3):
        x, y = tokens((N, L), seed=i), tg.tensor(rng(i + 5).integers(0, 3, (N, L)))
        close(compiled(x, y).item(), eager(x, y).item(), f"loss {i}")
    eager_params = dict(models[0].named_parameters())
    for name, p in models[1].named_parameters():
        close(numpy_of(p), numpy_of(eager_params[name]), name)
        close(numpy_of(p.grad), numpy_of(eager_params[name].grad), f"{name}.grad")


def test_compiled_cell_loop_training_step_equals_eager():
    """A time loop over LSTMCell written by the user, as time_sequence_prediction does."""

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(1, 4)
            self.out = nn.Linear(4, 1)

        def forward(self, series):
            state = None
            outputs = []
            for x_t in series.split(1, dim=1):
                state = self.cell(x_t, state)
                outputs.append(self.out(state[0]))
            return tg.cat(outputs, dim=1)

    models = []
    for _ in range(2):
        tg.manual_seed(0)
        models.append(Loop().double())

    def step_of(model, opt):
        def step(series, target):
            opt.zero_grad()
            loss = ((model(series) - target) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        return step

    eager = step_of(models[0], optim.Adam(models[0].parameters(), lr=0.05))
    compiled = tg.compile(step_of(models[1], optim.Adam(models[1].parameters(), lr=0.05)))
    series = tg.tensor(np.sin(np.linspace(0, 3, 2 * 6)).reshape(2, 6))
    for i in range(3):
        close(
            compiled(series[:, :-1], series[:, 1:]).item(),
            eager(series[:, :-1], series[:, 1:]).item(),
            f"loss {i}",
        )
    for (name, p), q in zip(models[1].named_parameters(), models[0].parameters(), strict=True):
        close(numpy_of(p), numpy_of(q), name)


# --- errors --------------------------------------------------------------------------------------


def test_bad_input_sizes_name_the_shapes():
    lstm = nn.LSTM(H_IN, H, num_layers=2)
    with pytest.raises(
        ShapeError, match=r"input.size\(-1\) must be equal to input_size. Expected 5, got 4"
    ):
        lstm(tg.randn(L, N, 4))
    with pytest.raises(
        ShapeError, match=r"Expected input to be 2D or 3D, got 4D tensor of shape \(2, 4, 3, 5\)"
    ):
        lstm(tg.randn(2, L, N, H_IN))
    with pytest.raises(ShapeError, match=r"Expected hidden\[0\] size \(2, 3, 6\), got \(1, 3, 6\)"):
        lstm(tg.randn(L, N, H_IN), (tg.randn(1, N, H), tg.randn(2, N, H)))
    with pytest.raises(ShapeError, match=r"Expected hidden\[1\] size \(2, 3, 6\), got \(2, 3, 5\)"):
        lstm(tg.randn(L, N, H_IN), (tg.randn(2, N, H), tg.randn(2, N, 5)))
    with pytest.raises(TypeError, match=r"expected hx as a tuple \(h_0, c_0\)"):
        lstm(tg.randn(L, N, H_IN), tg.randn(2, N, H))
    gru = nn.GRU(H_IN, H, bidirectional=True)
    with pytest.raises(ShapeError, match=r"GRU: Expected hidden size \(2, 3, 6\), got \(1, 3, 6\)"):
        gru(tg.randn(L, N, H_IN), tg.randn(1, N, H))
    with pytest.raises(
        ShapeError, match=r"For unbatched 2-D input, hx should also be 2-D but got 3-D"
    ):
        gru(tg.randn(L, H_IN), tg.randn(2, 1, H))
    with pytest.raises(
        ShapeError, match=r"For batched 3-D input, hx should also be 3-D but got 2-D"
    ):
        gru(tg.randn(L, N, H_IN), tg.randn(2, H))
    with pytest.raises(
        DTypeError, match="input must have the type float32 of the weights, got type float64"
    ):
        gru(tg.randn(L, N, H_IN).double())


def test_bad_cell_input_sizes_name_the_shapes():
    cell = nn.GRUCell(H_IN, H)
    with pytest.raises(ShapeError, match=r"GRUCell: Expected input to be 1D or 2D, got 3D"):
        cell(tg.randn(1, N, H_IN))
    with pytest.raises(
        ShapeError,
        match=r"GRUCell: input.size\(-1\) must be equal to input_size. Expected 5, got 3",
    ):
        cell(tg.randn(N, 3))
    with pytest.raises(ShapeError, match=r"Expected hidden size \(3, 6\), got \(2, 6\)"):
        cell(tg.randn(N, H_IN), tg.randn(2, H))
    with pytest.raises(ShapeError, match=r"Expected hidden\[1\] size \(3, 6\), got \(3, 4\)"):
        nn.LSTMCell(H_IN, H)(tg.randn(N, H_IN), (tg.randn(N, H), tg.randn(N, 4)))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        nn.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        nn.GRU(3, 4, 2, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        nn.LSTM(3, 0)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        nn.LSTM(3, 4, num_layers=0)
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        nn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        nn.RNNBase("GRU", 3, 4, proj_size=2)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        nn.LSTM(3, 4, dropout=0.5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_empty_sequence_is_refused_as_pytorch_does(kind):
    layer = KINDS[kind][0]()
    with pytest.raises(tg.ShapeError, match="Expected sequence length to be larger than 0"):
        layer(tg.randn(0, N, H_IN))
