"""Module scopes: which ``nn.Module`` call made an op, for the tracer to record on its node.

``Module.__call__`` enters a scope around ``forward`` while a program is traced (``recording``
is on); the tracer reads the innermost one (``current``) for each node it records, as
torch.fx's ``nn_module_stack``. A scope is the module's path from the outermost module called
(``blocks.1.mlp.1``, as in ``named_modules()``) and its class (``ReLU``). The outermost call
takes the name the tracer knows it by (``model`` in a training step, so paths read as the
parameters' names do: ``model.0``); unnamed (``tg.compile(model)``), the nodes it makes
directly have no scope, as in torch.fx, and its submodules' paths start at their names.

This sits in the base layer, below ``nn``: it knows modules only by ``named_children()`` and
``named_modules()``, and never imports the tracer.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from tracegrad.errors import SourceLocation, frame_location, outside_tracegrad, user_frame


@dataclass(frozen=True)
class Scope:
    """A module call: its path (``encoder.layers.3.attn``) and class (``MultiheadAttention``),
    and the calls it is inside, outermost first (``outer``; not part of its equality, since
    the text form writes the innermost call only)."""

    path: str
    kind: str
    outer: tuple[Scope, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path} ({self.kind})"

    def chain(self) -> tuple[Scope, ...]:
        """The calls from the outermost to this one."""
        return (*self.outer, self)

    def inside(self, path: str, kind: str) -> Scope:
        """The scope of a call made in this one."""
        return Scope(path, kind, self.chain())


def common_scope(scopes) -> Scope | None:
    """The innermost call every one of ``scopes`` is in (a fused kernel's members'), or None."""
    chains = [s.chain() if s is not None else () for s in scopes]
    common = None
    for calls in zip(*chains, strict=False):
        if any(call != calls[0] for call in calls):
            break
        common = calls[0]
    return common


@dataclass
class _Entry:
    module: Any  # the nn.Module (a layer above this one)
    scope: Scope | None  # None for an outermost call the tracer has no name for
    caller: object  # the frame outside tracegrad that called the outermost module


class _Stack(threading.local):
    entries: list[_Entry]
    names: list[dict]  # what each recording tracer names modules, id -> name, innermost last
    # id(module) -> id(descendant) -> its path under the module, while recording
    paths: dict[int, dict[int, str]]

    def __init__(self):
        self.entries, self.names, self.paths = [], [], {}


_STACK = _Stack()


def recording() -> bool:
    """Whether module calls enter scopes (a tracer is recording on this thread)."""
    return bool(_STACK.names)


class record_scopes:  # noqa: N801 (a context manager, like no_grad)
    """While a tracer records a program, module calls enter scopes. ``names`` (id -> name)
    names outermost modules (``model`` in a training step)."""

    def __init__(self, names: dict[int, str]):
        self.names = names

    def __enter__(self):
        _STACK.names.append(self.names)

    def __exit__(self, *exc):
        _STACK.names.pop()
        if not _STACK.names:
            _STACK.paths.clear()


class entered:  # noqa: N801 (a context manager, Module.__call__'s)
    """The scope of ``module``'s call, for the ops and calls inside it."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        _STACK.entries.append(_entry(self.module, _STACK.entries))

    def __exit__(self, *exc):
        _STACK.entries.pop()


def _entry(module, entries: list[_Entry]) -> _Entry:
    kind = type(module).__name__
    if not entries:  # the outermost call
        name = _STACK.names[-1].get(id(module)) if _STACK.names else None
        return _Entry(module, Scope(name, kind) if name else None, _caller_frame())
    parent = entries[-1]
    name = _name_in(parent.module, module)
    if parent.scope is None:
        return _Entry(module, Scope(name, kind), parent.caller)
    return _Entry(module, parent.scope.inside(f"{parent.scope.path}.{name}", kind), parent.caller)


def current() -> Scope | None:
    """The innermost module call's scope."""
    return _STACK.entries[-1].scope if _STACK.entries else None


def _name_in(parent, module) -> str:
    """``module``'s path under ``parent``: a child's name, else a descendant's path (a
    module calling ``self.blocks[0]`` directly), else its class name in lower case. Each
    parent's table is made once per trace (a long nn.Sequential calls many children)."""
    paths = _STACK.paths.get(id(parent))
    if paths is None:
        paths = {id(child): name for name, child in parent.named_children()}
        for name, sub in parent.named_modules():
            paths.setdefault(id(sub), name)
        _STACK.paths[id(parent)] = paths
    return paths.get(id(module)) or type(module).__name__.lower()


def _caller_frame():
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and not outside_tracegrad(frame):
        frame = frame.f_back
    return frame


def op_location() -> SourceLocation | None:
    """Where the op being recorded was written: the innermost frame outside tracegrad, or,
    when that is the line calling the outermost module (a tracegrad layer such as
    ``nn.Sequential`` made the op, so the user's line says nothing about it), the line in
    the ``forward`` of the innermost module."""
    if not _STACK.entries:
        return user_frame()
    entry = _STACK.entries[-1]
    forward = getattr(type(entry.module).forward, "__code__", None)
    inside = None  # the line in the innermost module's forward
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if outside_tracegrad(frame):
            if frame is entry.caller and inside is not None:
                return inside
            return frame_location(frame)
        if inside is None and frame.f_code is forward:
            inside = frame_location(frame)
        frame = frame.f_back
    return inside
