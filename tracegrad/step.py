"""Compiled functions: a whole training step (forward, backward and optimizer update) traced
into ONE generated function, and the function transforms ``tg.grad`` / ``tg.value_and_grad``.

The step is traced with the tape recording, so ``loss.backward()`` runs the backward engine on
symbolic tensors (each op's VJP rule emitting backward nodes) and ``opt.step()`` traces the
optimizer's tensor ops. Everything the step changes is state, never a baked-in constant:
parameters and optimizer buffers updated in place become ``updates`` written back into the
same arrays; new ``.grad`` tensors and new optimizer state become extra outputs stored after
each run.
"""

from __future__ import annotations

import functools
import os
import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tracegrad import passes, tape, viz
from tracegrad.check import check_stages
from tracegrad.codegen.guards import PLAIN, GuardBuilder, step_guard
from tracegrad.explain import Report, render
from tracegrad.ir.graph import Graph
from tracegrad.passes.memory import aliases, homes
from tracegrad.passes.pipeline import transforms
from tracegrad.random import generator
from tracegrad.specialize import (
    Program,
    Signature,
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
    traced_updates,
)
from tracegrad.tensor import Tensor, is_symbolic
from tracegrad.tracer import Tracer, tracing


def is_module(obj) -> bool:
    """An nn.Module, recognised by its interface (nn sits above the compiler)."""
    return callable(getattr(obj, "named_parameters", None)) and callable(
        getattr(obj, "forward", None)
    )


def _is_optimizer(obj) -> bool:
    return isinstance(getattr(obj, "param_groups", None), list) and hasattr(obj, "state")


def _holds_state(obj) -> bool:
    """A plain object (an instance of a user class) whose attributes may be modules or
    optimizers; modules, classes, functions and tensors are not looked into."""
    plain = not isinstance(
        obj, (types.ModuleType, type, types.FunctionType, types.MethodType, Tensor)
    )
    return plain and hasattr(obj, "__dict__") and not is_module(obj) and not _is_optimizer(obj)


def reachable_state(fn, args) -> tuple[dict, dict, dict, dict]:
    """Modules and optimizers the function can reach (closure, globals it names, default
    arguments, the object of a bound method, arguments, and the attributes of plain objects
    among those, such as a trainer holding its model and optimizer), and tensors requiring
    grad, by the name it uses for them: they give inputs readable names and are guarded.
    Last, for the names that can be bound to another object later (a global, a closure
    variable, an attribute of such a trainer), where to read them again: name -> (the
    namespace, a format string reading the name from it)."""
    found, readers = {}, {}
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        found["self"] = owner
    code = getattr(fn, "__code__", None)
    if code is not None:
        cells = fn.__closure__ or ()
        for name, cell in zip(code.co_freevars, cells, strict=False):
            found[name], readers[name] = cell.cell_contents, (cell, "{}.cell_contents")
        for name in code.co_names:
            if name in fn.__globals__:
                found[name], readers[name] = (
                    fn.__globals__[name],
                    (fn.__globals__, f"{{}}.get({name!r})"),
                )
        defaults = fn.__defaults__ or ()
        positional = code.co_varnames[: code.co_argcount]
        found.update(zip(positional[len(positional) - len(defaults) :], defaults, strict=True))
        found.update(fn.__kwdefaults__ or {})
    found.update((f"arg{i}", a) for i, a in enumerate(args))
    for name, obj in list(found.items()):
        if _holds_state(obj):
            for key, value in vars(obj).items():
                if f"{name}.{key}" not in found:
                    found[f"{name}.{key}"] = value
                    readers[f"{name}.{key}"] = (obj, f"{{}}.__dict__.get({key!r})")
    found = {n: o for n, o in found.items() if not isinstance(o, type)}  # classes are no state
    modules = {n: o for n, o in found.items() if is_module(o)}
    optimizers = {n: o for n, o in found.items() if _is_optimizer(o)}
    tensors = {n: o for n, o in found.items() if isinstance(o, Tensor) and o.requires_grad}
    state = {**modules, **optimizers, **tensors}
    # a holder of state is read again too (a new trainer may hold a new model)
    holders = {n.rpartition(".")[0] for n in state if "." in n}
    bound = {n: (*readers[n], found[n]) for n in [*state, *holders] if n in readers}
    return modules, optimizers, tensors, bound


