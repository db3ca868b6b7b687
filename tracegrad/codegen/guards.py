"""A specialization's guards as generated code.

A compiled function checks on every call that the call matches a specialization: argument
shapes and dtypes, the watched parameters' metadata, optimizer settings, training flags.
``signature()`` computes all of that as a tuple to compare (and to explain a recompile); the
function generated here makes the same checks straight-line, against the objects and values
of one specialization, without building anything. A call it accepts has that specialization's
signature; one it refuses goes the slow way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracegrad import tape
from tracegrad.codegen.emit import _ENV
from tracegrad.codegen.loader import load
from tracegrad.tensor import Tensor


@dataclass
class GuardSpec:
    """What a guard checks: ``args`` (each a Tensor or a plain value), ``tensors`` watched
    tensors, ``optimizers`` as (optimizer, its guard value), ``modules`` whose training flags
    are checked, and the function computing an optimizer's guard value."""

    grad_mode: bool
    args: tuple
    tensors: list
    optimizers: list
    modules: list
    optimizer_guard: Callable


def build_guard(spec: GuardSpec, title: str) -> Callable[[tuple], bool]:
    """The generated guard function for the call state ``spec`` describes (read now)."""
    namespace: dict = {
        "Tensor": Tensor,
        "is_grad_enabled": tape.is_grad_enabled,
        "optimizer_guard": spec.optimizer_guard,
    }
    counts: dict[str, int] = {}

    def constant(prefix: str, value) -> str:
        """A name for ``value`` in the guard's namespace: the prefix and a number."""
        counts[prefix] = counts.get(prefix, -1) + 1
        name = f"{prefix}{counts[prefix]}"
        namespace[name] = value
        return name

    args = []
    for a in spec.args:
        if isinstance(a, Tensor):
            d = a._data
            args.append(
                dict(
                    tensor=True,
                    shape=d.shape,
                    dtype=constant("D", d.dtype),
                    requires_grad=a._requires_grad,
                )
            )
        else:
            args.append(dict(tensor=False, value=constant("V", a)))
    tensors = [
        dict(
            name=constant("T", t),
            shape=t._data.shape,
            dtype=constant("D", t._data.dtype),
            requires_grad=t._requires_grad,
            grad_shape=None if t.grad is None else t.grad._data.shape,
        )
        for t in spec.tensors
    ]
    optimizers = [
        dict(name=constant("O", opt), expected=constant("E", value))
        for opt, value in spec.optimizers
    ]
    training = [dict(name=constant("M", m), value=m.training) for m in spec.modules]
    source = _ENV.get_template("guard.py.j2").render(
        title=title,
        grad_mode=spec.grad_mode,
        args=args,
        tensors=tensors,
        optimizers=optimizers,
        training=training,
    )
    return load(source, {}, f"guards of {title}", namespace)["guard"]
