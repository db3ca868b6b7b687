"""Graph services: fresh names, producers and users, uses replaced, ancestors, liveness."""

from __future__ import annotations

from ir_graphs import mlp, mlp_with_updates, val

from tracegrad.ir.core import Namespace
from tracegrad.ir.graph import Graph

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
