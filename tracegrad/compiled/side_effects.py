"""Python side effects a compiled step cannot repeat, refused when tracing meets them.

Tracing runs the function's Python code once; the generated program repeats only its tensor
operations. Two side effects would then happen on the traced call alone, and later calls
would silently differ from eager ones:

- a parameter group changed while tracing (``scheduler.step()`` inside the step: the rates
  are read as inputs on every call, but nothing would change them again);
- a tensor the step computes stored where Python finds it later (``state["h"] = h``, an
  attribute of a module): after the call it would hold a tensor of the trace, not a value.

Both raise a TraceError saying what to write instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracegrad.compiled.captures import reachable_objects
from tracegrad.errors import TraceError
from tracegrad.tensor import Tensor, is_symbolic
from tracegrad.tracer.hyperparameters import group_settings

if TYPE_CHECKING:
    from tracegrad.optim import Optimizer

__all__ = ["group_settings", "refuse_changed_groups", "refuse_escaped_tensors"]


def refuse_changed_groups(before: list[tuple[Optimizer, list[dict]]]) -> None:
    """Raise (after putting the groups back) if tracing changed a group's settings."""
    for opt, groups in before:
        for i, (group, settings) in enumerate(zip(opt.param_groups, groups, strict=False)):
            now = {k: v for k, v in group.items() if k != "params"}
            if now == settings:
                continue
            changed = sorted(k for k in {*now, *settings} if now.get(k) != settings.get(k))
            key = changed[0]
            group.update(settings)
            for extra in set(now) - set(settings):
                del group[extra]
            raise TraceError(
                f"param group {i} of the {type(opt).__name__} optimizer changed while the step "
                f"was traced ({key!r}: {settings.get(key)!r} -> {now.get(key)!r}): Python code "
                "that changes a group (a learning-rate scheduler's step(), say) runs only when "
                "a step is traced, not on every call. Call it outside the compiled function: "
                "the rates are inputs of the step, so changing them between calls compiles "
                "nothing"
            )


def refuse_escaped_tensors(fn, args) -> None:
    """Raise if a tensor the trace computed is kept where the function's names reach."""
    for label, obj in reachable_objects(fn, args):
        if isinstance(obj, Tensor) and is_symbolic(obj):
            raise TraceError(
                f"the compiled function stored a tensor it computes in {label}: a compiled "
                "call repeats tensor operations, not Python assignments, so after the call "
                f"{label} would hold a tensor of the trace. Return the tensor instead (and "
                f"store it outside), or keep {label} a tensor made before the call and "
                "update it in place (copy_)"
            )