def state_names(modules, optimizers, tensors) -> dict[int, str]:
    names = {id(t): n for n, t in tensors.items()}
    for prefix, opt in optimizers.items():
        for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, Tensor):
                    names[id(value)] = f"{prefix}.{key}{i}"
    for prefix, module in modules.items():
        for n, t in [*module.named_parameters(), *module.named_buffers()]:
            names[id(t)] = f"{prefix}.{n}"
            if t.grad is not None:
                names[id(t.grad)] = f"{prefix}.{n}.grad"
    return names


# id(planned buffer) -> the tensor living in it. A buffer is the memory of one tensor at a
# time: while a tensor a step handed out is alive (the user may keep an old .grad, or a view
# of it), its buffer is not handed to another tensor.
_holders: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()


# References to a tensor a sink keeps when nothing else holds it: the sink's attribute, the
# local name in keep_orphan and sys.getrefcount's own argument.
_ONLY_THE_SINK = 3


@dataclass
class Sink:
    """Where a value computed by the step is stored after each run."""

    kind: str  # "grad" (a tensor's .grad) or "state" (an optimizer state entry)
    owner: object  # the tensor, or the optimizer state dict of one parameter
    key: str | None = None
    buffer: int | None = None  # id of the planned buffer the last run stored in
    kept: Tensor | None = None  # the tensor living in that buffer, stored by the last run

    def current(self):
        return self.owner.grad if self.kind == "grad" else self.owner.get(self.key)

    def put(self, tensor: Tensor) -> None:
        if self.kind == "grad":
            self.owner.grad = tensor
        else:
            self.owner[self.key] = tensor

    def keep_orphan(self) -> None:
        """Before a run writes this sink's buffer again: the tensor living there, if its
        owner has dropped it (zero_grad set .grad to None) but the user kept it, moves to
        memory of its own, so it keeps its value as it would in PyTorch. If nothing but this
        sink holds it, nobody can see it change: the next store hands it out again."""
        kept = self.kept
        if kept is None or kept is self.current():
            return
        if sys.getrefcount(kept) > _ONLY_THE_SINK:
            if _holders.get(self.buffer) is kept:
                del _holders[self.buffer]
            kept._data = kept._data.copy()
            self.kept = None

    def store(self, array: np.ndarray, home: int | None) -> None:
        """Without a copy when ``array`` is one of the program's planned buffers, or a view of
        all of one (``home`` is then that buffer's id), and no other live tensor lives there:
        the tensor then lives in that buffer, which every later run leaves holding the same
        value's next result. A tensor the user made keeps its memory (it may be a view of
        theirs) and is written into; anything else is copied, since it may be an input or
        memory shared with another result."""
        current, kept = self.current(), self.kept
        if current is None and kept is not None and _same_memory(kept._data, array):
            current = kept  # dropped by zero_grad and held by nobody: it comes back
            self.put(kept)
        if current is not None and _same_memory(current._data, array):
            current._version[0] += 1  # the run wrote the tensor's own memory: nothing to move
            return
        free = home is not None and _holders.get(home) is None
        if (
            isinstance(current, Tensor)
            and current._data.shape == array.shape
            and current._data.dtype == array.dtype
        ):
            held = _held_in(current)
            if free and held is not None:  # a tensor some run stored without a copy: it moves
                del _holders[held]
                current._data = array
                self._live_in(home, current)
            else:
                np.copyto(current._data, array)
            current._version[0] += 1
            return
        new = Tensor._wrap(array if free else array.copy())
        if free:
            self._live_in(home, new)
        self.put(new)

    def _live_in(self, home: int, tensor: Tensor) -> None:
        _holders[home] = tensor
        self.buffer, self.kept = home, tensor


