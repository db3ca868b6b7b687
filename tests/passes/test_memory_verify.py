"""verify_plan: memory plans written by hand that break one rule each are refused, with an
error naming the node and the rule; the planner's own plans pass (``plan_memory`` verifies
every plan it makes).

Each case is a graph, the placements by value name, and words of the expected error.
"""

from __future__ import annotations

import pytest
from test_memory import DEAD_TEMPORARIES, SWAP

from tracegrad.ir.graph import Graph
from tracegrad.passes.memory import (
    InBuffer,
    InPlace,
    MemoryPlan,
    PlanError,
    plan_memory,
    verify_plan,
)

READ_AGAIN = """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[2,3] = neg %1
  %3:f64[2,3] = mul %2, %1
  return %3
}"""

VIEW_READ_LATER = """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[3,2] = permute[dims=(1, 0)] %1
  %3:f64[2,3] = neg %1
  %4:f64[2,2] = matmul %3, %2
  return %4
}"""

READ_TRANSPOSED = """graph(%x:f64[3,3]) {
  %1:f64[3,3] = exp %x
  %2:f64[3,3] = permute[dims=(1, 0)] %1
  %3:f64[3,3] = sub %1, %2
  %4:f64[] = sum[dims=(0, 1), keepdim=False] %3
  return %4
}"""

INPUT = """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[] = sum[dims=(0, 1), keepdim=False] %1
  return %2
}"""

CONSTANT = """graph(%x:f64[2]) {
  %1:f64[2] = constant[value=[1.0, 2.0]]
  %2:f64[2] = mul %1, %x
  %3:f64[] = sum[dims=(0,), keepdim=False] %2
  return %3
}"""

TWO_IN_ONE_BUFFER = """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  %2:f64[2,3] = tanh %x
  %3:f64[2,3] = mul %1, %2
  %4:f64[] = sum[dims=(0, 1), keepdim=False] %3
  return %4
}"""

KEPT = """graph(%x:f64[2,3]) {
  %1:f64[2,3] = exp %x
  return %1
}"""

# (graph, placements by value name, persistent outputs, what the error says)
BROKEN = {
    "in place over a value read later": (
        READ_AGAIN, {"2": InPlace(0)}, (), "%2 = neg overwrites %1, which %3 = mul reads later"
    ),
    "in place over a value whose view is read later": (
        VIEW_READ_LATER,
        {"3": InPlace(0)},
        (),
        "%3 = neg overwrites %1, which %4 = matmul reads later",
    ),
    "in place over memory the node reads transposed": (
        READ_TRANSPOSED, {"3": InPlace(0)}, (), "%3 = sub reads the memory it writes through a view"
    ),
    "a graph input written": (
        INPUT, {"1": InPlace(0)}, (), "%1 = exp writes graph input %x, which the program does not"
    ),
    "a constant written": (CONSTANT, {"2": InPlace(0)}, (), "%2 = mul writes constant %1"),
    "a state's memory holding another state's new value": (
        SWAP, {"2": InPlace(0)}, ("2", "4"), "%2 = mul puts a result in the memory of %q"
    ),
    "two live values in one buffer": (
        TWO_IN_ONE_BUFFER,
        {"1": InBuffer(0), "2": InBuffer(0)},
        (),
        "%2 = tanh overwrites %1, which %3 = mul reads later",
    ),
    "an output the caller keeps in a pooled buffer": (
        KEPT, {"1": InBuffer(0)}, (), "%1 = exp is kept by the caller, but lives in pooled buffer 0"
    ),
}  # fmt: skip


def plan_of(graph: Graph, placements: dict, persistent=()) -> MemoryPlan:
    """A plan written by hand: placements by value name, one buffer per value's type."""
    values = {v.name: v for v in graph.values()}
    placed = {values[name]: placement for name, placement in placements.items()}
    buffers = {p.buffer: v.type for v, p in placed.items() if isinstance(p, InBuffer)}
    shapes = [(buffers[b].shape, buffers[b].dtype.name) for b in sorted(buffers)]
    return MemoryPlan.of(graph, placed, shapes, frozenset(persistent))


@pytest.mark.parametrize(("text", "placements", "persistent", "error"), BROKEN.values(),
                         ids=BROKEN.keys())  # fmt: skip
def test_a_plan_breaking_a_rule_is_refused_by_name(text, placements, persistent, error):
    graph = Graph.parse(text)
    with pytest.raises(PlanError, match="memory plan: " + error):
        verify_plan(graph, plan_of(graph, placements, persistent))


@pytest.mark.parametrize("text", [READ_AGAIN, VIEW_READ_LATER, READ_TRANSPOSED, SWAP, KEPT])
def test_the_planners_plans_pass(text):
    graph = Graph.parse(text)
    verify_plan(graph, plan_memory(graph, frozenset({"2", "4"} if "update" in text else ())))


def test_a_hand_written_plan_keeping_the_rules_passes():
    """exp into a buffer, neg and tanh over it in turn (each the last reader): one buffer."""
    graph = Graph.parse(DEAD_TEMPORARIES)
    plan = plan_of(graph, {"1": InBuffer(0), "2": InPlace(0), "3": InPlace(0)})
    verify_plan(graph, plan)
    assert plan.memory_of(graph.nodes[2].outputs[0]) == plan.memory_of(graph.nodes[0].outputs[0])
