"""What a generated function records of what it emitted (``FunctionSource``: the Python name
of each value, the kernel each fused node calls, the row loops, the memory plan) agrees with
the source it wrote, and codegen leaves the graph it reads as it was."""

from __future__ import annotations

import re

import numpy as np

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.codegen.emit import emit_function
from tracegrad.ir.core import FUSED
from tracegrad.ir.graph import structure
from tracegrad.passes.memory import InBuffer, InPlace


def compiled_adam_step(training_step):
    """A step with fused kernels, in-place updates, pooled buffers and a row loop (the
    first weight has 281600 elements)."""
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(1100, 256), nn.Tanh(), nn.Linear(256, 4)).double()
    step = tg.compile(training_step(model, optim.Adam(model.parameters(), lr=0.01)))
    rng = np.random.default_rng(0)
    for _ in range(2):
        step(tg.tensor(rng.standard_normal((8, 1100))), tg.tensor(rng.integers(0, 4, 8)))
    return step


def test_the_record_names_what_the_code_defines(training_step):
    step = compiled_adam_step(training_step)
    fn, graph = step.latest.program.parts[0]
    code = step.code
    defined = set(re.findall(r"^\s+(\w+) = ", code, re.M))
    inside = {v for loop in fn.row_loops for v in loop.inside}  # (live in piece buffers)
    for value in (n.outputs[0] for n in graph.nodes if n.outputs[0] not in inside):
        assert fn.names[value] in defined, f"%{value.name} is not named"
    assert fn.params[: len(graph.inputs)] == [fn.names[v] for v in graph.inputs]
    fused = [n for n in graph.nodes if n.op == FUSED]
    assert fused and list(fn.kernel_names) == fused
    body = code.split("def step(")[1]
    for kernel in fn.kernel_names.values():
        assert f"def {kernel}(" in code and f"{kernel}(" in body


def test_the_record_holds_the_row_loops_and_plan_the_code_follows(training_step):
    step = compiled_adam_step(training_step)
    fn, graph = step.latest.program.parts[0]
    assert fn.row_loops and len(fn.row_loops) == step.code.count("for start in range(")
    assert fn.plan.count(InPlace) > 0 and fn.plan.count(InBuffer) > 0
    writes = re.findall(r"out=(\w+)", step.code)
    for value, placement in fn.plan.placements.items():
        if isinstance(placement, InPlace):  # the op writes over the input the plan names
            node = next(n for n in graph.nodes if n.outputs[0] is value)
            assert fn.names[node.inputs[placement.input]] in writes


def test_codegen_leaves_the_graph_it_reads_as_it_was(training_step):
    step = compiled_adam_step(training_step)
    fn, graph = step.latest.program.parts[0]
    before = structure(graph)
    emit_function(graph, "again", fn.plan)
    assert structure(graph) == before


def test_statements_say_which_module_made_them_and_returns_what_they_update(training_step):
    """Each statement's comment starts with its node's module call, as the graph's text form
    does; the step's return has a line per value, the new value of each parameter noted, and
    each stored .grad named after its parameter."""
    step = compiled_adam_step(training_step)
    fn, graph = step.latest.program.parts[0]
    code = step.code
    for node in graph.nodes:
        if node.scope is not None and node.op != FUSED:
            name = fn.names[node.outputs[0]]
            line = re.search(rf"^\s+{name} = .*$", code, re.M).group()
            assert f"  # {node.scope} " in line, line
    returned = code.split("    return (\n")[-1].split("    )")[0].splitlines()
    assert [line.strip().split(",")[0] for line in returned] == fn.returns
    notes = [line.split("  # ")[1] if "#" in line else "" for line in returned]
    updated = {fn.names[v]: f"new {name}" for name, v in graph.updates.items()}
    assert {n: note for n, note in zip(fn.returns, notes) if note.startswith("new ")} == updated
    assert {"new model.0.weight", "new opt.exp_avg_sq3"} <= set(notes)
    params = [name for name, _ in step.reached.modules["model"].named_parameters()]
    assert sorted(note for note in notes if note.endswith(".grad")) == sorted(
        f"model.{name}.grad" for name in params
    )


def test_kernel_parameters_are_named_after_the_values_passed_for_them(training_step):
    step = compiled_adam_step(training_step)
    fn, _ = step.latest.program.parts[0]
    kernels = {kernel.name: kernel for kernel in fn.kernels}
    assert kernels
    for node, kernel in fn.kernel_names.items():
        params = kernels[kernel].params[:-1]  # (then out=None)
        assert len(set(params)) == len(params)
        for value, param in zip(node.inputs, params, strict=True):
            # a value passed twice is a second parameter of its name and a suffix
            assert re.fullmatch(re.escape(fn.names[value]) + r"(_\d+)?", param)
    assert "model_0_bias" in step.code.split("def step(")[0]
