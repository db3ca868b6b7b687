"""JSON round trips and the networkx export."""

from __future__ import annotations

import enum
import json

import networkx as nx
import numpy as np
import pytest
from ir_graphs import ZOO, Twice, mlp, node, val

from tracegrad.ir.core import Phase
from tracegrad.ir.graph import Graph, structure
from tracegrad.ir.serialize import decode, encode, parts_from_json, to_json, to_networkx


class Kind(str, enum.Enum):  # noqa: UP042 (a mixin, whose str() is its name)
    TANH = "tanh"


# --- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ZOO))
def test_json_roundtrip_equal_structure(name):
    graph = ZOO[name]()
    back = Graph.from_json(to_json(graph))
    assert structure(back) == structure(graph)
    assert to_json(back) == to_json(graph)


def test_json_roundtrip_keeps_arrays_bit_for_bit():
    graph = ZOO["constants"]()
    back = Graph.from_json(graph.to_json())
    for before, after in zip(graph.nodes, back.nodes, strict=True):
        old, new = before.attrs["value"], after.attrs["value"]
        assert (new.dtype, new.shape, new.tobytes()) == (old.dtype, old.shape, old.tobytes())


def test_json_is_strict_json_with_tags_for_the_rest():
    text = ZOO["odd_attrs"]().to_json()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))
    attrs = data["nodes"][0]["attrs"]
    assert attrs["fn"] == {"class": "ir_graphs:Twice"}
    assert attrs["args"]["tuple"][0] == {"tuple": ["t"]}


@pytest.mark.parametrize(
    ("value", "tagged"),
    [
        ((1, None), {"tuple": [1, None]}),
        ([1.5, float("-inf")], [1.5, {"float": "-inf"}]),
        ({"a": 1}, {"dict": [["a", 1]]}),
        (
            np.array([True, False]),
            {"array": {"dtype": "bool", "shape": [2], "data": [True, False]}},
        ),
        (np.float64(2.5), 2.5),
        (Kind.TANH, "tanh"),
        (Twice, {"class": "ir_graphs:Twice"}),
    ],
)
def test_encode_tags_values_json_cannot_hold(value, tagged):
    assert encode(value) == tagged


def test_decode_inverts_encode():
    value = (1, [2.0, float("inf")], {"k": (None, "s")}, Twice)
    assert decode(json.loads(json.dumps(encode(value)))) == value


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=2), "version 1"),
        (lambda d: d["nodes"][0].update(inputs=["nowhere"]), "%nowhere is used but not defined"),
        (lambda d: d["nodes"][0].pop("op"), "malformed"),
        (lambda d: d["nodes"][4]["attrs"].update(value={"bad": 1}), "not a tagged"),
    ],
)
def test_bad_json_is_a_value_error(edit, message):
    data = json.loads(mlp().to_json())
    edit(data)
    with pytest.raises(ValueError, match=message):
        parts_from_json(json.dumps(data))


# --- networkx ----------------------------------------------------------------------------------


def test_networkx_has_one_node_per_ir_node_and_the_dataflow_edges():
    graph = mlp()
    g = to_networkx(graph)
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert list(g.nodes) == list(range(len(graph.nodes)))
    # permute(0) -> matmul(1) -> add(2) -> relu(3) -> sum(5) -> mul(6) <- constant(4)
    assert {(a, b): d["value"] for a, b, d in g.edges(data=True)} == {
        (0, 1): "1",
        (1, 2): "2",
        (2, 3): "3",
        (3, 5): "4",
        (5, 6): "6",
        (4, 6): "5",
    }
    assert g.graph["inputs"] == ["x", "fc1.weight", "fc1.bias"]
    assert g.graph["outputs"] == ["7"]


def test_networkx_node_attributes():
    g = mlp().to_networkx()
    assert g.nodes[0] == {
        "op": "permute",
        "outputs": ["1"],
        "shape": "(3, 2)",
        "dtype": "float32",
        "attrs": "dims=(1, 0)",
        "location": "model.py:12",
        "scope": None,
        "module_path": None,
    }
    assert g.nodes[4]["attrs"] == "value=0.5"
    assert g.nodes[4]["location"] is None


def test_json_and_networkx_carry_scopes_with_the_calls_they_are_in():
    graph = ZOO["scoped"]()
    back = Graph.from_json(graph.to_json())
    linear = back.nodes[0].scope
    assert [(s.path, s.kind) for s in linear.chain()] == [
        ("blocks", "Sequential"), ("blocks.0", "Block"), ("blocks.0.mlp.0", "Linear"),
    ]  # fmt: skip
    g = graph.to_networkx()
    assert g.nodes[0]["scope"] == "blocks.0.mlp.0 (Linear)"
    assert g.nodes[1]["module_path"] == "heads-1.a b" and g.nodes[3]["scope"] is None


def test_networkx_names_every_value_one_node_passes_to_another():
    x, a, b, c = val("x", "f32[2]"), val("a", "f32[2]"), val("b", "f32[2]"), val("c", "f32[2]")
    nodes = [node("custom", [x], [a, b], fn=Twice), node("add", [a, b], [c])]
    g = Graph([x], nodes, [c], {}).to_networkx()
    assert list(g.edges(data="value")) == [(0, 1, "a, b")]


def test_networkx_of_empty_graph():
    g = Graph().to_networkx()
    assert g.number_of_nodes() == 0 and g.graph["inputs"] == [] and g.graph["outputs"] == []


def test_json_keeps_the_phase_of_backward_and_update_nodes():
    graph = mlp()
    graph.nodes[3].phase, graph.nodes[3].grad_of = Phase.BACKWARD, "relu"
    graph.nodes[4].phase = Phase.UPDATE
    text = graph.to_json()
    assert '"origin": "grad of relu"' in text and '"origin": "update"' in text
    back = Graph.from_json(text)
    assert [(n.phase, n.grad_of) for n in back.nodes] == [(n.phase, n.grad_of) for n in graph.nodes]
    assert back == graph
