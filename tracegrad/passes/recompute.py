"""Recomputation under a memory budget: which forward activations the backward keeps and which
it computes again, so that the estimated peak of a program fits a budget.

A forward value the backward reads is held from the forward to its last gradient use; most of
a training step's peak is such values. ``recompute(graph, names)`` makes the backward compute
the named forward values again, each just before its first reader there (its producer run a
second time, as a node whose origin says "recomputed", on the values the original read or
their recomputed copies), so the originals die in the forward. ``choose(graph, budget)``
picks those values greedily, as PyTorch's partitioner and JAX's checkpoint policies trade
compute for memory: candidates in order of operations spent per byte freed, each kept when
the estimated peak (``passes.memory``: the memory plan's buffers and the values in fresh
memory) drops, or stays and the memory held over time drops (a step toward freeing a chain).
A pool of buffers holds each shape's worst case for the whole run, so the choice may also
leave a shape's values out of the pool (fresh memory, allocated on each call). Once the peak
fits, every choice the fit does not need is dropped again: pools first, then the values
costing most operations. ``tg.compile`` with a ``memory_budget`` chooses on each generated
function (a module: on its joint graph) and runs the ``recompute`` pass with the choice;
without one the pass changes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tracegrad.dtypes import TensorType, from_name
from tracegrad.errors import MemoryBudgetError
from tracegrad.ir.core import CONSTANT, CUSTOM, Node, Phase, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS, VIEW
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.cost import node_cost
from tracegrad.passes.memory import aliases, last_uses, peak_bytes, plan_memory
from tracegrad.passes.pipeline import note, register_pass


@dataclass(frozen=True)
class Recomputation:
    """What a budget made of one program: the forward values recomputed in the backward (by
    name), the pools left out of its memory plan, the estimated peak (bytes) before and
    after, and the operations added."""

    budget: int
    recomputed: tuple[str, ...]
    unpooled: frozenset  # pools (shape, dtype name) whose values get fresh memory instead
    peak_before: int
    peak_after: int
    extra_operations: int


def recompute(graph: Graph, names) -> Graph:
    """``graph`` with the forward values named in ``names`` (those a node of the forward
    makes, and the backward reads) computed again by the backward where it first reads them;
    the backward's readers read the copies. ``graph`` is not changed; the new graph shares
    its values and the nodes it leaves as they are."""
    chosen = set(names)
    producers = graph.producers()
    copies: dict[Value, Value] = {}
    nodes: list[Node] = []
    taken = {v.name for v in graph.values()}

    def make(value) -> Value:
        node = producers.get(value)
        if value in copies or value.name not in chosen or node is None or not recomputable(node):
            return copies.get(value, value)
        inputs = [make(v) for v in node.inputs]
        outputs = [Value(_fresh(f"{v.name}_r", taken), v.type) for v in node.outputs]
        copy = Node(node.op, inputs, outputs, dict(node.attrs), node.location,
                    phase=Phase.RECOMPUTE, scope=node.scope)  # fmt: skip
        nodes.append(copy)
        copies.update(zip(node.outputs, outputs, strict=True))
        return copies[value]

    for node in graph.nodes:
        inputs = node.inputs if node.phase is Phase.FORWARD else [make(v) for v in node.inputs]
        changed = any(a is not b for a, b in zip(inputs, node.inputs, strict=True))
        nodes.append(dataclasses.replace(node, inputs=inputs) if changed else node)
    return Graph(graph.inputs, nodes, graph.outputs, graph.updates)


def _fresh(prefix: str, taken: set[str]) -> str:
    """``prefix`` and the first number giving a name not in ``taken`` (then taken)."""
    number = 1
    while f"{prefix}{number}" in taken:
        number += 1
    taken.add(f"{prefix}{number}")
    return f"{prefix}{number}"


def is_view(node: Node) -> bool:
    op = OPS.get(node.op)
    return op is not None and VIEW in op.props


def recomputable(node: Node | None) -> bool:
    """A forward node the backward may run again: the same result from the same inputs (no
    random draw, no user's Function, no constant, which costs no memory)."""
    if node is None:  # (a graph input)
        return False
    op = OPS.get(node.op)
    random = op is not None and RANDOM in op.props
    return node.phase is Phase.FORWARD and node.op not in (CONSTANT, CUSTOM) and not random


def saved_by_backward(graph: Graph) -> list[Value]:
    """The forward values (not views) that the backward reads, themselves or through views:
    held from the forward until then."""
    root = aliases(graph)
    producers = graph.producers()
    read = [root[v] for n in graph.nodes if n.phase is not Phase.FORWARD for v in n.inputs]
    return [
        v
        for v in dict.fromkeys(read)
        if v in producers and producers[v].phase is Phase.FORWARD and producers[v].op != CONSTANT
    ]


def candidates(graph: Graph) -> list[tuple[str, ...]]:
    """The choices a budget can make, cheapest per byte first: each the forward value (not a
    view, nor kept by the caller) that the backward reads, itself or through views, with the
    views of it the backward reads (recomputed with it, or its memory stays held)."""
    root = aliases(graph)
    kept = {root[v] for v in graph.kept()}
    producers = graph.producers()
    read_back: dict[Value, list[str]] = {}
    for node in graph.nodes:
        if node.phase is Phase.FORWARD:
            continue
        for v in node.inputs:
            base = root[v]
            if base in kept or not recomputable(producers.get(base)):
                continue
            names = read_back.setdefault(base, [base.name])
            names += [u.name for u in _views_between(v, base, producers) if u.name not in names]
    moves = [tuple(names) for names in read_back.values()]
    return sorted(moves, key=lambda names: _price(names, producers))


def _views_between(value, base, producers) -> list[Value]:
    """The views leading from ``base`` to ``value`` (``value`` itself included, unless it is
    ``base``)."""
    chain = []
    while value is not base:
        chain.append(value)
        value = producers[value].inputs[0]
    return chain


def _price(names, producers) -> float:
    """Operations spent per byte freed by recomputing the values ``names`` (a base first)."""
    by_name = {v.name: v for v in producers if v.name in names}
    base = by_name[names[0]]
    operations = sum(node_cost(producers[by_name[n]]).operations for n in names)
    return operations / max(base.type.nbytes, 1)


def estimate(graph: Graph, persistent: frozenset[str], unpooled=(), pooled=True) -> tuple[int, int]:
    """The estimated peak of ``graph`` with its memory plan (bytes), and the memory it holds
    over time (bytes times nodes) in a plan without pooled buffers, which tells apart two
    programs of the same peak."""
    plan = plan_memory(graph, persistent, pooled, unpooled, verify=False)
    return peak_bytes(graph, plan), _held_over_time(graph)


def _held_over_time(graph: Graph) -> int:
    root = aliases(graph)
    last = last_uses(graph, root)
    producers = graph.producers()
    return sum(
        v.type.nbytes * (last.get(v, index) - index)
        for index, node in enumerate(graph.nodes)
        for v in node.outputs
        if root[v] is v and producers[v].op != CONSTANT
    )


@dataclass(frozen=True)
class _Choice:
    """Values to recompute (by name) and pools to leave out (see ``plan_memory``). A move
    adds to it: a tuple of names (a value and its views) or a pool key."""

    names: tuple[str, ...] = ()
    unpooled: frozenset = frozenset()

    def plus(self, move) -> _Choice:
        if _is_recompute(move):
            return _Choice((*self.names, *move), self.unpooled)
        return _Choice(self.names, self.unpooled | {move})

    def less(self, move) -> _Choice:
        if _is_recompute(move):
            return _Choice(tuple(n for n in self.names if n not in move), self.unpooled)
        return _Choice(self.names, self.unpooled - {move})


def _is_recompute(move) -> bool:
    return all(isinstance(name, str) for name in move)


def choose(
    graph: Graph, budget: int, persistent: frozenset[str] = frozenset(), pooled: bool = True
) -> Recomputation:
    """The values to recompute (and pools to leave out) so that ``graph``'s estimated peak
    fits ``budget`` (bytes) at little extra compute (see the module docstring). Without
    ``pooled``, the estimate is of a plan with no pooled buffers (each result in memory of
    its own but for in-place writes), and only values are chosen. Raises
    ``MemoryBudgetError`` naming the smallest budget reached when no choice fits."""

    def measure(choice: _Choice) -> tuple[int, int]:
        return estimate(recompute(graph, choice.names), persistent, choice.unpooled, pooled)

    start = measure(_Choice())
    moves = [*candidates(graph), *(_pools(graph, persistent) if pooled else ())]
    best, choice, taken = _search(measure, moves, budget, start)
    if best[0] > budget:
        raise MemoryBudgetError(budget, best[0], start[0])
    # Drop what the fit does not need: pools first (fresh memory costs allocation time), then
    # the values costing most operations
    producers = {v.name: n for n in graph.nodes for v in n.outputs}
    for move in sorted(taken, key=lambda m: _price_of_move(m, producers)):
        if measure(choice.less(move))[0] <= budget:
            choice = choice.less(move)
    extra = _operations(choice.names, producers)
    return Recomputation(budget, choice.names, choice.unpooled, start[0], measure(choice)[0], extra)


def _search(measure, moves: list, budget: int, start):
    """Take each move in turn that lowers the estimate, again over those left while one did
    (a pool left out can make a value worth freeing), until the peak fits ``budget``.
    Returns the best estimate, its choice and the moves taken."""
    best, choice, taken = start, _Choice(), []
    progress = True
    while best[0] > budget and progress:
        progress = False
        for move in [m for m in moves if m not in taken]:
            trial = measure(choice.plus(move))
            if trial < best:
                best, choice, progress = trial, choice.plus(move), True
                taken.append(move)
            if best[0] <= budget:
                break
    return best, choice, taken


def _price_of_move(move, producers) -> tuple[int, int]:
    """Pools first, then values, the most operations first."""
    if _is_recompute(move):
        return 1, -_operations(move, producers)
    return 0, 0


def _operations(names, producers) -> int:
    return sum(node_cost(producers[n]).operations for n in names)


def _pools(graph: Graph, persistent) -> list[tuple]:
    """The pools (shape, dtype name) of ``graph``'s memory plan, the largest first."""
    held: dict[tuple, int] = {}
    for shape, dtype in plan_memory(graph, persistent).buffers:
        nbytes = TensorType(shape, from_name(dtype)).nbytes
        held[shape, dtype] = held.get((shape, dtype), 0) + nbytes
    return sorted(held, key=lambda key: -held[key])


@register_pass("recompute", needed=lambda graph, names=(): bool(names))
def recompute_pass(graph: Graph, names=()) -> Graph:
    """Recompute the forward values ``names`` in the backward (a memory budget's choice).

    ``tg.compile`` with a ``memory_budget`` gives it ``choose``'s values; without one (or
    in a pipeline) there are none, and it leaves the graph as it is."""
    if not names:
        return graph
    result = recompute(graph, names)
    for node in result.nodes:
        if node.phase is Phase.RECOMPUTE:
            note("recomputed", node)
    return result
