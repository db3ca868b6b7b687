"""Horizontal fusion: x@A, x@B, x@C -> (x @ [A B C]) sliced."""

import numpy as np

import tracegrad as tg
from tracegrad import nn
from tracegrad.ir.interpreter import interpret
from tracegrad.passes import run_pass


class ThreeProjections(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 6)

    def forward(self, x):
        return (self.q(x) * self.k(x)).sum() + self.v(x).sum()


def test_sibling_projections_become_one_matmul_with_equal_values():
    tg.manual_seed(0)
    model = ThreeProjections().double()
    x = tg.randn(5, 8, dtype=tg.float64)
    graph = tg.trace(model, x)
    result = run_pass("horizontal", graph)
    assert [n.op for n in graph.nodes].count("matmul") == 3
    assert [n.op for n in result.graph.nodes].count("matmul") == 1
    assert [n.kind for n in result.notes] == ["horizontal"] * 3
    arrays = [x.numpy()] + [p.detach().numpy() for p in model.parameters()]
    np.testing.assert_allclose(interpret(result.graph, *arrays), interpret(graph, *arrays))
    result.graph.lint()


def test_compiled_gradients_are_unchanged_by_the_fusion():
    tg.manual_seed(1)
    model = ThreeProjections().double()
    x = tg.randn(5, 8, dtype=tg.float64)
    cm = tg.compile(model)
    cm(x).backward()
    compiled = [p.grad.numpy().copy() for p in model.parameters()]
    assert [n.op for n in cm.graph.nodes].count("matmul") == 1
    model.zero_grad()
    model(x).backward()
    for got, want in zip(compiled, (p.grad.numpy() for p in model.parameters()), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_matmuls_with_different_left_operands_are_left_alone():
    a, b = tg.randn(3, 4), tg.randn(4, 5)
    graph = tg.trace(lambda x, y: (x @ y).sum() + (x.exp() @ y).sum(), a, b)
    result = run_pass("horizontal", graph)
    assert not result.notes
    assert [n.op for n in result.graph.nodes].count("matmul") == 2
