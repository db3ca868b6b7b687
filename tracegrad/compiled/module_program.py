"""A program with a generated forward and backward: what a compiled module, and a compiled
function that does not itself call ``backward()``, run. Its outputs carry gradients back, so
compiled pieces compose with eager code: ``loss.backward()`` on them runs the generated
backward and goes on into the eager history of whatever they read."""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tracegrad import passes, pytree, tape
from tracegrad.compiled import captures
from tracegrad.compiled.check import check_generated_module, check_stages, seeds_for
from tracegrad.compiled.explain import Report
from tracegrad.compiled.program import Program, generate
from tracegrad.compiled.signature import Signature
from tracegrad.compiled.traced import Traced
from tracegrad.compiled.users_line import at_users_line
from tracegrad.compiled.views import returned_in_own_memory, show_views, views_of
from tracegrad.ir.graph import Graph
from tracegrad.logs import log
from tracegrad.ops import OPS
from tracegrad.passes import autodiff
from tracegrad.passes.pipeline import BACKEND_CHOICES, transforms
from tracegrad.passes.recompute import Recomputation, choose, recompute
from tracegrad.tensor import Tensor, wrap


@dataclass
class ModuleProgram:
    """A module specialization: generated forward (and backward) plus how to call them."""

    program: Program
    traced: Traced
    wrt: list[int]  # graph-input positions that get gradients
    differentiable: list[int]  # output positions that take cotangents
    n_saved: int
    # () -> the readable forward and backward (``readable``), derived when first asked for
    derive_readable: Callable[[], tuple[Graph, Graph | None]]
    report: Report | None = None
    reads: list = field(default_factory=list)  # per output: input positions it depends on
    # The values saved for the backward live in planned memory, which the next forward
    # overwrites: the tape node of the last call, and the list its backward reads them from.
    pending: tuple | None = None
    # True for a call with this specialization's signature (generated from it)
    guard: Callable[[tuple], bool] = field(default=lambda args: False)
    structure: object = None  # of the arguments, when they came in containers or keywords
    # Outputs that require grad eagerly though passes left them no gradient to carry
    without_gradient: list = field(default_factory=list)
    # Differentiable outputs that require grad eagerly too: those the tape connects
    connected: list = field(default_factory=list)
    # (output position, update position, view ops): a saved value that is a tensor's new
    # value, or a view of it, is read from that tensor's memory, as eager autograd reads the
    # tensors it saved
    saved_updates: tuple = ()
    captured: tuple = ()  # captures.Capture of tensors read through names (a global mask)
    # Held while the generated code runs (forward, and the backward its outputs lead to):
    # the compiled module's or function's, so threads never share planned memory at once
    lock: object = field(default_factory=threading.RLock)
    signature: Signature = ()  # of the calls it serves

    def still_valid(self) -> bool:
        return captures.still_hold(self.traced.values_read, self.captured)

    def invalid_reason(self) -> str:
        return captures.what_changed(self.captured)

    def state(self) -> list[Tensor]:
        """The lifted tensors (parameters, buffers, captured tensors), exported as data."""
        return self.traced.lifted

    @functools.cached_property
    def readable(self) -> tuple[Graph, Graph | None]:
        """The forward and backward users read (``cm.graph``, ``cm.backward_graph``): made by
        the same passes and reverse mode, less the backend's layout choices."""
        return self.derive_readable()

    def views(self) -> list[tuple[str, Graph]]:
        """The graphs pictures show: optimized forward and backward, those generated (with the
        backend's layout choices and memory plan), and the traced forward."""
        forward, backward = self.readable
        views = [("forward (optimized)", forward)]
        if backward is not None:
            views.append(("backward (optimized)", backward))
        views += [(f"generated {fn.name}", graph) for fn, graph in self.program.parts]
        return [*views, ("forward (traced, before passes)", self.traced.graph)]


@dataclass
class Derived:
    """The forward (and backward) graphs a pipeline makes of a traced forward."""

    forward: Graph
    backward: Graph | None
    n_forward: int  # the forward's outputs before the values saved for the backward
    differentiable: list[int] = field(default_factory=list)  # outputs taking cotangents
    reached: list[int] = field(default_factory=list)  # positions in wrt that get gradients
    recomputed: list[str] = field(default_factory=list)  # forward values the backward remakes
    recomputation: Recomputation | None = None  # what a memory budget chose


