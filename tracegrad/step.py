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
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tracegrad import captures, passes, pytree, tape, viz
from tracegrad.check import check_generated, check_stages, step_labels
from tracegrad.codegen import names
from tracegrad.codegen.guards import PLAIN, GuardBuilder, plain_attributes, step_guard
from tracegrad.errors import TraceError
from tracegrad.explain import Report, render
from tracegrad.ir.graph import Graph
from tracegrad.module_program import ModuleProgram, build_module_program, run_module_program
from tracegrad.passes.memory import MemoryPlan
from tracegrad.passes.pipeline import transforms
from tracegrad.random import generator
from tracegrad.specialize import (
    NO_CHANGE,
    Program,
    Shown,
    Signature,
    argument_names,
    at_users_line,
    check_recompiles,
    dtype_name,
    eager_views,
    gc_paused,
    generate,
    identity,
    input_label,
    log,
    returned_in_own_memory,
    show_views,
    signature_diff,
    tensor_guards,
    trace_call,
    traced_updates,
    unchanged,
    values_read,
)
from tracegrad.tensor import Tensor, active_tracer, is_symbolic
from tracegrad.tracer import Tracer, tracing
from tracegrad.tracer.hyperparameters import is_number


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
                    (fn.__globals__, f"{{}}.get({names.literal(name)})"),
                )
        defaults = fn.__defaults__ or ()
        positional = code.co_varnames[: code.co_argcount]
        found.update(zip(positional[len(positional) - len(defaults) :], defaults, strict=True))
        found.update(fn.__kwdefaults__ or {})
    found.update((f"arg{i}", a) for i, a in enumerate(args))
    for name, obj in list(found.items()):
        if _holds_state(obj):
            for key, value in vars(obj).items():
                if isinstance(key, str) and f"{name}.{key}" not in found:
                    found[f"{name}.{key}"] = value
                    read = f"{{}}.__dict__.get({names.literal(str(key))})"
                    readers[f"{name}.{key}"] = (obj, read)
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
    rebuild: Callable  # turns the result tensors back into what the function returned
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
    views: tuple = ()  # returned values that are views of an input's memory (eager_views)

    def still_valid(self) -> bool:
        """Whether the tensors Python read keep their versions and the names it captured
        tensors by still hold them (what guards made before tracing cannot know)."""
        return unchanged(self.values_read) and all(c.holds() for c in self.captured)

    def invalid_reason(self) -> str:
        lost = [c.label for c in self.captured if not c.holds()]
        if lost:
            return f"captured {lost[0]} is another tensor (or gone)"
        return "the value of a tensor Python read while tracing changed"

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
        self.ran_eagerly = False  # whether a call past the cache's bound ran the function
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
        self._stepped: list = []  # the optimizers whose step() a trace went through
        # One compiled function per structure of containers and keywords it was called with
        self._by_structure: dict[object, CompiledFunction] = {}
        self.state_fn = fn  # where the state it reaches is looked for (closure, globals)
        self._lock = threading.RLock()
        self.arg_names: list[str] | None = None  # the inputs' names, when not fn's parameters

    @property
    def graph(self):
        return self._latest().program.graph

    @property
    def backward_graph(self):
        # a whole step is one graph: forward, backward and update sections
        return self._latest().program.backward_graph

    @property
    def code(self) -> str:
        return self._latest().program.source

    def views(self) -> list[tuple[str, Graph]]:
        spec = self._latest()
        if spec.module is not None:
            return spec.module.views()
        return [
            ("training step (optimized)", spec.program.parts[0][1]),
            ("training step (traced, before passes)", spec.report.unplanned_traced),
        ]

    def visualize(self, path):
        """Write a picture of the latest specialization's step (.html, .svg or .dot)."""
        parts = self._latest().program.parts
        return viz.render(self.views(), path, code=self.code, generated=parts)

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
            if isinstance(a, Tensor) and a._requires_grad:  # (backward accumulates into it)
                grad = None if a.grad is None else a.grad._data.shape
                guards.append((f"{input_label(i)} .grad", grad))
        for label, t in self._state_tensors().values():
            guards.append((label, _state_meta(t)))
        stepped = self._stepped_optimizers()
        for name, opt in self._optimizers().items():
            guards += _optimizer_guards(name, opt, any(opt is o for o in stepped))
        guards += [(f"binding {name}", identity(b[-1])) for name, b in self._bindings.items()]
        for name, module in self._watched_modules.items():
            modules = dict(module.named_modules())
            guards.append((f"module {name} training", tuple(m.training for m in modules.values())))
            guards += [
                (f"attribute {name}.{path}.{key}".replace("..", "."), value)
                for path, m in modules.items()
                for key, value in plain_attributes(m)
            ]
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

    def __call__(self, *args, **kwargs):
        if active_tracer() is not None:
            return self._trace_through(args, kwargs)
        # One call at a time: a specialization's planned memory serves every call, and its
        # runner writes state back
        with self._lock:
            try:
                return self._call(args, kwargs)
            except Exception as exc:
                at_users_line(exc)

    def _call(self, args, kwargs):
        if kwargs or any(type(a) in STRUCTURED for a in args):
            return self._call_structured(args, kwargs)
        spec = self.latest
        if spec is not None:  # the usual call: the same as the last (a symbolic argument is not)
            result = spec.runner(args)
            if result is not MISS:
                return result
        self._watch(*reachable_state(self.state_fn, args))
        signature = self.signature(args)
        spec = next(
            (
                s
                for s in reversed(self.specializations)
                if s.signature == signature and s.still_valid()
            ),
            None,
        )
        if spec is None:
            guards = self._guards(args)  # of the state the signature read, before tracing
            spec = self._compile(args, signature)
            if spec is None:
                return self.fn(*args)
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

    def _trace_through(self, args, kwargs):
        """Called inside another trace (tg.grad(tg.grad(f)), a compiled piece of a compiled
        step): trace ``fn`` in, so the outer program computes it, reading the outer values it
        closes over. The arguments to differentiate must require grad, as they do when this
        function is traced on its own; one that does not has no history to keep, so a
        differentiable alias of it will do."""
        leaves, structure = pytree.flatten((args, kwargs))
        owners = [i for i, s in enumerate(structure[1][0][1]) for _ in range(pytree.count(s))]
        leaves = [
            t.detach().requires_grad_() if owner in self.grad_argnums and not t.requires_grad else t
            for t, owner in zip(leaves, owners + [None] * (len(leaves) - len(owners)), strict=True)
        ]
        args, kwargs = pytree.unflatten(structure, leaves)
        return self.fn(*args, **kwargs)

    def _call_structured(self, args, kwargs):
        """A call with containers, NumPy arrays or keyword arguments: one compiled function of
        the tensors in them per structure, which rebuilds the arguments and calls ``fn``."""
        leaves, structure = pytree.flatten((args, kwargs))
        inner = self._by_structure.get(structure)
        if inner is None:
            inner = self._by_structure[structure] = self._for_structure(structure)
        try:
            return inner(*leaves)
        finally:
            self.latest, self.recompile_reasons = inner.latest, inner.recompile_reasons

    def _for_structure(self, structure) -> CompiledFunction:
        fn = self.fn
        rebuilt = calling_with(fn, structure)
        # the leaves of the arguments to differentiate are differentiated
        owners = [i for i, s in enumerate(structure[1][0][1]) for _ in range(pytree.count(s))]
        grads = tuple(k for k, i in enumerate(owners) if i in self.grad_argnums)
        inner = CompiledFunction(rebuilt, passes=self.passes, debug_nans=self.debug_nans,
                                 max_recompiles=self.max_recompiles, check=self.check,
                                 grad_argnums=grads)  # fmt: skip
        inner.state_fn = fn
        inner.arg_names = leaf_names(fn, structure)
        return inner

    def _use_guards(self, spec: StepProgram, guards) -> None:
        spec.guards = guards
        spec.__dict__.pop("guard", None)  # (a cached function of the guards replaced)
        if spec.module is not None:
            spec.runner = _function_runner(spec)
        else:
            spec.runner = step_runner(spec, guards, getattr(self.fn, "__name__", "function"))
        if spec.values_read or spec.captured:
            spec.runner = _checking(spec.runner, spec.still_valid)
        if spec.views and spec.module is None:
            spec.runner = _showing_views(spec.runner, spec)

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
            self._stepped_optimizers(),
        )

    def _stepped_optimizers(self) -> list:
        """The optimizers whose step() a trace went through (before the first trace, all it
        reaches may be)."""
        return self._stepped if self.specializations else list(self._optimizers().values())

    @gc_paused
    def _compile(self, args, signature) -> StepProgram | None:
        """A new specialization for the call, or None when the cache is full (see
        check_recompiles)."""
        if self.specializations:
            reason = signature_diff(self.specializations[-1].signature, signature)
            if reason == NO_CHANGE:
                reason = self.specializations[-1].invalid_reason()
            title = getattr(self.fn, "__name__", "function")
            if not check_recompiles(self, reason, len(self.specializations), title):
                return None
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


