"""Row loops: neighbouring elementwise nodes over one large shape, each writing planned
memory, run together piece of rows by piece of rows (``tracegrad.codegen.emit.row_loops``).
The loop must compute what the nodes compute one after the other, and must not form where a
member reads, through a view or a broadcast, memory another member overwrites."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.codegen.emit import ROW_LOOP_MIN, row_loops
from tracegrad.compiled.explain import format_bytes
from tracegrad.compiled.program import generate
from tracegrad.ir.graph import Graph
from tracegrad.ir.interpreter import interpret
from tracegrad.ops import kernels
from tracegrad.passes.memory import InPlace, peak_bytes, plan_memory
from tracegrad.passes.schedule import schedule

TOL = 1e-10


def adam_training(make_step, compiled: bool, steps: int = 4):
    """Linear(1100, 256) has 281600 weights, enough for a row loop (emit.ROW_LOOP_MIN)."""
    tg.manual_seed(3)
    model = nn.Sequential(nn.Linear(1100, 256), nn.Tanh(), nn.Linear(256, 4)).to(tg.float64)
    assert model[0].weight.numel() > ROW_LOOP_MIN
    opt = optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    train_step = make_step(model, opt)
    step = tg.compile(train_step) if compiled else train_step
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x = tg.tensor(rng.standard_normal((8, 1100)))
        y = tg.tensor(rng.integers(0, 4, 8))
        losses.append(step(x, y).item())
    return model, opt, losses, step


def test_adam_updates_of_a_large_weight_run_in_one_row_loop_and_equal_eager(training_step):
    model_e, opt_e, losses_e, _ = adam_training(training_step, compiled=False)
    model_c, opt_c, losses_c, step = adam_training(training_step, compiled=True)
    np.testing.assert_allclose(losses_c, losses_e, rtol=TOL, atol=TOL)
    for (name, p), q in zip(model_c.named_parameters(), model_e.parameters(), strict=True):
        np.testing.assert_allclose(
            p.detach().numpy(), q.detach().numpy(), rtol=TOL, atol=TOL, err_msg=name
        )
        state_c, state_e = opt_c.state[p], opt_e.state[q]
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(
                state_c[key].numpy(), state_e[key].numpy(), rtol=TOL, atol=TOL, err_msg=key
            )
    rows = kernels.CHUNK * 256 // model_c[0].weight.numel()  # 59 rows: five pieces
    assert f"for start in range(0, 256, {rows}):" in step.code
    loop = step.code.split(f"for start in range(0, 256, {rows}):")[1].split("\n    v")[0]
    assert "rt.lerp(" in loop and "rt.ema_square(" in loop and "rt.adam_step(" in loop
    assert "row loops: 1 loops" in step.explain()


def loops_of(graph: Graph) -> list[tuple[int, int]]:
    return row_loops(graph, plan_memory(graph))


def traced_loops(fn, *args) -> list[tuple[int, int]]:
    return loops_of(schedule(tg.trace(fn, *args)))


def test_a_loop_forms_over_neighbouring_large_elementwise_nodes():
    x = tg.randn(600, 600, dtype=tg.float64)
    assert traced_loops(lambda x: ((x * 2.0).tanh() * 3.0).sum(), x), (
        "mul, tanh and mul over 360000 elements run in one loop"
    )


VIEW_HAZARD = """graph(%x:f64[600,600]) {
  %1:f64[600,600] = exp %x
  %2:f64[600,600] = permute[dims=(1, 0)] %1
  %3:f64[600,600] = tanh %x
  %4:f64[600,600] = add %3, %2
  %5:f64[600,600] = mul %1, %4
  %6:f64[] = sum[dims=(0, 1), keepdim=False] %5
  return %6
}"""


def test_no_loop_reads_a_transposed_view_of_memory_it_writes():
    """%4 reads %2, a transposed view of %1, and %5 writes in place where %1 lives: run
    piece by piece, %4 would read columns of %1 whose earlier rows %5 already overwrote.
    %3 and %4 may share a loop; %5 must not join it."""
    graph = Graph.parse(VIEW_HAZARD)
    plan = plan_memory(graph)
    assert plan.placement(graph.nodes[4].outputs[0]) == InPlace(0), "%5 goes where %1 lives"
    assert row_loops(graph, plan) == [(2, 4)]
    program = generate([("f", graph)], "row loop test", False, ["memory"])
    x = np.random.default_rng(2).standard_normal((600, 600)) * 0.1
    (got,) = program.call("f", [x.copy()])
    (want,) = interpret(graph, x)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_small_arrays_and_debug_nans_run_node_by_node():
    x = tg.randn(30, 30, dtype=tg.float64)
    assert not traced_loops(lambda x: ((x * 2.0).tanh() * 3.0).sum(), x)
    big = tg.randn(600, 600, dtype=tg.float64)
    compiled = tg.compile(lambda x: ((x * 2.0).tanh() * 3.0).sum(), debug_nans=True)
    compiled(big)
    assert "for start in range" not in compiled.code


# exp(x) and tanh(y) are read only later in their loop (and not overwritten there): each
# lives in a buffer of one piece, two at once, so two piece buffers. 90000 elements is
# below ROW_LOOP_MIN: the loop forms because of them.
PIECE_LOCALS = """graph(%x:f64[300,300], %y:f64[300,300]) {
  %1:f64[300,300] = exp %x
  %2:f64[300,300] = tanh %y
  %3:f64[300,300] = mul %x, %y
  %4:f64[300,300] = add %3, %2
  %5:f64[300,300] = mul %4, %1
  %6:f64[] = sum[dims=(0, 1), keepdim=False] %5
  %7:f64[300,300] = sin %x
  %8:f64[300,300] = mul %7, %y
  %9:f64[] = sum[dims=(0, 1), keepdim=False] %8
  return %6, %9
}"""


def test_values_living_inside_a_loop_take_piece_buffers():
    graph = Graph.parse(PIECE_LOCALS)
    assert ROW_LOOP_MIN > 300 * 300
    assert loops_of(graph) == [(0, 5)], "sin and its in-place mul have no such value: no loop"
    program = generate([("f", graph)], "piece buffers", False, ["memory"])
    rows = kernels.CHUNK // 300
    assert program.source.count(f"= np.empty(({rows}, 300), np.float64)") == 2
    assert program.source.count("= np.empty((300, 300), np.float64)") == 1  # %3's, %7's
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 300)), rng.standard_normal((300, 300))
    for got, want in zip(program.call("f", [x, y]), interpret(graph, x, y), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_sgd_update_of_a_mid_sized_weight_scales_the_gradient_piece_by_piece(training_step):
    """Linear(784, 128)'s 100352 weights: lr * grad lives in a piece buffer, the parameter is
    updated piece by piece, and the steps equal eager ones."""
    runs = []
    for compiled in (False, True):
        tg.manual_seed(5)
        model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        step = training_step(model, optim.SGD(model.parameters(), lr=0.1))
        step = tg.compile(step) if compiled else step
        rng = np.random.default_rng(1)
        for _ in range(3):
            x = tg.tensor(rng.standard_normal((32, 784)).astype(np.float32))
            step(x, tg.tensor(rng.integers(0, 10, 32)))
        runs.append((model, step))
    (eager, _), (model, step) = runs
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
    rows = kernels.CHUNK * 128 // (128 * 784)
    assert f"step_p0 = np.empty(({rows}, 784), np.float32)" in step.code
    assert step.code.count("np.empty((128, 784), np.float32)") == 1  # the gradient's
    assert "out=step_p0[: 128 - start])" in step.code
    assert "row loops: 1 loops run 2 elementwise nodes" in step.explain()
    assert "(1 values need only a piece)" in step.explain()
    # the estimated peak counts the piece buffer, not the whole one the plan had
    fn, graph = step.latest.program.parts[0]
    allocated = [(shape, dtype) for _, shape, dtype in fn.buffers]
    saved = (128 - rows) * 784 * 4
    assert peak_bytes(graph, fn.plan) - peak_bytes(graph, fn.plan, allocated) == saved
    assert f"{format_bytes(peak_bytes(graph, fn.plan, allocated))} after" in step.explain()
