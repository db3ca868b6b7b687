"""What every compiled program shares: logs, signatures and guards, tracing a call, and
generating plus loading the code of one specialization."""

from __future__ import annotations

import functools
import gc
import inspect
import linecache
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from tracegrad import codegen, pytree, tape
from tracegrad.codegen.export import export_program
from tracegrad.ir.core import CONSTANT
from tracegrad.ir.graph import Graph, copies_where_made
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes import pipeline
from tracegrad.passes.memory import aliases, plan
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


def identity(obj) -> Shown:
    """A guard's value for an object the program depends on by identity (a submodule)."""
    return Shown(id(obj), type(obj).__name__)


@dataclass(frozen=True)
class Shown:
    """A guard's value compared by ``fact`` (a number by whether it is 0, say) and shown as
    ``text`` (the number) in recompile reasons."""

    fact: object
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def tensor_meta(t) -> Shown:
    """A module member's guard: the same tensor (the program reads this very one), of its
    type and requires_grad."""
    d = t._data
    needs = " requires grad" if t._requires_grad else ""
    meta = (d.shape, dtype_name(d.dtype), t._requires_grad, id(t))
    return Shown(meta, f"{dtype_name(d.dtype)}{list(d.shape)}{needs}")


def signature_diff(old: Signature, new: Signature) -> str:
    """Which guards changed, in words: "label old -> new", or "label replaced" for an object
    now another one of the same kind (labels only in one side included)."""
    before, after = _unique_labels(old), _unique_labels(new)
    changes = []
    for label in dict.fromkeys([*before, *after]):
        was, now = before.get(label, "<absent>"), after.get(label, "<absent>")
        if was == now:
            continue
        same_text = isinstance(was, Shown) and isinstance(now, Shown) and str(was) == str(now)
        changes.append(
            f"{label} replaced by another {now}" if same_text else f"{label} {was} -> {now}"
        )
    return "; ".join(changes) or NO_CHANGE


def _unique_labels(signature: Signature) -> dict:
    """The signature as a dict; a label seen again is numbered (two tensors both named
    state m.bias, a replaced one and its successor, stay apart)."""
    found: dict = {}
    for label, value in signature:
        key, n = label, 1
        while key in found:
            n += 1
            key = f"{label} ({n})"
        found[key] = value
    return found


NO_CHANGE = "no guard changed"


# --- errors raised by generated code ---------------------------------------------------------

# Exception types rebuilt with the user's line in their message (their constructors take one)
_REBUILT = (IndexError, KeyError, ValueError, TypeError, ArithmeticError, RuntimeError)


def at_users_line(exc: Exception) -> None:
    """Called in an ``except`` clause of the calls running generated code: an exception
    raised inside it (an index out of range) is raised again, of the same type, naming the
    user's line the failing statement came from, instead of a traceback deep inside generated
    code. Any other exception is raised as it is."""
    where = _generated_origin(exc.__traceback__) if isinstance(exc, _REBUILT) else None
    if where is None or where in str(exc) or isinstance(exc, FloatingPointError):
        raise exc  # (debug_nans names the op and the line itself)
    message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else exc
    try:
        rebuilt = type(exc)(f"{message}\n  at {where} (in compiled code)")
    except Exception:  # (a constructor of another shape: the note says it)
        exc.add_note(f"  at {where} (in compiled code)")
        raise exc from None
    raise rebuilt from None


def _generated_origin(tb) -> str | None:
    """The comment (the user's file and line) of the last generated line in a traceback."""
    found = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith("<tracegrad "):
            line = linecache.getline(filename, tb.tb_lineno)
            found = line.partition("  # ")[2].strip() or found
        tb = tb.tb_next
    return found


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


def returned_in_own_memory(graph: Graph, n_returned: int, kept=range(0)) -> Graph:
    """A copy of ``graph`` whose first ``n_returned`` outputs, and those at positions ``kept``
    (a step's .grad and optimizer state), are memory of their own: one that is an input, the
    new value of an input updated in place, a view of those, or a constant, as passes may
    leave it (``x * 1`` is ``x``, the gradient of ``x * w`` is ``w``), is copied. The caller
    may keep and write what a call returns, and the step may update that input in place, as
    eagerly; neither must reach the other, nor the program's constants."""
    root = aliases(graph)
    producers = graph.producers()
    # inputs, and new values of inputs (written into the input's memory after the call)
    inputs = {id(v) for v in graph.inputs} | {id(root[id(v)]) for v in graph.updates.values()}

    def shared(v) -> bool:
        base = root[id(v)]
        node = producers.get(base)
        return id(base) in inputs or (node is not None and node.op == CONSTANT)

    positions = [*range(n_returned), *kept]
    copied = [i for i in positions if shared(graph.outputs[i])]
    if not copied:
        return graph
    graph = graph.copy()
    outputs = list(graph.outputs)
    names = [f"{outputs[i].name}_copy{i}" for i in copied]
    nodes, copies = copies_where_made(graph.nodes, [outputs[i] for i in copied], names)
    for i, copy in zip(copied, copies, strict=True):
        outputs[i] = copy
    graph.nodes, graph.outputs = nodes, outputs
    return graph


# View ops whose eager result shares its input's memory (a getitem with index tensors copies)
_SHOWING = frozenset({"getitem", "reshape", "permute", "broadcast_to", "stop_gradient"})