def _checking(runner: Callable, still_valid: Callable[[], bool]) -> Callable:
    """``runner``, refusing calls once its specialization is no longer valid."""

    def run(args, trusted=False):
        return runner(args, trusted) if still_valid() else MISS

    return run


def _showing_views(runner: Callable, spec: StepProgram) -> Callable:
    """``runner``, whose results that are eagerly views of an argument's or state's memory
    are those views (see specialize.eager_views)."""

    def run(args, trusted=False):
        result = runner(args, trusted)
        if result is MISS:
            return result
        leaves = pytree.flatten(result)[0]
        inputs = [args[i]._data for i in spec.tensor_args]
        inputs += [args[i].grad._data for i in spec.arg_grads]
        inputs += [t._data for t in spec.state()]
        arrays = [t._data for t in leaves]
        show_views(arrays, inputs, spec.views)
        for leaf, array in zip(leaves, arrays, strict=True):
            leaf._data = array
        return result

    return run


def _function_runner(spec: StepProgram) -> Callable:
    """The runner of a function calling no backward(): its guards, then its program."""
    guard, module = spec.guard, spec.module

    def run(args, trusted=False):
        if not trusted and not guard(args):
            return MISS
        return run_module_program(module, args)

    return run


def _runner_inputs(spec: StepProgram, names: dict) -> tuple[list[str], list[str]]:
    """The step's arguments (expressions), and the lines preparing them: a .grad read as an
    input is copied when it lives in the step's memory, and a sink's tensor the user kept
    after its owner dropped it moves to memory of its own (``Sink.keep_orphan``)."""
    arrays = [f"args[{i}]._data" for i in spec.tensor_args]
    lines = []
    for i in spec.arg_grads:  # (copied when in the step's memory, as the lifted .grad below)
        lines += [f"ga{i} = args[{i}].grad._data", f"if memory_of(ga{i}) in PLANNED:"]
        lines.append(f"    ga{i} = ga{i}.copy()")
        arrays.append(f"ga{i}")
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
    if spec.rebuild.args == (pytree.TENSOR,):  # the function returned one tensor
        lines.append("return wrap(asarray(r[0]))")
    else:
        lines.append(f"return rebuild([{', '.join(f'wrap(asarray(r[{i}]))' for i in range(n))}])")
    return lines


