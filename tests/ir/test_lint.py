"""lint: well-formed graphs pass; each broken invariant raises an error naming node and fix."""

from __future__ import annotations

import numpy as np
import pytest
from ir_graphs import ZOO, Twice, fused, mlp, node, val

from tracegrad.dtypes import TensorType, float32
from tracegrad.ir.core import Phase, Value
from tracegrad.ir.graph import Graph
from tracegrad.ir.lint import GraphLintError, lint

# mlp(): 0 permute -> %1, 1 matmul -> %2, 2 add -> %3, 3 relu -> %4, 4 constant -> %5,
#        5 sum -> %6, 6 mul -> %7; inputs %x f32[4,3], %fc1.weight f32[2,3], %fc1.bias f32[2].


@pytest.mark.parametrize("name", sorted(ZOO))
def test_well_formed_graphs_pass(name):
    lint(ZOO[name]())


def test_graph_lint_method_runs_lint():
    g = mlp()
    g.nodes[1].op = "matmull"
    with pytest.raises(GraphLintError):
        g.lint()


def test_lint_error_is_a_value_error():
    assert issubclass(GraphLintError, ValueError)


# --- one broken graph per invariant ------------------------------------------------------------


def unknown_op(g):
    g.nodes[1].op = "matmull"


def custom_fn_not_a_class(g):
    x = g.inputs[0]
    g.nodes.append(node("custom", [x], [val("c", "f32[4,3]")], fn="gone.module:Fn"))


def duplicate_name(g):
    g.nodes[2].outputs[0].name = "1"


def name_not_a_string(g):
    g.nodes[3].outputs[0].name = 4


def negative_dim(g):
    g.inputs[0].type = TensorType((-4, 3), float32)


def used_before_defined(g):
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]


def cycle(g):
    # node 0 now reads node 1's output while node 1 reads node 0's
    g.nodes[0].inputs = [g.nodes[1].outputs[0]]


def namesake_value(g):
    g.nodes[1].inputs[1] = Value("1", g.nodes[1].inputs[1].type)


def never_defined(g):
    g.nodes[3].inputs = [val("ghost", "f32[4,2]")]


def wrong_output_type(g):
    g.nodes[1].outputs[0].type = TensorType((4, 3), float32)


def wrong_input_count(g):
    g.nodes[2].inputs = g.nodes[2].inputs[:1]


def rule_rejects_attrs(g):
    g.nodes[5].attrs["dims"] = (0, 5)


def two_outputs_on_registry_op(g):
    g.nodes[3].outputs.append(val("extra", "f32[4,2]"))


def constant_value_disagrees(g):
    g.nodes[4].attrs["value"] = np.zeros((2,), np.float64)


def constant_value_not_array(g):
    g.nodes[4].attrs["value"] = 0.5


def constant_with_input(g):
    g.nodes[4].inputs = [g.inputs[0]]


def input_not_a_value(g):
    g.nodes[3].inputs = [np.zeros((4, 2), np.float32)]


def undefined_output(g):
    g.outputs.append(val("nowhere", "f32[]"))


def update_of_non_input(g):
    g.updates["fc2.weight"] = g.nodes[0].outputs[0]


def update_with_undefined_value(g):
    g.updates["fc1.bias"] = val("stray", "f32[2]")


def update_changes_type(g):
    g.updates["fc1.weight"] = g.nodes[0].outputs[0]


def _fused_reading(g, inputs, body):
    out = val("k", "f32[4,2]")
    g.nodes.append(node("fused", inputs, [out], body=body, kind="elementwise add relu"))


def fused_body_is_text(g):
    _fused_reading(g, [g.nodes[2].outputs[0], g.inputs[2]], str(fused().nodes[0].attrs["body"]))


def fused_body_typed_unlike_node(g):
    _fused_reading(
        g, [g.nodes[2].outputs[0], g.nodes[2].outputs[0]], fused().nodes[0].attrs["body"]
    )


