"""The pass manager lints each pass's result in tests: a pass breaking the IR is named."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad.dtypes import TensorType
from tracegrad.ir.lint import GraphLintError
from tracegrad.passes import PASSES, pipeline
from tracegrad.passes.pipeline import register_pass

MISTYPED = "test_mistyped_output"


@pytest.fixture
def mistyped_pass():
    """Registers a pass that gives the first node's output a wrong shape (a broken graph)."""

    @register_pass(MISTYPED)
    def mistype(graph):
        """Give the first node's output a wrong type (for the tests)."""
        out = graph.nodes[0].outputs[0]
        out.type = TensorType((*out.type.shape, 1), out.type.dtype)
        return graph

    try:
        yield
    finally:
        PASSES.pop(MISTYPED, None)


def traced():
    return tg.trace(lambda x: (x.exp() * 2.0).sum(), tg.tensor(np.ones((2, 3))))


def test_tests_lint_after_every_pass():
    assert pipeline.LINT_AFTER_EACH_PASS


def test_a_pass_breaking_the_graph_is_named(mistyped_pass):
    with pytest.raises(GraphLintError, match=f"after the {MISTYPED} pass: node 0 \\(exp"):
        tg.passes.run(traced(), ["cse", MISTYPED, "dce"])


def test_a_broken_graph_is_reported_before_the_first_pass():
    graph = traced()
    graph.nodes[0].op = "nope"
    with pytest.raises(GraphLintError, match="before the first pass: node 0 \\(nope"):
        tg.passes.run(graph, ["cse"])


def test_without_the_switch_nothing_is_linted(mistyped_pass, monkeypatch):
    monkeypatch.setattr(pipeline, "LINT_AFTER_EACH_PASS", False)
    assert tg.passes.run(traced(), [MISTYPED]).nodes[0].outputs[0].type.shape == (2, 3, 1)