def _held_in(tensor: Tensor) -> int | None:
    """The planned buffer ``tensor`` lives in (the buffer or a whole view of it), if any."""
    for array in (tensor._data, tensor._data.base):
        if array is not None and _holders.get(id(array)) is tensor:
            return id(array)
    return None


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays are the same memory seen the same way (each run makes a new view of
    a buffer: equal base, shape and strides)."""
    if a is b:
        return True
    base = a.base
    return base is not None and base is b.base and a.shape == b.shape and a.strides == b.strides


def _memory_of(array: np.ndarray) -> int:
    """The id of the array owning ``array``'s memory."""
    base = array.base
    return id(array if base is None else base)


def planned_home(array: np.ndarray, planned: frozenset[int]) -> int | None:
    """The id of the planned buffer ``array`` is, or is a view of all of (reshaped or
    transposed: a weight's gradient computed as the transposed product of rows)."""
    if id(array) in planned:
        return id(array)
    base = array.base
    whole = base is not None and array.size == base.size
    return id(base) if whole and id(base) in planned else None


@dataclass
class StepProgram:
    program: Program
    signature: Signature
    lifted: list[Tensor]
    update_targets: list[Tensor]
    sinks: list[Sink]
    n_results: int
    rebuild: object  # turns the result arrays back into what the function returned
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

    @functools.cached_property
    def guard(self) -> Callable[[tuple], bool]:
        """The runner's guards alone, as a function: True for a call the runner runs."""
        return self.guards.build(self.report.title)

    def state(self) -> list[Tensor]:
        """The lifted tensors as they are now: a replaced .grad is the one read."""
        lifted = list(self.lifted)
        for index, owner in self.grad_of.items():
            lifted[index] = owner.grad
        return lifted


