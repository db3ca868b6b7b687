"""Compiled models equal eager ones: the loss and every parameter's gradient.

The models come from the zoo in conftest.py: an MLP, a CNN (conv, relu, maxpool, linear), a
2-block causal transformer (embeddings, layer norm, masked softmax attention with a tg.tril mask
and -inf, GELU(tanh)) and a model with a custom autograd.Function whose straight-through
backward must replace the derived one.
"""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.ir.graph import body_of

F64 = 1e-10
F32 = 1e-5


def close(actual, expected, tol, what=""):
    actual = actual.detach().numpy() if isinstance(actual, tg.Tensor) else actual
    expected = expected.detach().numpy() if isinstance(expected, tg.Tensor) else expected
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


def loss_and_grads(setup, target):
    loss = setup.loss(target(*setup.inputs))
    loss.backward()
    return loss, {n: p.grad for n, p in setup.model.named_parameters()}


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_compiled_model_matches_eager(zoo, model_name, passes):
    eager, compiled = zoo.build(model_name), zoo.build(model_name)
    loss_e, grads_e = loss_and_grads(eager, eager.model)
    cm = tg.compile(compiled.model, passes=passes)
    loss_c, grads_c = loss_and_grads(compiled, cm)
    assert loss_c.dtype == tg.float64
    close(loss_c, loss_e, F64, "loss")
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        assert grads_c[name] is not None, f"{name} got no gradient"
        assert grads_c[name].dtype == grads_e[name].dtype
        close(grads_c[name], grads_e[name], F64, name)


def test_compiled_model_matches_eager_float32(zoo, model_name):
    eager, compiled = zoo.build(model_name, tg.float32), zoo.build(model_name, tg.float32)
    loss_e, grads_e = loss_and_grads(eager, eager.model)
    loss_c, grads_c = loss_and_grads(compiled, tg.compile(compiled.model))
    assert loss_c.dtype == tg.float32
    close(loss_c, loss_e, F32, "loss")
    for name in grads_e:
        assert grads_c[name].dtype == tg.float32
        close(grads_c[name], grads_e[name], F32, name)


@pytest.mark.models("mlp", "cnn", "transformer")
def test_compiled_model_trains_like_eager(zoo, model_name):
    """Five Adam steps driven by loss.backward(); opt.step() on the compiled module's output."""
    runs = []
    for compiled in (False, True):
        setup = zoo.build(model_name)
        target = tg.compile(setup.model) if compiled else setup.model
        opt = optim.Adam(setup.model.parameters(), lr=0.01)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = setup.loss(target(*setup.inputs))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append((losses, [p.detach().numpy().copy() for p in setup.model.parameters()]))
        if compiled:
            assert not target.recompile_reasons, "same signature every step: one compile"
    (losses_e, params_e), (losses_c, params_c) = runs
    close(np.array(losses_c), np.array(losses_e), F64, "losses")
    for a, b in zip(params_c, params_e, strict=True):
        close(a, b, F64, "parameters after training")


def test_custom_function_backward_replaces_the_derived_one(zoo):
    eager, compiled = zoo.build("ste"), zoo.build("ste")
    _, grads_e = loss_and_grads(eager, eager.model)
    cm = tg.compile(compiled.model)
    _, grads_c = loss_and_grads(compiled, cm)
    # sign's derived gradient is zero (it has no VJP): only the straight-through backward
    # gives fc1 a non-zero gradient.
    assert np.abs(grads_e["fc1.weight"].numpy()).max() > 1e-3
    close(grads_c["fc1.weight"], grads_e["fc1.weight"], F64, "fc1.weight")
    close(grads_c["fc1.bias"], grads_e["fc1.bias"], F64, "fc1.bias")
    backward_ops = [(n.op, n.origin) for n in cm.backward_graph.nodes]
    assert ("abs", "grad of SignSTE") in backward_ops  # the user's backward, traced in
    assert ("le", "grad of SignSTE") in backward_ops
    assert "custom" not in {n.op for n in cm.graph.nodes}


def test_custom_function_in_trace_is_a_custom_node(zoo):
    setup = zoo.build("ste")
    graph = tg.trace(setup.model, *setup.inputs)
    custom = [n for n in graph.nodes if n.op == "custom"]
    assert len(custom) == 1 and custom[0].attrs["fn"] is zoo.SignSTE


