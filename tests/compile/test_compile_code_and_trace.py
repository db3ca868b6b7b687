"""The generated source (``cm.code``) and ``tg.trace``: readable sections naming the user's file,
deterministic generation, named graph inputs, custom nodes, and optimized == unoptimized."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim


def compiled_code(zoo, model_name, passes="default"):
    setup = zoo.build(model_name)
    cm = tg.compile(setup.model, passes=passes)
    setup.loss(cm(*setup.inputs)).backward()
    return cm


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_code_has_forward_and_backward_sections(zoo, model_name, passes):
    code = compiled_code(zoo, model_name, passes).code
    assert isinstance(code, str)
    assert "# forward" in code and "# backward" in code
    assert code.index("# forward") < code.index("# backward")
    assert "def forward(" in code and "def backward(" in code
    assert zoo.file in code, "lines are annotated with the user's source file (the zoo)"
    compile(code, "<generated>", "exec")  # valid Python


def test_code_names_this_file_for_models_defined_here():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(tg.ones(3))

        def forward(self, x):
            return (self.w * x).tanh().sum()

    cm = tg.compile(Tiny())
    cm(tg.ones(3)).backward()
    assert __file__ in cm.code
    assert "grad of tanh" in cm.code


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_generation_is_deterministic(zoo, model_name, passes):
    first = compiled_code(zoo, model_name, passes).code
    second = compiled_code(zoo, model_name, passes).code
    assert first == second
    setup = zoo.build(model_name)  # one module, compiled twice
    codes = []
    for _ in range(2):
        cm = tg.compile(setup.model, passes=passes)
        cm(*setup.inputs)
        codes.append(cm.code)
    assert codes[0] == codes[1]


def test_whole_step_code_is_deterministic_and_sectioned(zoo):
    codes = []
    for _ in range(2):
        setup = zoo.build("mlp")
        opt = optim.AdamW(setup.model.parameters(), lr=0.01)

        def train_step(x, setup=setup, opt=opt):
            opt.zero_grad()
            loss = setup.loss(setup.model(x))
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step)
        step(*setup.inputs)
        codes.append(step.code)
    assert codes[0] == codes[1]
    code = codes[0]
    assert "def step(" in code
    assert "# forward" in code and "# backward" in code
    assert code.index("# forward") < code.index("# backward")
    assert __file__ in code


def test_code_only_forward_under_no_grad(zoo):
    setup = zoo.build("mlp")
    cm = tg.compile(setup.model)
    with tg.no_grad():
        cm(*setup.inputs)
    assert "def forward(" in cm.code and "def backward(" not in cm.code
    assert cm.backward_graph is None


def test_nothing_compiled_yet_raises(zoo):
    cm = tg.compile(zoo.build("mlp").model)
    for attribute in ("code", "graph", "backward_graph"):
        with pytest.raises(RuntimeError, match="call the compiled"):
            getattr(cm, attribute)


# --- tg.trace ------------------------------------------------------------------------------------


def test_trace_of_a_function_names_inputs_after_parameters():
    def affine(x, weight, bias):
        return F.linear(x, weight, bias).relu()

    graph = tg.trace(affine, tg.randn(2, 3), tg.randn(4, 3), np.zeros(4, np.float32))
    assert isinstance(graph, tg.ir.Graph)
    assert [v.name for v in graph.inputs] == ["x", "weight", "bias"]
    assert [tuple(v.shape) for v in graph.inputs] == [(2, 3), (4, 3), (4,)]
    assert all(v.dtype == tg.float32 for v in graph.inputs)
    assert {"matmul", "add", "relu"} <= {n.op for n in graph.nodes}
    assert len(graph.outputs) == 1 and tuple(graph.outputs[0].shape) == (2, 4)


def test_trace_of_a_module_names_parameters_and_buffers():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.register_buffer("scale", tg.ones(2))

        def forward(self, inp):
            return self.lin(inp) * self.scale

    graph = tg.trace(WithBuffer(), tg.randn(5, 3))
    assert [v.name for v in graph.inputs] == ["inp", "lin.weight", "lin.bias", "scale"]


def test_trace_captured_tensors_are_inputs_not_constants():
    table = tg.randn(4, 3)

    def lookup(x):
        return x @ table

    graph = tg.trace(lookup, tg.randn(2, 4))
    assert len(graph.inputs) == 2
    assert "constant" not in {n.op for n in graph.nodes}


def test_trace_keeps_a_custom_function_as_a_custom_node(zoo):
    setup = zoo.build("ste")
    graph = tg.trace(setup.model, *setup.inputs)
    custom = [n for n in graph.nodes if n.op == "custom"]
    assert len(custom) == 1
    assert custom[0].attrs["fn"] is zoo.SignSTE
    names = [v.name for v in graph.inputs]
    assert names == ["x", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert "sign" not in {n.op for n in graph.nodes}, "the custom forward is not inlined"


def test_trace_of_a_function_with_a_custom_function(zoo):
    def f(x):
        return zoo.SignSTE.apply(x * 2).sum()

    graph = tg.trace(f, tg.randn(3))
    assert [n.op for n in graph.nodes].count("custom") == 1


def test_trace_leaves_state_untouched(zoo):
    setup = zoo.build("mlp")
    before = [p.detach().numpy().copy() for p in setup.model.parameters()]
    tg.trace(setup.model, *setup.inputs)
    for p, b in zip(setup.model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), b)
        assert p.grad is None


def test_passes_run_leaves_its_input_unchanged(zoo):
    setup = zoo.build("cnn")
    graph = tg.trace(setup.model, *setup.inputs)
    text = str(graph)
    optimized = tg.passes.run(graph, "default")
    assert str(graph) == text
    assert isinstance(optimized, tg.ir.Graph)
    optimized.lint()


def test_optimized_equals_unoptimized(zoo, model_name):
    results = []
    for passes in (None, "default"):
        setup = zoo.build(model_name)
        cm = tg.compile(setup.model, passes=passes)
        loss = setup.loss(cm(*setup.inputs))
        loss.backward()
        results.append((loss.item(), [p.grad.numpy() for p in setup.model.parameters()]))
    (loss_u, grads_u), (loss_o, grads_o) = results
    assert abs(loss_o - loss_u) <= 1e-10 * abs(loss_u)
    for a, b in zip(grads_o, grads_u, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_optimized_equals_unoptimized_whole_step(zoo):
    finals = []
    for passes in (None, "default"):
        setup = zoo.build("cnn")
        opt = optim.SGD(setup.model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

        def train_step(x, setup=setup, opt=opt):
            opt.zero_grad()
            loss = setup.loss(setup.model(x))
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step, passes=passes)
        losses = [step(*setup.inputs).item() for _ in range(3)]
        finals.append((losses, [p.detach().numpy().copy() for p in setup.model.parameters()]))
    np.testing.assert_allclose(finals[1][0], finals[0][0], rtol=1e-10)
    for a, b in zip(finals[1][1], finals[0][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
