"""``tg.compile(..., check=True)``: run every stage of compilation on the first call's inputs and
name the first stage that computes something else than the unoptimized program: a pass (its
graph, interpreted), or the memory plan and code generation (the generated code, run)."""

from __future__ import annotations

import numpy as np

from tracegrad.ir.core import CUSTOM
from tracegrad.ir.graph import Graph
from tracegrad.ir.interpreter import interpret
from tracegrad.random import generator


class CheckError(RuntimeError):
    """An optimization pass changed what the program computes."""


def _tolerance(graph: Graph) -> float:
    single = any(v.type.dtype.name == "float32" for v in graph.outputs)
    return 1e-4 if single else 1e-9


def _run(graph: Graph, arrays, values: dict | None = None) -> list[np.ndarray]:
    """Interpret with the random generator reset, so random draws agree between runs."""
    rng = generator()
    state = rng.bit_generator.state
    try:
        return [np.asarray(a) for a in interpret(graph, *arrays, values=values)]
    finally:
        rng.bit_generator.state = state


def first_changed_node(before: Graph, after: Graph, arrays) -> str | None:
    """The first node of ``after`` whose value differs from the same-named value of ``before``
    (names survive passes for nodes they keep)."""
    if any(n.op == CUSTOM for g in (before, after) for n in g.nodes):
        return None
    old: dict[str, np.ndarray] = {}
    new: dict[str, np.ndarray] = {}
    _run(before, arrays, old)
    _run(after, arrays, new)
    tol = _tolerance(after)
    for node in after.nodes:
        for v in node.outputs:
            a, b = new.get(v.name), old.get(v.name)
            if a is None or b is None or a.shape != b.shape:
                continue
            if not np.allclose(a, b, rtol=tol, atol=tol, equal_nan=True):
                loc = (
                    f" at {node.location.filename}:{node.location.lineno}" if node.location else ""
                )
                return f"%{v.name} = {node.op}{loc}"
    return None


def first_difference(graph: Graph, got, want, labels=None) -> str | None:
    """A description of the first output of ``graph`` whose value differs, else None;
    ``labels`` name the outputs (their positions otherwise)."""
    producers = graph.producers()
    tol = _tolerance(graph)
    for index, (value, a, b) in enumerate(zip(graph.outputs, got, want, strict=True)):
        # Where the unoptimized program gives inf or nan, a stability rewrite may give the
        # right finite value instead: only finite reference values must be kept.
        finite = np.isfinite(b) if a.shape == b.shape else None
        if finite is not None and np.allclose(a[finite], b[finite], rtol=tol, atol=tol):
            continue
        node = producers.get(value)
        where = ""
        if node is not None:
            loc = node.location
            at = f" at {loc.filename}:{loc.lineno}" if loc else ""
            where = f" (node %{value.name} = {node.op}{at})"
        worst = np.max(np.abs(a - b)) if a.shape == b.shape else f"shape {a.shape} vs {b.shape}"
        label = f"output {index}" if labels is None else f"output {index}, {labels[index]},"
        return f"{label}{where} differs by {worst}"
    return None


def check_stages(reference: Graph, stages, arrays, differentiate=None) -> None:
    """Compare each snapshot against ``reference`` on ``arrays``.

    ``stages`` is a list of (stage name, graph the stage started from, [PassResult, ...]); a
    snapshot is first turned into the comparable program by ``differentiate(graph)`` when given
    (forward-only stages)."""
    want = _run(reference, arrays)
    for stage, before, results in stages:
        for result in results:
            graph = result.graph if differentiate is None else differentiate(result.graph)
            problem = first_difference(graph, _run(graph, arrays), want)
            if problem:
                node = first_changed_node(before, result.graph, arrays[: len(before.inputs)])
                culprit = f"; first changed node: {node}" if node else ""
                raise CheckError(
                    f"check=True: pass {result.name!r} ({stage}) changed the result: "
                    f"{problem}{culprit}"
                )
            before = result.graph


def check_generated(reference: Graph, run, arrays, what: str, labels=None) -> None:
    """Run the generated code, ``run(arrays)``, on copies of ``arrays`` (it updates state in
    place) and compare what it returns with the unoptimized ``reference`` interpreted on
    ``arrays``: the memory plan and code generation are checked as the passes are."""
    want = _run(reference, arrays)
    rng = generator()
    state = rng.bit_generator.state  # (random draws as in the reference run)
    try:
        got = [np.asarray(a) for a in run([np.array(a, copy=True) for a in arrays])]
    finally:
        rng.bit_generator.state = state
    problem = first_difference(reference, got, want, labels)
    if problem:
        raise CheckError(
            f"check=True: memory plan / generated code ({what}) computes something else than "
            f"the unoptimized program: {problem}"
        )


def check_generated_module(reference: Graph, program, arrays, n_inputs: int, wrt) -> None:
    """``check_generated`` for a compiled module: its generated forward on the first
    ``n_inputs`` arrays, then its backward on the values saved and the cotangents (the rest),
    against the joint ``reference`` (forward outputs, then gradients of the inputs ``wrt``)."""
    n_forward = len(reference.outputs) - len(wrt)

    def run(copies):
        forward = program.call("forward", copies[:n_inputs])
        outputs = [np.array(a, copy=True) for a in forward]  # (out of planned memory)
        seeds = copies[n_inputs:]
        return outputs[:n_forward] + list(program.call("backward", outputs[n_forward:] + seeds))

    labels = [f"forward output {i}" for i in range(n_forward)]
    labels += [f"gradient of {name}" for name in wrt]
    check_generated(reference, run, arrays, "forward and backward", labels)


def step_labels(graph: Graph, n_results: int) -> list[str]:
    """Names of a whole step's outputs: the values it returns, new values of the state it
    updates, then the values it stores (.grad of tensors, optimizer state)."""
    updated = {v: name for name, v in graph.updates.items()}
    return [
        f"returned value {i}"
        if i < n_results
        else f"new value of {updated[v]}"
        if v in updated
        else "a stored .grad or optimizer state"
        for i, v in enumerate(graph.outputs)
    ]


def seeds_for(graph: Graph, n_inputs: int) -> list[np.ndarray]:
    """Deterministic cotangents for the inputs of ``graph`` after its first ``n_inputs``."""
    rng = np.random.default_rng(0)
    return [
        rng.standard_normal(v.type.shape).astype(v.type.dtype.np) for v in graph.inputs[n_inputs:]
    ]
