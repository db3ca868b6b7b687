"""The state a compiled function reaches: the modules, optimizers and tensors it can name
(closure, globals, defaults, ``self``, arguments, and the attributes of a plain object
holding them, such as a trainer), what each is called in the graph, and the part of a call's
signature they make (their metadata, optimizer settings and state, module trees, and the
names that may be bound to other objects later).

Everything here is state, never a constant: the program reads these tensors anew on every
call, and guards make a change to what they are recompile.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracegrad.codegen.guards import PLAIN, plain_attributes
from tracegrad.compiled.signature import Shown, dtype_name, identity, training_modes
from tracegrad.tensor import Tensor
from tracegrad.tracer.hyperparameters import is_number

if TYPE_CHECKING:
    from tracegrad.nn import Module
    from tracegrad.optim import Optimizer


@dataclass(frozen=True)
class Binding:
    """A name the function reaches state by that may be bound to another object later (a
    global, a closure variable, an attribute of a trainer, an item of a dict), and where to
    read it again."""

    namespace: object  # a closure cell, a globals dict, the object holding the attribute, or
    # the container holding the item
    kind: str  # "cell", "global", "attribute" or "item"
    key: str | int  # the name in that namespace, or the item's key or index
    held: object  # what it holds now


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


_WIDE = 64  # items looked into per container holding state


def _held(name: str, obj) -> list[tuple[str, tuple, object]]:
    """What a holder of state holds: (name, reader, value) for each attribute of a plain
    object, each item of a dict with string keys, of a list or of a tuple."""
    if isinstance(obj, dict):
        items = [(k, v) for k, v in list(obj.items())[:_WIDE] if isinstance(k, str)]
        return [(f"{name}[{k!r}]", (obj, "item", k), v) for k, v in items]
    if isinstance(obj, (list, tuple)):
        return [(f"{name}[{i}]", (obj, "item", i), v) for i, v in enumerate(obj[:_WIDE])]
    if _holds_state(obj):
        return [
            (f"{name}.{k}", (obj, "attribute", k), v)
            for k, v in vars(obj).items()
            if isinstance(k, str)
        ]
    return []


def reachable_state(fn, args) -> tuple[dict, dict, dict, dict]:
    """Modules and optimizers the function can reach (closure, globals it names, default
    arguments, the object of a bound method, arguments, and what those hold one step down:
    the attributes of plain objects, such as a trainer holding its model and optimizer, and
    the items of dicts, lists and tuples, such as ``{"model": m, "opt": o}``), and tensors
    requiring grad, by the name it uses for them: they give inputs readable names and are
    guarded. Last, for the names that can be bound to another object later (a global, a
    closure variable, an attribute or item of such a holder), where to read them again: name
    -> its ``Binding``."""
    found, readers = {}, {}
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        found["self"] = owner
    code = getattr(fn, "__code__", None)
    if code is not None:
        cells = fn.__closure__ or ()
        for name, cell in zip(code.co_freevars, cells, strict=False):
            found[name], readers[name] = cell.cell_contents, (cell, "cell", name)
        for name in code.co_names:
            if name in fn.__globals__:
                found[name] = fn.__globals__[name]
                readers[name] = (fn.__globals__, "global", name)
        defaults = fn.__defaults__ or ()
        positional = code.co_varnames[: code.co_argcount]
        found.update(zip(positional[len(positional) - len(defaults) :], defaults, strict=True))
        found.update(fn.__kwdefaults__ or {})
    found.update((f"arg{i}", a) for i, a in enumerate(args))
    holder_of = {}
    for name, obj in list(found.items()):
        for held_name, reader, value in _held(name, obj):
            if held_name not in found:
                found[held_name], readers[held_name] = value, reader
                holder_of[held_name] = name
    found = {n: o for n, o in found.items() if not isinstance(o, type)}  # classes are no state
    modules = {n: o for n, o in found.items() if is_module(o)}
    optimizers = {n: o for n, o in found.items() if _is_optimizer(o)}
    tensors = {n: o for n, o in found.items() if isinstance(o, Tensor) and o.requires_grad}
    state = {**modules, **optimizers, **tensors}
    # a holder of state is read again too (a new trainer may hold a new model)
    holders = {holder_of[n] for n in state if n in holder_of}
    bound = {n: Binding(*readers[n], found[n]) for n in [*state, *holders] if n in readers}
    return modules, optimizers, tensors, bound


def state_names(modules, optimizers, tensors) -> dict[int, str]:
    names = {id(t): n for n, t in tensors.items()}
    for prefix, opt in optimizers.items():
        for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, Tensor):
                    names[id(value)] = f"{prefix}.{key}{i}"
    for prefix, module in modules.items():
        names[id(module)] = prefix  # (its scope's path in the graph)
        for n, t in [*module.named_parameters(), *module.named_buffers()]:
            names[id(t)] = f"{prefix}.{n}"
            if t.grad is not None:
                names[id(t.grad)] = f"{prefix}.{n}.grad"
    return names


class ReachedState:
    """What a compiled function reaches, as its last slow call found it (a name may be bound
    to a new model later), and what its traces read and stepped."""

    def __init__(self, fn):
        self.fn = fn  # where the state is looked for (closure, globals)
        self.modules: dict[str, Module] = {}  # reached by name
        self.named_optimizers: dict[str, Optimizer] = {}
        self.tensors: dict[str, Tensor] = {}  # requiring grad, by the name reaching them
        self.bindings: dict[str, Binding] = {}  # by the rebindable name
        # Tensors requiring grad it reached or read, and optimizers its tracing stepped
        self.watched_tensors: dict[int, tuple[str, Tensor]] = {}
        self.traced_optimizers: dict[str, Optimizer] = {}
        self.traced_modules: dict[str, Module] = {}  # called while tracing, not reached by name
        self.stepped: list = []  # the optimizers whose step() a trace went through
        # id() of the state tensors whose .grad, as a call starts, some trace looked at, and
        # of those no trace did (zero_grad() drops it first): the signature leaves that out
        self.grads_looked_at: set[int] = set()
        self.grads_unread: frozenset[int] = frozenset()

    def watch(self, args) -> None:
        """Take in what the function reaches now (see reachable_state)."""
        self.modules, self.named_optimizers, self.tensors, self.bindings = reachable_state(
            self.fn, args
        )
        for name, t in self.tensors.items():
            self.watch_tensor(name, t)

    def watch_tensor(self, name: str, t: Tensor) -> None:
        self.watched_tensors.setdefault(id(t), (f"state {name}", t))

    def optimizers(self) -> dict[str, Optimizer]:
        """The optimizers reached by name, then those found only by tracing the function."""
        reached = self.named_optimizers
        seen = {id(o) for o in reached.values()}
        found = {n: o for n, o in self.traced_optimizers.items() if id(o) not in seen}
        return {**reached, **found}

    def state_tensors(self) -> dict[int, tuple[str, Tensor]]:
        """id -> (label, tensor) of the state the program may read: the watched modules'
        parameters as they are now (one may have been replaced), then the tensors it read."""
        state: dict[int, tuple[str, Tensor]] = {}
        for module_name, module in self.all_modules().items():
            for n, p in module.named_parameters():
                state.setdefault(id(p), (f"state {module_name}.{n}", p))
        for key, entry in self.watched_tensors.items():
            state.setdefault(key, entry)
        return state

    def stepped_optimizers(self, traced_before: bool) -> list:
        """The optimizers whose step() a trace went through (before the first trace, all it
        reaches may be)."""
        return self.stepped if traced_before else list(self.optimizers().values())

    def all_modules(self) -> dict[str, Module]:
        """The modules reached by name, then those a trace called that are no part of them
        (their guards check the whole tree of each)."""
        return {**self.modules, **_outside(self.traced_modules, self.modules.values())}

    def note_called(self, modules) -> None:
        """A trace called ``modules`` (in the order first called)."""
        known = {id(m) for m in self.traced_modules.values()}
        fresh = [m for m in modules if id(m) not in known]
        count = len(self.traced_modules)
        self.traced_modules.update((f"module{count + i}", m) for i, m in enumerate(fresh))

    def note_stepped(self, optimizers) -> None:
        """A trace went through the step() of ``optimizers``."""
        self.traced_optimizers.update((f"optimizer{i}", o) for i, o in enumerate(optimizers))
        self.stepped += [o for o in optimizers if all(o is not s for s in self.stepped)]

    def note_grads_read(self, looked_at: set[int]) -> None:
        """A trace looked at the .grad of ``looked_at`` (id()s) as its call found it. A
        program is right whatever .grad a tensor has that it never looked at (its runner
        drops what it replaces), so the signature leaves out .grad of the state tensors no
        trace looked at."""
        self.grads_looked_at |= looked_at
        self.grads_unread = frozenset(self.state_tensors()) - self.grads_looked_at

    def guarded(self) -> frozenset[int]:
        """id() of what a call's guards check now: the state tensors, the optimizers and
        those whose state is checked. A trace that reaches more (an optimizer only its step()
        call led to) made a program whose guards were written without it."""
        stepped = self.stepped_optimizers(traced_before=True)
        ids = [*self.state_tensors(), *map(id, self.optimizers().values()), *map(id, stepped)]
        return frozenset([*ids, *map(id, self.all_modules().values())])

    def names(self) -> dict[int, str]:
        """id -> the name of each state tensor, and of each optimizer (its hyperparameters are
        inputs named after it), for the graph's inputs."""
        found = state_names(self.modules, self.named_optimizers, self.tensors)
        found.update((id(o), n) for n, o in self.optimizers().items())
        return found

    def owned(self, lifted: list[Tensor]) -> set[int]:
        """id() of the lifted tensors this state already guards (parameters and buffers of
        the modules, tensors bound to names, optimizer state, .grad)."""
        state = [*self.tensors.values()]
        for module in self.all_modules().values():
            state += [*module.parameters(), *module.buffers()]
        owned = {id(t) for t in state}
        owned |= {id(t.grad) for t in [*state, *lifted] if t.grad is not None}
        for opt in self.optimizers().values():
            owned.update(id(v) for st in opt.state.values() for v in st.values())
        return owned

    def signature(self, traced_before: bool) -> list[tuple[str, object]]:
        """The state's part of a call's signature: each tensor's metadata, each optimizer's
        settings (and state, for one whose step was traced), the rebindable names and the
        module trees."""
        unread = self.grads_unread
        guards: list[tuple[str, object]] = [
            (label, _state_meta(t, id(t) not in unread))
            for label, t in self.state_tensors().values()
        ]
        stepped = self.stepped_optimizers(traced_before)
        for name, opt in self.optimizers().items():
            guards += _optimizer_guards(name, opt, any(opt is o for o in stepped))
        guards += [(f"binding {name}", identity(b.held)) for name, b in self.bindings.items()]
        for name, module in self.all_modules().items():
            guards += _module_guards(name, module)
        return guards