# What explain() calls the program a module's memory budget is estimated on
JOINT = "joint forward and backward"


def derive(
    traced: Traced, wrt: list[int], names: list[str], stages: list, budget=None, recomputed=()
) -> Derived:
    """The passes ``names`` on the traced forward; then, with no input in ``wrt`` (graph-input
    positions) to differentiate, the passes again with custom functions inlined, else reverse
    mode, the passes on the joint graph and its split into a forward and a backward (the
    forward returns the results, its updates, then the values the backward reads). Each run
    of the passes appends its (stage, PassResults) to ``stages``. With a memory ``budget``
    (bytes), the backward recomputes the forward values ``choose`` picks on the joint graph
    (by name, ``recomputed``: those)."""
    forward_results: list = []
    graph = passes.run(traced.graph, names, forward_results)
    stages.append(("traced forward graph", forward_results))
    n_out, n_forward = traced.n_outputs, len(graph.outputs)
    if not wrt:
        forward = passes.run(autodiff.inline_custom(graph), names)
        return Derived(returned_in_own_memory(forward, n_out), None, n_forward)
    joint, seeds, differentiable, reached = autodiff.differentiate(
        graph, [graph.inputs[i].name for i in wrt], n_differentiable=n_out, zero_fill=False
    )
    joint_results: list = []
    joint = passes.run(joint, names, joint_results)
    stages.append(("joint forward + backward graph (after reverse mode)", joint_results))
    recomputation = None if budget is None else choose(joint, budget, pooled=False)
    if recomputation is not None:
        recomputed = recomputation.recomputed
    joint = recompute(joint, recomputed)
    changing = frozenset(traced.graph.updates)  # (inputs written after the forward)
    forward, backward, cheap = autodiff.split(joint, n_forward, seeds, changing, n_out)
    forward = returned_in_own_memory(forward, n_out)
    return Derived(forward, backward, n_forward, differentiable, reached, cheap, recomputation)


def build_module_program(
    traced: Traced,
    args,
    passes_spec,
    debug_nans: bool,
    report: Report,
    check: bool = False,
    memory_budget: int | None = None,
    threads: int = 1,
) -> ModuleProgram:
    """The forward and backward ``derive`` makes with the whole pipeline (and the memory
    budget), generated (checked against the traced graph with ``check=True``) for ``threads``
    threads; those it makes without the backend's layout choices are the readable graphs,
    derived when first asked for."""
    tensors = [a for a in args if isinstance(a, Tensor)] + traced.lifted
    wrt = [i for i, t in enumerate(tensors) if t.requires_grad] if tape.is_grad_enabled() else []
    derived = derive(traced, wrt, transforms(passes_spec), report.stages, memory_budget)
    readable_passes = transforms(passes_spec, without=BACKEND_CHOICES)
    chosen = derived.recomputation.recomputed if derived.recomputation is not None else ()
    readable = functools.partial(_readable, traced, wrt, readable_passes, chosen)
    if derived.recomputation is not None:
        report.recomputations[JOINT] = derived.recomputation
    if derived.backward is None:
        program = generate(
            [("forward", derived.forward)], "forward", debug_nans, passes_spec, report=report,
            threads=threads,
        )  # fmt: skip
        return ModuleProgram(program, traced, [], [], 0, readable)
    n_out, n_forward, forward = traced.n_outputs, derived.n_forward, derived.forward
    # outputs that require grad as eagerly: before passes drop a dependency (where(True, a, b))
    eager_outputs = _requiring_grad(traced.graph, n_out, set(wrt))
    wrt = [wrt[i] for i in derived.reached]  # as eagerly, unreached parameters keep grad None
    reads = _dependencies(traced.graph, n_out)  # before passes fuse outputs together
    report.saved = autodiff.saved_values(forward, derived.backward, n_forward)
    report.recomputed = derived.recomputed
    log("graph", lambda: f"forward graph\n{forward}\nbackward graph\n{derived.backward}")
    grads = [f"{traced.graph.inputs[i].name}.grad" for i in wrt]  # what the backward returns
    program = _generate_forward_and_backward(forward, derived.backward, n_forward, debug_nans,
                                             passes_spec, report, grads, threads)  # fmt: skip
    if check:
        _check_module(traced, tensors, wrt, n_out, report.stages, program)
    n_saved = len(forward.outputs) - n_forward
    differentiable = derived.differentiable
    spec = ModuleProgram(program, traced, wrt, differentiable, n_saved, readable, reads=reads)
    spec.without_gradient = [i for i in eager_outputs if i not in differentiable]
    spec.connected = [i for i in differentiable if i in eager_outputs]
    updates = {v: u for u, v in enumerate(forward.outputs[n_out:n_forward])}
    shapes = [v.type.shape for v in forward.outputs[n_out:n_forward]]
    saved_at = range(n_forward, len(forward.outputs))
    spec.saved_updates = views_of(forward, saved_at, updates, shapes)
    return spec


