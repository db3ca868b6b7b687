"""Sound rewrites: no rule adds work. For every rule's case (tests/passes/test_rules.py), the
same program with every value it computes also returned (so each value a rule might rewrite
away has another reader that still needs it) costs no more after the rule's pass than before:
no more operations in products and reductions, no more operations in total and no more bytes
moved (beyond the elementwise passes a rule states it adds: ``Rule.extra_passes``)."""

from __future__ import annotations

import pytest
from test_rules import ALGEBRA, BROADCAST_RULE, CASES, PASS_OF, RULES, rewritten, rule_id

import tracegrad as tg
from tracegrad.ir.core import CONSTANT
from tracegrad.ir.graph import Graph
from tracegrad.passes.cost import graph_cost, node_cost
from tracegrad.passes.patterns import Const, Emit, Pat, Rule, V, by_op, rewrite

RULE = {rule.name: rule for rule in RULES}


def everything_returned(graph: Graph) -> Graph:
    """``graph`` returning, besides its outputs, every value a node computes."""
    made = [v for n in graph.nodes if n.op != CONSTANT for v in n.outputs]
    graph.outputs = [*graph.outputs, *(v for v in made if v not in graph.outputs)]
    return graph


def cleaned(graph: Graph, phase: str) -> Graph:
    """The rule's pass, then what the pipeline runs after rewrites: cse and dce."""
    return tg.passes.run(rewritten(graph, [phase]).graph, ["cse", "dce"])


@pytest.mark.parametrize("name", sorted(set(ALGEBRA) - {BROADCAST_RULE}), ids=rule_id)
def test_a_rule_never_adds_work_when_every_value_is_still_needed(name):
    graph = everything_returned(Graph.parse(CASES[name].text))
    graph.lint()
    before = graph_cost(graph)
    after_graph = cleaned(graph, PASS_OF[name])
    after = graph_cost(after_graph)
    shown = f"{ALGEBRA[name]}:\n{after_graph}\n{before} -> {after}"
    assert after.reduction_operations <= before.reduction_operations, shown
    # an elementwise pass over the largest value: an operation per element, two reads and a
    # write; and a rule may read a new constant (the ones of a sum written as a product)
    largest = max(v.type.numel for v in graph.values())
    itemsize = max(v.type.dtype.np.itemsize for v in graph.values())
    allowed = RULE[name].extra_passes
    assert after.operations <= before.operations + allowed * largest, shown
    new_constants = constant_bytes(after_graph) - constant_bytes(graph)
    assert after.bytes <= before.bytes + allowed * 3 * largest * itemsize + new_constants, shown


def constant_bytes(graph: Graph) -> int:
    """What reading each constant once moves."""
    return sum(
        v.type.numel * v.type.dtype.np.itemsize
        for n in graph.nodes
        if n.op == CONSTANT
        for v in n.outputs
    )


def test_the_cost_of_a_product_is_two_m_k_n():
    graph = Graph.parse(
        "graph(%a:f32[2,5,3], %b:f32[3,4]) {\n  %1:f32[2,5,4] = matmul %a, %b\n  return %1\n}"
    )
    cost = node_cost(graph.nodes[0])
    assert cost.bytes == (30 + 12 + 40) * 4
    assert (cost.operations, cost.product_operations) == (2 * 5 * 3 * 4,) * 2


def test_views_and_constants_cost_nothing_and_fused_nodes_their_members():
    graph = Graph.parse(
        "graph(%x:f64[4,3]) {\n"
        "  %1:f64[3,4] = permute[dims=(1, 0)] %x\n"
        "  %2:f64[] = constant[value=2.0]\n"
        "  %3:f64[3,4] = mul %1, %2\n"
        "  %4:f64[3] = sum[dims=(1,), keepdim=False] %3\n"
        "  return %4\n}"
    )
    costs = [node_cost(n) for n in graph.nodes]
    assert costs[0].operations == costs[0].bytes == costs[1].operations == 0
    assert (costs[2].operations, costs[2].reduction_operations) == (12, 0)
    assert (costs[3].operations, costs[3].reduction_operations) == (12, 12)


SCALE_INTO_RIGHT = Rule(
    "test-scale-into-right",
    "(a @ b) * 2 -> a @ (b * 2)",
    Pat("mul", Pat("matmul", V("a"), V("b")), Const(2.0, name="two")),
    Emit("matmul", "a", Emit("mul", "b", "two")),
)


def product_times_two(also_return_product: bool) -> Graph:
    extra = ", %1" if also_return_product else ""
    return Graph.parse(
        "graph(%a:f64[4,3], %b:f64[3,5]) {\n"
        "  %1:f64[4,5] = matmul %a, %b\n"
        "  %2:f64[] = constant[value=2.0]\n"
        "  %3:f64[4,5] = mul %1, %2\n"
        f"  return %3{extra}\n}}"
    )


@pytest.mark.parametrize("also_return_product", [False, True])
def test_the_engine_declines_a_firing_that_computes_a_needed_product_again(also_return_product):
    graph = product_times_two(also_return_product)
    after = tg.passes.run(rewrite(graph, by_op([SCALE_INTO_RIGHT])), ["dce"])
    products = after.op_counts().get("matmul", 0)
    assert products == 1
    scaled_b = any(n.op == "mul" and n.inputs[0].name == "b" for n in after.nodes)
    assert scaled_b is not also_return_product
