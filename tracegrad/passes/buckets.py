"""Gradient averaging in buckets, overlapped with the backward (data-parallel training steps).

A traced step of ``DistributedDataParallel`` averages each gradient with its own blocking
``all_reduce`` node. Two passes make that what PyTorch's DDP does:

- ``bucket`` groups them, as DDP groups parameters: in bucket order (parameters reversed, the
  order in which the backward completes them), at most ``bucket_cap`` bytes of one dtype a
  bucket. A bucket is one ``all_reduce_start`` of its gradients (packed into a flat buffer, a
  non-blocking reduction started; the memory plan has the gradients' products write straight
  into their pieces of it, see ``passes.memory``'s assemblies), one ``all_reduce_wait`` and,
  per gradient, its piece of the buffer (a ``getitem`` and a ``reshape``: views, no copies)::

      all_reduce(g1), all_reduce(g2)  ->  b = all_reduce_start(g1, g2); w = all_reduce_wait(b)
                                          g1' = w[0:n1].reshape(s1); g2' = w[n1:].reshape(s2)

- ``overlap`` (a planning pass, after ``schedule``) places each start right after the last of
  its gradients is computed, and each wait (with its pieces) right before the first node that
  reads a piece (the optimizer's update of that bucket's first parameter), so the reduction
  runs while the rest of the backward computes.

``buckets(graph)`` describes the buckets of a planned graph for ``explain()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tracegrad.dtypes import TensorType
from tracegrad.ir.core import Node, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops.collective import bucket_groups
from tracegrad.passes.pipeline import note, register_pass

START, WAIT = "all_reduce_start", "all_reduce_wait"


def _rounds(reduces: list[Node]) -> dict[tuple, list[Node]]:
    """The all_reduce nodes by what may share a bucket: the same reduction, dtype and cap, and
    the same round (a step calling backward() twice averages each gradient twice; the second
    reads the first, so the two never share a bucket), each list in bucket order."""
    seen: Counter = Counter()
    rounds: dict[tuple, list[Node]] = {}
    for node in reduces:
        order = node.attrs["order"]
        key = (seen[order], node.attrs["reduce"], node.outputs[0].dtype, node.attrs["bucket_cap"])
        seen[order] += 1
        rounds.setdefault(key, []).append(node)
    return {key: sorted(nodes, key=lambda n: n.attrs["order"]) for key, nodes in rounds.items()}


def _bucket_nodes(members: list[Node], number: int, graph: Graph) -> list[Node]:
    """The start, the wait and each member's piece of the bucket; each piece defines the
    member's own output value, so its readers need no change."""
    grads = [m.inputs[0] for m in members]
    reduce, last = members[0].attrs["reduce"], members[-1]
    flat = TensorType((sum(g.type.numel for g in grads),), grads[0].dtype)
    started, waited = Value(graph.fresh("bucket"), flat), Value(graph.fresh("bucket"), flat)
    attrs = {"reduce": reduce, "bucket": number}
    nodes = [
        last.derive(START, grads, [started], attrs),
        last.derive(WAIT, [started], [waited], attrs),
    ]
    offset = 0
    for member, grad in zip(members, grads, strict=True):
        piece = Value(graph.fresh("h"), TensorType((grad.type.numel,), grad.dtype))
        key = (("slice", offset, offset + grad.type.numel, None),)
        nodes.append(member.derive("getitem", [waited], [piece], {"key": key}))
        nodes.append(member.derive("reshape", [piece], member.outputs, {"shape": grad.shape}))
        offset += grad.type.numel
        note("bucketed", member)
    return nodes


def _placeable(members: list[Node], position: dict[Node, int], users) -> bool:
    """Whether the bucket can stand where its last member is: nothing reads a member's
    result before that."""
    at = max(position[m] for m in members)
    readers = [r for m in members for r in users.get(m.outputs[0], ())]
    return all(position[r] > at for r in readers)


def _has(op: str) -> Callable[[Graph], bool]:
    return lambda graph: any(n.op == op for n in graph.nodes)


