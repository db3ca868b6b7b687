"""Returned values and the memory they share: which results are eagerly views of an input
(and are returned as those views), and which must be copied so that the caller never holds
an input's, an update's or a constant's memory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracegrad.ir.core import CONSTANT
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS
from tracegrad.passes.memory import aliases


def returned_in_own_memory(graph: Graph, n_returned: int, kept=range(0)) -> Graph:
    """A copy of ``graph`` whose first ``n_returned`` outputs, and those at positions ``kept``
    (a step's .grad and optimizer state), are memory of their own: one that is an input, the
    new value of an input updated in place, a view of those, or a constant, as passes may
    leave it (``x * 1`` is ``x``, the gradient of ``x * w`` is ``w``), is copied. The caller
    may keep and write what a call returns, and the step may update that input in place, as
    eagerly; neither must reach the other, nor the program's constants."""
    root = aliases(graph)
    producers = graph.producers()
    # inputs, and new values of inputs (written into the input's memory after the call)
    inputs = set(graph.inputs) | {root[v] for v in graph.updates.values()}

    def shared(v) -> bool:
        base = root[v]
        node = producers.get(base)
        return base in inputs or (node is not None and node.op == CONSTANT)

    positions = [*range(n_returned), *kept]
    copied = [i for i in positions if shared(graph.outputs[i])]
    if not copied:
        return graph
    graph = graph.copy()
    outputs = list(graph.outputs)
    names = [f"{outputs[i].name}_copy{i}" for i in copied]
    copies = graph.copy_where_made([outputs[i] for i in copied], names)
    for i, copy in zip(copied, copies, strict=True):
        outputs[i] = copy
    graph.outputs = outputs
    return graph


# View ops whose eager result shares its input's memory (a getitem with index tensors copies)
_SHOWING = frozenset({"getitem", "reshape", "permute", "broadcast_to", "stop_gradient"})


def eager_views(graph: Graph, n_returned: int) -> tuple:
    """The returned values that eagerly are views of an input's memory (``return x.t()``, also
    of an input updated in place first: ``x.mul_(2); return x[0]``): (output index, input
    position, the view ops from the input's memory) each. The compiled call returns them as
    the same views of the input's memory, so later writes to it show in them as eagerly."""
    position = {v: i for i, v in enumerate(graph.inputs)}
    names = {v.name: i for i, v in enumerate(graph.inputs)}
    for name, new in graph.updates.items():
        position.setdefault(new, names[name])
    shapes = [v.type.shape for v in graph.inputs]
    return views_of(graph, range(n_returned), position, shapes)


def views_of(graph: Graph, positions, bases: dict, shapes: list) -> tuple:
    """The outputs at ``positions`` that are views of a base (``bases``: value -> its
    number, ``shapes`` by number): (output index, base number, the view ops from the base)."""
    producers = graph.producers()
    found = []
    for k in positions:
        chain, value = [], graph.outputs[k]
        while value not in bases:
            node = producers.get(value)
            if node is None or node.op not in _SHOWING or len(node.inputs) != 1:
                break
            chain.append((node.op, dict(node.attrs)))
            value = node.inputs[0]
        steps = tuple(reversed(chain))
        if value in bases and _shares(shapes[bases[value]], steps):
            found.append((k, bases[value], steps))
    return tuple(found)


def _shares(shape, chain) -> bool:
    """Whether the view ops of ``chain`` show memory of their input (a reshape of a broadcast
    copies), tried on a stand-in array of ``shape``."""
    probe = array = np.zeros(shape)
    for op, attrs in chain:
        array = OPS[op].impl(array, **attrs)
    return np.may_share_memory(array, probe)


def show_views(results: list, inputs: list, views: Sequence) -> None:
    """Replace the results ``eager_views`` named by those views of the inputs' arrays."""
    for k, i, chain in views:
        array = inputs[i]
        for op, attrs in chain:
            array = OPS[op].impl(array, **attrs)
        if np.may_share_memory(array, inputs[i]):  # (this input's layout may make a copy)
            results[k] = array