def _outside(modules: dict[str, Module], owners) -> dict[str, Module]:
    """Those of ``modules`` that are not in the tree of an owner or of another of them."""
    inside = {id(sub) for owner in owners for sub in owner.modules() if sub is not owner}
    inside |= {id(owner) for owner in owners}
    for m in modules.values():
        inside |= {id(sub) for sub in m.modules() if sub is not m}
    return {name: m for name, m in modules.items() if id(m) not in inside}


def _module_guards(name: str, module) -> list[tuple[str, object]]:
    """A reached module's training flags, plain attributes, and each submodule and buffer by
    identity (the program is the forward they traced)."""
    modules = dict(module.named_modules())
    guards: list[tuple[str, object]] = [
        (f"module {name} training", training_modes(tuple(m.training for m in modules.values())))
    ]
    guards += [
        (f"attribute {name}.{path}.{key}".replace("..", "."), value)
        for path, m in modules.items()
        for key, value in plain_attributes(m)
    ]
    members = [*modules.items(), *module.named_buffers()]
    guards += [(f"member {name}.{path}".rstrip("."), identity(m)) for path, m in members]
    return guards


def _state_meta(t: Tensor, with_grad: bool = True) -> Shown:
    """A state tensor's guard: its type, requires_grad, its .grad's shape (unless no program
    reads it: ``with_grad``) and (the program reads and updates these very tensors) its
    identity."""
    d, grad = t.array, None if t._grad is None else t._grad.array.shape
    dtype = dtype_name(d.dtype)
    shown = f".grad {grad or 'none'}" if with_grad else "any .grad"
    if not with_grad:
        grad = "any"
    meta = (d.shape, dtype, t._requires_grad, grad, id(t))
    needs = "requires grad" if t._requires_grad else "no grad"
    return Shown(meta, f"{dtype}{list(d.shape)} {needs}, {shown}", STATE_ASPECTS)