@register_pass("bucket", needed=_has("all_reduce"))
def bucket(graph: Graph) -> Graph:
    """Group gradient all_reduces into buckets: all_reduce(g1), all_reduce(g2) -> one
    non-blocking all_reduce_start(g1, g2), an all_reduce_wait, and views of its pieces."""
    # (a reduction without an order is no gradient's average: SyncBatchNorm's statistics)
    reduces = [n for n in graph.nodes if n.op == "all_reduce" and n.attrs["order"] is not None]
    if not reduces:
        return graph
    position = {n: i for i, n in enumerate(graph.nodes)}
    users = graph.users()
    placed: dict[Node, list[Node]] = {}  # a bucket's last member -> the bucket; others -> []
    made = 0
    for key, nodes in _rounds(reduces).items():
        sizes = [n.outputs[0].type.nbytes for n in nodes]
        for group in bucket_groups(sizes, [None] * len(nodes), cap=key[-1]):
            members = [nodes[i] for i in group]
            if _placeable(members, position, users):
                placed.update((m, []) for m in members)
                placed[max(members, key=position.__getitem__)] = _bucket_nodes(members, made, graph)
                made += 1
    nodes = [new for node in graph.nodes for new in placed.get(node, [node])]
    return Graph(graph.inputs, nodes, graph.outputs, graph.updates)


def _waited_group(wait: Node, users) -> list[Node]:
    """A wait and the views of its buffer: its pieces (getitem) and their reshapes."""
    group, todo = [wait], [wait]
    while todo:
        for reader in users.get(todo.pop().outputs[0], ()):
            view = reader.op in ("getitem", "reshape") and len(reader.inputs) == 1
            if view and reader not in group:
                group.append(reader)
                todo.append(reader)
    return group


def _start_places(starts: list[Node], rest: list[Node]) -> dict[int, list[Node]]:
    """Position in ``rest`` -> the starts to run right after it (-1: first): after the last
    of their gradients."""
    made_at = {v: i for i, n in enumerate(rest) for v in n.outputs}
    places: dict[int, list[Node]] = {}
    for start in starts:
        at = max((made_at.get(v, -1) for v in start.inputs), default=-1)
        places.setdefault(at, []).append(start)
    return places


def _wait_places(waits: list[list[Node]], rest: list[Node], users) -> dict[int, list[Node]]:
    """Position in ``rest`` -> the waits (with their pieces) to run right before it: before
    the first node reading a piece (at the end when only the caller reads them)."""
    index = {n: i for i, n in enumerate(rest)}
    places: dict[int, list[Node]] = {}
    for group in waits:
        made = {v for n in group for v in n.outputs}
        readers = [index[r] for v in made for r in users.get(v, ()) if r in index]
        places.setdefault(min(readers, default=len(rest)), []).extend(group)
    return places


@register_pass("overlap", needed=_has(START))
def overlap(graph: Graph) -> Graph:
    """Start each bucket's reduction as soon as its gradients exist; wait for it just before
    the first node reading it (planning: after schedule)."""
    starts = [n for n in graph.nodes if n.op == START]
    if not starts:
        return graph
    users = graph.users()
    waits = [_waited_group(n, users) for n in graph.nodes if n.op == WAIT]
    moving = set(starts) | {n for group in waits for n in group}
    rest = [n for n in graph.nodes if n not in moving]
    after, before = _start_places(starts, rest), _wait_places(waits, rest, users)
    nodes = list(after.get(-1, []))
    for i, node in enumerate(rest):
        nodes += [*before.get(i, []), node, *after.get(i, [])]
    nodes += before.get(len(rest), [])
    _note_moves(graph.nodes, nodes, moving)
    graph.nodes = nodes
    return graph


def _note_moves(old: list[Node], new: list[Node], moving: set[Node]) -> None:
    was, now = {n: i for i, n in enumerate(old)}, {n: i for i, n in enumerate(new)}
    for node in moving:
        if node.op in (START, WAIT) and was[node] != now[node]:
            note("started early" if node.op == START else "waited late", node)


@dataclass(frozen=True)
class Bucket:
    """One bucket of a planned graph, for explain(): its gradients, bytes, and the nodes its
    start follows and its wait precedes (None: the graph's first or last)."""

    number: int
    gradients: int
    nbytes: int
    dtype: object  # tracegrad.dtypes.DType
    started_after: Node | None
    waited_before: Node | None


def buckets(graph: Graph) -> list[Bucket]:
    """The buckets of a planned graph, in the order their reductions start."""
    nodes, users = graph.nodes, graph.users()
    position = {n: i for i, n in enumerate(nodes)}
    waits = {n.inputs[0]: n for n in nodes if n.op == WAIT}
    found = []
    for node in nodes:
        if node.op != START:
            continue
        group = _waited_group(waits[node.outputs[0]], users)
        last = max(position[n] for n in group)
        found.append(
            Bucket(
                node.attrs["bucket"],
                len(node.inputs),
                node.outputs[0].type.nbytes,
                node.outputs[0].dtype,
                next((n for n in reversed(nodes[: position[node]]) if n.op != START), None),
                next((n for n in nodes[last + 1 :] if n not in group), None),
            )
        )
    return found