STRUCTURED = (tuple, list, dict, np.ndarray)  # arguments calls are flattened for


def calling_with(fn, structure) -> Callable:
    """``fn`` taking the tensors of arguments of ``structure`` (see tracegrad.pytree)."""

    def rebuilt(*leaves):
        args, kwargs = pytree.unflatten(structure, leaves)
        return fn(*args, **kwargs)

    rebuilt.__name__ = getattr(fn, "__name__", type(fn).__name__)
    return rebuilt


def leaf_names(fn, structure) -> list[str]:
    """Input names for the tensors of a structured call: the parameter's name, then the
    position or key within it (``batch_0``, ``batch_x``, ``state_h``)."""
    args, kwargs = structure[1]
    names = argument_names(fn, len(args[1]))
    found: list[str] = []
    for name, part in [*zip(names, args[1], strict=True), *zip(kwargs[1], kwargs[2], strict=True)]:
        _name_leaves(str(name), part, found)
    return found


def _name_leaves(prefix: str, structure, found: list[str]) -> None:
    if structure == pytree.TENSOR:
        found.append(prefix)
        return
    kind = structure[0]
    if kind in ("tuple", "list"):
        children = list(enumerate(structure[1]))
    elif kind in ("dict", "namedtuple"):
        keys = structure[1] if kind == "dict" else structure[1]._fields
        children = list(zip(keys, structure[2], strict=True))
    else:
        return
    for key, child in children:
        _name_leaves(f"{prefix}_{key}", child, found)