STATE_ASPECTS = ("shape", "dtype", "requires_grad", ".grad", "tensor")  # of _state_meta's fact


def _optimizer_guards(name: str, opt, stepped: bool) -> list[tuple[str, object]]:
    """What a traced update depends on, labelled: each group's settings (see
    ``optimizer_groups``) and, for an optimizer whose step the program traced, which state
    exists per parameter (one only reached, for its zero_grad say, keeps its own)."""
    guards = [
        (f"optimizer {name} group {i} {key}", fact)
        for i, facts in enumerate(optimizer_groups(opt))
        for key, fact in facts
    ]
    if not stepped:
        return guards
    # Which state exists, and which tensor objects hold it (load_state_dict replaces them).
    state = tuple(
        (id(p), tuple((k, id(v)) for k, v in s.items())) for p, s in opt.state.items() if s
    )
    kinds = ", ".join(dict.fromkeys(k for s in opt.state.values() for k in s))
    held = f"for {len(state)} parameters ({kinds})" if state else None
    shown = Shown((held, state), f"{kinds or 'none'} for {len(state)} params", ("state", "tensors"))
    guards.append((f"optimizer {name} ({type(opt).__name__}) state", shown))
    return guards


def optimizer_groups(opt) -> tuple:
    """What the traced update depends on in each parameter group: of a number it reads as an
    input (``opt.numbers``), only that it is one, and for those ``opt.zero_tested`` whether
    it is 0; any other setting by its value (not the entries schedulers keep for themselves,
    ``opt.schedule_keys``)."""
    numbers = getattr(opt, "numbers", ())
    zero_tested = getattr(opt, "zero_tested", ())
    unread = {"params", *getattr(opt, "schedule_keys", ())}
    return tuple(
        tuple((k, _setting(k, v, numbers, zero_tested)) for k, v in g.items() if k not in unread)
        for g in opt.param_groups
    )