class CompiledFunction:
    """``tg.compile(fn)`` for a plain function, typically a whole training step."""

    def __init__(self, fn, *, passes="default", debug_nans=False, max_recompiles=None,
                 check=False, grad_argnums=()):  # fmt: skip
        self.fn = fn
        self.passes = passes
        self.debug_nans = debug_nans or os.environ.get("TRACEGRAD_DEBUG_NANS") == "1"
        self.max_recompiles = max_recompiles
        self.check = check
        self.grad_argnums = tuple(grad_argnums)
        self.specializations: list[StepProgram] = []
        self.recompile_reasons: list[str] = []
        self.latest: StepProgram | None = None
        # The state the function reaches by name, as the last slow call found it (a name may
        # be bound to a new model later), and where each rebindable name is read
        self._watched_modules: dict[str, object] = {}
        self._watched_optimizers: dict[str, object] = {}
        self._reached_tensors: dict[str, Tensor] = {}
        self._bindings: dict[str, tuple] = {}
        # Tensors requiring grad it reached or read, and optimizers its tracing stepped
        self._watched_tensors: dict[int, tuple[str, Tensor]] = {}
        self._traced_optimizers: dict[str, object] = {}

    @property
    def graph(self):
        return self._latest().program.graph

    @property
    def backward_graph(self):
        return None  # the whole step is one graph: forward, backward and update sections

    @property
    def code(self) -> str:
        return self._latest().program.source

    def views(self) -> list[tuple[str, Graph]]:
        spec = self._latest()
        return [
            ("training step (optimized)", spec.program.parts[0][1]),
            ("training step (traced, before passes)", spec.report.unplanned_traced),
        ]

    def visualize(self, path):
        """Write a picture of the latest specialization's step (.html, .svg or .dot)."""
        return viz.render(self.views(), path, code=self.code)

    def explain(self) -> str:
        """What compiling the latest specialization did (see CompiledModule.explain)."""
        return render(self._latest().report, self.recompile_reasons)

    def export(self, path):
        """Write the latest specialization's step as a standalone NumPy module at ``path``,
        with the parameters and optimizer state in a .npz beside it."""
        spec = self._latest()
        return spec.program.export(path, spec.state())

    def _latest(self) -> StepProgram:
        if self.latest is None:
            raise RuntimeError("call the compiled function once first: nothing is compiled yet")
        return self.latest

    # --- guards ---------------------------------------------------------------------------------

    def signature(self, args) -> Signature:
        guards = [("grad mode", tape.is_grad_enabled())]
        for i, a in enumerate(args):
            guards += tensor_guards(input_label(i), a)
        for label, t in self._state_tensors().values():
            grad = None if t.grad is None else t.grad._data.shape
            # (by identity too: the program reads and updates these very tensors)
            meta = (t._data.shape, dtype_name(t._data.dtype), t._requires_grad, grad, id(t))
            guards.append((label, meta))
        for name, opt in self._optimizers().items():
            guards.append((f"optimizer {name}", _optimizer_guard(opt)))
        guards += [(f"binding {name}", identity(b[-1])) for name, b in self._bindings.items()]
        for name, module in self._watched_modules.items():
            modules = dict(module.named_modules())
            guards.append((f"module {name} training", tuple(m.training for m in modules.values())))
            # Each submodule and buffer by identity: the program is the forward they traced
            members = [*modules.items(), *module.named_buffers()]
            guards += [(f"member {name}.{path}".rstrip("."), identity(m)) for path, m in members]
        return tuple(guards)

    def _watch(self, modules, optimizers, tensors, bindings) -> None:
        """What the function reaches now (see reachable_state)."""
        self._watched_modules, self._watched_optimizers = modules, optimizers
        self._reached_tensors, self._bindings = tensors, bindings
        for name, t in tensors.items():
            self._watched_tensors.setdefault(id(t), (f"state {name}", t))

    def _optimizers(self) -> dict[str, object]:
        """The optimizers reached by name, then those found only by tracing the function."""
        reached = self._watched_optimizers
        seen = {id(o) for o in reached.values()}
        return {
            **reached,
            **{n: o for n, o in self._traced_optimizers.items() if id(o) not in seen},
        }

    def _state_tensors(self) -> dict[int, tuple[str, Tensor]]:
        """id -> (label, tensor) of the state the program may read: the watched modules'
        parameters as they are now (one may have been replaced), then the tensors it read."""
        state = {}
        for module_name, module in self._watched_modules.items():
            for n, p in module.named_parameters():
                state.setdefault(id(p), (f"state {module_name}.{n}", p))
        for key, entry in self._watched_tensors.items():
            state.setdefault(key, entry)
        return state

    # --- calling --------------------------------------------------------------------------------

    def __call__(self, *args):
        spec = self.latest
        if spec is not None:  # the usual call: the same as the last (a symbolic argument is not)
            result = spec.runner(args)
            if result is not MISS:
                return result
        if any(isinstance(a, Tensor) and is_symbolic(a) for a in args):
            # Inside another trace: trace straight through. The arguments to differentiate
            # must require grad, as they do when this function is traced on its own; one that
            # does not has no history to keep, so a differentiable alias of it will do.
            args = [
                a.detach().requires_grad_()
                if i in self.grad_argnums and isinstance(a, Tensor) and not a.requires_grad
                else a
                for i, a in enumerate(args)
            ]
            return self.fn(*args)
        self._watch(*reachable_state(self.fn, args))
        signature = self.signature(args)
        spec = next((s for s in reversed(self.specializations) if s.signature == signature), None)
        if spec is None:
            guards = self._guards(args)  # of the state the signature read, before tracing
            spec = self._compile(args, signature)
            self._use_guards(spec, guards)
        elif spec is not self.latest and (result := spec.runner(args)) is not MISS:
            self.latest = spec
            return result
        else:
            # Its runner refuses a call of its signature: the guards name objects since
            # replaced by equal ones (a parameter group dict, say). They are made again, or
            # every call would come this slow way.
            self._use_guards(spec, self._guards(args))
        self.latest = spec
        return spec.runner(args, True)

    def _use_guards(self, spec: StepProgram, guards) -> None:
        spec.guards = guards
        spec.runner = step_runner(spec, guards, getattr(self.fn, "__name__", "function"))
        spec.__dict__.pop("guard", None)  # (a cached function of the guards replaced)

    def _guards(self, args):
        """The guards of the current call state (see ``signature``), for a runner."""
        return step_guard(
            tape.is_grad_enabled(),
            args,
            [t for _, t in self._state_tensors().values()],
            list(self._optimizers().values()),
            list(self._watched_modules.values()),
            _optimizer_groups,
            list(self._bindings.values()),
        )

    @gc_paused
    def _compile(self, args, signature) -> StepProgram:
        if self.specializations:
            reason = signature_diff(self.specializations[-1].signature, signature)
            self.recompile_reasons.append(reason)
            log("recompiles", f"recompiling {getattr(self.fn, '__name__', 'function')}: {reason}")
            check_recompiles(self.recompile_reasons, self.max_recompiles, reason)
        spec = trace_step(self, args, signature)
        self.specializations.append(spec)
        return spec


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS = _Miss()  # what a runner returns for a call its guards refuse


