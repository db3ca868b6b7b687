"""A compiled function's specialization, and tracing one call of the function into it.

A function that calls ``backward()`` (or steps an optimizer) is a whole training step, traced
with the tape recording, so ``loss.backward()`` runs the backward engine on symbolic tensors
(each op's VJP rule emitting backward nodes) and ``opt.step()`` traces the optimizer's tensor
ops, into ONE generated function. Everything the step changes is state, never a baked-in
constant: parameters and optimizer buffers updated in place become ``updates`` written back
into the same arrays; new ``.grad`` tensors and new optimizer state become extra outputs that
sinks (tracegrad.codegen.buffers) store after each run. Any other function is traced like a module:
a forward and a generated backward (tracegrad.compiled.module_program).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from tracegrad import passes, pytree, tape
from tracegrad.codegen.buffers import Sink
from tracegrad.codegen.guards import GuardBuilder
from tracegrad.codegen.runner import MISS
from tracegrad.compiled import captures
from tracegrad.compiled.check import check_generated, check_stages, step_labels
from tracegrad.compiled.explain import Report
from tracegrad.compiled.module_program import ModuleProgram, build_module_program
from tracegrad.compiled.program import Program, generate
from tracegrad.compiled.side_effects import (
    group_settings,
    refuse_changed_groups,
    refuse_escaped_tensors,
)
from tracegrad.compiled.signature import Signature
from tracegrad.compiled.traced import argument_names, trace_call, traced_updates, values_read
from tracegrad.compiled.views import eager_views, returned_in_own_memory
from tracegrad.errors import TraceError
from tracegrad.ir.graph import Graph
from tracegrad.logs import log, timed
from tracegrad.passes.memory import MemoryPlan
from tracegrad.passes.pipeline import BACKEND_CHOICES, transforms
from tracegrad.passes.recompute import recompute
from tracegrad.tensor import Tensor, is_symbolic
from tracegrad.tracer import Tracer, tracing


@dataclass
class StepProgram:
    """A compiled function's specialization: its program, the state it reads and writes, and
    the runner calling it (see tracegrad.compiled.function)."""

    program: Program
    # () -> the readable step graph (``readable``), derived when first asked for
    derive_readable: Callable[[], Graph] | None
    signature: Signature
    lifted: list[Tensor]
    update_targets: list[Tensor]
    sinks: list[Sink]
    n_results: int
    # pytree.unflatten bound to a structure: turns the result tensors back into what the
    # function returned
    rebuild: functools.partial
    # Lifted positions holding a tensor's .grad: index -> that tensor. The .grad is read
    # anew each run, since code outside the step may replace it (zero_grad, backward).
    grad_of: dict = field(default_factory=dict)
    report: Report | None = None
    tensor_args: tuple[int, ...] = ()  # positions of the arguments that are tensors
    # Positions of the tensor arguments the function updated in place: their new values
    # follow those of update_targets among the step's results
    updated_args: tuple[int, ...] = ()
    # Positions among those updates the step writes in place: it returns their own arrays
    updated_in_place: frozenset[int] = frozenset()
    # run(args, trusted=False): MISS unless the call has this specialization's signature
    # (its guards, generated from it, are skipped when trusted), else the step's result
    runner: Callable = field(default=lambda args, trusted=False: MISS)
    guards: GuardBuilder | None = None  # the runner's guards
    # For a function that calls no backward(): its program with a generated backward, which
    # its outputs carry gradients to
    module: ModuleProgram | None = None
    values_read: tuple = ()  # (tensor, version) of outside tensors whose value Python read
    captured: tuple = ()  # captures.Capture of the tensors it reads through names and items
    arg_grads: tuple[int, ...] = ()  # tensor arguments whose .grad is an input (accumulated)
    # Returned values that are views of an input's memory (eager_views)
    returned_views: tuple = ()
    # Tensors, then argument positions, whose .grad each run drops before storing its own
    grads_replaced: tuple[Tensor, ...] = ()
    arg_grads_replaced: tuple[int, ...] = ()

    def still_valid(self) -> bool:
        return captures.still_hold(self.values_read, self.captured)

    def invalid_reason(self) -> str:
        return captures.what_changed(self.captured)

    @functools.cached_property
    def guard(self) -> Callable[[tuple], bool]:
        """The runner's guards alone, as a function: True for a call the runner runs."""
        assert self.guards is not None and self.report is not None  # (set once it is built)
        return self.guards.build(self.report.title)

    def state(self) -> list[Tensor]:
        """The lifted tensors as they are now: a replaced .grad is the one read."""
        lifted = list(self.lifted)
        for index, owner in self.grad_of.items():
            lifted[index] = owner.grad
        return lifted

    @functools.cached_property
    def readable(self) -> tuple[Graph, Graph | None]:
        """The graph users read (``cm.graph``; a whole step has no backward graph of its own):
        made by the same passes, less the backend's layout choices (those of the module
        program, for a function calling no backward())."""
        if self.module is not None:
            return self.module.readable
        assert self.derive_readable is not None  # (None only beside a module program)
        return self.derive_readable(), None

    def views(self) -> list[tuple[str, Graph]]:
        """The graphs pictures show (those of the module program, for a function calling no
        backward()): optimized, generated (with the backend's layout choices and memory plan),
        and traced."""
        if self.module is not None:
            return self.module.views()
        assert self.report is not None and self.report.unplanned_traced is not None
        return [
            ("training step (optimized)", self.readable[0]),
            ("generated training step", self.program.parts[0][1]),
            ("training step (traced, before passes)", self.report.unplanned_traced),
        ]


