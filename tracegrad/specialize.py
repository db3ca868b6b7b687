"""What every compiled program shares: logs, signatures and guards, tracing a call, and
generating plus loading the code of one specialization."""

from __future__ import annotations

import functools
import gc
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from tracegrad import codegen, tape
from tracegrad.codegen.export import export_program
from tracegrad.errors import TraceError
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes import pipeline
from tracegrad.passes.memory import plan
from tracegrad.random import generator
from tracegrad.tensor import Tensor
from tracegrad.tracer import Tracer, tracing


class RecompileError(RuntimeError):
    """A compiled module or function needed more recompiles than ``max_recompiles`` allows."""


def gc_paused(compile_fn):
    """Run ``compile_fn`` with the cyclic garbage collector off. Compiling makes several
    objects per graph node that live until it ends, and the collector's full passes, each
    over the whole heap, then come about once per so many new objects: together quadratic
    in the graph (half of a 20,000-node compile), for little garbage freed (a module's
    peak memory rose 8% without them). Reference counting still frees what it can."""

    @functools.wraps(compile_fn)
    def compile_without_collector(*args, **kwargs):
        if not gc.isenabled():
            return compile_fn(*args, **kwargs)
        gc.disable()
        try:
            return compile_fn(*args, **kwargs)
        finally:
            gc.enable()

    return compile_without_collector


def log_kinds() -> set[str]:
    return {k.strip() for k in os.environ.get("TRACEGRAD_LOGS", "").split(",") if k.strip()}


def log(kind: str, text) -> None:
    """Print a stage of compilation when TRACEGRAD_LOGS names its kind. ``text`` may be a
    function making the text, so big graphs are only printed when asked for."""
    if kind in log_kinds():
        print(f"[tracegrad:{kind}] {text() if callable(text) else text}", file=sys.stderr)


# --- signatures -----------------------------------------------------------------------------------

Signature = tuple  # of (label, value) pairs


@functools.cache
def input_label(index: int) -> str:
    return f"input {index}"


@functools.cache
def _tensor_labels(label: str) -> tuple[str, str, str]:
    return f"{label} shape", f"{label} dtype", f"{label} requires_grad"


@functools.cache
def dtype_name(dtype: np.dtype) -> str:
    return dtype.name  # computed anew on every access by NumPy, which guards cannot afford


def tensor_guards(label: str, value) -> list[tuple[str, object]]:
    # Read from the array and cached labels: guards are checked on every call.
    if isinstance(value, Tensor):
        shape, dtype, requires_grad = _tensor_labels(label)
        data = value._data
        return [
            (shape, data.shape),
            (dtype, dtype_name(data.dtype)),
            (requires_grad, value._requires_grad),
        ]
    # By type as well: 2 and 2.0 are equal, but x * 2 keeps an integer tensor's dtype.
    return [(f"{label} type", type(value).__name__), (f"{label} value", value)]


def identity(obj) -> str:
    """A guard's value for an object the program depends on by identity (a submodule)."""
    return f"{type(obj).__name__} at {id(obj):#x}"


def signature_diff(old: Signature, new: Signature) -> str:
    """Which guards changed, as "label old -> new" lines (labels only in one side included)."""
    before, after = dict(old), dict(new)
    changes = [
        f"{label} {before.get(label, '<absent>')} -> {after.get(label, '<absent>')}"
        for label in dict.fromkeys([*before, *after])
        if before.get(label, "<absent>") != after.get(label, "<absent>")
    ]
    return "; ".join(changes) or "no guard changed"


# --- programs -------------------------------------------------------------------------------------


@dataclass
class Program:
    """One specialization: the graphs, the generated source and its loaded functions."""

    graph: Graph
    backward_graph: Graph | None
    source: str
    functions: dict
    uses_rng: dict[str, bool]
    constants: dict = field(default_factory=dict)
    parts: list = field(default_factory=list)  # (FunctionSource, Graph) per function
    title: str = ""
    # id() of every planned buffer the loaded module allocated: memory only this program writes.
    buffer_ids: frozenset[int] = frozenset()

    @functools.cached_property
    def constant_ids(self) -> frozenset[int]:
        """id() of the program's constant arrays (results may be one of them, never fresh)."""
        return frozenset(id(a) for a in self.constants.values())

    def export(self, path, state: list):
        """Write this program as a standalone module; ``state`` are the lifted tensors, the
        last inputs of the first function (their values go into the .npz)."""
        fn = self.parts[0][0]
        params = [p for p in fn.params if p != "rng"]
        names = params[len(params) - len(state) :]
        arrays = {n: t.detach().numpy() for n, t in zip(names, state, strict=True)}
        return export_program(path, self, arrays)

    def call(self, name: str, arrays):
        fn = self.functions[name]
        with np.errstate(all="ignore"):  # as eager ops: inf and nan results, not warnings
            return fn(*arrays, generator()) if self.uses_rng[name] else fn(*arrays)


def _plan(graph: Graph, passes_spec, persistent: frozenset[str]) -> Graph:
    """The planning passes of the pipeline, in order, on a copy of one function's graph."""
    graph = graph.copy()
    for name in pipeline.planning(passes_spec):
        graph = plan(graph, persistent) if name == "memory" else pipeline.PASSES[name].fn(graph)
    return graph


