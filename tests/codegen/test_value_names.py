"""Generated code names values after what made them (tracegrad.codegen.naming): scope and op,
gradients of parameters, new parameter values, constants by what they hold, kernel parameters
after the values passed; every name a unique identifier, the same on every compile, and the
IR's own names (the dump) left as they are."""

from __future__ import annotations

import keyword
import re

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.codegen import names
from tracegrad.codegen.emit import WIDTH
from tracegrad.codegen.naming import MAX_LENGTH, RESERVED, constant_kind
from tracegrad.ir.core import FUSED, Phase
from tracegrad.ir.graph import body_of
from tracegrad.nn import functional as F
from tracegrad.viz.codelinks import link_code
from tracegrad.viz.formats import scenes


def mlp():
    tg.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def data():
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((5, 6)).astype(np.float32))
    return x, tg.tensor(np.array([0, 1, 2, 0, 1]))


def compiled_step(model, training_step, opt=optim.SGD, **kwargs):
    """A whole training step of ``model``, compiled and run until it stops recompiling."""
    step = tg.compile(training_step(model, opt(model.parameters(), lr=0.1, **kwargs)))
    for _ in range(3):
        step(*data())
    return step


def compiled_module(model):
    cm = tg.compile(model)
    F.cross_entropy(cm(data()[0]), data()[1]).backward()
    return cm


def functions(compiled):
    """(FunctionSource, graph) of every generated function of the latest specialization."""
    return compiled.latest.program.parts


def test_every_name_is_a_unique_identifier_the_module_does_not_use_otherwise(training_step):
    for compiled in (compiled_step(mlp(), training_step, optim.Adam), compiled_module(mlp())):
        for fn, graph in functions(compiled):
            names = [
                fn.names[v] for v in [*graph.inputs, *(o for n in graph.nodes for o in n.outputs)]
            ]
            assert len(set(names)) == len(names)
            for name in names:
                assert name.isidentifier() and name.isascii() and not keyword.iskeyword(name)
                assert name not in RESERVED
                assert not re.fullmatch(r"\w+_(b|p|v|kernel)\d+", name)  # buffers and kernels
            for kernel in fn.kernels:
                params = kernel.params[:-1]  # (then out=None)
                assert len(set(params)) == len(params) and "out" not in params
                assert not any(re.fullmatch(r"a\d+", p) for p in params)


def test_names_are_the_same_on_every_compile(training_step):
    first = compiled_step(mlp(), training_step)
    second = compiled_step(mlp(), training_step)
    assert first.code == second.code
    named = [
        {v.name: name for v, name in fn.names.items()}
        for step in (first, second)
        for fn, _ in functions(step)
    ]
    assert named[0] == named[1]
    assert compiled_module(mlp()).code == compiled_module(mlp()).code


def _maker(node):
    """The node whose op names ``node``'s value: a fused kernel's member making it."""
    if node.op != FUSED:
        return node
    body = body_of(node)
    return next(m for m in body.nodes if body.outputs[0] in m.outputs)


def test_a_scoped_node_is_named_after_its_scope_and_op(training_step):
    step = compiled_step(mlp(), training_step)
    ((fn, graph),) = functions(step)
    given = {*graph.outputs, *graph.updates.values()}  # named after what they are instead
    checked = 0
    for node in graph.nodes:
        maker, value = _maker(node), node.outputs[0]
        if maker.scope is None or value in given or node.phase is Phase.UPDATE:
            continue
        name = fn.names[value]
        scope = maker.scope.path.replace(".", "_")
        op = f"{maker.grad_of.split(', ')[-1]}_grad" if maker.grad_of else maker.op
        assert re.fullmatch(f"{scope}_(ones|{op})(_\\d+)?", name), (name, maker)
        checked += 1
    assert checked >= 8


def test_the_step_of_an_mlp_reads_as_the_model(training_step):
    step = compiled_step(mlp(), training_step)
    code = step.code
    named = ["model_0_weight_grad", "model_2_bias_grad", "new_model_0_weight", "nll_loss",
             "cross_entropy_grad", "model_1_relu", "model_2_matmul_grad"]  # fmt: skip
    for name in named:
        assert re.search(rf"^    {name} = ", code, re.M), name
    assert "        model_0_weight_grad,  # model.0.weight.grad" in code
    assert not re.search(r"\bvs?\d+\b", code)  # no IR numbers
    # a constant is named by what it holds, and keyed by function and name
    assert re.search(r"^    model_\d_ones = C\['step\.model_\d_ones'\]", code, re.M)
    # the IR keeps its own names
    assert "%" in str(step.latest.program.graph) and "model_0_weight_grad" not in str(
        step.latest.program.graph
    )