@dataclass
class _TracedStep:
    """One call of a training step, traced: its graph returns the function's results, then
    the new values of the tensors it updated in place, then the values its sinks store."""

    graph: Graph
    tracer: Tracer
    n_results: int
    structure: object  # of what the function returned (tracegrad.pytree)
    targets: list[Tensor]  # lifted tensors updated in place
    updated_args: tuple[int, ...]  # tensor arguments updated in place
    updated: list[str]  # the inputs updated in place, by name (graph.updates' keys)
    sinks: list[Sink]
    arg_grads: tuple[int, ...]  # tensor arguments whose .grad is an input
    grads_replaced: list[Tensor]  # tensors whose .grad each run replaces (_replaced_grads)
    arg_grads_replaced: tuple[int, ...]  # tensor arguments whose .grad each run replaces


def trace_step(compiled, args, signature) -> StepProgram:
    """Trace one call of a training step and generate its single function (the state it
    reaches is the one ``compiled.reached`` took in for this call); a function calling no
    backward() gets a forward and backward instead (``trace_function``)."""
    reached = compiled.reached
    names = reached.names()
    # (its watched modules' parameters and every tensor it reached or read before)
    grads_before = {id(t): (t, t.grad) for _, t in reached.state_tensors().values()}
    groups_before = group_settings(reached.optimizers().values())
    traced = _trace_call(compiled, args, names)
    refuse_changed_groups(groups_before + traced.tracer.groups_read)
    refuse_escaped_tensors(compiled.fn, args)
    tracer = traced.tracer
    python_reads = values_read(tracer)
    if not (tracer.backward_calls or tracer.optimizers):
        return trace_function(compiled, args, signature, names)
    _refuse_outside_history(tracer)
    program, report = _generate_step(compiled, traced, signature, args)
    recomputation = report.recomputations.get("step")
    readable = functools.partial(
        _readable_step, traced.graph, traced.n_results, len(traced.updated), compiled.passes,
        recomputation.recomputed if recomputation is not None else (),
    )  # fmt: skip
    lifted = [t for t, _ in tracer.lifted.values()]
    # Tensors that require grad and were read, however the function reached them: their
    # .grad (present or not) decides what the program computes, so it is guarded.
    for t, value in tracer.lifted.values():
        if t.requires_grad:
            reached.watch_tensor(value.name, t)
    reached.note_stepped(tracer.optimizers)
    reached.note_called(tracer.modules_called)
    reached.note_grads_read(tracer.grads_seen)
    owners = {id(grad): t for t, grad in grads_before.values() if grad is not None}
    n = traced.n_results
    return StepProgram(
        program,
        readable,
        signature,
        lifted,
        traced.targets,
        traced.sinks,
        n,
        functools.partial(pytree.unflatten, traced.structure),
        {i: owners[id(t)] for i, t in enumerate(lifted) if id(t) in owners},
        report,
        tuple(i for i, a in enumerate(args) if isinstance(a, Tensor)),
        traced.updated_args,
        _written_in_place(program.graph, program.parts[0][0].plan, n, traced.updated),
        values_read=python_reads,
        captured=_captures(compiled, lifted),
        arg_grads=traced.arg_grads,
        returned_views=eager_views(traced.graph, n),
        grads_replaced=tuple(traced.grads_replaced),
        arg_grads_replaced=traced.arg_grads_replaced,
    )


