"""The threads pass (tracegrad/passes/threads.py): independent products moved side by side,
the thread plan sound by the memory plan (no two statements running at once touch one memory,
checked here on the zoo from the plan itself), and nothing chosen where it does not pay."""

from __future__ import annotations

import tracegrad as tg
from tracegrad.codegen.emit import row_runs
from tracegrad.passes import threads as threads_pass
from tracegrad.passes.cost import node_cost
from tracegrad.passes.memory import plan_memory


def two_products_apart():
    """a @ b, then an elementwise chain, then a product of the chain (which must wait)."""
    a, b, c, d = (tg.randn(64, 64) for _ in range(4))

    def f(a, b, c, d):
        first = a @ b
        between = (c.exp() + 1).sin()
        return first, between, between @ d

    return tg.trace(f, a, b, c, d)


def test_a_product_waits_for_its_inputs(always_pays):
    graph = two_products_apart()
    result = tg.passes.run_pass("threads", graph, threads=2)
    result.graph.lint()  # (every value defined before it is read)
    assert str(result.graph) == str(graph) and not result.notes


def test_independent_products_are_made_neighbours(always_pays):
    a, b, c, d = (tg.randn(64, 64) for _ in range(4))

    def f(a, b, c, d):
        first = a @ b
        between = (a.exp() + 1).sin()
        return first, between, c @ d

    graph = tg.trace(f, a, b, c, d)
    result = tg.passes.run_pass("threads", graph, threads=2)
    products = [i for i, n in enumerate(result.graph.nodes) if n.op == "matmul"]
    assert products[1] == products[0] + 1
    assert [n.kind for n in result.notes] == ["moved beside a product"]
    unchanged = tg.passes.run_pass("threads", graph, threads=1)
    assert str(unchanged.graph) == str(graph)


def test_nothing_small_runs_on_the_pool():
    graph = two_products_apart()
    plan = plan_memory(graph)
    assert not threads_pass.plan_threads(graph, plan, 2, [])
    assert not tg.passes.run_pass("threads", graph, threads=2).notes


def test_conflicts_follow_memory_not_names():
    """Two statements conflict when one writes memory the other reads or writes, through a
    view or a pooled buffer as well as by name."""
    x = tg.randn(64, 64)

    def f(x):
        y = x.exp()
        return y.t().sin(), x.cos()

    graph = tg.trace(f, x)
    plan = plan_memory(graph)
    exp, transpose, sin, cos = graph.nodes
    assert threads_pass.conflicts(exp, transpose, plan)  # (the view reads what exp writes)
    assert threads_pass.conflicts(exp, sin, plan)
    assert not threads_pass.conflicts(exp, cos, plan)  # (both read x, neither writes it)


def test_estimates_grow_with_work_and_bytes():
    small, big = tg.randn(8, 8), tg.randn(256, 256)
    g_small = tg.trace(lambda a: a @ a, small)
    g_big = tg.trace(lambda a: a @ a, big)
    g_double = tg.trace(lambda a: a @ a, big.double())
    t_small, t_big, t_double = (
        threads_pass.estimated_us(g.nodes[-1]) for g in (g_small, g_big, g_double)
    )
    assert t_small < threads_pass.MIN_SAVING_US < t_big < t_double
    assert node_cost(g_big.nodes[-1]).product_operations == 256**3


def test_large_elementwise_statements_split_in_as_many_parts_as_threads(always_pays):
    x = tg.randn(301, 500)
    graph = tg.trace(lambda x: (x * 2).exp(), x)
    plan = plan_memory(graph)
    runs = row_runs(graph, plan)
    assert runs  # (the exp overwrites x * 2 row for row)
    for threads in (2, 3):
        splits = threads_pass.plan_threads(graph, plan, threads, runs).splits
        assert [(s.start, s.stop, s.parts) for s in splits] == [(*r, threads) for r in runs]


def test_an_input_gradient_goes_first_when_the_weight_gradient_frees_its_memory(always_pays):
    """``x^T @ g`` reads ``x`` last, and ``g @ W^T`` has ``x``'s type: after the weight
    gradient, the input gradient could be planned into ``x``'s memory, so it goes first."""
    a, g, w = tg.randn(64, 32), tg.randn(64, 48), tg.randn(48, 32)

    def f(a, g, w):
        x = a.tanh()
        weight_grad = x.t() @ g
        scaled = (g * 2).exp()  # (work between the two products)
        return weight_grad, scaled, g @ w

    graph = tg.trace(f, a, g, w)
    result = tg.passes.run_pass("threads", graph, threads=2)
    products = [n for n in result.graph.nodes if n.op == "matmul"]
    assert products[0].outputs[0].type.shape == (64, 32)  # the input gradient
    order = [n.op for n in result.graph.nodes]
    assert order.index("matmul") + 2 == len(order) - order[::-1].index("matmul")
    plan = plan_memory(result.graph)
    assert threads_pass.plan_threads(result.graph, plan, 2, []).concurrent
