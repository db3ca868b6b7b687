"""The reverse-mode pass: derive gradients of a traced graph, and split forward from backward.

The forward graph is replayed with symbolic tensors while the eager tape records, then the tape
engine runs backward on symbolic cotangents. Each op's VJP rule from the registry (the same rule
eager autograd uses) thereby emits the backward nodes, and a custom Function's own backward is
traced in when the engine reaches it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from tracegrad import tape
from tracegrad.ir.core import CONSTANT, CUSTOM, FUSED, Node, Value
from tracegrad.ir.graph import Graph, body_of
from tracegrad.logs import timed
from tracegrad.ops import CHEAP, OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.memory import aliases
from tracegrad.passes.pipeline import register_pass
from tracegrad.tensor import Tensor, apply, wrap
from tracegrad.tracer import Tracer, tracing


def replay(graph: Graph, tracer: Tracer, requires_grad=frozenset()):
    """Re-run ``graph`` under ``tracer``; returns tensors for its outputs and its inputs."""
    env: dict[Value, Tensor] = {}
    for v in graph.inputs:
        wants = v.name in requires_grad and v.type.dtype.is_floating_point
        env[v] = tracer.add_input(v.type, v.name, requires_grad=wants)
    inputs = [env[v] for v in graph.inputs]
    for node in graph.nodes:
        tracer.replayed = node
        outs = _replay_node(node, [env[v] for v in node.inputs], tracer)
        env.update(zip(node.outputs, outs, strict=True))
    tracer.replayed = None
    return [env[v] for v in graph.outputs], inputs


def _replay_node(node, inputs, tracer: Tracer) -> tuple[Tensor, ...]:
    if node.op == CONSTANT:
        return (wrap(node.attrs["value"]),)
    if node.op == FUSED:  # differentiate the members one by one
        body = body_of(node)
        env = dict(zip(body.inputs, inputs, strict=True))
        for member in body.nodes:
            # (its nodes and their gradients keep the member's own scope, the kernel's line)
            tracer.replayed = dataclasses.replace(member, location=node.location)
            env[member.outputs[0]] = apply(
                OPS[member.op], [env[v] for v in member.inputs], member.attrs
            )
        return (env[body.outputs[0]],)
    if node.op == CUSTOM:
        tensors = iter(inputs)
        args = [next(tensors) if slot[0] == "t" else slot[1] for slot in node.attrs["args"]]
        result = node.attrs["fn"].apply(*args)
        return result if isinstance(result, tuple) else (result,)
    return (apply(OPS[node.op], inputs, node.attrs),)


@register_pass("inline_custom")
def inline_custom(graph: Graph) -> Graph:
    """Expand custom Function nodes into their traced forward ops."""
    if not any(node.op == CUSTOM for node in graph.nodes):
        return graph
    tracer = Tracer(mode="inline")
    with tracing(tracer), tape.no_grad():
        outputs = [tracer.value_of(t) for t in replay(graph, tracer)[0]]
    return tracer.graph(outputs)


@timed("autodiff")
def differentiate(
    graph: Graph, wrt: list[str], n_differentiable: int | None = None, zero_fill: bool = True
):
    """The joint graph: ``graph``'s outputs, then d(outputs)/d(wrt) for each name in ``wrt``.

    Only the first ``n_differentiable`` outputs (default: all) are differentiated. The joint
    graph gets one extra input per differentiated output that depends on ``wrt``: its cotangent.
    Returns the joint graph, the cotangent input names and the output positions they belong
    to. Inputs in ``wrt`` that no output depends on get zero gradients; with
    ``zero_fill=False`` they get none, and the positions in ``wrt`` that do are returned last.
    """
    tracer = Tracer(mode="inline")
    n_differentiable = len(graph.outputs) if n_differentiable is None else n_differentiable
    with tracing(tracer), tape.enable_grad():
        outs, inputs = replay(graph, tracer, requires_grad=frozenset(wrt))
        positions = [i for i, t in enumerate(outs[:n_differentiable]) if t.requires_grad]
        diff = [(graph.outputs[i], outs[i]) for i in positions]
        seeds = [tracer.add_input(t.tensor_type, f"grad_{v.name}") for v, t in diff]
        by_name = {v.name: t for v, t in zip(graph.inputs, inputs, strict=True)}
        targets = [by_name[name] for name in wrt]
        grads: list[Tensor | None] = [None] * len(targets)
        if diff:
            grads = tape.run_backward(
                [t for _, t in diff], seeds, retain_graph=True, create_graph=False, capture=targets
            )
        if zero_fill:
            grads = [g if g is not None else _zeros(t) for g, t in zip(grads, targets, strict=True)]
        outputs = [tracer.value_of(t) for t in [*outs, *grads] if t is not None]
    reached = [i for i, g in enumerate(grads) if g is not None]
    joint = tracer.graph(outputs)
    return (joint, [s.array.value.name for s in seeds], positions) + (
        () if zero_fill else (reached,)
    )


def _zeros(t: Tensor) -> Tensor:
    return wrap(np.zeros(t.shape, t.dtype.np))


class Split(NamedTuple):
    forward: Graph
    backward: Graph
    recomputed: list[str]  # forward values the backward computes again instead of reading


@timed("autodiff split")
def split(
    joint: Graph, n_forward: int, seed_names: list[str], changing=frozenset(), n_results=None
) -> Split:
    """Partition a joint graph into a forward graph (its first ``n_forward`` outputs plus the
    values the backward reads, saved) and a backward graph (saved values and cotangents in,
    gradients out). Inputs named in ``changing`` are written after the forward (an argument
    updated in place): the backward recomputes nothing from them, and one it reads is saved
    as a copy made before the write. Forward outputs after the first ``n_results`` are new
    values of tensors, which may change before the backward runs (eager autograd reads such
    a tensor as it is then): nothing is recomputed from them either."""
    seeds = set(seed_names)
    # (a draw nothing reads is made all the same: later draws take the numbers after it)
    draws = [v for n in joint.nodes if n.op in OPS and RANDOM in OPS[n.op].props for v in n.outputs]
    forward_nodes = _computing(joint, [*joint.outputs[:n_forward], *draws])
    in_forward = set(forward_nodes)
    backward_nodes = [
        n for n in _computing(joint, joint.outputs[n_forward:]) if n not in in_forward
    ]
    defined_in_backward = {v for n in backward_nodes for v in n.outputs} | {
        v for v in joint.inputs if v.name in seeds
    }
    read = [v for n in backward_nodes for v in n.inputs] + joint.outputs[n_forward:]
    saved = [v for v in dict.fromkeys(read) if v not in defined_in_backward]
    forward_inputs = [v for v in joint.inputs if v.name not in seeds]
    returned = set(joint.outputs[:n_forward])
    steady = [v for v in forward_inputs if v.name not in changing]
    volatile = set(joint.outputs[n_forward if n_results is None else n_results : n_forward])
    saved, recomputed = rematerialize(forward_nodes, steady, saved, returned, volatile)
    root = aliases(joint)
    written = [v for v in saved if root[v].name in changing]  # (or views of those)
    forward = Graph(forward_inputs, forward_nodes)
    copies = forward.copy_where_made(written, [f"{v.name}_saved" for v in written])
    copy_of = dict(zip(written, copies, strict=True))
    forward.outputs = joint.outputs[:n_forward] + [copy_of.get(v, v) for v in saved]
    backward_inputs = saved + [v for v in joint.inputs if v.name in seeds]
    backward = Graph(backward_inputs, recomputed + backward_nodes, joint.outputs[n_forward:])
    return Split(forward.copy(), backward.copy(), [n.outputs[0].name for n in recomputed])


def rematerialize(
    forward_nodes, forward_inputs, saved, returned=frozenset(), volatile=frozenset()
) -> tuple[list, list]:
    """Saved values that a few cheap forward ops compute from what the backward has anyway
    (other saved values, graph inputs, constants) are recomputed there instead of kept, which
    lowers the memory held between forward and backward. Returns the new saved list and the
    nodes to run first in the backward, in order. ``returned`` values (forward outputs) are
    kept whatever they cost; ``volatile`` ones are kept but recompute nothing.

    One pass over the candidates, in saved order: what the backward holds only shrinks as
    values move out (the graph inputs a plan reads were held already), so a value that cannot
    be recomputed now never can later, and no candidate needs a second look."""
    producers = {v: n for n in forward_nodes for v in n.outputs}
    inputs = set(forward_inputs)
    kept = dict.fromkeys(saved)  # the saved list, in order
    held = (set(kept) | inputs) - volatile
    fixed = inputs | returned | volatile
    moved: dict[Node, None] = {}
    for value in [v for v in saved if v not in fixed]:
        held.discard(value)
        plan = _recompute_plan(value, held, producers, depth=4)
        if not plan:
            held.add(value)
            continue
        del kept[value]
        moved.update(dict.fromkeys(plan))
        for v in (v for n in plan for v in n.inputs if v in inputs):
            kept.setdefault(v)
    order = {n: i for i, n in enumerate(forward_nodes)}
    return list(kept), sorted(moved, key=order.__getitem__)


def _cheap(node: Node) -> bool:
    """Whether the backward may run ``node`` again rather than keep its result."""
    return node.op == CONSTANT or (node.op in OPS and CHEAP in OPS[node.op].props)


def _recompute_plan(value, held, producers, depth: int) -> list | None:
    """The cheap nodes that recompute ``value`` from ``held`` values and constants, or None."""
    if value in held:
        return []
    node = producers.get(value)
    if node is None or depth == 0 or not _cheap(node):
        return None
    plan = []
    for v in node.inputs:
        sub = _recompute_plan(v, held, producers, depth - 1)
        if sub is None:
            return None
        plan += sub
    return [*plan, node]


def _computing(graph: Graph, values) -> list[Node]:
    """The nodes ``values`` are computed by, in graph order."""
    needed = graph.ancestors(values)
    return [node for node in graph.nodes if any(v in needed for v in node.outputs)]


def saved_values(forward: Graph, backward: Graph, n_forward: int) -> list[tuple]:
    """The values the forward keeps for the backward, each with the gradient ops reading it
    (why it is saved)."""
    readers: dict[str, set[str]] = {}
    for node in backward.nodes:
        for v in node.inputs:
            readers.setdefault(v.name, set()).add(node.origin or node.op)
    return [
        (v, sorted(readers.get(v.name, {"returned as a gradient"})))
        for v in forward.outputs[n_forward:]
    ]
