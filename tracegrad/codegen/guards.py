"""A specialization's guards as generated code.

A compiled function or module checks on every call that the call matches a specialization:
argument shapes and dtypes, the parameters' metadata, optimizer settings, training flags.
``signature()`` computes all of that as a tuple to compare (and to explain a recompile); the
function generated here makes the same checks straight-line, against the objects and values
of one specialization, without building anything. A call it accepts has that specialization's
signature; one it refuses goes the slow way (it may refuse more: a module tree rebuilt from
other objects, say). Module trees, training flags and hyperparameters are read only when
``tracegrad.changes`` counted a change since they last passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tracegrad import changes, tape
from tracegrad.changes import CountedDict
from tracegrad.codegen import names as safe
from tracegrad.codegen.emit import _ENV
from tracegrad.codegen.loader import load
from tracegrad.tensor import Tensor


@dataclass
class Check:
    reads: list[str]  # statements binding what the condition reads
    fails: str  # the condition under which the call does not match


@dataclass
class GuardBuilder:
    """Checks and the names they refer to (objects and values of the specialization)."""

    checks: list[Check] = field(default_factory=list)
    # Checks of settings whose changes tracegrad.changes counts: made when the count moved
    settings: list[Check] = field(default_factory=list)
    names: dict = field(
        default_factory=lambda: {
            "Tensor": Tensor,
            "ndarray": np.ndarray,
            "THREAD": tape.thread_state,
            "CHANGES": changes.count,
        }
    )
    counts: dict = field(default_factory=dict)

    def name(self, prefix: str, value) -> str:
        """A name for ``value`` in the guard's namespace: the prefix and a number."""
        self.counts[prefix] = self.counts.get(prefix, -1) + 1
        name = f"{prefix}{self.counts[prefix]}"
        self.names[name] = value
        return name

    def key(self, key) -> str:
        """A dict key in a check: its literal when a str or int, else a name standing for it
        (the repr of another object could be any text)."""
        return safe.literal(key) if type(key) in (str, int) else self.name("Y", key)

    def check(self, fails: str, *reads: str) -> None:
        self.checks.append(Check(list(reads), fails))

    def setting(self, fails: str, *reads: str) -> None:
        """A check of a counted setting (a module tree, a training flag, a hyperparameter)."""
        self.settings.append(Check(list(reads), fails))

    def call(self, args, grad_mode: bool) -> None:
        """The number of arguments, grad mode, and each argument (tensor_guards' checks)."""
        self.check(f"len(args) != {len(args)} or THREAD.grad_enabled is not {grad_mode}")
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                self.check("not isinstance(a, Tensor)", f"a = args[{i}]")
                # (a tensor being traced holds a symbolic value, never an ndarray)
                self.check(f"not isinstance(d, ndarray) or {self.meta('a', a)}", "d = a.array")
            else:
                # (by type first: a tensor or an array would compare elementwise)
                fails = (
                    f"type(a) is not {self.name('C', type(a))} or (a,) != ({self.name('V', a)},)"
                )
                self.check(fails, f"a = args[{i}]")

    def meta(self, tensor: str, t: Tensor) -> str:
        """The condition that ``tensor`` (its array bound to d) differs from ``t`` now."""
        d = t.array
        dims = f"d.shape != {d.shape} or d.dtype != {self.name('D', d.dtype)}"
        return f"{dims} or {tensor}._requires_grad is not {t._requires_grad}"

    def build(self, title: str) -> Callable[[tuple], bool]:
        source = _ENV.get_template("guard.py.j2").render(
            title=title, checks=self.checks, settings=self.settings
        )
        return load(source, {}, safe.comment(f"guards of {title}"), self.namespace())["guard"]

    def namespace(self) -> dict:
        """The names the checks refer to, for a function made of them (each function built
        remembers the count at which its settings last passed)."""
        return {**self.names, "SEEN": [None]}


def step_guard(
    grad_mode, args, tensors, optimizers, modules, optimizer_groups, bindings, stepped=(),
    grads_unread=frozenset(),
) -> GuardBuilder:  # fmt: skip
    """The guards of a compiled step (for its runner): its arguments, the names it reaches its
    state by (``bindings``: a tracegrad.compiled.state.Binding each, read again), the watched
    ``tensors`` (and whether each has a .grad, of which shape, but for those whose id() is in
    ``grads_unread``: the program does not read it), the ``optimizers`` (their
    groups' settings as ``optimizer_groups`` computes them, and the state of those
    ``stepped``, whose update the program traced) and the trees of ``modules``, as they are
    now."""
    b = GuardBuilder()
    b.names["optimizer_groups"] = optimizer_groups
    b.call(args, grad_mode)
    for i, a in enumerate(args):  # backward() accumulates into an argument's .grad
        if isinstance(a, Tensor) and a._requires_grad:
            if a.grad is None:
                b.check(f"args[{i}].grad is not None")
            else:
                b.check(
                    f"g is None or g.array.shape != {a.grad.array.shape}", f"g = args[{i}].grad"
                )
    rebound = [
        f"{_read_again(b.name('N', bound.namespace), bound)} is not {b.name('R', bound.held)}"
        for bound in bindings
    ]
    if rebound:  # (a global bound to a new model, say)
        b.check(" or ".join(rebound))
    for t in tensors:
        name = b.name("T", t)
        b.check(b.meta(name, t), f"d = {name}.array")
        if id(t) in grads_unread:
            continue
        if t.grad is None:
            b.check(f"{name}.grad is not None")
        else:
            b.check(f"g is None or g.array.shape != {t.grad.array.shape}", f"g = {name}.grad")
    for opt in optimizers:
        _optimizer_checks(b, opt, optimizer_groups(opt), state=opt in stepped)
    names: dict[int, str] = {}
    for module in modules:
        _module_tree(b, module, names)
    return b