def phase_not_a_phase(g):
    g.nodes[3].phase = "backward"


def backward_without_grad_of(g):
    g.nodes[3].phase = Phase.BACKWARD


def grad_of_on_a_forward_node(g):
    g.nodes[3].grad_of = "relu"


BROKEN = [
    (unknown_op, ["node 1 (matmull -> %2, at model.py:12)", "did you mean 'matmul'", "register"]),
    (custom_fn_not_a_class, ["node 7 (custom -> %c)", "'gone.module:Fn'", "not a class"]),
    (duplicate_name, ["node 2 (add -> %1", "already defined by node 0", "rename one"]),
    (name_not_a_string, ["node 3 (relu -> %4", "value name 4 is not a string", "with a str"]),
    (negative_dim, ["graph input 0: %x", "non-negative ints"]),
    (
        used_before_defined,
        ["node 0 (matmul -> %2", "uses %1 before", "define %1 before node 0", "topologically"],
    ),
    (cycle, ["node 0 (permute -> %1", "uses %2 before", "reorder graph.nodes topologically"]),
    (namesake_value, ["node 1 (matmul", "different Value object", "defining Value object"]),
    (never_defined, ["node 3 (relu", "%ghost", "add %ghost to graph.inputs"]),
    (wrong_output_type, ["node 1 (matmul", "typed f32[4,3]", "set the output's type to f32[4,2]"]),
    (wrong_input_count, ["node 2 (add", "takes 2 inputs (x, y), got 1; pass 2 values"]),
    (rule_rejects_attrs, ["node 5 (sum -> %6, at model.py:14)", "out of range", "fix its"]),
    (two_outputs_on_registry_op, ["node 3 (relu -> %4, %extra", "exactly one output"]),
    (constant_value_disagrees, ["node 4 (constant -> %5)", "float64[2]", "typed f32[]", "agree"]),
    (constant_value_not_array, ["node 4 (constant", "not a NumPy array", "np.asarray"]),
    (constant_with_input, ["node 4 (constant", "takes no inputs"]),
    (input_not_a_value, ["node 3 (relu", "is not a Value", "pass the Value"]),
    (undefined_output, ["graph output 1 (%nowhere)", "remove it from graph.outputs"]),
    (update_of_non_input, ["update %fc2.weight <- %1", "not a graph input"]),
    (update_with_undefined_value, ["update %fc1.bias <- %stray", "not defined"]),
    (update_changes_type, ["update %fc1.weight <- %1", "typed f32[3,2]", "keep the input's type"]),
    (fused_body_is_text, ["node 7 (fused -> %k)", "is str, not a Graph", "Graph.parse"]),
    (fused_body_typed_unlike_node, ["node 7 (fused -> %k)", "does not match the node's"]),
    (phase_not_a_phase, ["node 3 (relu", "phase is 'backward'", "Phase member"]),
    (backward_without_grad_of, ["node 3 (relu", "grad_of=None", "forward op it is the gradient"]),
    (grad_of_on_a_forward_node, ["node 3 (relu", "a forward node has grad_of='relu'"]),
]


@pytest.mark.parametrize(("breaker", "fragments"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_broken_invariant_is_reported_with_node_and_fix(breaker, fragments):
    graph = mlp()
    breaker(graph)
    with pytest.raises(GraphLintError) as caught:
        lint(graph)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_variadic_ops_take_any_number_of_extra_inputs():
    x, i, j = val("x", "f32[5,3]"), val("i", "i64[2]"), val("j", "i64[2]")
    key = (("tensor", 0), ("tensor", 1))
    out = val("y", "f32[2]")
    lint(Graph([x, i, j], [node("getitem", [x, i, j], [out], key=key)], [out], {}))


def test_custom_nodes_are_not_type_checked_beyond_their_class():
    x = val("x", "f32[2]")
    outs = [val("a", "i64[7]"), val("b", "b8[]")]
    lint(Graph([x], [node("custom", [x], outs, fn=Twice, args=())], outs, {}))
