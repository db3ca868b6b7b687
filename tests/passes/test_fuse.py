"""The fuse pass: elementwise chains, and the linear pattern (a product heading a chain of
bias and activation) as one kernel that writes the product into its buffer and finishes
there in place."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.codegen.emit import row_loops
from tracegrad.compiled.program import generate
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ir.interpreter import interpret
from tracegrad.passes import run_pass
from tracegrad.passes.memory import InBuffer, plan_memory


def graph_of(body: str, inputs: str) -> Graph:
    graph = Graph.parse(f"graph({inputs}) {{\n{body}\n}}")
    graph.lint()
    return graph


LINEAR_RELU = """  %1:f64[4,3] = permute[dims=(1, 0)] %w
  %2:f64[5,3] = matmul %x, %1
  %3:f64[5,3] = add %2, %b
  %4:f64[5,3] = relu %3
  return %4"""
LINEAR_INPUTS = "%x:f64[5,4], %w:f64[3,4], %b:f64[3]"


def arrays(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(v.type.shape) for v in graph.inputs]


def test_linear_layer_with_relu_is_one_kernel_headed_by_the_product():
    graph = graph_of(LINEAR_RELU, LINEAR_INPUTS)
    fused = run_pass("fuse", graph).graph
    fused.lint()
    (node,) = [n for n in fused.nodes if n.op == "fused"]
    assert node.attrs["kind"] == "linear matmul add relu"
    assert [m.op for m in body_of(node).nodes] == ["matmul", "add", "relu"]
    values = arrays(graph)
    np.testing.assert_allclose(interpret(fused, *values)[0], interpret(graph, *values)[0])


def test_a_product_read_twice_heads_no_chain():
    graph = graph_of(
        """  %1:f64[5,3] = matmul %x, %w
  %2:f64[5,3] = add %1, %b
  %3:f64[5,3] = relu %2
  %4:f64[5,3] = mul %1, %3
  return %4""",
        "%x:f64[5,4], %w:f64[4,3], %b:f64[3]",
    )
    fused = run_pass("fuse", graph).graph
    kinds = [n.attrs["kind"] for n in fused.nodes if n.op == "fused"]
    assert kinds == ["elementwise add relu mul"]  # the product stays a node of its own


def test_a_linear_kernel_never_writes_over_its_operands():
    """%2 dies at the fused node and has its type, but a product cannot be written over its
    operand: the kernel gets a buffer of its own."""
    graph = graph_of(
        """  %5:f64[5,5] = exp %x
  %1:f64[5,5] = permute[dims=(1, 0)] %w
  %2:f64[5,5] = add %5, %5
  %3:f64[5,5] = matmul %2, %1
  %4:f64[5,5] = add %3, %b
  %6:f64[5] = sum_to[shape=(5,)] %4
  return %6""",
        "%x:f64[5,5], %w:f64[5,5], %b:f64[5]",
    )
    fused = run_pass("fuse", graph).graph
    plan = plan_memory(fused)
    (linear,) = [n for n in fused.nodes if n.op == "fused" and "linear" in n.attrs["kind"]]
    assert isinstance(plan.placement(linear.outputs[0]), InBuffer)
    program = generate([("f", fused)], "linear kernel", False, ["memory"])
    values = arrays(graph)
    np.testing.assert_allclose(program.call("f", values)[0], interpret(graph, *values)[0])


def test_row_loops_leave_linear_kernels_out():
    """A product is no elementwise node: a row loop must not cut its operands into pieces
    (here w has as many rows as x and would be cut too)."""
    graph = graph_of(
        """  %3:f64[600,600] = tanh %y
  %1:f64[600,600] = matmul %x, %w
  %2:f64[600,600] = add %1, %b
  %4:f64[600,600] = mul %2, %3
  %5:f64[600] = sum_to[shape=(600,)] %4
  return %5""",
        "%x:f64[600,600], %w:f64[600,600], %b:f64[600], %y:f64[600,600]",
    )
    fused = run_pass("fuse", graph).graph
    assert any(n.op == "fused" and "linear" in n.attrs["kind"] for n in fused.nodes)
    for start, stop in row_loops(fused, plan_memory(fused)):
        members = fused.nodes[start:stop]
        assert not any(n.op == "fused" and "linear" in n.attrs["kind"] for n in members)


def compiled_equals_eager(training_step, build, make_opt, input_shape, seed) -> str:
    """Three training steps of a model built by ``build``, eager and compiled, from the same
    start and batches: equal losses and parameters. Returns the compiled step's code."""
    results = []
    for compiled in (False, True):
        tg.manual_seed(seed)
        model = build().double()
        step = training_step(model, make_opt(model.parameters()))
        run = tg.compile(step) if compiled else step
        rng = np.random.default_rng(seed)
        batch = input_shape[0]
        losses = [
            run(
                tg.tensor(rng.standard_normal(input_shape)), tg.tensor(rng.integers(0, 3, batch))
            ).item()
            for _ in range(3)
        ]
        results.append((model, losses, run))
    (model_e, losses_e, _), (model_c, losses_c, run) = results
    np.testing.assert_allclose(losses_c, losses_e, rtol=1e-12)
    for p, q in zip(model_c.parameters(), model_e.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-12)
    return run.code


@pytest.mark.parametrize(
    "batch, hidden, buffer",
    [
        (10, 8, (10, 8)),  # taller than wide: the product as written
        (4, 16, (16, 4)),  # wider than tall: wide-product computes (W @ x^T)^T
    ],
)
def test_compiled_mlp_step_runs_its_layers_as_linear_kernels_and_equals_eager(
    training_step, batch, hidden, buffer
):
    """The first layer's product, bias and relu are one kernel (the bias a column when the
    product runs transposed), whose buffer has the product's layout; three steps match
    eager."""
    code = compiled_equals_eager(
        training_step,
        lambda: nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3)),
        lambda params: optim.SGD(params, lr=0.1),
        (batch, 6),
        seed=4,
    )
    kernel = code[code.index("# linear matmul add relu") :]
    assert kernel.splitlines()[1].strip().startswith(f"out = np.empty({buffer}, np.float64)")


class ResidualMLP(nn.Module):
    """x + proj(gelu(fc(x))) on (batch, time, features): the transformer's MLP block."""

    def __init__(self):
        super().__init__()
        self.fc, self.proj = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x):
        return x + self.proj(nn.functional.gelu(self.fc(x), approximate="tanh"))


def test_linear_layers_on_a_stack_run_as_linear_kernels_and_equal_eager(training_step):
    """On (B, T, C) the products run on all B*T rows; the bias (and the residual) join the
    product in its kernel, and in the backward the GELU gradient (from the t the forward
    kept) joins its product."""
    code = compiled_equals_eager(
        training_step,
        lambda: nn.Sequential(ResidualMLP(), nn.Flatten(), nn.Linear(12, 3)),
        lambda params: optim.Adam(params, lr=0.01),
        (2, 3, 4),
        seed=5,
    )
    kinds = ("linear matmul add", "linear matmul add add", "linear matmul gelu_grad_with_tanh")
    for kind in kinds:
        assert f"# {kind} (" in code, kind
    assert "rt.gelu_tanh(" in code and "rt.gelu_with_tanh(" in code
