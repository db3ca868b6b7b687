"""The IR of compiled models: forward and backward graphs are ``tg.ir.Graph``s that print and
parse back, dump to JSON and load back, export to a networkx DAG and pass lint."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import tracegrad as tg
from tracegrad import optim


def compiled_graphs(zoo, model_name, passes):
    setup = zoo.build(model_name)
    cm = tg.compile(setup.model, passes=passes)
    setup.loss(cm(*setup.inputs)).backward()
    return {"forward": cm.graph, "backward": cm.backward_graph}


def whole_step_graph(zoo, model_name, passes):
    setup = zoo.build(model_name)
    model = setup.model
    opt = optim.Adam(model.parameters(), lr=0.01)

    def train_step(*inputs):
        opt.zero_grad()
        loss = setup.loss(model(*inputs))
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step, passes=passes)
    step(*setup.inputs)
    step(*setup.inputs)
    assert step.backward_graph is None  # one graph: forward, backward and update together
    return step.graph


PASSES = pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
WHICH = pytest.mark.parametrize("which", ["forward", "backward"])


@PASSES
@WHICH
def test_graphs_are_ir_graphs(zoo, model_name, passes, which):
    graph = compiled_graphs(zoo, model_name, passes)[which]
    assert isinstance(graph, tg.ir.Graph)
    assert graph.nodes and graph.inputs and graph.outputs
    if which == "backward":
        assert any(v.name.startswith("grad_") for v in graph.inputs), "cotangent inputs"


@PASSES
@WHICH
def test_text_round_trip(zoo, model_name, passes, which):
    graph = compiled_graphs(zoo, model_name, passes)[which]
    text = str(graph)
    parsed = tg.ir.Graph.parse(text)
    assert parsed == graph
    assert str(parsed) == text


@PASSES
@WHICH
def test_json_round_trip(zoo, model_name, passes, which):
    graph = compiled_graphs(zoo, model_name, passes)[which]
    loaded = tg.ir.Graph.from_json(graph.to_json())
    assert loaded == graph
    assert loaded.to_json() == graph.to_json()


@PASSES
@WHICH
def test_networkx_dag(zoo, model_name, passes, which):
    graph = compiled_graphs(zoo, model_name, passes)[which]
    g = graph.to_networkx()
    assert isinstance(g, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(g)
    assert g.number_of_nodes() == len(graph.nodes)
    assert [g.nodes[i]["op"] for i in range(len(graph.nodes))] == [n.op for n in graph.nodes]


@PASSES
@WHICH
def test_lint_passes(zoo, model_name, passes, which):
    compiled_graphs(zoo, model_name, passes)[which].lint()


@PASSES
def test_whole_step_graph_round_trips(zoo, model_name, passes):
    graph = whole_step_graph(zoo, model_name, passes)
    graph.lint()
    assert graph.updates, "parameters and optimizer state are updated in place"
    assert tg.ir.Graph.parse(str(graph)) == graph
    assert tg.ir.Graph.from_json(graph.to_json()) == graph
    g = graph.to_networkx()
    assert nx.is_directed_acyclic_graph(g) and g.number_of_nodes() == len(graph.nodes)


def test_traced_graph_round_trips(zoo, model_name):
    """The unoptimized trace, custom nodes included (the ste model keeps one)."""
    setup = zoo.build(model_name)
    graph = tg.trace(setup.model, *setup.inputs)
    graph.lint()
    assert tg.ir.Graph.parse(str(graph)) == graph
    assert tg.ir.Graph.from_json(graph.to_json()) == graph


def test_parsed_graph_runs_like_the_original(zoo):
    """Equal graphs compute equal values: interpret the parsed backward graph."""
    from tracegrad.ir.interpreter import interpret

    setup = zoo.build("mlp")
    cm = tg.compile(setup.model, passes=None)
    out = cm(*setup.inputs)
    graph = cm.graph
    parsed = tg.ir.Graph.parse(str(graph))
    arrays = [setup.inputs[0].numpy()] + [p.detach().numpy() for p in setup.model.parameters()]
    for a, b in zip(interpret(graph, *arrays), interpret(parsed, *arrays), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(interpret(graph, *arrays)[0], out.detach().numpy(), rtol=1e-12)