def eager_views(graph: Graph, n_returned: int) -> tuple:
    """The returned values that eagerly are views of an input's memory (``return x.t()``, also
    of an input updated in place first: ``x.mul_(2); return x[0]``): (output index, input
    position, the view ops from the input's memory) each. The compiled call returns them as
    the same views of the input's memory, so later writes to it show in them as eagerly."""
    position = {id(v): i for i, v in enumerate(graph.inputs)}
    names = {v.name: i for i, v in enumerate(graph.inputs)}
    for name, new in graph.updates.items():
        position.setdefault(id(new), names[name])
    shapes = [v.type.shape for v in graph.inputs]
    return views_of(graph, range(n_returned), position, shapes)


def views_of(graph: Graph, positions, bases: dict, shapes: list) -> tuple:
    """The outputs at ``positions`` that are views of a base (``bases``: id(value) -> its
    number, ``shapes`` by number): (output index, base number, the view ops from the base)."""
    producers = graph.producers()
    found = []
    for k in positions:
        chain, value = [], graph.outputs[k]
        while id(value) not in bases:
            node = producers.get(value)
            if node is None or node.op not in _SHOWING or len(node.inputs) != 1:
                break
            chain.append((node.op, dict(node.attrs)))
            value = node.inputs[0]
        chain = tuple(reversed(chain))
        if id(value) in bases and _shares(shapes[bases[id(value)]], chain):
            found.append((k, bases[id(value)], chain))
    return tuple(found)


def _shares(shape, chain) -> bool:
    """Whether the view ops of ``chain`` show memory of their input (a reshape of a broadcast
    copies), tried on a stand-in array of ``shape``."""
    probe = array = np.zeros(shape)
    for op, attrs in chain:
        array = OPS[op].impl(array, **attrs)
    return np.may_share_memory(array, probe)


def show_views(results: list, inputs: list, views: tuple) -> None:
    """Replace the results ``eager_views`` named by those views of the inputs' arrays."""
    for k, i, chain in views:
        array = inputs[i]
        for op, attrs in chain:
            array = OPS[op].impl(array, **attrs)
        if np.may_share_memory(array, inputs[i]):  # (this input's layout may make a copy)
            results[k] = array


def _plan(graph: Graph, passes_spec, persistent: frozenset[str]) -> Graph:
    """The planning passes of the pipeline, in order, on a copy of one function's graph."""
    graph = graph.copy()
    for name in pipeline.planning(passes_spec):
        graph = plan(graph, persistent) if name == "memory" else pipeline.PASSES[name].fn(graph)
        pipeline.checked(graph, f"after the {name} pass")
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


@dataclass
class Traced:
    """A traced forward: its graph, the tensors lifted to inputs and those updated in place."""

    graph: Graph
    lifted: list[Tensor]
    update_targets: list[Tensor]
    n_outputs: int
    structure: object  # of what the function returned (tracegrad.pytree)
    updated_args: tuple[int, ...] = ()  # arguments updated in place, after update_targets
    values_read: tuple = ()  # (tensor, version) of outside tensors whose value Python read
    views: tuple = ()  # returned values that are views of an input's memory (eager_views)


def values_read(tracer: Tracer) -> tuple:
    """The tensors from outside whose value Python read while tracing, with their versions as
    tracing left them: the program is right while they keep them."""
    return tuple((t, t._version[0]) for t, _ in tracer.values_read.values())


def unchanged(read: tuple) -> bool:
    return all(t._version[0] == version for t, version in read)


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
            tracer.add_input(a.tensor_type, name, a.requires_grad) if isinstance(a, Tensor) else a
            for a, name in zip(args, arg_names, strict=True)
        ]
        outs, structure = pytree.flatten(fn(*symbolic))
        outputs = [tracer.value_of(t) for t in outs]
        targets, updated_args, new_values, updates = traced_updates(tracer, symbolic)
        graph = tracer.graph(outputs + new_values, updates)
    log("graph", lambda: f"traced {len(graph.nodes)} nodes\n{graph}")
    lifted = [t for t, _ in tracer.lifted.values()]
    read = values_read(tracer)
    views = eager_views(graph, len(outs))
    return Traced(graph, lifted, targets, len(outs), structure, updated_args, read, views)


# How many specializations a compiled module or function keeps: a call of a new signature
# past them runs eagerly (PyTorch's torch._dynamo.config.cache_size_limit). Read at each call.
CACHE_SIZE_LIMIT = 8


def check_recompiles(compiled, reason: str, cached: int, title: str) -> bool:
    """Whether ``compiled`` (holding ``cached`` specializations) compiles one more for a call
    whose guards failed because ``reason``; recorded in its ``recompile_reasons`` when it does.
    With ``max_recompiles`` set, that is the bound: a recompile past it raises. Without, past
    CACHE_SIZE_LIMIT specializations the call runs eagerly, as in PyTorch: False, with a
    warning the first time."""
    limit = compiled.max_recompiles
    if limit is None and cached >= CACHE_SIZE_LIMIT:
        if not compiled.ran_eagerly:
            warnings.warn(
                f"tracegrad: {title} has {cached} specializations (CACHE_SIZE_LIMIT in "
                f"tracegrad.specialize); calls of new signatures run eagerly. Last recompile "
                f"would have been because {reason}",
                stacklevel=4,
            )
        compiled.ran_eagerly = True
        return False
    compiled.recompile_reasons.append(reason)
    log("recompiles", f"recompiling {title}: {reason}")
    if limit is not None and len(compiled.recompile_reasons) > limit:
        raise RecompileError(
            f"recompile {len(compiled.recompile_reasons)} exceeds max_recompiles={limit}; "
            f"guard that failed: {reason}"
        )
    return True