@timed("trace")
def _trace_call(compiled, args, names: dict[int, str]) -> _TracedStep:
    """Run the function on symbolic tensors with the tape recording (backward() and
    optimizer steps are traced too)."""
    tracer = Tracer(mode="inline", names=names)
    arg_names = compiled.arg_names or argument_names(compiled.fn, len(args))
    with tracing(tracer), tape.enable_grad():
        symbolic = [
            tracer.add_input(
                a.tensor_type,
                name,
                requires_grad=a.requires_grad or (i in compiled.grad_argnums),
            )
            if isinstance(a, Tensor)
            else a
            for i, (a, name) in enumerate(zip(args, arg_names, strict=True))
        ]
        arg_grads = _trace_argument_grads(tracer, args, symbolic, arg_names)
        with tracer.watch_grads():
            leaves, structure = pytree.flatten(compiled.fn(*symbolic))
        results = [tracer.value_of(t) for t in leaves]
        targets, updated_args, new_values, updates = traced_updates(tracer, symbolic)
        sinks, sink_values = _collect_sinks(tracer, symbolic, args)
        graph = tracer.graph(results + new_values + sink_values, updates)
        replaced = _replaced_grads(tracer, symbolic, sinks)
    return _TracedStep(
        graph, tracer, len(results), structure, targets, updated_args, list(updates), sinks,
        arg_grads, *replaced,
    )  # fmt: skip


def _replaced_grads(
    tracer: Tracer, symbolic, sinks: list[Sink]
) -> tuple[list[Tensor], tuple[int, ...]]:
    """The tensors made before the call, then the argument positions, whose .grad the
    function replaced (zero_grad() dropping it, backward() storing a new one): each run drops
    the .grad they hold first, as the function does, so a .grad the user kept from an earlier
    call keeps its values and a .grad the function left None is None. Those whose new .grad
    a sink stores are left to it instead (``Sink.replaces``)."""
    position = {id(s): i for i, s in enumerate(symbolic) if isinstance(s, Tensor)}
    written = [(t, before) for t, before in tracer.grads_written.values() if t._grad is not before]
    # (made before it: a parameter the update wrote holds a traced value by now)
    state = [t for t, _ in written if id(t) not in position and t._serial < tracer.start]
    stored = {id(s.owner): s for s in sinks if s.kind == "grad" and s.argument is None}
    for t in state:
        if id(t) in stored:
            stored[id(t)].replaces = True
    dropped = [t for t in state if id(t) not in stored]
    return dropped, tuple(position[id(t)] for t, _ in written if id(t) in position)