def step_runner(spec: StepProgram, guards, title: str) -> Callable:
    """The generated function running ``spec`` for a call its ``guards`` accept: the
    arrays of the arguments and of the lifted state go to the step; new values of updated
    tensors are written back (a copy only where the step did not update in place); each
    sink stores its value (a .grad still living in the memory written is only told so);
    then the returned tensors are built."""
    program = spec.program
    names = {
        "MISS": MISS,
        "step": program.functions["step"],
        "errstate": np.errstate,
        "copyto": np.copyto,
        "asarray": np.asarray,
        "wrap": Tensor._wrap,
        "rebuild": spec.rebuild,
        "planned_home": planned_home,
        "memory_of": _memory_of,
        "same_memory": _same_memory,
        "PLANNED": program.buffer_ids,
        "generator": generator,
    }
    arrays, body = _runner_inputs(spec, names)
    # Program.call's work (NumPy errors as inf and nan, the generator for random ops) written
    # out: the runner calls the step itself, without building an argument list per call.
    if program.uses_rng["step"]:
        arrays.append("generator()")
    body += ["with errstate(all='ignore'):", f"    r = step({', '.join(arrays)})"]
    body += _runner_outputs(spec, names)
    return guards.build_runner(title, body, names)


def _runner_inputs(spec: StepProgram, names: dict) -> tuple[list[str], list[str]]:
    """The step's arguments (expressions), and the lines preparing them: a .grad read as an
    input is copied when it lives in the step's memory, and a sink's tensor the user kept
    after its owner dropped it moves to memory of its own (``Sink.keep_orphan``)."""
    arrays = [f"args[{i}]._data" for i in spec.tensor_args]
    lines = []
    for j, t in enumerate(spec.lifted):
        names[f"lifted{j}"] = spec.grad_of.get(j, t)
        if j not in spec.grad_of:
            arrays.append(f"lifted{j}._data")
            continue
        # A .grad living in this program's memory (only sinks put tensors there), read as
        # an input: the run may reuse that memory before reading it.
        lines += [f"g{j} = lifted{j}.grad._data", f"if memory_of(g{j}) in PLANNED:"]
        lines.append(f"    g{j} = g{j}.copy()")
        arrays.append(f"g{j}")
    for k, sink in enumerate(spec.sinks):
        names[f"sink{k}"] = sink
        if sink.kind == "grad":  # Sink.keep_orphan's first case inline: the .grad is the
            # tensor the last run kept
            names[f"owner{k}"] = sink.owner
            lines += [f"if sink{k}.kept is not owner{k}.grad:", f"    sink{k}.keep_orphan()"]
        else:
            lines.append(f"sink{k}.keep_orphan()")
    return arrays, lines


