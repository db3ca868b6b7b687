"""What horizontal fusion does not join: forward with backward products, live with dead ones.

In ``F.linear(x, w, b).T @ x`` the gradient has a product ``x @ g.T`` sharing its left operand
``x`` with the forward's ``x @ w.T``. Joined, the forward would need the cotangent ``g``: a
compiled module, whose joint graph is cut into a forward and a backward function, could not
be built. A dead product joined with a live one would be computed, and the live result would
depend on its operand (check=True then compared gradients of different inputs).
"""

import numpy as np

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn
from tracegrad.passes import run_pass
from tracegrad.passes.autodiff import differentiate, split


class LinearTimesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return F.linear(x, self.lin.weight, self.lin.bias).T @ x


def inputs():
    tg.manual_seed(0)
    return LinearTimesInput().double(), tg.tensor(np.arange(4.0).reshape(2, 2), requires_grad=True)


def test_the_joint_graph_still_splits_after_horizontal_fusion():
    model, x = inputs()
    graph = tg.trace(model, x)
    joint, seeds, _ = differentiate(graph, [v.name for v in graph.inputs])
    fused = tg.passes.run(joint, ["simplify", "specialize_numpy", "horizontal"])
    forward = split(fused, len(graph.outputs), seeds).forward
    assert not {v.name for v in forward.inputs} & set(seeds)


def test_compiled_module_gradients_equal_eager():
    grads = []
    for compiled in (True, False):
        model, x = inputs()
        y = (tg.compile(model) if compiled else model)(x)
        (y * y).sum().backward()
        grads.append([x.grad.numpy(), *(p.grad.numpy() for p in model.parameters())])
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_dead_product_is_not_joined_with_a_live_one():
    def program(x, w):
        unused = w @ x  # noqa: F841  (dead: DCE runs after horizontal fusion)
        return w @ w

    graph = tg.trace(program, np.ones((2, 2)), np.eye(2))
    result = run_pass("horizontal", graph)
    assert "cat" not in [n.op for n in result.graph.nodes]