def test_grads_accumulate_over_two_compiled_calls(zoo):
    eager, compiled = zoo.build("mlp"), zoo.build("mlp")
    cm = tg.compile(compiled.model)
    for setup, target in ((eager, eager.model), (compiled, cm)):
        for scale in (1.0, 3.0):
            (setup.loss(target(*setup.inputs)) * scale).backward()
    for p, q in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        close(p.grad, q.grad, F64)
    assert not cm.recompile_reasons


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 6)
        self.a = nn.Linear(6, 2)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        h = self.body(x).tanh()
        return self.a(h), self.b(h).sigmoid()


def two_heads_run(compiled):
    """Both outputs computed, only the second one used by the loss."""
    tg.manual_seed(7)
    model = TwoHeads().double()
    x = tg.tensor(np.linspace(-1, 1, 20).reshape(4, 5), requires_grad=True)
    target = tg.compile(model) if compiled else model
    a, b = target(x)
    (b * tg.tensor(np.arange(12.0).reshape(4, 3))).sum().backward()
    return a, b, x.grad, dict(model.named_parameters())


def test_tuple_outputs_and_input_gradients():
    a_e, b_e, x_e, params_e = two_heads_run(compiled=False)
    a_c, b_c, x_c, params_c = two_heads_run(compiled=True)
    close(a_c, a_e, F64)
    close(b_c, b_e, F64)
    close(x_c, x_e, F64, "input gradient")
    for name in ("body.weight", "body.bias", "b.weight", "b.bias"):
        close(params_c[name].grad, params_e[name].grad, F64, name)


def test_parameters_of_an_unused_output_keep_grad_none():
    _, _, _, params_e = two_heads_run(compiled=False)
    assert params_e["a.weight"].grad is None  # eager: head a is not part of the loss
    _, _, _, params_c = two_heads_run(compiled=True)
    assert params_c["a.weight"].grad is None
    assert params_c["a.bias"].grad is None


def test_parameter_without_gradient_path_keeps_grad_none():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Parameter(tg.tensor([0.5, -1.0, 2.0]))
            self.scale = nn.Parameter(tg.tensor([1.0, 2.0, 3.0]))

        def forward(self, x):
            return (self.gate.detach().sign() * self.scale * x).sum()  # no path to gate

    model = Gate()
    model(tg.ones(3)).backward()
    assert model.gate.grad is None  # eager
    model.zero_grad()
    tg.compile(model)(tg.ones(3)).backward()
    assert model.scale.grad is not None
    assert model.gate.grad is None