def _state_meta(t: Tensor) -> Shown:
    """A state tensor's guard: its type, requires_grad, its .grad's shape and (the program
    reads and updates these very tensors) its identity."""
    d, grad = t._data, None if t.grad is None else t.grad._data.shape
    dtype = dtype_name(d.dtype)
    meta = (d.shape, dtype, t._requires_grad, grad, id(t))
    needs = "requires grad" if t._requires_grad else "no grad"
    return Shown(meta, f"{dtype}{list(d.shape)} {needs}, .grad {grad or 'none'}")


def _optimizer_guards(name: str, opt, stepped: bool) -> list[tuple[str, object]]:
    """What a traced update depends on, labelled: each group's settings (see
    ``_optimizer_groups``) and, for an optimizer whose step the program traced, which state
    exists per parameter (one only reached, for its zero_grad say, keeps its own)."""
    guards = [
        (f"optimizer {name} group {i} {key}", fact)
        for i, facts in enumerate(_optimizer_groups(opt))
        for key, fact in facts
    ]
    if not stepped:
        return guards
    # Which state exists, and which tensor objects hold it (load_state_dict replaces them).
    state = tuple(
        (id(p), tuple((k, id(v)) for k, v in s.items())) for p, s in opt.state.items() if s
    )
    kinds = ", ".join(dict.fromkeys(k for s in opt.state.values() for k in s)) or "none"
    guards.append((f"optimizer {name} state", Shown(state, f"{kinds} for {len(state)} params")))
    return guards


def _optimizer_groups(opt) -> tuple:
    """What the traced update depends on in each parameter group: of a number it reads as an
    input (``opt.numbers``), only that it is one, and for those ``opt.zero_tested`` whether
    it is 0; any other setting by its value."""
    numbers = getattr(opt, "numbers", ())
    zero_tested = getattr(opt, "zero_tested", ())
    return tuple(
        tuple((k, _setting(k, v, numbers, zero_tested)) for k, v in g.items() if k != "params")
        for g in opt.param_groups
    )


def _setting(key: str, value, numbers, zero_tested):
    if key in numbers and is_number(value):
        fact = ("nonzero", value != 0) if key in zero_tested else ("number", type(value) is tuple)
        return Shown(fact, repr(value))
    return value if type(value) in PLAIN else repr(value)