def _generate_step(compiled, traced: _TracedStep, signature, args) -> tuple[Program, Report]:
    """The passes, then the step's one generated function (checked against the traced graph
    with ``check=True``), and the report of what they did."""
    log("graph", lambda: f"traced step: {len(traced.graph.nodes)} nodes\n{traced.graph}")
    report = Report(f"compiled step {getattr(compiled.fn, '__name__', '')}", signature)
    pass_results: list = []
    n, n_updated = traced.n_results, len(traced.updated)
    graph = _optimized_step(traced.graph, n, n_updated, transforms(compiled.passes), pass_results)
    report.unplanned_traced = traced.graph
    report.stages.append((_STAGE, pass_results))
    persistent = frozenset(v.name for v in graph.outputs[n:])
    notes = [""] * (n + n_updated) + _stored_notes(traced)
    program = generate(
        [("step", graph)], "training step", compiled.debug_nans, compiled.passes, persistent,
        report=report, memory_budget=compiled.memory_budget, notes={"step": notes},
        threads=compiled.threads,
    )  # fmt: skip
    if compiled.check:
        _check_step(traced, program, pass_results, args)
    return program, report


def _stored_notes(traced: _TracedStep) -> list[str]:
    """What each value a sink stores is, for the step's return: ``model.0.weight.grad``,
    ``opt state exp_avg of model.0.weight``."""
    names = traced.tracer.names
    owners = {
        id(state): (names.get(id(opt), "optimizer"), p)
        for opt in traced.tracer.optimizers
        for p, state in opt.state.items()
    }
    notes = []
    for sink in traced.sinks:
        if sink.kind == "grad":
            owner = sink.owner
            label = f"argument {sink.argument}" if sink.argument is not None else None
            notes.append(f"{label or names.get(id(owner), 'a tensor')}.grad")
        else:
            opt, param = owners.get(id(sink.owner), ("optimizer", None))
            of = names.get(id(param), "a parameter")
            notes.append(f"{opt} state {sink.key} of {of}")
    return notes


def _optimized_step(traced: Graph, n: int, n_updated: int, names: list[str], results: list):
    """The passes ``names`` on a traced step returning ``n`` results then ``n_updated`` new
    values of its inputs; the values it returns and stores (.grad, optimizer state, after
    those) in memory of their own. Each pass appends its PassResult to ``results``."""
    graph = passes.run(traced, names, results)
    stored = range(n + n_updated, len(graph.outputs))
    return returned_in_own_memory(graph, n, stored)


def _readable_step(traced: Graph, n: int, n_updated: int, passes_spec, recomputed=()) -> Graph:
    """The step as ``cm.graph`` shows it: its passes less the backend's layout choices,
    with the forward values a memory budget recomputes (by name) recomputed."""
    names = transforms(passes_spec, without=BACKEND_CHOICES)
    return recompute(_optimized_step(traced, n, n_updated, names, []), recomputed)


_STAGE = "traced step (forward, backward and update)"


def _check_step(traced: _TracedStep, program: Program, pass_results, args) -> None:
    """check=True: every pass snapshot, then the generated step, against the traced graph."""
    arrays = [a.array for a in args if isinstance(a, Tensor)]
    arrays += [args[i].grad.array for i in traced.arg_grads]
    arrays += [t.array for t, _ in traced.tracer.lifted.values()]
    check_stages(traced.graph, [(_STAGE, traced.graph, pass_results)], arrays)
    run = functools.partial(program.call, "step")
    labels = step_labels(traced.graph, traced.n_results)
    check_generated(traced.graph, run, arrays, "training step", labels)


def _trace_argument_grads(tracer: Tracer, args, symbolic, arg_names) -> tuple[int, ...]:
    """Tensor arguments requiring grad that have a .grad: it is an input (after the
    arguments), which backward() accumulates into, as eagerly. Their positions."""
    positions = tuple(
        i
        for i, a in enumerate(args)
        if isinstance(a, Tensor) and a.requires_grad and a.grad is not None
    )
    for i in positions:
        symbolic[i].grad = tracer.add_input(args[i].grad.tensor_type, f"{arg_names[i]}.grad")
    return positions