def _readable(traced: Traced, wrt: list[int], names: list[str], recomputed=()):
    derived = derive(traced, wrt, names, [], recomputed=recomputed)
    return derived.forward, derived.backward


def _generate_forward_and_backward(
    forward: Graph,
    backward: Graph,
    n_forward: int,
    debug_nans: bool,
    passes_spec,
    report,
    grads: list[str],
    threads: int = 1,
) -> Program:
    """The forward and backward generated in one module; ``grads`` say what the backward
    returns (``0.weight.grad``)."""
    parts = [("forward", forward), ("backward", backward)]
    # Saved values may live in planned memory (a training loop then allocates none), but not
    # the values the caller gets back, which must outlive the next call.
    returned = {v.name for v in forward.outputs[:n_forward]}
    saved = frozenset(v.name for v in forward.outputs[n_forward:]) - returned
    return generate(
        parts, "forward and backward", debug_nans, passes_spec, saved, report,
        notes={"backward": grads}, threads=threads,
    )  # fmt: skip


def run_module_program(spec: ModuleProgram, args):
    """Run a specialization's forward on ``args``: updated tensors are written back, and the
    outputs, rebuilt into what the function returned, carry gradients to the generated
    backward."""
    traced = spec.traced
    tensors = [a for a in args if isinstance(a, Tensor)] + traced.lifted
    _keep_pending_saved_values(spec)
    results = spec.program.call("forward", [t.array for t in tensors])
    targets = traced.update_targets + [args[i] for i in traced.updated_args]
    n_out, n_upd = traced.n_outputs, len(targets)
    for target, array in zip(targets, results[n_out : n_out + n_upd], strict=True):
        if array is not target.array:
            np.copyto(target.array, array)
        target.bump_version()
    results = list(results)
    if traced.views:  # (after the writes back: a view of an updated input shows its new value)
        show_views(results, [t.array for t in tensors], traced.views)
    outputs = [wrap(np.asarray(a)) for a in results[:n_out]]
    if spec.program.backward_graph is not None and spec.wrt:
        saved = list(results[n_out + n_upd :])
        updated = [t.array for t in targets]  # (saved views of them read their memory)
        show_views(saved, updated, [(k - n_out - n_upd, u, c) for k, u, c in spec.saved_updates])
        _connect_backward(spec, tensors, outputs, saved)
    for k, i, chain in traced.views:  # returned as it was given (a Dropout in eval mode): the
        if not chain:  # very tensor, a leaf gets its .grad itself
            outputs[k] = tensors[i]
    return pytree.unflatten(traced.structure, outputs)


def _requiring_grad(graph: Graph, n_out: int, wrt: set[int]) -> list[int]:
    """The first ``n_out`` outputs that eagerly require grad: they depend on an input in
    ``wrt`` through differentiable ops (not through stop_gradient, a comparison, or the
    value side of keep_gradient)."""
    position = {v: i for i, v in enumerate(graph.inputs)}
    producers = graph.producers()
    found = []
    for k, out in enumerate(graph.outputs[:n_out]):
        seen, stack = set(), [out]
        while stack:
            value = stack.pop()
            if value in seen:
                continue
            seen.add(value)
            if position.get(value) in wrt:
                found.append(k)
                break
            node = producers.get(value)
            op = OPS.get(node.op) if node is not None else None
            if node is None or (op is not None and not op.differentiable):
                continue
            stack.extend(node.inputs[1:] if node.op == "keep_gradient" else node.inputs)
    return found


def _dependencies(graph: Graph, n_out: int) -> list[set[int]]:
    """For each of the first ``n_out`` outputs, the positions of the graph inputs it reads."""
    position = {v: i for i, v in enumerate(graph.inputs)}
    return [
        {position[v] for v in graph.ancestors([out]) if v in position}
        for out in graph.outputs[:n_out]
    ]