def _runner_outputs(spec: StepProgram, names: dict) -> list[str]:
    """The lines handling the step's results ``r``: updated tensors, sinks, the return."""
    lines = []
    n = spec.n_results
    for i, target in enumerate(spec.update_targets):
        names[f"updated{i}"] = target
    targets = [f"updated{i}" for i in range(len(spec.update_targets))]
    targets += [f"args[{k}]" for k in spec.updated_args]
    for i, target in enumerate(targets):
        if i not in spec.updated_in_place:
            lines += [f"a = r[{n + i}]", f"if a is not {target}._data:"]
            lines.append(f"    copyto({target}._data, a)")
        lines.append(f"{target}._version[0] += 1")
    n_upd = len(targets)
    for k, sink in enumerate(spec.sinks):
        lines.append(f"a = r[{n + n_upd + k}]")
        store = f"sink{k}.store(asarray(a), planned_home(a, PLANNED))"
        if sink.kind == "grad":  # Sink.store's first case inline: the run wrote the .grad's
            # own memory, so only its version moves
            same = "(g._data is a or same_memory(g._data, a))"  # (no call when it is the array)
            lines += [f"g = owner{k}.grad", f"if g is not None and {same}:"]
            lines += ["    g._version[0] += 1", "else:", f"    {store}"]
        else:
            lines.append(store)
    if spec.rebuild is _only:  # the function returned one tensor
        lines.append("return wrap(asarray(r[0]))")
    else:
        lines.append(f"return rebuild([{', '.join(f'wrap(asarray(r[{i}]))' for i in range(n))}])")
    return lines


def _optimizer_guard(opt) -> tuple:
    """What a traced update depends on: hyperparameters and which state exists per parameter."""
    groups = _optimizer_groups(opt)
    # Which state exists, and which tensor objects hold it (load_state_dict replaces them).
    state = tuple(
        (id(p), tuple((k, id(v)) for k, v in s.items())) for p, s in opt.state.items() if s
    )
    return groups, state


def _optimizer_groups(opt) -> tuple:
    """The hyperparameters of each parameter group."""
    return tuple(
        tuple((k, v if type(v) in PLAIN else repr(v)) for k, v in g.items() if k != "params")
        for g in opt.param_groups
    )


def _only(tensors):
    return tensors[0]


def _flatten(result):
    """Tensors in a returned value (a tensor, or a tuple/list/dict of them and plain values)
    and a function rebuilding the value from new tensors."""
    if isinstance(result, Tensor):
        return [result], _only
    if isinstance(result, (tuple, list)):
        parts = [_flatten(r) for r in result]
        sizes = [len(p[0]) for p in parts]

        def rebuild(ts):
            out, start = [], 0
            for (_, build), size in zip(parts, sizes, strict=True):
                out.append(build(ts[start : start + size]))
                start += size
            return type(result)(out)

        return [t for p in parts for t in p[0]], rebuild
    if isinstance(result, dict):
        keys = list(result)
        tensors, build = _flatten([result[k] for k in keys])
        return tensors, lambda ts: dict(zip(keys, build(ts), strict=True))
    return [], lambda ts: result


