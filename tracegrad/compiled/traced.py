"""Tracing one call of a function into a graph: its tensor arguments become named inputs,
the tensors it reads from outside are lifted to inputs, and what it updates in place becomes
the graph's updates. Also the names of inputs, and calls with containers and keywords, whose
tensors are the inputs of a function rebuilding them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tracegrad import pytree, tape
from tracegrad.compiled.views import eager_views
from tracegrad.ir.graph import Graph
from tracegrad.logs import log, timed
from tracegrad.tensor import Tensor
from tracegrad.tracer import Tracer, tracing


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
    modules_called: tuple = ()  # the modules whose forward ran while tracing


def values_read(tracer: Tracer) -> tuple:
    """The tensors from outside whose value Python read while tracing, with their versions as
    tracing left them: the program is right while they keep them."""
    return tuple((t, t.version) for t, _ in tracer.values_read.values())


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
        now = symbolic[i].array.value
        if now is not given:
            updated_args.append(i)
            new_values.append(now)
            updates[given.name] = now
    return targets, tuple(updated_args), new_values, updates


@timed("trace")
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
    called = tuple(tracer.modules_called)
    return Traced(graph, lifted, targets, len(outs), structure, updated_args, read, views, called)


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