def _setting(key: str, value, numbers, zero_tested):
    if key in numbers and is_number(value):
        fact = ("nonzero", value != 0) if key in zero_tested else ("number", type(value) is tuple)
        return Shown(fact, repr(value))
    return value if type(value) in PLAIN else repr(value)


@dataclass
class Primed:
    """State made ahead of a compiled step's first trace: ``entries`` of ``optimizer``'s
    state for ``param`` (see ``prime_optimizer_state``)."""

    optimizer: Optimizer
    param: Tensor
    entries: dict


def prime_optimizer_state(optimizers) -> list[Primed]:
    """Make the state each optimizer's first update of each of its parameters starts from
    (``Optimizer.initial_state``), where it has none, so a step traced now is the step of
    every later call. Only for parameters requiring grad; the caller takes back what the
    traced program turns out not to read (``unprime``): that parameter was not stepped."""
    primed = []
    for opt in optimizers:
        if not hasattr(opt, "initial_state"):  # (an optimizer of another library)
            continue
        for group in opt.param_groups:
            for p in group["params"]:
                if not (p.requires_grad and not opt.state.get(p)):
                    continue
                entries = opt.initial_state(p, group)
                if entries:
                    opt.state.setdefault(p, {}).update(entries)
                    primed.append(Primed(opt, p, entries))
    return primed


def unprime(primed: list[Primed], read: set[int]) -> None:
    """Take back the primed state of each parameter none of whose entries are in ``read``
    (id()s of the tensors the traced program reads)."""
    for entry in primed:
        if not any(id(v) in read for v in entry.entries.values()):
            state = entry.optimizer.state
            for key in entry.entries:
                state[entry.param].pop(key, None)
            if not state[entry.param]:
                del state[entry.param]
