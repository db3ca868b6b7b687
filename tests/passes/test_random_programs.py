"""Random programs through every pass: optimized == unoptimized, forward and backward.

Hypothesis writes small tracegrad programs (``pass_programs.py``: elementwise ops with
broadcasting, reductions, views, matmul, softmax, and patterns the rewrite rules know) and
traces them. For each program:

(a) every registered pass alone, and each step of the default pipeline, computes what the
    unoptimized graph computes under the NumPy interpreter (float64; 1e-12 for passes that do
    no arithmetic of their own, 1e-10 where rewrites may change rounding);
(b) the same on the joint forward+backward graph from ``autodiff.differentiate``, and along
    the way ``tg.compile`` takes (optimize, differentiate, optimize);
(c) ``lint()`` passes after every pass (inside ``tg.compile`` too: tests/conftest.py lints
    every pass in every test);
(d) running a pass twice gives what running it once gave (text, and memory-plan annotations),
    and a new memory plan replaces an old one;
(e) ``tg.passes.run`` leaves its input as it was (text, structure and annotations);
(f) the generated code (memory plan included), from ``tg.compile``, equals the eager run and
    the interpreter, for the forward and for a whole step that calls ``backward()``.

The examples are derandomized: every run checks the same programs. CI runs 200 per test; set
``TRACEGRAD_PASSES_EXAMPLES`` to run fewer locally.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from pass_programs import programs

import tracegrad as tg
from tracegrad.ir.graph import structure
from tracegrad.ir.interpreter import interpret
from tracegrad.passes import DEFAULT_PIPELINE, PASSES
from tracegrad.passes.autodiff import differentiate
from tracegrad.passes.memory import plan_memory
from tracegrad.passes.pipeline import transforms

EXAMPLES = int(os.environ.get("TRACEGRAD_PASSES_EXAMPLES", "200"))
random_programs = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Passes that only remove, merge, evaluate or annotate nodes: their results are the
# unoptimized ones to the last bit but for constant folding's own evaluation.
EXACT = {"fold", "cse", "dce", "memory", "inline_custom"}
TIGHT, LOOSE = 1e-12, 1e-10


def pass_names() -> list[str]:
    """Every registered pass (tests register temporary ones named test_*)."""
    return sorted(name for name in PASSES if not name.startswith("test_"))


def tolerance(name: str) -> float:
    return TIGHT if name in EXACT else LOOSE


def assert_agree(got, want, rtol: float, what: str) -> None:
    """Same number, shapes and dtypes of outputs, values within ``rtol`` (and an absolute
    ``rtol`` scaled to the largest value, for entries that cancel to ~0)."""
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"{what}: output {i} has shape {a.shape}, expected {b.shape}"
        assert a.dtype == b.dtype, f"{what}: output {i} has dtype {a.dtype}, expected {b.dtype}"
        scale = max(1.0, float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0)))
        np.testing.assert_allclose(
            a, b, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=f"{what}: output {i}"
        )


def annotations(graph) -> tuple:
    """What the memory plan of ``graph`` decides (by value name)."""
    plan = plan_memory(graph)
    placed = tuple((value.name, placement) for value, placement in plan.placements.items())
    return placed, tuple(plan.buffers)


def check_passes(graph, arrays, what: str) -> None:
    """(a), (c), (d), (e) for every pass alone and for each step of the default pipeline."""
    text, shape, plan = str(graph), structure(graph), annotations(graph)

    def unchanged() -> bool:
        return str(graph) == text and structure(graph) == shape and annotations(graph) == plan

    want = interpret(graph, *arrays)
    for name in pass_names():
        once = tg.passes.run(graph, [name])
        once.lint()
        assert_agree(interpret(once, *arrays), want, tolerance(name), f"{what}, pass {name}")
        twice = tg.passes.run(once, [name])
        assert str(twice) == str(once), f"{what}: pass {name} is not idempotent"
        assert annotations(twice) == annotations(once), f"{what}: {name} plans differently"
        replanned = tg.passes.run(graph, ["memory", name, "memory"])
        planned = tg.passes.run(graph, [name, "memory"])
        assert annotations(replanned) == annotations(planned), f"{what}: stale plan after {name}"
        assert unchanged(), f"{what}: tg.passes.run(graph, [{name!r}]) changed its input"
    report = []
    optimized = tg.passes.run(graph, "default", report)
    assert [r.name for r in report] == DEFAULT_PIPELINE
    for step in report:
        step.graph.lint()
        got = interpret(step.graph, *arrays)
        assert_agree(got, want, LOOSE, f"{what}, default pipeline up to {step.name}")
    assert str(optimized) == str(report[-1].graph)
    assert unchanged(), f"{what}: tg.passes.run(graph, 'default') changed its input"


@random_programs
@given(programs())
def test_passes_keep_the_values_of_random_programs(program):
    check_passes(program.graph(), program.free_arrays(), "forward")


def cotangents(joint, n_inputs: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-1.0, 1.0, v.type.shape) for v in joint.inputs[n_inputs:]]


@random_programs
@given(programs())
def test_passes_keep_the_gradients_of_random_programs(program):
    graph, arrays = program.graph(), program.free_arrays()
    wrt = [v.name for v in graph.inputs]
    joint, _, positions = differentiate(graph, wrt)
    assert len(joint.outputs) == len(graph.outputs) + len(wrt)
    joint_arrays = arrays + cotangents(joint, len(arrays))
    check_passes(joint, joint_arrays, "joint forward+backward")
    # The way tg.compile goes: optimize the forward, differentiate, optimize the joint graph.
    forward = tg.passes.run(graph, transforms("default"))
    compiled_joint, _, compiled_positions = differentiate(forward, wrt)
    assert compiled_positions == positions
    compiled_joint = tg.passes.run(compiled_joint, "default")
    compiled_joint.lint()
    want = interpret(joint, *joint_arrays)
    got = interpret(compiled_joint, *joint_arrays)
    assert_agree(got, want, LOOSE, "optimize, differentiate, optimize")


def as_tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def numpy(tensors) -> list[np.ndarray]:
    return [t.detach().numpy() for t in tensors]


@random_programs
@given(programs(bind_inputs=False))
def test_generated_code_equals_the_interpreter_on_random_programs(program):
    want = interpret(program.traced(), *program.arrays)
    eager = numpy(as_tuple(program.fn(*program.tensors())))
    assert_agree(eager, want, TIGHT, "eager vs interpreter")
    for passes, rtol in [("default", LOOSE), (None, TIGHT)]:
        compiled = tg.compile(program.fn, passes=passes)
        first = as_tuple(compiled(*program.tensors()))
        assert_agree(numpy(first), want, rtol, f"generated code (passes={passes})")
        again = as_tuple(compiled(*program.tensors()))  # reuses the planned buffers
        assert_agree(numpy(again), want, rtol, f"generated code (passes={passes}), again")
        assert_agree(numpy(first), want, rtol, f"first results after a second call ({passes})")


@random_programs
@given(programs(bind_inputs=False))
def test_generated_training_step_equals_eager_on_random_programs(program):
    """A whole step (forward, backward into .grad) through the memory plan and codegen."""
    rng = np.random.default_rng(2)
    weights = [
        tg.tensor(rng.uniform(-1.0, 1.0, o.shape)) for o in as_tuple(program.fn(*program.tensors()))
    ]

    def step(*xs):
        loss = sum((o * w).sum() for o, w in zip(as_tuple(program.fn(*xs)), weights, strict=True))
        loss.backward()
        return loss

    eager_inputs = program.tensors(requires_grad=True)
    eager_loss = step(*eager_inputs)
    compiled = tg.compile(step)
    for call in range(2):
        inputs = program.tensors(requires_grad=True)
        loss = compiled(*inputs)
        assert_agree(numpy([loss]), numpy([eager_loss]), LOOSE, f"step loss, call {call}")
        for i, (x, e) in enumerate(zip(inputs, eager_inputs, strict=True)):
            assert (x.grad is None) == (e.grad is None), f"input {i}: .grad presence, call {call}"
            if e.grad is not None:
                assert_agree(numpy([x.grad]), numpy([e.grad]), LOOSE, f"x{i}.grad, call {call}")