def _check_module(traced: Traced, tensors, wrt, n_out, stages, program: Program) -> None:
    """check=True: every pass snapshot, differentiated, then the generated forward and
    backward, against the unoptimized program."""
    names = [traced.graph.inputs[i].name for i in wrt]

    def joint_of(graph):
        return autodiff.differentiate(graph, names, n_differentiable=n_out, zero_fill=False)[0]

    reference = joint_of(traced.graph)
    arrays = [t.array for t in tensors]
    arrays += seeds_for(reference, len(arrays))
    (forward_name, forward_results), (joint_name, joint_results) = stages[-2], stages[-1]
    forward_end = forward_results[-1].graph if forward_results else traced.graph
    check_stages(reference, [(forward_name, traced.graph, forward_results)], arrays, joint_of)
    check_stages(reference, [(joint_name, joint_of(forward_end), joint_results)], arrays)
    check_generated_module(reference, program, arrays, len(tensors), names)


def _connect_backward(spec: ModuleProgram, tensors, outputs, saved: list) -> None:
    """Give the outputs one tape node whose backward runs the generated backward function."""
    inputs = [tensors[i] for i in spec.wrt]
    node = tape.Node("CompiledBackward", inputs, None, n_outputs=len(outputs))
    for t in inputs:
        node.save("input", t)

    def backward(grads):
        with spec.lock:
            try:
                return _run_backward(spec, outputs, saved, grads)
            except Exception as exc:
                at_users_line(exc)

    node.backward_fn = backward
    for i in spec.connected:  # (what passes joined to a differentiable value stays apart)
        outputs[i].grad_fn, outputs[i]._out_index, outputs[i]._requires_grad = node, i, True
    if spec.without_gradient:  # (a node sending nothing on: no leaf takes their gradient)
        none = tape.Node("CompiledBackward", [], lambda grads: [], n_outputs=len(outputs))
        for i in spec.without_gradient:
            outputs[i].grad_fn, outputs[i]._out_index, outputs[i]._requires_grad = none, i, True
    spec.pending = (weakref.ref(node), saved)


def _run_backward(spec: ModuleProgram, outputs, saved: list, grads) -> list:
    """The generated backward on the saved values and the outputs' gradients."""
    if tape.is_grad_enabled():
        raise RuntimeError(
            "create_graph=True through a compiled module is not supported; differentiate "
            "twice with tg.grad(tg.grad(f)), which compiles higher-order gradients"
        )
    seeds = [
        grads[i].array if grads[i] is not None else np.zeros(outputs[i].shape, outputs[i].dtype.np)
        for i in spec.differentiable
    ]
    arrays = [*saved, *seeds]
    results = spec.program.call("backward", arrays)
    # As in eager mode, an input no output with a gradient depends on gets None.
    live = set().union(*(spec.reads[j] for j, g in enumerate(grads) if g is not None))
    return _wrap_gradients(results, [k in live for k in spec.wrt], arrays, spec.program)


def _keep_pending_saved_values(spec: ModuleProgram) -> None:
    """Before a forward overwrites the planned memory of the saved values: if the last call's
    backward may still run (its graph is alive and was not freed by a backward, as when two
    forwards precede one backward), its saved values move to memory of their own."""
    if spec.pending is None:
        return
    node, saved = spec.pending[0](), spec.pending[1]
    if node is not None and not node.freed:
        saved[:] = [np.array(a, copy=True) for a in saved]
    spec.pending = None


def _wrap_gradients(results, wanted, arrays, program) -> list:
    """The backward's results as tensors (None where not wanted). A result that is fresh
    memory, or a view of all of it (a transposed product, a reshaped sum), and not an input,
    a constant, planned memory or memory of another result, is marked unshared, so
    accumulating it into a .grad takes it without a copy."""
    taken = {id(a) for a in arrays}
    grads = []
    for result, want in zip(results, wanted, strict=True):
        result = np.asarray(result)
        grad = wrap(result) if want else None
        memory = result if result.base is None else result.base
        whole = memory.base is None and memory.size == result.size
        ours = id(memory) in program.buffer_ids or id(memory) in program.constant_ids
        if grad is not None and whole and id(memory) not in taken and not ours:
            tape.mark_unshared(grad)
        taken.add(id(memory))
        grads.append(grad)
    return grads