def _read_again(namespace: str, bound) -> str:
    """The expression reading a tracegrad.compiled.state.Binding anew from its ``namespace``."""
    if bound.kind == "cell":
        return f"{namespace}.cell_contents"
    if bound.kind == "global" or (bound.kind == "item" and isinstance(bound.namespace, dict)):
        return f"{namespace}.get({safe.literal(bound.key)})"
    if bound.kind == "item":  # of a list or tuple: one made shorter holds nothing there
        i = bound.key
        return f"({namespace}[{i}] if len({namespace}) > {i} else None)"
    return f"{namespace}.__dict__.get({safe.literal(bound.key)})"


def _module_tree(b: GuardBuilder, module, names: dict) -> tuple[list, list]:
    """Settings checks of ``module``'s tree as it is now: each submodule's training flag and
    the same submodules, parameters and buffers under the same names (every change to those
    is counted: see tracegrad.nn.Module). Returns the parameters and the buffers, each once,
    for checks of their metadata; ``names`` maps id() to the guard's name for each member."""
    modules = list(dict(module.named_modules()).values())
    for m in modules:
        names[id(m)] = names.get(id(m)) or b.name("M", m)
    params: list[Tensor] = []
    buffers: list[Tensor] = []
    b.names["plain_attributes"] = plain_attributes
    for m in modules:
        mod = names[id(m)]
        b.setting(f"{mod}.training is not {m.training}")
        b.setting(f"plain_attributes({mod}) != {b.name('A', plain_attributes(m))}")
        for table, prefix, found in (
            ("_modules", "M", None),
            ("_parameters", "P", params),
            ("_buffers", "B", buffers),
        ):
            entries = getattr(m, table)
            for value in entries.values():
                if value is not None and id(value) not in names:
                    names[id(value)] = b.name(prefix, value)
                    if found is not None:
                        found.append(value)
            same = [f"len({mod}.{table}) != {len(entries)}"]
            same += [
                f"{mod}.{table}.get({b.key(key)}) is not {names[id(v)] if v is not None else None}"
                for key, v in entries.items()
            ]
            b.setting(" or ".join(same))
    return params, buffers


def plain_attributes(module) -> tuple:
    """What a traced forward may have read from ``module`` besides its parameters, buffers
    and submodules: its plain attributes (numbers, flags, strings; ``eps``, ``p``) by value
    and its tensor attributes (a mask kept unregistered) by identity. Setting one is counted
    (see tracegrad.nn.Module)."""
    return tuple(
        (key, ("tensor", id(value)) if isinstance(value, Tensor) else value)
        for key, value in vars(module).items()
        if key != "training" and (isinstance(value, Tensor) or _plain_value(value))
    )


def _plain_value(value) -> bool:
    if type(value) is tuple:
        return all(map(_plain_value, value))
    return type(value) in PLAIN


def _optimizer_checks(b: GuardBuilder, opt, groups, state: bool = True) -> None:
    """An optimizer's parameter groups (what ``optimizer_groups`` computes from them, equal to
    ``groups``), then its state: the same tensors under the same keys for each parameter."""
    name = b.name("O", opt)
    facts = f"optimizer_groups({name}) != {b.name('E', groups)}"
    if all(type(g) is CountedDict for g in opt.param_groups):
        # The same group dicts; what they hold is read when the count moves
        held = [b.name("G", g) for g in opt.param_groups]
        same = [f"len(gs) != {len(held)}", *(f"gs[{i}] is not {g}" for i, g in enumerate(held))]
        b.check(" or ".join(same), f"gs = {name}.param_groups")
        b.setting(facts)
    else:
        b.check(facts)
    if not state:
        return
    if not any(opt.state.values()):
        # No state yet (plain SGD never has any): the signature lists none, whatever entries
        # the optimizer made empty.
        b.check("any(st.values())", f"st = {name}.state")
        return
    # In the order the optimizer made them (a dict lookup would hash each tensor in Python)
    b.check(f"len(st) != {len(opt.state)}", f"st = {name}.state")
    ids = b.name("K", [id(p) for p in opt.state])
    b.check(f"list(map(id, st)) != {ids}", "entries = list(st.values())")
    for i, entries in enumerate(opt.state.values()):
        same = [f"len(s) != {len(entries)}"]
        same += [f"s.get({b.key(key)}) is not {b.name('X', v)}" for key, v in entries.items()]
        b.check(" or ".join(same), f"s = entries[{i}]")


# Hyperparameter types a signature compares by value (anything else by repr)
PLAIN = frozenset({bool, int, float, str, tuple, type(None)})


def module_guard(grad_mode, args, module, title):
    """The guard of a compiled module: its arguments, and its tree as it is now: the same
    submodules, parameters (the same tensors, each with its shape, dtype and requires_grad)
    and buffers (the same tensors, each with its shape and dtype), and training flags."""
    b = GuardBuilder()
    b.call(args, grad_mode)
    names: dict[int, str] = {}
    params, buffers = _module_tree(b, module, names)
    for p in params:
        b.check(b.meta(names[id(p)], p), f"d = {names[id(p)]}.array")
    for buf in buffers:
        dims = f"d.shape != {buf.array.shape} or d.dtype != {b.name('D', buf.array.dtype)}"
        b.check(dims, f"d = {names[id(buf)]}.array")
    return b.build(title)