def trace_step(compiled: CompiledFunction, args, signature) -> StepProgram:
    """Trace one call of a training step and generate its single function (the state it
    reaches is the one ``compiled._watch`` took in for this call)."""
    names = state_names(
        compiled._watched_modules, compiled._watched_optimizers, compiled._reached_tensors
    )
    # (its watched modules' parameters and every tensor it reached or read before)
    grads_before = {id(t): (t, t.grad) for _, t in compiled._state_tensors().values()}
    tracer = Tracer(mode="inline", names=names)
    arg_names = argument_names(compiled.fn, len(args))
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
        leaves, rebuild = _flatten(compiled.fn(*symbolic))
        results = [tracer.value_of(t) for t in leaves]
        targets, updated_args, new_values, updates = traced_updates(tracer, symbolic)
        sinks, sink_values = _collect_sinks(tracer, symbolic, args)
        graph = tracer.graph(results + new_values + sink_values, updates)
    _restore_grads(sinks, grads_before)
    log("graph", lambda: f"traced step: {len(graph.nodes)} nodes\n{graph}")
    report = Report(f"compiled step {getattr(compiled.fn, '__name__', '')}", signature)
    pass_results: list = []
    traced_graph, graph = graph, passes.run(graph, transforms(compiled.passes), pass_results)
    report.unplanned_traced = traced_graph
    stage = "traced step (forward, backward and update)"
    report.stages.append((stage, pass_results))
    if compiled.check:
        arrays = [a._data for a in args if isinstance(a, Tensor)]
        arrays += [t._data for t, _ in tracer.lifted.values()]
        check_stages(traced_graph, [(stage, traced_graph, pass_results)], arrays)
    persistent = frozenset(v.name for v in graph.outputs[len(results) :])
    program = generate(
        [("step", graph)],
        "training step",
        compiled.debug_nans,
        compiled.passes,
        persistent,
        report=report,
    )
    lifted_tensors = [t for t, _ in tracer.lifted.values()]
    noted = {f"optimizer{i}": o for i, o in enumerate(tracer.optimizers)}
    # Tensors that require grad and were read, however the function reached them: their
    # .grad (present or not) decides what the program computes, so it is guarded.
    read = {value.name: t for t, value in tracer.lifted.values() if t.requires_grad}
    for name, t in read.items():
        compiled._watched_tensors.setdefault(id(t), (f"state {name}", t))
    compiled._traced_optimizers.update(noted)
    owners = {id(grad): t for t, grad in grads_before.values() if grad is not None}
    grad_of = {i: owners[id(t)] for i, t in enumerate(lifted_tensors) if id(t) in owners}
    return StepProgram(
        program,
        signature,
        lifted_tensors,
        targets,
        sinks,
        len(results),
        rebuild,
        grad_of,
        report,
        tuple(i for i, a in enumerate(args) if isinstance(a, Tensor)),
        updated_args,
        _written_in_place(program.graph, len(results), list(updates)),
    )


def _written_in_place(graph: Graph, first: int, targets: list[str]) -> frozenset[int]:
    """Positions of the updates (the outputs from ``first`` on, of the inputs named
    ``targets``) that are their own input's memory, whole: written in place over it, whose
    array the step then returns (an op's out= form returns ``out``)."""
    root = aliases(graph)
    home = homes(graph, root)
    inputs = {v.name: v for v in graph.inputs}
    updates = zip(targets, graph.outputs[first:], strict=False)
    return frozenset(
        i
        for i, (name, v) in enumerate(updates)
        if root[id(v)] is v
        and home[id(v)] == ("value", id(inputs[name]))
        and inputs[name].type == v.type
    )


def _collect_sinks(tracer: Tracer, symbolic, args) -> tuple[list[Sink], list]:
    """Traced values left in persistent places: ``.grad`` of lifted tensors and arguments,
    and optimizer state entries."""
    sinks, values = [], []
    owners = [t for t, _ in tracer.lifted.values()]
    owners += [(s, a) for s, a in zip(symbolic, args, strict=True) if isinstance(a, Tensor)]
    for owner in owners:
        traced, real = owner if isinstance(owner, tuple) else (owner, owner)
        if traced.grad is not None and (
            is_symbolic(traced.grad) or not tracer.preexisting(traced.grad)
        ):
            sinks.append(Sink("grad", real))
            values.append(tracer.value_of(traced.grad))
    for opt, before in zip(tracer.optimizers, tracer.optimizer_state, strict=True):
        for p, state in opt.state.items():
            for key, value in state.items():
                if isinstance(value, Tensor) and value is not before.get(p, {}).get(key):
                    sinks.append(Sink("state", state, key))  # new or replaced state entry
                    values.append(tracer.value_of(value))
    return sinks, values


def _restore_grads(sinks: list[Sink], before: dict) -> None:
    """Put back the ``.grad`` each tensor had before tracing (optimizer state is restored by
    the tracer); the program's first run then stores the real values."""
    for sink in sinks:
        if sink.kind == "grad":
            sink.owner.grad = before.get(id(sink.owner), (None, None))[1]