def generate(
    parts: list[tuple[str, Graph]],
    title: str,
    debug_nans: bool,
    passes_spec="default",
    persistent: frozenset[str] = frozenset(),
    report=None,
) -> Program:
    """Emit one module holding a function per (name, graph) part and load it. Planning passes
    (the memory plan) run on each part first; ``persistent`` outputs may use planned memory."""
    unplanned = parts
    parts = [(name, _plan(graph, passes_spec, persistent)) for name, graph in parts]
    if report is not None:
        report.unplanned, report.planned = unplanned, parts
    sources, uses_rng, constants = [], {}, {}
    for name, graph in parts:
        fn = codegen.emit_function(graph, name, debug_nans=debug_nans)
        if report is not None:
            report.allocated[name] = [(shape, dtype) for _, shape, dtype in fn.buffers]
        uses_rng[name] = any(RANDOM in OPS[n.op].props for n in graph.nodes if n.op in OPS)
        if uses_rng[name]:
            fn.params.append("rng")
        constants.update(fn.constants)
        sources.append(fn)
    source = codegen.render_module(
        sources, title, codegen.RUNTIME_IMPORT, [graph for _, graph in parts]
    )
    log("code", "\n" + source)
    namespace = codegen.load(source, constants, title)
    functions = {name: namespace[name] for name, _ in parts}
    forward = parts[0][1]
    backward = parts[1][1] if len(parts) > 1 else None
    pairs = list(zip(sources, [graph for _, graph in parts], strict=True))
    buffer_ids = frozenset(id(namespace[b]) for fn in sources for b, _, _ in fn.buffers)
    return Program(
        forward, backward, source, functions, uses_rng, constants, pairs, title, buffer_ids
    )


def argument_names(fn, count: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    params += [f"arg{i}" for i in range(len(params), count)]
    return params[:count]


def flatten_outputs(result) -> tuple[list[Tensor], bool]:
    if isinstance(result, Tensor):
        return [result], False
    if isinstance(result, (tuple, list)) and all(isinstance(t, Tensor) for t in result):
        return list(result), True
    raise TraceError(
        "a compiled forward must return a Tensor or a tuple of Tensors, "
        f"got {type(result).__name__}"
    )


@dataclass
class Traced:
    """A traced forward: its graph, the tensors lifted to inputs and those updated in place."""

    graph: Graph
    lifted: list[Tensor]
    update_targets: list[Tensor]
    n_outputs: int
    returns_tuple: bool
    updated_args: tuple[int, ...] = ()  # arguments updated in place, after update_targets


def traced_updates(tracer: Tracer, symbolic: list) -> tuple[list, tuple, list, dict]:
    """What a traced call left updated in place: the lifted tensors it mutated, the positions
    of the tensor arguments it mutated, their new values (in that order) and the graph's
    updates (input name -> new value)."""
    targets = [t for t, _ in tracer.mutated.values()]
    new_values = [tracer.value_of(t) for t in targets]
    lifted = {id(t): v for t, v in tracer.lifted.values()}
    updates = {lifted[id(t)].name: v for t, v in zip(targets, new_values, strict=True)}
    positions = [i for i, a in enumerate(symbolic) if isinstance(a, Tensor)]
    updated_args = []
    for i, given in zip(positions, tracer.inputs):  # (added first, in order)
        now = symbolic[i]._data.value
        if now is not given:
            updated_args.append(i)
            new_values.append(now)
            updates[given.name] = now
    return targets, tuple(updated_args), new_values, updates


def trace_call(fn, args, names: dict[int, str], arg_names: list[str]) -> Traced:
    """Trace ``fn(*args)``; tensors in ``args`` become inputs (custom Functions stay whole)."""
    tracer = Tracer(mode="capture", names=names)
    # Gradients stay on while tracing (the tape's records are dropped) so that what the user
    # computes under no_grad can be marked as such in the graph.
    with tracing(tracer), tape.enable_grad():
        symbolic = [
            tracer.add_input(a.tensor_type, name) if isinstance(a, Tensor) else a
            for a, name in zip(args, arg_names, strict=True)
        ]
        outs, returns_tuple = flatten_outputs(fn(*symbolic))
        outputs = [tracer.value_of(t) for t in outs]
        targets, updated_args, new_values, updates = traced_updates(tracer, symbolic)
        graph = tracer.graph(outputs + new_values, updates)
    log("graph", lambda: f"traced {len(graph.nodes)} nodes\n{graph}")
    lifted = [t for t, _ in tracer.lifted.values()]
    return Traced(graph, lifted, targets, len(outs), returns_tuple, updated_args)


def check_recompiles(reasons: list[str], limit, reason: str) -> None:
    if limit is not None and len(reasons) > limit:
        raise RecompileError(
            f"recompile {len(reasons)} exceeds max_recompiles={limit}; guard that failed: {reason}"
        )
    if limit is None and len(reasons) == 9:
        warnings.warn(
            f"tracegrad recompiled 9 times (last because {reason}); pass dynamic shapes as "
            "fixed sizes or set max_recompiles to make this an error",
            stacklevel=4,
        )
