"""The runner of a compiled step: one generated function per specialization that checks the
call against its guards and runs the step.

``RunnerBindings`` lists what the runner checks (the guards), reads and writes, by position:
the tensor arguments and the lifted state passed to the generated step (a ``.grad`` read
through its owner, since code outside may replace it), the results written back into updated
tensors, and those stored by sinks (tracegrad.codegen.buffers). ``build_runner`` renders
``runner.py.j2`` from them and loads it: only codegen writes Python source.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tracegrad.codegen import names as safe
from tracegrad.codegen.buffers import memory_of, planned_home, same_memory
from tracegrad.codegen.emit import _ENV
from tracegrad.codegen.guards import GuardBuilder
from tracegrad.codegen.loader import load
from tracegrad.random import generator
from tracegrad.tensor import Tensor, wrap


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS = _Miss()  # what a runner returns for a call its guards refuse


@dataclass
class RunnerBindings:
    """What a step's runner checks, passes to the generated step and does with its
    results."""

    guards: GuardBuilder  # its specialization's checks, made unless the call is trusted
    step: Callable  # the generated step
    planned: frozenset[int]  # id() of its planned buffers
    tensor_args: tuple[int, ...]  # argument positions passed as arrays, first
    arg_grads: tuple[int, ...]  # argument positions whose .grad is passed next
    # The lifted tensors, passed last; at the positions ``grad_of`` names, the tensor whose
    # .grad is read anew each run instead
    state: list[Tensor]
    grad_of: frozenset[int]
    n_results: int  # returned values, the step's first results
    updated: list[Tensor]  # tensors whose new values follow, written back
    # Of those, the ones that are a .grad: update index -> the position in ``state`` of the
    # tensor whose .grad it is (written back into the .grad that tensor had as the run began)
    updated_grads: dict[int, int]
    updated_args: tuple[int, ...]  # argument positions whose new values follow those
    written_in_place: frozenset[int]  # positions among the updates the step wrote in place
    sinks: list  # a tracegrad.codegen.buffers.Sink per result after the updates
    # Tensors, then argument positions, whose .grad the step replaces: dropped before it runs
    grads_replaced: tuple[Tensor, ...]
    arg_grads_replaced: tuple[int, ...]
    uses_rng: bool  # whether the step takes the generator last
    rebuild: Callable | None  # the returned structure from the results; None for one tensor


def build_runner(bindings: RunnerBindings, title: str) -> Callable:
    """A function ``run(args, trusted=False)``: the guards (MISS when one fails, skipped when
    ``trusted``), then the step on the call's arrays, writing back and storing results, and
    returning what the function returned."""
    guards = bindings.guards
    source = _ENV.get_template("runner.py.j2").render(
        title=title,
        checks=guards.checks,
        settings=guards.settings,
        b=bindings,
        arguments=_arguments(bindings),
        updated=_updated(bindings),
    )
    label = safe.comment(f"runner of {title}")
    return load(source, {}, label, {**guards.namespace(), **_names(bindings)})["run"]


def _arguments(b: RunnerBindings) -> list[str]:
    """The step's arguments, as expressions the runner evaluates."""
    arrays = [f"args[{i}].array" for i in b.tensor_args]
    arrays += [f"ga{i}" for i in b.arg_grads]
    arrays += [f"g{j}" if j in b.grad_of else f"lifted{j}.array" for j in range(len(b.state))]
    return [*arrays, "generator()"] if b.uses_rng else arrays


def _updated(b: RunnerBindings) -> list[tuple[str, bool]]:
    """The tensors updated, as expressions, each with whether the step wrote it in place."""
    targets = [
        f"grad{b.updated_grads[i]}" if i in b.updated_grads else f"updated{i}"
        for i in range(len(b.updated))
    ]
    targets += [f"args[{k}]" for k in b.updated_args]
    return [(target, i in b.written_in_place) for i, target in enumerate(targets)]


def _names(b: RunnerBindings) -> dict:
    """The runner's namespace: the step, runtime helpers, and the objects it reads."""
    names = {
        "MISS": MISS,
        "step": b.step,
        "errstate": np.errstate,
        "copyto": np.copyto,
        "asarray": np.asarray,
        "wrap": wrap,
        "rebuild": b.rebuild,
        "planned_home": planned_home,
        "memory_of": memory_of,
        "same_memory": same_memory,
        "PLANNED": b.planned,
        "generator": generator,
        "getrefcount": sys.getrefcount,
        # a .grad the owner, the sink and the runner's local name hold, and getrefcount's own
        # argument: nobody else can see it
        "ONLY_OWNER_AND_SINK": 4,
    }
    names.update((f"lifted{j}", t) for j, t in enumerate(b.state))
    names.update((f"updated{i}", t) for i, t in enumerate(b.updated))
    names.update((f"replaced{i}", t) for i, t in enumerate(b.grads_replaced))
    for k, sink in enumerate(b.sinks):
        names[f"sink{k}"] = sink
        if sink.kind == "grad" and sink.argument is None:
            names[f"owner{k}"] = sink.owner
    return names
