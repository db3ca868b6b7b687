"""The memory plan: which in-place writes it must decline and which it must make, and what
it saves on a real training step.

``plan_memory(graph)`` places a value ``InPlace(k)`` (written into its node's input k) or
``InBuffer(b)`` (a pooled buffer), or leaves it in fresh memory. A write into a value's
memory is only safe when nothing reads that value afterwards, directly or through a view, and
when the value is not memory the program does not own (inputs, constants) or hands out
(outputs, values saved for the backward). The cases also run the generated code (which
follows the plan) twice and compare it with the interpreter, which ignores the plan.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.compiled.program import generate
from tracegrad.ir.graph import Graph, structure
from tracegrad.ir.interpreter import interpret
from tracegrad.passes.memory import Assembled, InBuffer, InPlace, MemoryPlan, Pooled, plan_memory


@dataclass
class Planned:
    """A graph and its memory plan, read by value name: ``planned["2"]`` is the placement of
    %2 (None: fresh memory), ``planned.memory("2")`` the memory it lives in, by name."""

    graph: Graph
    plan: MemoryPlan

    def value(self, name: str):
        return next(v for v in self.graph.values() if v.name == name)

    def __getitem__(self, name: str):
        return self.plan.placement(self.value(name))

    def memory(self, name: str):
        memory = self.plan.memory_of(self.value(name))
        return ("buffer", memory.buffer) if isinstance(memory, Pooled) else memory.name


def planned(text: str, persistent=frozenset()) -> Planned:
    graph = Graph.parse(text)
    graph.lint()
    return Planned(graph, plan_memory(graph, frozenset(persistent)))


def overwritten_after(planned: Planned, name: str) -> list[str]:
    """Values written, after ``name`` is defined, into the memory ``name`` lives in."""
    graph = planned.graph
    names = [v.name for v in graph.inputs] + [n.outputs[0].name for n in graph.nodes]
    later = names[names.index(name) + 1 :]
    writes = {v.name for v in planned.plan.placements}
    return [v for v in later if v in writes and planned.memory(v) == planned.memory(name)]


def arrays_for(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2.0, 2.0, v.type.shape) for v in graph.inputs]


def assert_generated_matches(graph: Graph) -> None:
    """The generated code (following its memory plan) equals the interpreter, on two calls in
    a row, leaves its inputs alone, and a first call's outputs survive the second call."""
    program = generate([("f", graph)], "memory plan test", False, ["memory"])
    arrays = arrays_for(graph)
    want = interpret(graph, *arrays)
    first = None
    for call in range(2):
        inputs = [a.copy() for a in arrays]
        got = program.call("f", inputs)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=f"call {call}, output {i}")
        for a, b in zip(inputs, arrays, strict=True):
            np.testing.assert_array_equal(a, b, err_msg="an input was overwritten")
        first = got if first is None else first
    for i, (a, b) in enumerate(zip(first, want, strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=f"output {i} changed by a later call")


# --- declined -------------------------------------------------------------------------------


def test_declines_a_value_read_later():
    graph = planned(
        """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[2,3] = tanh %1
  %3:f64[2,3] = mul %2, %1
  %4:f64[] = sum[dims=(0, 1), keepdim=False] %3
  return %4
}"""
    )
    assert not isinstance(graph["2"], InPlace)  # %1 is read again by %3
    assert graph["3"] in (InPlace(0), InPlace(1))  # both operands die at %3
    assert set(overwritten_after(graph, "1")) <= {"3"}  # only by its last reader
    assert_generated_matches(graph.graph)


VIEWS = {
    "permute": "%2:f64[3,2] = permute[dims=(1, 0)] %1",
    "reshape": "%2:f64[3,2] = reshape[shape=(3, 2)] %1",
    "slice": "%2:f64[3,2] = getitem[key=(('slice', None, None, None), ('slice', 0, 2, None))] %1",
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
def test_declines_a_buffer_with_a_live_view(view):
    square = "%1:f64[3,3]" if "getitem" in view else "%1:f64[2,3]"
    x = "%x:f64[3,3]" if "getitem" in view else "%x:f64[2,3]"
    rows = 3 if "getitem" in view else 2
    graph = planned(
        f"""graph({x}) {{
  {square} = exp %x
  {view}
  %3:f64[{rows},3] = neg %1
  %4:f64[{rows},2] = matmul %3, %2
  return %4
}}"""
    )
    assert not isinstance(graph["3"], InPlace)  # %1 dies at %3, but its view %2 does not
    assert "3" not in overwritten_after(graph, "1")
    assert_generated_matches(graph.graph)


def test_declines_graph_inputs():
    graph = planned(
        """graph(%x:f64[2,3], %y:f64[2,3]) {
  %1:f64[2,3] = add %x, %y
  %2:f64[2,3] = exp %x
  %3:f64[2,3] = mul %1, %2
  return %3
}"""
    )
    assert not isinstance(graph["1"], InPlace)
    assert not isinstance(graph["2"], InPlace)  # %x dies here, but it is the caller's
    assert overwritten_after(graph, "x") == [] and overwritten_after(graph, "y") == []
    assert_generated_matches(graph.graph)


def test_declines_graph_outputs_and_keeps_them_out_of_the_pool():
    graph = planned(
        """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[2,3] = neg %1
  %3:f64[2,3] = tanh %2
  %4:f64[2,3] = permute[dims=(0, 1)] %3
  return %1, %4
}"""
    )
    assert not isinstance(graph["2"], InPlace)  # %1 is returned
    assert graph["1"] is None and graph["3"] is None  # own memory, no pool
    assert overwritten_after(graph, "1") == []
    assert_generated_matches(graph.graph)


def test_persistent_outputs_may_live_in_planned_memory():
    text = """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[2,3] = neg %1
  return %2
}"""
    assert not isinstance(planned(text)["2"], InPlace)
    assert planned(text, {"2"})["2"] == InPlace(0)


def test_declines_constants():
    values = repr(np.arange(6.0).reshape(2, 3).tolist())
    graph = planned(
        f"""graph(%x:f64[2,3]) {{
  %1:f64[2,3] = constant[value={values}]
  %2:f64[2,3] = mul %1, %x
  %3:f64[] = sum[dims=(0, 1), keepdim=False] %2
  return %3
}}"""
    )
    assert isinstance(graph["2"], InBuffer)  # the constant dies here; still not ours
    assert overwritten_after(graph, "1") == []
    assert_generated_matches(graph.graph)  # a second call would see a clobbered constant


class Saver(nn.Module):
    """tanh's gradient reads its output: h is saved for the backward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        h = self.lin(x).tanh()
        return (h * 2.0).exp().sum(1)


def eager_grads(model, x) -> list[np.ndarray]:
    twin = Saver().double()
    twin.load_state_dict(model.state_dict())
    twin(tg.tensor(x)).sum().backward()
    return [p.grad.numpy() for p in twin.parameters()]


def test_saved_values_survive_the_forward_and_a_second_forward():
    tg.manual_seed(0)
    model = Saver().double()
    cm = tg.compile(model)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    out1 = cm(tg.tensor(x1))
    fn, graph = cm.latest.program.parts[0]
    forward = Planned(graph, fn.plan)
    saved = graph.outputs[1:]
    assert saved, "nothing saved for the backward"
    for value in saved:
        assert overwritten_after(forward, value.name) == [], f"saved %{value.name} overwritten"
    pooled = [v for v in saved if isinstance(forward.memory(v.name), tuple)]
    assert pooled, "saved values in planned memory"
    assert fn.plan.placements, "the plan did nothing at all"
    cm(tg.tensor(x2))  # a second forward before the first backward: out1's values move out
    out1.sum().backward()
    for got, want in zip(model.parameters(), eager_grads(model, x1), strict=True):
        np.testing.assert_allclose(got.grad.numpy(), want, rtol=1e-12)


def test_saved_values_stay_in_planned_memory_through_a_training_loop():
    """forward, backward, forward, backward...: each forward writes its saved values into the
    same planned memory (nothing to keep, since the last backward freed its graph), and every
    step's gradients equal eager ones, as do those of a graph kept with retain_graph."""
    tg.manual_seed(0)
    model = Saver().double()
    cm = tg.compile(model)
    rng = np.random.default_rng(1)
    buffers = None
    for step in range(3):
        x = rng.standard_normal((5, 3))
        model.zero_grad()
        out = cm(tg.tensor(x))
        node_saved = cm.latest.pending[1]
        planned = [id(a) for a in node_saved if id(a) in cm.latest.program.buffer_ids]
        assert planned, "saved values live in planned memory"
        buffers = planned if buffers is None else buffers
        assert planned == buffers, f"step {step}: the same memory every step"
        out.sum().backward(retain_graph=step == 1)
        for got, want in zip(model.parameters(), eager_grads(model, x), strict=True):
            np.testing.assert_allclose(got.grad.numpy(), want, rtol=1e-12)
        if step == 1:  # retained: the next forward must move its saved values out first
            kept, kept_x = out, x
    model.zero_grad()
    kept.sum().backward()
    for got, want in zip(model.parameters(), eager_grads(model, kept_x), strict=True):
        np.testing.assert_allclose(got.grad.numpy(), want, rtol=1e-12)


# p <- 2q and q <- 3p
SWAP = """graph(%p:f64[2], %q:f64[2]) {
  %1:f64[] = constant[value=2.0]
  %2:f64[2] = mul %q, %1
  %3:f64[] = constant[value=3.0]
  %4:f64[2] = mul %p, %3
  return %2, %4
  update %p <- %2
  update %q <- %4
}"""


def test_state_memory_never_holds_another_states_new_value():
    """p <- 2q and q <- 3p: q's old memory must not hold p's new value (the values are
    written back into p and q after the run, p first, which would clobber it)."""
    graph = planned(SWAP, persistent={"2", "4"})
    assert graph.memory("2") != "q" and graph.memory("4") != "p"
    p = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    q = tg.tensor(np.array([10.0, 20.0]), requires_grad=True)

    def swap_scaled(x):
        with tg.no_grad():
            new_p, new_q = q * 2.0, p * 3.0
            p.copy_(new_p)
            q.copy_(new_q)
        return x.sum()

    tg.compile(swap_scaled)(tg.tensor(np.ones(2)))
    np.testing.assert_array_equal(p.detach().numpy(), [20.0, 40.0])
    np.testing.assert_array_equal(q.detach().numpy(), [3.0, 6.0])


def test_the_memory_pass_leaves_no_plan_behind_in_the_graph():
    """The plan is returned, never written into the graph: run as a pass, ``memory`` leaves
    the graph as it was, so a graph rewritten after planning (CSE makes the first abs the
    output) is planned afresh, its pooled buffer gone."""
    text = """graph(%x:f64[3]) {
  %1:f64[3] = abs %x
  %2:f64[3] = abs %x
  %3:f64[3] = abs %x
  return %3
}"""
    graph = Graph.parse(text)
    assert planned(text)["1"] == InBuffer(0)
    after = tg.passes.run(graph, ["memory"])
    assert structure(after) == structure(graph)
    replanned = tg.passes.run(graph, ["memory", "cse", "memory"])
    plan = plan_memory(replanned)
    assert (plan.placements, plan.buffers) == ({}, [])
    assert_generated_matches(replanned)


# --- accepted -------------------------------------------------------------------------------


# exp, then neg and tanh, each the last reader of the one before
DEAD_TEMPORARIES = """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[2,3] = neg %1
  %3:f64[2,3] = tanh %2
  %4:f64[3] = sum[dims=(0,), keepdim=False] %3
  return %4
}"""


def test_accepts_a_dead_temporary():
    graph = planned(DEAD_TEMPORARIES)
    assert graph["1"] == InBuffer(0)
    assert graph["2"] == InPlace(0)
    assert graph["3"] == InPlace(0)
    assert graph.memory("3") == ("buffer", 0)
    assert graph.plan.buffers == [((2, 3), "float64")]
    assert_generated_matches(graph.graph)


def test_inplace_alone_plans_the_in_place_writes_and_pools_nothing():
    graph = Graph.parse(DEAD_TEMPORARIES)
    plan = plan_memory(graph, pooled=False)
    # %1 gets fresh memory (no pool), which %2 and %3 then overwrite
    assert (plan.placement(graph.nodes[0].outputs[0]), plan.buffers) == (None, [])
    assert [plan.placement(n.outputs[0]) for n in graph.nodes[1:3]] == [InPlace(0), InPlace(0)]
    assert tg.passes.run(graph, ["inplace"]) == graph  # as a pass: plans, checks, changes nothing


def test_a_step_compiled_with_inplace_alone_matches_the_default(training_step):
    runs = [sgd_momentum_run(training_step, True, passes=p) for p in (["inplace"], None)]
    (step, *planned_only), (_, *unplanned) = runs
    np.testing.assert_allclose(planned_only[0], unplanned[0], rtol=1e-12)  # losses
    for got, want in zip(planned_only[1] + planned_only[2], unplanned[1] + unplanned[2]):
        np.testing.assert_allclose(got, want, rtol=1e-12)  # parameters, momentum buffers
    fn, _ = step.latest.program.parts[0]
    assert fn.plan.count(InPlace) > 0 and not fn.plan.buffers


def sgd_momentum_run(make_step, compiled: bool, steps: int = 3, passes="default"):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step = make_step(model, opt)
    step = tg.compile(train_step, passes=passes) if compiled else train_step
    rng = np.random.default_rng(0)
    x, y = tg.tensor(rng.standard_normal((8, 4))), tg.tensor(rng.integers(0, 2, 8))
    losses = [step(x, y).item() for _ in range(steps)]
    buffers = [opt.state[p]["momentum_buffer"].numpy().copy() for p in model.parameters()]
    params = [p.detach().numpy().copy() for p in model.parameters()]
    return step, losses, params, buffers


def test_accepts_updating_optimizer_state_in_place(training_step):
    step, losses, params, buffers = sgd_momentum_run(training_step, compiled=True)
    # the steady specialization reads the momentum buffers as state inputs
    assert "opt.momentum_buffer0" in step.graph.updates
    assert "out=opt_momentum_buffer0)" in step.code
    assert "out=model_0_weight)" in step.code
    _, eager_losses, eager_params, eager_buffers = sgd_momentum_run(training_step, compiled=False)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-12)
    for got, want in zip(params + buffers, eager_params + eager_buffers, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


# --- the memory target: a steady W2 step with default passes vs passes=None ---------


def w2_step_peak(make_step, passes) -> tuple[int, int]:
    """tracemalloc peak (bytes) of one steady compiled W2 step: MLP 1024-2048-2048-10,
    GELU(tanh), batch 256, Adam, float32; and the number of specializations."""
    tg.manual_seed(0)
    gelu = nn.GELU(approximate="tanh")
    model = nn.Sequential(
        nn.Linear(1024, 2048), gelu, nn.Linear(2048, 2048), gelu, nn.Linear(2048, 10)
    )
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((256, 1024)).astype(np.float32))
    y = tg.tensor(rng.integers(0, 10, 256))
    step = tg.compile(make_step(model, opt), passes=passes)
    for _ in range(2):  # warm-up: compile, create the Adam state, compile with it
        step(x, y)
    compiled = len(step.specializations)
    tracemalloc.start()
    try:
        step(x, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(step.specializations) == compiled, "the measured step recompiled"
    return peak


def test_w2_step_allocates_at_most_60_percent_of_the_unoptimized_step(training_step):
    optimized = w2_step_peak(training_step, "default")
    unoptimized = w2_step_peak(training_step, None)
    # sanity: unplanned, the step holds all its gradients at once (24 MiB of float32)
    assert unoptimized > 24 * 2**20
    assert optimized <= 0.6 * unoptimized, (
        f"peak {optimized} B with default passes vs {unoptimized} B with passes=None"
    )


# --- assemblies: results written straight into their place in a copy or concatenation ----------

# Attention's shape of things: two stacks of products (2, 2, 3, 4), their heads merged back
# (transposed to (2, 3, 2, 4), made contiguous, reshaped to (2, 3, 8)) and concatenated.
HEADS = "%a:f64[2,2,3,5], %b:f64[2,2,5,4], %c:f64[2,2,5,4]"
MERGED = """  %1:f64[2,2,3,4] = matmul %a, %b
  %2:f64[2,3,2,4] = permute[dims=(0, 2, 1, 3)] %1
  %3:f64[2,3,2,4] = contiguous %2
  %4:f64[2,3,8] = reshape[shape=(2, 3, 8)] %3
  %5:f64[2,2,3,4] = matmul %a, %c
  %6:f64[2,3,2,4] = permute[dims=(0, 2, 1, 3)] %5
  %7:f64[2,3,8] = reshape[shape=(2, 3, 8)] %6
  %8:f64[2,3,16] = cat[dim=2] %4, %7"""


def assembled(body: str, inputs: str = HEADS) -> Planned:
    return planned(f"graph({inputs}) {{\n{body}\n}}")


def test_products_are_written_into_their_place_in_a_concatenation():
    """Each product writes into its transposed slice of the concatenation's buffer: the copy
    and the concatenation copy nothing, and the code equals the interpreter."""
    graph = assembled(MERGED + "\n  %9:f64[2,3,16] = exp %8\n  return %9")
    cat, copy = graph["8"], graph["3"]
    assert isinstance(cat, Assembled) and isinstance(copy, Assembled)
    for name, view in [("1", "[:, :, 0:8]"), ("5", "[:, :, 8:16]")]:
        product = graph[name]
        assert type(product) is InBuffer
        assert product.buffer == cat.buffer and product.view.startswith(view)
    code = generate([("f", graph.graph)], "assembly test", False, ["memory"]).source
    assert "concatenate" not in code and "copy_into" not in code
    assert_generated_matches(graph.graph)


def test_a_contiguous_copy_of_a_transposed_product_is_written_transposed():
    graph = assembled(
        """  %1:f64[2,2,3,4] = matmul %a, %b
  %2:f64[2,3,2,4] = permute[dims=(0, 2, 1, 3)] %1
  %3:f64[2,3,2,4] = contiguous %2
  %4:f64[2,3,2,4] = exp %3
  return %4"""
    )
    assert graph["1"].view == ".transpose((0, 2, 1, 3))"
    assert isinstance(graph["3"], Assembled)
    assert_generated_matches(graph.graph)


# (graph body, the consumer left alone, the product left in its own memory)
ASSEMBLY_NEAR_MISSES = {
    "a product read again elsewhere": (
        MERGED + "\n  %9:f64[2,2,3,4] = exp %5\n  %10:f64[2,3,16] = exp %8\n  return %9, %10",
        "8",
        "5",
    ),
    "an input of the graph": (
        MERGED.replace("%4, %7", "%4, %7, %d").replace("[2,3,16]", "[2,3,24]")
        + "\n  %9:f64[2,3,24] = exp %8\n  return %9",
        "8",
        "5",
    ),
    "a concatenation the caller keeps": (MERGED + "\n  return %8", "8", "5"),
    "a view of a product read after the concatenation": (
        MERGED.replace("  %8:", "  %9:f64[2,2,4,3] = permute[dims=(0, 1, 3, 2)] %5\n  %8:")
        + "\n  %10:f64[2,3,16] = exp %8\n  %11:f64[2,2,4,3] = exp %9\n  return %10, %11",
        "8",
        "5",
    ),
    "one product in two places": (
        """  %1:f64[6,8] = matmul %p, %q
  %2:f64[2,3,8] = reshape[shape=(2, 3, 8)] %1
  %3:f64[2,3,8] = reshape[shape=(2, 3, 8)] %1
  %4:f64[2,3,16] = cat[dim=2] %2, %3
  %5:f64[2,3,16] = exp %4
  return %5""",
        "4",
        "1",
    ),
    "rows of a slice that merge only by copying": (
        """  %1:f64[6,8] = matmul %p, %q
  %2:f64[2,3,8] = reshape[shape=(2, 3, 8)] %1
  %3:f64[6,8] = matmul %p, %r
  %4:f64[2,3,8] = reshape[shape=(2, 3, 8)] %3
  %5:f64[2,6,8] = cat[dim=1] %2, %4
  %6:f64[2,6,8] = exp %5
  return %6""",
        "5",
        "1",
    ),
}


@pytest.mark.parametrize(
    ("body", "consumer", "product"), ASSEMBLY_NEAR_MISSES.values(), ids=ASSEMBLY_NEAR_MISSES.keys()
)
def test_declines_assemblies_it_cannot_write_in_place(body, consumer, product):
    graph = assembled(body, HEADS + ", %d:f64[2,3,8], %p:f64[6,5], %q:f64[5,8], %r:f64[5,8]")
    assert not isinstance(graph[consumer], Assembled)
    assert not isinstance(graph[product], InBuffer) or not graph[product].view
    assert_generated_matches(graph.graph)


# A sequence's gradient: each step's gates, two products concatenated (and read by another
# product before the consumer), gathered over the steps by a concatenation along a new axis.
STEPS = "%p:f64[3,5], %q:f64[5,4], %r:f64[5,4], %w:f64[8,2], %d:f64[3,4]"
GATHERED = """  %1:f64[3,4] = matmul %p, %q
  %2:f64[3,4] = matmul %p, %r
  %3:f64[3,8] = cat[dim=1] %1, %2
  %4:f64[3,2] = matmul %3, %w
  %5:f64[3,4] = matmul %p, %r
  %6:f64[3,4] = matmul %p, %q
  %7:f64[3,8] = cat[dim=1] %5, %6
  %8:f64[1,3,8] = reshape[shape=(1, 3, 8)] %3
  %9:f64[1,3,8] = reshape[shape=(1, 3, 8)] %7
  %10:f64[2,3,8] = cat[dim=0] %8, %9
  %11:f64[2,3,8] = exp %10"""


def test_concatenations_inside_a_concatenation_are_written_in_place_too():
    """Each step's products go straight into their columns of their step's rows of the outer
    buffer; the inner concatenations (one read by a product before the consumer) are views."""
    graph = assembled(GATHERED + "\n  return %11, %4", STEPS)
    outer = graph["10"]
    assert isinstance(outer, Assembled)
    for inner, rows in [("3", "[0:1]"), ("7", "[1:2]")]:
        assert isinstance(graph[inner], Assembled)
        assert graph[inner] == Assembled(outer.buffer, f"{rows}.reshape((3, 8))")
    assert graph["6"] == InBuffer(outer.buffer, "[1:2].reshape((3, 8))[:, 4:8]")
    code = generate([("f", graph.graph)], "assembly test", False, ["memory"]).source
    assert "concatenate" not in code
    assert_generated_matches(graph.graph)


def test_an_inner_concatenation_it_cannot_gather_writes_into_its_place():
    """A step whose gates include a value NumPy cannot write into a view (an exp outside a
    fused kernel): its concatenation computes into its rows of the outer buffer."""
    body = GATHERED.replace("matmul %p, %q\n  %7", "exp %d\n  %7")
    graph = assembled(body + "\n  return %11, %4", STEPS)
    outer = graph["10"]
    assert isinstance(outer, Assembled)
    assert graph["7"] == InBuffer(outer.buffer, "[1:2].reshape((3, 8))")
    assert isinstance(graph["3"], Assembled)
    assert_generated_matches(graph.graph)


def test_an_inner_concatenation_read_after_the_consumer_keeps_its_own_buffer():
    """The outer buffer may be reused once the consumer is dead: a later reader of a part
    must find it elsewhere, so the outer concatenation copies and the inner one assembles."""
    graph = assembled(GATHERED + "\n  %12:f64[3,2] = matmul %7, %w\n  return %11, %12", STEPS)
    assert not isinstance(graph["10"], Assembled)
    assert graph["7"] == Assembled(graph["7"].buffer)
    assert_generated_matches(graph.graph)
