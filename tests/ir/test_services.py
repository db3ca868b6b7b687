"""Graph services: fresh names, producers and users, uses replaced, ancestors, liveness."""

from __future__ import annotations

import pytest
from ir_graphs import mlp, mlp_with_updates, val

from tracegrad.ir.core import Namespace, Value
from tracegrad.ir.graph import Graph
from tracegrad.ir.lint import GraphLintError

# mlp(): 0 permute -> %1, 1 matmul -> %2, 2 add -> %3, 3 relu -> %4, 4 constant -> %5,
#        5 sum -> %6, 6 mul -> %7; inputs %x, %fc1.weight, %fc1.bias; output %7.


def values_named(graph: Graph) -> dict:
    return {v.name: v for v in graph.values()}


def test_fresh_names_are_new_and_never_given_twice():
    graph = mlp()
    graph.nodes[0].outputs[0].name = "h2"
    assert [graph.fresh("h"), graph.fresh("h"), graph.fresh("h")] == ["h1", "h3", "h4"]
    assert graph.fresh() == "8"  # (one counter: 5, 6 and 7 are taken)


def test_fresh_numbers_continue_across_prefixes():
    names = Namespace(["1", "x"])
    assert [names.fresh(), names.fresh("s"), names.claim("x"), names.claim("y")] == [
        "2",
        "s3",
        "x_4",
        "y",
    ]


def test_producers_and_users_are_keyed_by_value():
    graph = mlp()
    v = values_named(graph)
    assert graph.producers()[v["2"]] is graph.nodes[1]
    assert v["x"] not in graph.producers()
    assert graph.users()[v["x"]] == [graph.nodes[1]]
    assert graph.users()[v["5"]] == [graph.nodes[6]]
    assert v["7"] not in graph.users()


def test_replace_all_uses_follows_chains_into_outputs_and_updates():
    graph = mlp_with_updates()
    v = values_named(graph)
    c, w = val("c", "f32[]"), val("w", "f32[2,3]")
    graph.replace_all_uses({v["6"]: v["7"], v["7"]: c, v["w2"]: w})
    assert graph.nodes[6].inputs == [c, v["5"]]  # %6 -> %7 -> c
    assert graph.outputs == [c]
    assert graph.updates["fc1.weight"] is w


def test_ancestors_are_the_values_computed_from():
    graph = mlp()
    v = values_named(graph)
    assert graph.ancestors([v["3"]]) == {
        v[n] for n in ("3", "2", "1", "x", "fc1.weight", "fc1.bias")
    }
    assert graph.ancestors([v["5"]]) == {v["5"]}
    assert graph.ancestors([]) == set()


def test_last_uses_keep_outputs_and_updates_to_the_end():
    graph = mlp_with_updates()
    v = values_named(graph)
    last = graph.last_uses()
    end = len(graph.nodes)
    assert last[v["x"]] == 1 and last[v["4"]] == 5 and last[v["5"]] == 6
    assert last[v["7"]] == end and last[v["w2"]] == end and last[v["b2"]] == end
    assert last[v["fc1.weight"]] == 7  # read by its update's neg
    assert graph.kept() == {v["7"], v["w2"], v["b2"]}


def test_users_are_maintained_by_insert_and_replace():
    graph = mlp()
    v = values_named(graph)
    users = graph.users()
    relu = graph.nodes[3]
    with graph.inserting_before(relu):
        doubled = graph.insert(relu.derive("mul", [v["2"], v["2"]], [Value("d", v["3"].type)]))
        negated = graph.insert(relu.derive("neg", [doubled.outputs[0]], [Value("n", v["3"].type)]))
    assert [n.op for n in graph.nodes[1:6]] == ["matmul", "add", "mul", "neg", "relu"]
    assert graph.users() is users  # (the same table, kept current)
    assert users[v["2"]] == [graph.nodes[2], doubled, doubled]
    graph.replace_all_uses({v["3"]: negated.outputs[0]})
    assert graph.users()[negated.outputs[0]] == [relu]
    assert v["3"] not in graph.users()
    graph.lint()


def test_inserting_after_places_nodes_in_order_and_at_the_start():
    graph = mlp()
    v = values_named(graph)
    first = graph.nodes[0]
    with graph.inserting_after(None):
        a = graph.insert(first.derive("neg", [v["x"]], [Value("a", v["x"].type)]))
        b = graph.insert(first.derive("neg", [a.outputs[0]], [Value("b", v["x"].type)]))
    assert graph.nodes[:3] == [a, b, first]
    graph.lint()


def test_erase_refuses_a_node_still_read_and_updates_users():
    graph = mlp()
    v = values_named(graph)
    relu = graph.nodes[3]
    with pytest.raises(ValueError, match="still read"):
        graph.erase(relu)
    with graph.inserting_after(relu):
        extra = graph.insert(relu.derive("neg", [v["4"]], [Value("e", v["4"].type)]))
    assert extra in graph.users()[v["4"]]
    graph.erase(extra)
    assert extra not in graph.users()[v["4"]] and extra not in graph.nodes
    graph.lint()


def test_copy_where_made_copies_right_after_each_maker_in_order():
    graph = mlp()
    v = values_named(graph)
    copies = graph.copy_where_made([v["3"], v["x"], v["3"]], ["c1", "c2", "c3"])
    ops = [(n.op, n.outputs[0].name) for n in graph.nodes]
    assert ops[0] == ("contiguous", "c2")
    assert ops[3:6] == [("add", "3"), ("contiguous", "c1"), ("contiguous", "c3")]
    assert [c.name for c in copies] == ["c1", "c2", "c3"]
    graph.lint()


def test_lint_notices_users_left_stale_by_a_hand_edit():
    graph = mlp()
    v = values_named(graph)
    graph.users()
    graph.nodes[3].inputs = [v["2"]]  # by hand: the table still says relu reads %3
    with pytest.raises(GraphLintError, match="stale"):
        graph.lint()
    graph.nodes = list(graph.nodes)  # assigning the nodes rebuilds the table when asked
    graph.lint()
