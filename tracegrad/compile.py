"""``tg.compile``: compiled modules (generated forward and backward) and the entry points.

A *specialization* is the generated program for one signature (input shapes, dtypes and
requires_grad, parameter metadata, train/eval, grad mode). Calls look their signature up in a
cache; a new signature compiles again and logs why, as a diff of the guard that changed.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tracegrad import passes, tape, viz
from tracegrad.autograd import grad as autograd_grad
from tracegrad.check import check_stages, seeds_for
from tracegrad.codegen.guards import module_guard
from tracegrad.explain import Report, render
from tracegrad.ir.graph import Graph
from tracegrad.passes import autodiff
from tracegrad.passes.pipeline import transforms
from tracegrad.specialize import (
    Program,
    Signature,
    Traced,
    argument_names,
    check_recompiles,
    dtype_name,
    gc_paused,
    generate,
    identity,
    input_label,
    log,
    signature_diff,
    tensor_guards,
    trace_call,
)
from tracegrad.step import CompiledFunction, is_module
from tracegrad.tensor import Tensor


@dataclass
class ModuleProgram:
    """A module specialization: generated forward (and backward) plus how to call them."""

    program: Program
    traced: Traced
    wrt: list[int]  # graph-input positions that get gradients
    differentiable: list[int]  # output positions that take cotangents
    n_saved: int
    report: Report | None = None
    reads: list = field(default_factory=list)  # per output: input positions it depends on
    # The values saved for the backward live in planned memory, which the next forward
    # overwrites: the tape node of the last call, and the list its backward reads them from.
    pending: tuple | None = None
    # True for a call with this specialization's signature (generated from it)
    guard: Callable[[tuple], bool] = field(default=lambda args: False)


class CompiledModule:
    """A compiled ``nn.Module``: shares the module's parameters; its outputs carry gradients
    back through the generated backward."""

    def __init__(self, module, *, passes="default", debug_nans=False, max_recompiles=None,
                 check=False):  # fmt: skip
        self.module = module
        self.passes = passes
        self.debug_nans = debug_nans or os.environ.get("TRACEGRAD_DEBUG_NANS") == "1"
        self.max_recompiles = max_recompiles
        self.check = check
        self._cache: dict[tuple, ModuleProgram] = {}
        self._signatures: list[Signature] = []
        self.latest: ModuleProgram | None = None
        self.recompile_reasons: list[str] = []

    # --- delegation: a compiled module still is the module for parameters, modes and state ---

    def __getattr__(self, name):
        return getattr(self.__dict__["module"], name)

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # --- the public views of the latest specialization ----------------------------------------

    def _latest(self) -> ModuleProgram:
        if self.latest is None:
            raise RuntimeError("call the compiled module once first: nothing is compiled yet")
        return self.latest

    @property
    def graph(self) -> Graph:
        return self._latest().program.graph

    @property
    def backward_graph(self) -> Graph | None:
        return self._latest().program.backward_graph

    @property
    def code(self) -> str:
        return self._latest().program.source

    def explain(self) -> str:
        """What compiling the latest specialization did: guards, passes and their changes,
        generated functions with their memory plan, saved activations, recompiles."""
        return render(self._latest().report, self.recompile_reasons)

    def views(self) -> list[tuple[str, Graph]]:
        """The graphs pictures show: optimized forward and backward, and the traced forward."""
        spec = self._latest()
        views = [("forward (optimized)", spec.program.parts[0][1])]
        if len(spec.program.parts) > 1:
            views.append(("backward (optimized)", spec.program.parts[1][1]))
        return [*views, ("forward (traced, before passes)", spec.traced.graph)]

    def visualize(self, path):
        """Write a picture of the latest specialization; the suffix picks the format: .html
        (forward and backward, before and after passes, with the code), .svg or .dot."""
        return viz.render(self.views(), path, code=self.code)

    def export(self, path):
        """Write the latest specialization's forward and backward as a standalone NumPy module
        at ``path``, with the parameters in a .npz beside it."""
        spec = self._latest()
        return spec.program.export(path, spec.traced.lifted)

    # --- calling ------------------------------------------------------------------------------

    def signature(self, args) -> Signature:
        guards = [("grad mode", tape.is_grad_enabled())]
        for i, a in enumerate(args):
            guards += tensor_guards(input_label(i), a)
        # One walk over the modules (their parameters, buffers and modes), read from the
        # arrays: guards are checked on every call.
        params, buffers, training, seen = [], [], [], set()
        for prefix, module in self.module.named_modules():
            training.append(module.training)
            # (by identity: the program is the forward this submodule traced)
            guards.append((f"module {prefix or type(module).__name__}", identity(module)))
            for table, found in ((module._parameters, params), (module._buffers, buffers)):
                for name, t in table.items():
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        found.append((prefix, name, t))
        for prefix, name, p in params:
            meta = (p._data.shape, dtype_name(p._data.dtype), p._requires_grad, id(p))
            guards.append((_member_label("parameter", prefix, name), meta))  # id: replaced
        for prefix, name, b in buffers:
            meta = (b._data.shape, dtype_name(b._data.dtype), id(b))  # id: replaced
            guards.append((_member_label("buffer", prefix, name), meta))
        guards.append(("training", tuple(training)))
        return tuple(guards)

    def __call__(self, *args):
        spec = self.latest
        if spec is not None and spec.guard(args):  # the usual call: the same as the last
            return self._run(spec, args)
        signature = self.signature(args)
        key = tuple(value for _, value in signature)
        spec = self._cache.get(key)
        if spec is None:
            guard = self._guard(args)  # of the state the signature read, before tracing
            spec = self._compile(args, signature)
            spec.guard = guard
            self._cache[key] = spec
        self.latest = spec
        return self._run(spec, args)

    def _guard(self, args):
        """The generated guard function of the current call state (see ``signature``)."""
        title = type(self.module).__name__
        return module_guard(tape.is_grad_enabled(), args, self.module, title)

    @gc_paused
    def _compile(self, args, signature: Signature) -> ModuleProgram:
        if self._signatures:
            reason = signature_diff(self._signatures[-1], signature)
            self.recompile_reasons.append(reason)
            log("recompiles", f"recompiling {type(self.module).__name__}: {reason}")
            check_recompiles(self.recompile_reasons, self.max_recompiles, reason)
        self._signatures.append(signature)
        names = {id(t): n for n, t in self.module.named_parameters()}
        names.update({id(t): n for n, t in self.module.named_buffers()})
        arg_names = argument_names(self.module.forward, len(args))
        traced = trace_call(self.module, args, names, arg_names)
        report = Report(f"compiled {type(self.module).__name__}", signature)
        spec = build_module_program(traced, args, self.passes, self.debug_nans, report, self.check)
        spec.report = report
        return spec

    def _run(self, spec: ModuleProgram, args):
        traced = spec.traced
        tensors = [a for a in args if isinstance(a, Tensor)] + traced.lifted
        _keep_pending_saved_values(spec)
        results = spec.program.call("forward", [t._data for t in tensors])
        targets = traced.update_targets + [args[i] for i in traced.updated_args]
        n_out, n_upd = traced.n_outputs, len(targets)
        for target, array in zip(targets, results[n_out : n_out + n_upd], strict=True):
            if array is not target._data:
                np.copyto(target._data, array)
            target._version[0] += 1
        outputs = [Tensor._wrap(np.asarray(a)) for a in results[:n_out]]
        if spec.program.backward_graph is not None and spec.wrt:
            _connect_backward(spec, tensors, outputs, list(results[n_out + n_upd :]))
        return tuple(outputs) if traced.returns_tuple else outputs[0]


def build_module_program(
    traced: Traced, args, passes_spec, debug_nans: bool, report: Report, check: bool = False
):
    forward_results: list = []
    graph = passes.run(traced.graph, transforms(passes_spec), forward_results)
    report.stages.append(("traced forward graph", forward_results))
    tensors = [a for a in args if isinstance(a, Tensor)] + traced.lifted
    wrt = [i for i, t in enumerate(tensors) if t.requires_grad] if tape.is_grad_enabled() else []
    if not wrt:
        forward = passes.run(autodiff.inline_custom(graph), transforms(passes_spec))
        program = generate(
            [("forward", forward)], "forward", debug_nans, passes_spec, report=report
        )
        return ModuleProgram(program, traced, [], [], 0)
    n_out = traced.n_outputs
    joint, seeds, differentiable, reached = autodiff.differentiate(
        graph, [graph.inputs[i].name for i in wrt], n_differentiable=n_out, zero_fill=False
    )
    wrt = [wrt[i] for i in reached]  # as in eager mode, unreached parameters keep grad None
    reads = _dependencies(traced.graph, n_out)  # before passes fuse outputs together
    joint_results: list = []
    joint = passes.run(joint, transforms(passes_spec), joint_results)
    report.stages.append(("joint forward + backward graph (after reverse mode)", joint_results))
    n_forward = len(graph.outputs)
    forward, backward = autodiff.split(joint, n_forward, seeds)
    if check:
        _check_module(traced, tensors, wrt, n_out, report.stages)
    report.saved = autodiff.saved_values(forward, backward, n_forward)
    log("graph", lambda: f"forward graph\n{forward}\nbackward graph\n{backward}")
    parts = [("forward", forward), ("backward", backward)]
    # Saved values may live in planned memory (a training loop then allocates none), but not
    # the values the caller gets back, which must outlive the next call.
    returned = {v.name for v in forward.outputs[:n_forward]}
    saved = frozenset(v.name for v in forward.outputs[n_forward:]) - returned
    program = generate(parts, "forward and backward", debug_nans, passes_spec, saved, report)
    n_saved = len(forward.outputs) - n_forward
    return ModuleProgram(program, traced, wrt, differentiable, n_saved, reads=reads)


def _dependencies(graph: Graph, n_out: int) -> list[set[int]]:
    """For each of the first ``n_out`` outputs, the positions of the graph inputs it reads."""
    position = {id(v): i for i, v in enumerate(graph.inputs)}
    producers = graph.producers()
    reads = []
    for out in graph.outputs[:n_out]:
        seen, stack, found = set(), [out], set()
        while stack:
            value = stack.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            if id(value) in position:
                found.add(position[id(value)])
            node = producers.get(id(value))
            stack.extend(node.inputs if node is not None else ())
        reads.append(found)
    return reads


def _check_module(traced: Traced, tensors, wrt, n_out, stages) -> None:
    """check=True: every pass snapshot, differentiated, against the unoptimized program."""
    names = [traced.graph.inputs[i].name for i in wrt]

    def joint_of(graph):
        return autodiff.differentiate(graph, names, n_differentiable=n_out, zero_fill=False)[0]

    reference = joint_of(traced.graph)
    arrays = [t._data for t in tensors]
    arrays += seeds_for(reference, len(arrays))
    (forward_name, forward_results), (joint_name, joint_results) = stages[-2], stages[-1]
    forward_end = forward_results[-1].graph if forward_results else traced.graph
    check_stages(reference, [(forward_name, traced.graph, forward_results)], arrays, joint_of)
    check_stages(reference, [(joint_name, joint_of(forward_end), joint_results)], arrays)


def _connect_backward(spec: ModuleProgram, tensors, outputs, saved: list) -> None:
    """Give the outputs one tape node whose backward runs the generated backward function."""
    inputs = [tensors[i] for i in spec.wrt]
    node = tape.Node("CompiledBackward", inputs, None, n_outputs=len(outputs))
    for t in inputs:
        node.save("input", t)

    def backward(grads):
        if tape.is_grad_enabled():
            raise RuntimeError(
                "create_graph=True through a compiled module is not supported; differentiate "
                "twice with tg.grad(tg.grad(f)), which compiles higher-order gradients"
            )
        seeds = [
            grads[i]._data
            if grads[i] is not None
            else np.zeros(outputs[i].shape, outputs[i].dtype.np)
            for i in spec.differentiable
        ]
        arrays = [*saved, *seeds]
        results = spec.program.call("backward", arrays)
        # As in eager mode, an input no output with a gradient depends on gets None.
        live = set().union(*(spec.reads[j] for j, g in enumerate(grads) if g is not None))
        return _wrap_gradients(results, [k in live for k in spec.wrt], arrays, spec.program)

    node.backward_fn = backward
    for i in spec.differentiable:
        outputs[i].grad_fn, outputs[i]._out_index, outputs[i]._requires_grad = node, i, True
    spec.pending = (weakref.ref(node), saved)


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


@functools.cache
def _member_label(kind: str, prefix: str, name: str) -> str:
    return f"{kind} {prefix}.{name}" if prefix else f"{kind} {name}"


def _wrap_gradients(results, wanted, arrays, program) -> list:
    """The backward's results as tensors (None where not wanted). A result that is fresh
    memory, or a view of all of it (a transposed product, a reshaped sum), and not an input,
    a constant, planned memory or memory of another result, is marked unshared, so
    accumulating it into a .grad takes it without a copy."""
    taken = {id(a) for a in arrays}
    grads = []
    for result, want in zip(results, wanted, strict=True):
        result = np.asarray(result)
        grad = Tensor._wrap(result) if want else None
        memory = result if result.base is None else result.base
        whole = memory.base is None and memory.size == result.size
        ours = id(memory) in program.buffer_ids or id(memory) in program.constant_ids
        if grad is not None and whole and id(memory) not in taken and not ours:
            tape.mark_unshared(grad)
        taken.add(id(memory))
        grads.append(grad)
    return grads


# --- entry points ---------------------------------------------------------------------------------


def compile(model_or_fn, *, passes="default", backend="numpy", dynamic=False, check=False,
            debug_nans=False, max_recompiles=None):  # fmt: skip
    """Compile an ``nn.Module`` (forward and backward) or a function (a whole training step)."""
    if backend != "numpy":
        raise ValueError(f"unknown backend {backend!r}: tracegrad generates NumPy code ('numpy')")
    if dynamic:
        raise NotImplementedError("dynamic shapes are not supported yet: each shape compiles")
    if is_module(model_or_fn):
        return CompiledModule(model_or_fn, passes=passes, debug_nans=debug_nans,
                              max_recompiles=max_recompiles, check=check)  # fmt: skip
    if callable(model_or_fn):
        return CompiledFunction(model_or_fn, passes=passes, debug_nans=debug_nans,
                                max_recompiles=max_recompiles, check=check)  # fmt: skip
    raise TypeError(
        f"tg.compile expects an nn.Module or a function, got {type(model_or_fn).__name__}"
    )


def trace(fn_or_module, *example_inputs) -> Graph:
    """The unoptimized forward graph of ``fn_or_module`` on inputs like ``example_inputs``
    (like ``jax.make_jaxpr``). Parameters and captured tensors become named inputs; custom
    Functions stay whole as ``custom`` nodes."""
    args = [_as_example(a) for a in example_inputs]
    target = fn_or_module.forward if is_module(fn_or_module) else fn_or_module
    names = {}
    if is_module(fn_or_module):
        names = {id(t): n for n, t in fn_or_module.named_parameters()}
        names.update({id(t): n for n, t in fn_or_module.named_buffers()})
    return trace_call(fn_or_module, args, names, argument_names(target, len(args))).graph


def _as_example(value):
    return Tensor._wrap(value) if isinstance(value, np.ndarray) else value


def value_and_grad(fn, argnums=0):
    """``fn``'s value and its gradient with respect to the argument(s) ``argnums``, compiled.

    Called inside another trace (``tg.grad(tg.grad(f))``) it traces through, so higher-order
    gradients compile into one program."""
    positions = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def value_and_gradient(*args):
        wrt = [args[i] for i in positions]
        value = fn(*args)
        grads = autograd_grad(value, wrt, create_graph=True)
        return value, grads[0] if isinstance(argnums, int) else tuple(grads)

    value_and_gradient.__name__ = f"value_and_grad_{getattr(fn, '__name__', 'fn')}"
    compiled = CompiledFunction(value_and_gradient, grad_argnums=positions)
    compiled.wrapped = fn
    return compiled


def grad(fn, argnums=0):
    """The gradient of scalar-valued ``fn`` with respect to argument(s) ``argnums``, compiled."""
    inner = value_and_grad(fn, argnums)

    def gradient(*args):
        return inner(*args)[1]

    gradient.__name__ = f"grad_{getattr(fn, '__name__', 'fn')}"
    gradient.compiled = inner
    return gradient
