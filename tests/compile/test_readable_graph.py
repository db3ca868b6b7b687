"""``cm.graph`` shows the user's program: the NumPy layout choices of ``specialize_numpy``
(here wide-product, which computes ``x @ W.T + b`` as ``(W @ x.T + b).T`` on rows of x)
show only in the generated graphs (``spec.program``), the "generated" views and the code."""

import numpy as np

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.ir.interpreter import interpret
from tracegrad.nn import functional as F

BATCH, T, D = 4, 16, 32
WIDE_PRODUCT = (3 * D, BATCH * T)  # qkv's product, long side first (wide-product)
ROWS_OF_X = (BATCH * T, D)  # x reshaped to rows, the product's right operand


class Attention(nn.Module):
    """Self-attention of the W4 transformer, one head."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(BATCH, T, 3, D).permute(2, 0, 1, 3)
        weights = F.softmax(q @ k.transpose(-2, -1) / D**0.5, dim=-1)
        return (weights @ v).sum()


def _shapes(graph) -> set[tuple]:
    """Output shapes of every node, inside fused bodies too."""
    shapes = set()
    for node in graph.nodes:
        shapes.add(node.outputs[0].type.shape)
        if node.op == "fused":
            shapes |= _shapes(node.attrs["body"])
    return shapes


def _inputs():
    """float64, so that the graphs agree to rounding whatever order they sum in."""
    return tg.tensor(np.random.default_rng(0).standard_normal((BATCH, T, D)))


def _compiled_attention():
    tg.manual_seed(0)
    model = Attention().double()
    cm = tg.compile(model)
    x = _inputs()
    cm(x).backward()
    arrays = [x.numpy()] + [p.detach().numpy() for p in model.parameters()]
    return cm, arrays


def _forward_then_backward(forward, backward, arrays):
    """The loss and the gradients: ``backward`` on the values ``forward`` saves and a seed
    of one."""
    results = interpret(forward, *arrays)
    seed = np.ones(())
    return [results[0], *interpret(backward, *results[1:], seed)]


def test_cm_graph_leaves_layout_choices_to_the_generated_graph():
    cm, _ = _compiled_attention()
    generated = cm.latest.program
    assert "wide-product" in cm.explain() and "not in cm.graph" in cm.explain()
    assert {WIDE_PRODUCT, ROWS_OF_X} <= _shapes(generated.graph)
    assert not {WIDE_PRODUCT, ROWS_OF_X} & _shapes(cm.graph)
    assert WIDE_PRODUCT not in _shapes(cm.backward_graph)
    views = dict(cm.views())
    assert views["generated forward"] is generated.graph
    assert views["generated backward"] is generated.backward_graph
    assert views["forward (optimized)"] is cm.graph


def test_cm_graph_computes_what_the_generated_graphs_compute():
    cm, arrays = _compiled_attention()
    readable = _forward_then_backward(cm.graph, cm.backward_graph, arrays)
    program = cm.latest.program
    generated = _forward_then_backward(program.graph, program.backward_graph, arrays)
    assert len(readable) == len(generated) == 3
    for ours, theirs in zip(readable, generated, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_cm_graph_is_derived_on_first_read_without_recompiling():
    cm, _ = _compiled_attention()
    spec = cm.latest
    assert "readable" not in vars(spec)  # the call derived nothing for it
    graph = cm.graph
    assert cm.graph is graph and cm.latest is spec
    assert cm.specializations == [spec] and cm.recompile_reasons == []


def test_a_whole_step_graph_computes_what_the_generated_step_computes():
    tg.manual_seed(0)
    model = Attention().double()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        opt.step()
        return loss

    cm = tg.compile(step)
    x = _inputs()
    cm(x)
    spec = cm.latest
    generated = spec.program.graph
    assert WIDE_PRODUCT in _shapes(generated) and WIDE_PRODUCT not in _shapes(cm.graph)
    assert cm.backward_graph is None
    arrays = [x.numpy()] + [t.detach().numpy() for t in spec.state()]
    for ours, theirs in zip(
        interpret(cm.graph, *arrays), interpret(generated, *arrays), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert [title for title, _ in cm.views()] == [
        "training step (optimized)",
        "generated training step",
        "training step (traced, before passes)",
    ]