def _refuse_outside_history(tracer: Tracer) -> None:
    """A step whose backward() would run into autograd history recorded outside it (a loss
    computed before the call) cannot be compiled: that history is not part of the program."""
    outside = [value.name for t, value in tracer.lifted.values() if t.grad_fn is not None]
    if outside:
        raise TraceError(
            f"the training step reads {', '.join(outside)}, computed outside it with autograd "
            "history; backward() inside a compiled step cannot run into that history: compute "
            "them inside the step, pass them detached, or compile the part without backward()"
        )


def trace_function(compiled, args, signature, names) -> StepProgram:
    """Trace a function that calls no backward(): a forward and a generated backward, so that
    its outputs carry gradients to the inputs and state it read, as in eager mode."""
    arg_names = compiled.arg_names or argument_names(compiled.fn, len(args))
    traced = trace_call(compiled.fn, args, names, arg_names)
    title = f"compiled function {getattr(compiled.fn, '__name__', '')}"
    report = Report(title, signature)
    report.unplanned_traced = traced.graph
    module = build_module_program(
        traced, args, compiled.passes, compiled.debug_nans, report, compiled.check,
        compiled.memory_budget, compiled.threads,
    )  # fmt: skip
    module.report, module.lock = report, compiled._lock
    for t, value in zip(traced.lifted, traced.graph.inputs[-len(traced.lifted) :], strict=False):
        if t.requires_grad:
            compiled.reached.watch_tensor(value.name, t)
    compiled.reached.note_called(traced.modules_called)
    return StepProgram(
        module.program,
        None,  # (its module program derives them)
        signature,
        traced.lifted,
        traced.update_targets,
        [],
        traced.n_outputs,
        functools.partial(pytree.unflatten, traced.structure),
        report=report,
        tensor_args=tuple(i for i, a in enumerate(args) if isinstance(a, Tensor)),
        updated_args=traced.updated_args,
        module=module,
        values_read=traced.values_read,
        captured=_captures(compiled, traced.lifted),
    )


def _captures(compiled, lifted: list[Tensor]) -> tuple:
    """Where the function finds the lifted tensors that are not state it guards already
    (parameters and buffers of the modules it reaches, tensors bound to its names, optimizer
    state, .grad)."""
    owned = compiled.reached.owned(lifted)
    return tuple(captures.find(compiled.reached.fn, lifted, owned))


def _written_in_place(
    graph: Graph, plan: MemoryPlan, first: int, targets: list[str]
) -> frozenset[int]:
    """Positions of the updates (the outputs from ``first`` on, of the inputs named
    ``targets``) that are their own input's memory, whole: written in place over it, whose
    array the step then returns (an op's out= form returns ``out``)."""
    inputs = {v.name: v for v in graph.inputs}
    updates = zip(targets, graph.outputs[first:], strict=False)
    return frozenset(i for i, (name, v) in enumerate(updates) if plan.is_whole(v, inputs[name]))


def _collect_sinks(tracer: Tracer, symbolic, args) -> tuple[list[Sink], list]:
    """Traced values left in persistent places: ``.grad`` of lifted tensors and arguments,
    and optimizer state entries."""
    sinks, values = [], []
    owners: list[tuple[Tensor, Tensor, int | None]] = [
        (t, t, None) for t, _ in tracer.lifted.values()
    ]
    owners += [(s, a, i) for i, (s, a) in enumerate(zip(symbolic, args)) if isinstance(a, Tensor)]
    for traced, real, position in owners:
        if traced.grad is not None and (
            is_symbolic(traced.grad) or not tracer.preexisting(traced.grad)
        ):
            sinks.append(Sink("grad", real, argument=position))
            values.append(tracer.value_of(traced.grad))
    for opt, before in zip(tracer.optimizers, tracer.optimizer_state, strict=True):
        for p, state in opt.state.items():
            for key, value in state.items():
                if isinstance(value, Tensor) and value is not before.get(p, {}).get(key):
                    sinks.append(Sink("state", state, key))  # new or replaced state entry
                    values.append(tracer.value_of(value))
    return sinks, values
