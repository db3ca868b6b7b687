"""Where a compiled function finds the tensors it captures, so a call can tell whether the
same name still holds the same tensor.

A function reads tensors that are not its arguments: a closure variable, a global, an
attribute of ``self``, an item of a list kept in one (``saved_log_probs[3]``). Their values
are read anew on every call, but the program reads those very tensor objects: a caller that
refills the list, or binds the name to a new tensor, must get a new program. ``find`` looks for
each captured tensor along short paths of items and attributes from the function's names;
``Capture.holds`` reads the path again.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

from tracegrad.tensor import Tensor

_DEPTH = 3  # steps from a name: self.buffers[2] is two
_WIDE = 64  # items looked into per container


@dataclass(frozen=True)
class Capture:
    """A captured tensor and how the function reaches it (each step, with the length the
    container had, so a longer list is seen too)."""

    label: str  # "saved[3]", "self.mask"
    read: Callable[[], object]  # the object at the path now (a fresh read), or _GONE
    tensor: Tensor

    def holds(self) -> bool:
        return self.read() is self.tensor


_GONE = object()


def roots(fn) -> dict[str, object]:
    """The names a function reaches objects by: its closure, the globals it names, the
    object of a bound method."""
    found = {}
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        found["self"] = owner
        fn = fn.__func__
    code = getattr(fn, "__code__", None)
    if code is None:
        return found
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            found[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    globals_ = getattr(fn, "__globals__", {})
    found.update((n, globals_[n]) for n in code.co_names if n in globals_)
    return found


def find(fn, tensors: list[Tensor], owned: set[int]) -> list[Capture]:
    """A Capture for each of ``tensors`` found within ``_DEPTH`` steps of ``fn``'s names
    (those with id in ``owned``, such as parameters, are skipped: they are guarded already)."""
    wanted = {id(t) for t in tensors} - owned
    found: dict[int, Capture] = {}
    frontier = [(name, obj, (_root_reader(fn, name),)) for name, obj in roots(fn).items()]
    seen: set[int] = set()
    for _ in range(_DEPTH + 1):
        following = []
        for label, obj, steps in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if id(obj) in wanted and id(obj) not in found and isinstance(obj, Tensor):
                found[id(obj)] = Capture(label, _reader(steps), obj)
            following += _children(label, obj, steps)
        frontier = following
    return list(found.values())


def reachable_objects(fn, args=()):
    """(label, object) for what ``fn``'s names and ``args`` reach within ``_DEPTH`` steps of
    items and attributes, each object once."""
    frontier = [(name, obj, ()) for name, obj in roots(fn).items()]
    frontier += [(f"argument {i}", a, ()) for i, a in enumerate(args)]
    seen: set[int] = set()
    for _ in range(_DEPTH + 1):
        following = []
        for label, obj, steps in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            yield label, obj
            following += _children(label, obj, steps)
        frontier = following


def _children(label: str, obj, steps: tuple) -> list:
    if isinstance(obj, types.FunctionType):  # a function the traced code called: its names
        return _function_children(label, obj, steps)
    if isinstance(obj, (Tensor, types.ModuleType, type)):
        return []
    if isinstance(obj, (list, tuple)):
        return [
            (f"{label}[{i}]", item, (*steps, ("item", i, len(obj))))
            for i, item in enumerate(obj[:_WIDE])
        ]
    if isinstance(obj, dict):
        return [
            (f"{label}[{key!r}]", value, (*steps, ("key", key, len(obj))))
            for key, value in list(obj.items())[:_WIDE]
            if isinstance(key, (str, int))
        ]
    attributes = getattr(obj, "__dict__", None)
    if not isinstance(attributes, dict):
        return []
    return [
        (f"{label}.{key}", value, (*steps, ("attribute", key, None)))
        for key, value in list(attributes.items())[:_WIDE]
    ]


def _function_children(label: str, fn, steps: tuple) -> list:
    code = fn.__code__
    found = []
    for k, (name, cell) in enumerate(zip(code.co_freevars, fn.__closure__ or (), strict=False)):
        try:
            found.append((f"{label}.<{name}>", cell.cell_contents, (*steps, ("closure", k, None))))
        except ValueError:  # an empty cell
            continue
    namespace = fn.__globals__
    found += [
        (f"{label}.<{name}>", namespace[name], (*steps, ("function global", name, None)))
        for name in code.co_names
        if name in namespace
    ]
    return found


def _root_reader(fn, name: str) -> tuple:
    """The first step of a path: how to read ``name`` again."""
    if name == "self" and getattr(fn, "__self__", None) is not None:
        return ("constant", fn.__self__, None)
    code = fn.__code__
    if name in code.co_freevars:
        return ("cell", fn.__closure__[code.co_freevars.index(name)], None)
    return ("global", (fn.__globals__, name), None)


def _reader(steps: tuple) -> Callable[[], object]:
    def read():
        obj = _GONE
        for kind, key, size in steps:
            try:
                obj = _step(obj, kind, key, size)
            except (AttributeError, IndexError, KeyError, TypeError, ValueError):
                return _GONE
            if obj is _GONE:
                return _GONE
        return obj

    return read


def _step(obj, kind: str, key, size):
    if kind == "constant":
        return key
    if kind == "cell":
        return key.cell_contents
    if kind == "global":
        namespace, name = key
        return namespace.get(name, _GONE)
    if kind == "attribute":
        return vars(obj).get(key, _GONE)
    if kind == "closure":
        return obj.__closure__[key].cell_contents
    if kind == "function global":
        return obj.__globals__.get(key, _GONE)
    if len(obj) != size:  # (a list refilled with more or fewer items)
        return _GONE
    return obj[key]


def unchanged(read: tuple) -> bool:
    """Whether the tensors Python read while tracing, ``(tensor, version)`` each, keep the
    versions tracing left them with."""
    return all(t.version == version for t, version in read)


def still_hold(values_read: tuple, captured: tuple) -> bool:
    """Whether a program is still right about what guards made before tracing cannot know:
    the tensors Python read keep their versions and the names it captured tensors by still
    hold them."""
    return unchanged(values_read) and all(c.holds() for c in captured)


def what_changed(captured: tuple) -> str:
    """Why ``still_hold`` failed, in words, for a recompile reason."""
    lost = [c.label for c in captured if not c.holds()]
    if lost:
        return f"captured {lost[0]} is another tensor (or gone)"
    return "the value of a tensor Python read while tracing changed"