def test_update_values_are_named_after_the_one_tensor_they_update(training_step):
    step = compiled_step(mlp(), training_step, momentum=0.9)
    ((fn, graph),) = functions(step)
    for name, value in graph.updates.items():
        assert fn.names[value] == "new_" + re.sub(r"\W", "_", name)
    update = [fn.names[n.outputs[0]] for n in graph.nodes if n.phase is Phase.UPDATE]
    tensors = [re.sub(r"\W", "_", name) for name in graph.updates]
    assert any(re.fullmatch(f"({'|'.join(tensors)})_\\w+", name) for name in update)


def test_a_saved_value_keeps_its_forward_name_in_the_backward():
    cm = compiled_module(mlp())
    (forward, fgraph), (backward, bgraph) = functions(cm)
    made = {v.name: forward.names[v] for v in [*fgraph.inputs, *fgraph.outputs]}
    saved = [v for v in bgraph.inputs if v.name in made]
    assert saved and any(v.name not in {i.name for i in fgraph.inputs} for v in saved)
    for v in saved:
        assert backward.names[v] == made[v.name]
    # the backward returns the gradients of the parameters, named and noted so
    assert [backward.names[v] for v in bgraph.outputs] == [
        "_0_weight_grad", "_0_bias_grad", "_2_weight_grad", "_2_bias_grad"
    ]  # fmt: skip
    assert "        _0_weight_grad,  # 0.weight.grad" in cm.code
    # explain() says what a saved value is called in the code
    assert re.search(r"^  %\w+: .*saved output of relu in 1 \(ReLU\).* \(code: _1_relu\)$",
                     cm.explain(), re.M)  # fmt: skip


class Deep(nn.Module):
    """Modules nested under long names: scoped names get long."""

    def __init__(self):
        super().__init__()
        inner = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.encoder_with_a_long_name = nn.ModuleDict({"another_long_layer_name": inner})

    def forward(self, x):
        return self.encoder_with_a_long_name["another_long_layer_name"](x)


def test_names_made_from_long_scopes_are_capped_keeping_the_inner_modules():
    cm = compiled_module(nn.Sequential(Deep(), nn.Linear(6, 3)))
    for fn, graph in functions(cm):
        for node in graph.nodes:
            name = fn.names[node.outputs[0]]
            scope = _maker(node).scope
            if scope is not None and node.outputs[0] not in graph.outputs:
                assert len(re.sub(r"_\d+$", "", name)) <= MAX_LENGTH, name
                assert scope.path.split(".")[-1] in name  # the innermost module kept


def test_inputs_named_as_the_generated_module_names_its_own_things_compile_right():
    def f(np, rt, out, piece, start, rng, step_b0, x):
        return np * rt + out * piece - start * rng + step_b0 * x

    arrays = [tg.tensor(np.full((3,), float(i), np.float32)) for i in range(8)]
    compiled = tg.compile(f)
    np.testing.assert_allclose(compiled(*arrays).numpy(), f(*arrays).numpy())
    ((fn, graph),) = functions(compiled)
    params = [fn.names[v] for v in graph.inputs]
    assert not set(params) & {*RESERVED, "step_b0"}


def test_header_and_long_signatures_are_wrapped_and_link_to_their_nodes():
    tg.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(6, 6) for _ in range(12)])
    cm = compiled_module(model)
    code = cm.code
    header = code.split("\nimport ")[0].splitlines()
    assert len(header) > 4 and all(len(line) <= WIDTH for line in header)
    assert "\ndef forward(\n    x, _0_weight, _0_bias," in code
    parts = functions(cm)
    lines = link_code(code, scenes([("forward", g) for _, g in parts], parts))
    linked = {t for line in lines for t in line.targets}
    assert {f"g0_{n.outputs[0].name}" for n in parts[0][1].nodes} <= linked


@pytest.mark.parametrize("value, kind", [
    (np.ones((4, 1), np.float32), "ones"), (np.zeros(3), "zeros"), (np.float32(1.0), "one"),
    (np.tril(np.ones((3, 3), bool)), "mask"), (np.arange(5), "arange"),
    (np.array([2.0, 3.0]), "const"),
])  # fmt: skip
def test_constants_are_named_by_what_they_hold(value, kind):
    assert constant_kind(np.asarray(value)) == kind


def test_clashing_names_take_the_first_free_suffix_in_one_try_each():
    taken, suffixes = {"mul_2"}, {}
    made = [names.identifier("mul", taken, suffixes=suffixes) for _ in range(4)]
    assert made == ["mul", "mul_1", "mul_3", "mul_4"]
    assert names.identifier("mul", {"mul", "mul_1"}) == "mul_2"  # (without suffixes too)