def trace_step(compiled: CompiledFunction, args, signature) -> StepProgram:
    """Trace one call of a training step and generate its single function (the state it
    reaches is the one ``compiled._watch`` took in for this call)."""
    names = state_names(
        compiled._watched_modules, compiled._watched_optimizers, compiled._reached_tensors
    )
    # (optimizers by name too: their hyperparameters are inputs named after them)
    names.update((id(o), n) for n, o in compiled._optimizers().items())
    # (its watched modules' parameters and every tensor it reached or read before)
    grads_before = {id(t): (t, t.grad) for _, t in compiled._state_tensors().values()}
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
        leaves, structure = pytree.flatten(compiled.fn(*symbolic))
        results = [tracer.value_of(t) for t in leaves]
        targets, updated_args, new_values, updates = traced_updates(tracer, symbolic)
        sinks, sink_values = _collect_sinks(tracer, symbolic, args)
        graph = tracer.graph(results + new_values + sink_values, updates)
    _restore_grads(
        sinks, {**grads_before, **{id(a): (a, a.grad) for a in args if isinstance(a, Tensor)}}
    )
    python_reads = values_read(tracer)
    if not (tracer.backward_calls or tracer.optimizers):
        return trace_function(compiled, args, signature, names)
    _refuse_outside_history(tracer)
    log("graph", lambda: f"traced step: {len(graph.nodes)} nodes\n{graph}")
    report = Report(f"compiled step {getattr(compiled.fn, '__name__', '')}", signature)
    pass_results: list = []
    traced_graph, graph = graph, passes.run(graph, transforms(compiled.passes), pass_results)
    stored = range(len(results) + len(new_values), len(graph.outputs))  # (.grad, state)
    graph = returned_in_own_memory(graph, len(results), stored)
    report.unplanned_traced = traced_graph
    stage = "traced step (forward, backward and update)"
    report.stages.append((stage, pass_results))
    persistent = frozenset(v.name for v in graph.outputs[len(results) :])
    program = generate(
        [("step", graph)],
        "training step",
        compiled.debug_nans,
        compiled.passes,
        persistent,
        report=report,
    )
    if compiled.check:
        arrays = [a._data for a in args if isinstance(a, Tensor)]
        arrays += [args[i].grad._data for i in arg_grads]
        arrays += [t._data for t, _ in tracer.lifted.values()]
        check_stages(traced_graph, [(stage, traced_graph, pass_results)], arrays)
        run = functools.partial(program.call, "step")
        labels = step_labels(traced_graph, len(results))
        check_generated(traced_graph, run, arrays, "training step", labels)
    lifted_tensors = [t for t, _ in tracer.lifted.values()]
    noted = {f"optimizer{i}": o for i, o in enumerate(tracer.optimizers)}
    # Tensors that require grad and were read, however the function reached them: their
    # .grad (present or not) decides what the program computes, so it is guarded.
    read = {value.name: t for t, value in tracer.lifted.values() if t.requires_grad}
    for name, t in read.items():
        compiled._watched_tensors.setdefault(id(t), (f"state {name}", t))
    compiled._traced_optimizers.update(noted)
    compiled._stepped += [
        o for o in tracer.optimizers if all(o is not s for s in compiled._stepped)
    ]
    owners = {id(grad): t for t, grad in grads_before.values() if grad is not None}
    grad_of = {i: owners[id(t)] for i, t in enumerate(lifted_tensors) if id(t) in owners}
    return StepProgram(
        program,
        signature,
        lifted_tensors,
        targets,
        sinks,
        len(results),
        functools.partial(pytree.unflatten, structure),
        grad_of,
        report,
        tuple(i for i, a in enumerate(args) if isinstance(a, Tensor)),
        updated_args,
        _written_in_place(program.graph, program.parts[0][0].plan, len(results), list(updates)),
        values_read=python_reads,
        captured=_captures(compiled, lifted_tensors),
        arg_grads=arg_grads,
        views=eager_views(traced_graph, len(results)),
    )


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


def trace_function(compiled: CompiledFunction, args, signature, names) -> StepProgram:
    """Trace a function that calls no backward(): a forward and a generated backward, so that
    its outputs carry gradients to the inputs and state it read, as in eager mode."""
    arg_names = compiled.arg_names or argument_names(compiled.fn, len(args))
    traced = trace_call(compiled.fn, args, names, arg_names)
    title = f"compiled function {getattr(compiled.fn, '__name__', '')}"
    report = Report(title, signature)
    report.unplanned_traced = traced.graph
    module = build_module_program(
        traced, args, compiled.passes, compiled.debug_nans, report, compiled.check
    )
    module.report, module.lock = report, compiled._lock
    for t, value in zip(traced.lifted, traced.graph.inputs[-len(traced.lifted) :], strict=False):
        if t.requires_grad:
            compiled._watched_tensors.setdefault(id(t), (f"state {value.name}", t))
    return StepProgram(
        module.program,
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


def _captures(compiled: CompiledFunction, lifted: list[Tensor]) -> tuple:
    """Where the function finds the lifted tensors that are not state it guards already
    (parameters and buffers of the modules it reaches, tensors bound to its names, optimizer
    state, .grad)."""
    state = [*compiled._reached_tensors.values()]  # (bound to names the guards read again)
    for module in compiled._watched_modules.values():
        state += [*module.parameters(), *module.buffers()]
    owned = {id(t) for t in state} | {id(t.grad) for t in [*state, *lifted] if t.grad is not None}
    for opt in compiled._optimizers().values():
        owned.update(id(v) for st in opt.state.values() for v in st.values())
    return tuple(captures.find(compiled.state_fn, lifted, owned))


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