def test_masked_attention_uses_minus_inf_and_stays_finite(zoo):
    setup = zoo.build("transformer_prompted")
    cm = tg.compile(setup.model)
    logits = cm()
    assert np.isfinite(logits.detach().numpy()).all()
    traced = tg.compile(setup.model, passes=None)
    traced()
    constants = [n.attrs["value"] for n in traced.graph.nodes if n.op == "constant"]
    assert any(np.isneginf(c).any() for c in constants)  # masked_fill(mask, -inf) as written
    assert {"softmax", "where"} <= {n.op for n in traced.graph.nodes}
    graph = cm.graph  # optimized: the fill and the softmax are one masked_softmax
    ops = {n.op for n in graph.nodes}
    ops |= {m.op for n in graph.nodes if n.op == "fused" for m in body_of(n).nodes}
    # gelu's tanh form and layer norm with their gradients in the joint graph: t and std are
    # made once and kept
    assert {"masked_softmax", "layer_norm_std", "gelu_tanh", "gelu_with_tanh"} <= ops
    assert not {"softmax", "gelu", "layer_norm"} & ops
    want = traced().detach().numpy()
    np.testing.assert_allclose(logits.detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_cross_entropy_loss_module_inside_compiled_model(zoo):
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = zoo.MLP()
            self.criterion = nn.CrossEntropyLoss(label_smoothing=0.05)

        def forward(self, x, y):
            return self.criterion(self.net(x), y)

    runs = []
    rng = np.random.default_rng(3)
    x = tg.tensor(rng.standard_normal((6, 8)))
    y = tg.tensor(rng.integers(0, 4, 6))
    for compiled in (False, True):
        tg.manual_seed(11)
        model = WithLoss().double()
        loss = (tg.compile(model) if compiled else model)(x, y)
        loss.backward()
        runs.append((loss, [p.grad for p in model.parameters()]))
    close(runs[1][0], runs[0][0], F64)
    for c, e in zip(runs[1][1], runs[0][1], strict=True):
        close(c, e, F64)


class RunningMean(nn.Module):
    """Keeps a running mean of its hidden features (as batch norm does) in a buffer updated
    under no_grad from a detached value, and subtracts it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("mean", tg.zeros(3))

    def forward(self, x):
        h = self.lin(x)
        if self.training:
            with tg.no_grad():
                self.mean.mul_(0.9).add_(h.detach().mean(0) * 0.1)
        return h - self.mean


def test_buffer_updated_under_no_grad_in_forward():
    results = []
    for compiled in (False, True):
        tg.manual_seed(0)
        model = RunningMean().double()
        target = tg.compile(model) if compiled else model
        outs = []
        for i in range(3):
            x = tg.tensor(np.random.default_rng(i).standard_normal((4, 3)))
            out = target(x)
            out.sum().backward()
            outs.append(out.detach().numpy())
        results.append((outs, model.mean.numpy().copy(), [p.grad for p in model.parameters()]))
    (outs_e, mean_e, grads_e), (outs_c, mean_c, grads_c) = results
    for c, e in zip(outs_c, outs_e, strict=True):
        close(c, e, F64, "outputs")
    close(mean_c, mean_e, F64, "running mean buffer")
    for c, e in zip(grads_c, grads_e, strict=True):
        close(c, e, F64, "gradients")


def test_buffer_updated_in_forward_without_gradient_involvement():
    """The in-place buffer update itself is right (only the gradient leak above is wrong)."""
    results = []
    for compiled in (False, True):
        tg.manual_seed(0)
        model = RunningMean().double()
        target = tg.compile(model) if compiled else model
        with tg.no_grad():
            outs = [target(tg.tensor(np.full((2, 3), float(i)))).numpy() for i in range(3)]
        results.append((outs, model.mean.numpy().copy()))
    for c, e in zip(results[1][0], results[0][0], strict=True):
        close(c, e, F64, "outputs")
    close(results[1][1], results[0][1], F64, "running mean buffer")


class ScalesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        x.mul_(2.0)  # the caller's tensor: it sees the new values, as in eager mode
        return self.linear(x)


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_an_input_updated_in_place_in_forward_is_updated_like_eager(passes):
    tg.manual_seed(0)
    model = ScalesItsInput().double()
    compiled = tg.compile(model, passes=passes)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.standard_normal((4, 3))
        x_e, x_c = tg.tensor(x), tg.tensor(x)
        close(compiled(x_c), model(x_e), F64, "outputs")
        close(x_c, x_e, F64, "the input")
        assert x_c.version == x_e.version


class Tied(nn.Module):
    """One weight used by two layers (as tied embedding and output weights are)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x).tanh())


def test_tied_weights_get_both_gradient_contributions():
    x = tg.tensor(np.random.default_rng(0).standard_normal((5, 4)))
    results = []
    for compiled in (False, True):
        tg.manual_seed(0)
        model = Tied().double()
        assert [n for n, _ in model.named_parameters()] == ["a.weight", "b.bias"]
        target = tg.compile(model) if compiled else model
        (target(x) ** 2).mean().backward()
        results.append([p.grad for p in model.parameters()])
    for c, e in zip(results[1], results[0], strict=True):
        close(c, e, F64)


def test_create_graph_through_a_compiled_module_is_refused():
    """Higher-order gradients compile through tg.grad(tg.grad(f)); the generated backward of a
    compiled module is first-order only and says so."""
    tg.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x = tg.tensor(np.ones((2, 3)), requires_grad=True)
    out = tg.compile(model)(x).tanh().sum()
    with pytest.raises(RuntimeError, match=r"tg\.grad"):
        tg.autograd.grad(out, [x], create_graph=True)


def test_non_tensor_arguments_are_guarded_by_value(zoo):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = zoo.MLP()

        def forward(self, x, scale, use_tanh=False):
            out = self.net(x) * scale
            return out.tanh() if use_tanh else out

    tg.manual_seed(0)
    model = Scaled().double()
    cm = tg.compile(model)
    x = tg.tensor(np.random.default_rng(1).standard_normal((3, 8)))
    for args in ((2.0,), (3.0,), (2.0, True), (2.0,)):
        close(cm(x, *args), model(x, *args), F64, str(args))
    assert len(cm.recompile_reasons) == 2
    assert "input 1: value 2.0 -> 3.0" in cm.recompile_reasons[0]
