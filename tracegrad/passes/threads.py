"""Threads: what a program compiled with ``tg.compile(..., threads=n)`` runs on a thread pool.

NumPy releases the GIL inside ufuncs and BLAS calls, so a second thread computes while the
first does. Two kinds of work go to the pool, each only when the cost model says it pays:

1. While BLAS runs on one thread (``tg.set_num_threads(1)`` when compiling), a large product
   runs in the pool while the calling thread runs the statements after it, where running
   the two at once pays; the ``threads`` pass moves an independent product up beside another
   where that pays. With BLAS on more threads no product goes to the pool: BLAS spreads it
   over the cores already (measured, W2 and W4 ran 20-45% slower with products paired), and
   OpenBLAS rounds a product on one thread otherwise than on two (a pooled product would not
   give one thread's bits).
2. Large elementwise work splits by rows: a row loop (``tracegrad.codegen.emit``) or one
   elementwise statement whose rows are independent runs a part of its rows in the pool and
   the rest on the calling thread, where the parts' arithmetic outweighs what they share:
   the memory system (work bound by its bytes gains little) and the GIL (each NumPy call of
   a part may wait for it). Each element sees the same operations: results are the same
   bits as on one thread.

Soundness comes from the memory plan: a product runs in the pool only beside statements that
write no memory it reads or writes and read no memory it writes (``MemoryPlan.memory_of``:
pooled buffers, in-place writes and views of one buffer are one memory). A row loop's pieces
are independent already (that is what made it a row loop); the pool's part gets piece buffers
of its own.

``plan_threads`` makes the ``ThreadPlan`` after the memory plan; codegen writes it out
(``pool.submit``, ``.result()``, a comment saying why) and ``explain()`` lists it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx

from tracegrad.ir.core import FUSED
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ops import CHEAP, OPS
from tracegrad.ops.runtime import CHUNK
from tracegrad.passes.cost import node_cost
from tracegrad.passes.memory import MemoryPlan, aliases
from tracegrad.passes.pipeline import note, register_pass
from tracegrad.passes.schedule import _dependencies, _positions, _view_cone

# The cost model, in microseconds on one core (measured on the 2-core benchmark machine, a KVM
# guest, idle): handing work to the pool and waiting for it costs about 50 us (submit, wake a
# thread and its sleeping core, join: 14 us at best, 34-57 us typically, 100 us one time in
# ten); a product does about 40,000 float32 multiply-adds a microsecond (20,000 in float64:
# BLAS's speed goes by bytes); an op the registry calls CHEAP (add, mul...) about 5,000
# elements (it is bound by memory), any other (exp, tanh, relu_grad: 2,200-2,800 float32
# elements a microsecond on (32, 9216), measured idle) about 2,500.
HANDOFF_US = 50.0
PRODUCT_BYTES_PER_US = 160_000  # multiply-adds a microsecond times the item size
CHEAP_OPERATIONS_PER_US = 5_000
OPERATIONS_PER_US = 2_500
# What the parts of a split share (same machine): one memory system and one GIL.
# - Streaming arrays larger than the cache, one core moves about 22 GB/s and both at once
#   about 28 GB/s (exp and copies of 1-16 MB): work bound by its bytes gains 1.3x at most.
# - A NumPy call ends by taking the GIL back; while the other thread holds it (running Python
#   between its calls) the call waits for it and for its core to wake: about 25 us a call
#   when both threads make short calls (two threads each running exp over 64K elements did
#   half of one thread's work; over 1M elements, 1.6 times it). A part makes at least one
#   call per piece of CHUNK elements of each of its statements.
BYTES_PER_US = 22_000
SHARED_BYTES_PER_US = 28_000
GIL_US = 25.0
# What running in parallel must save beyond the hand-off itself to be chosen: below that, the
# noise of waking a thread (on a loaded machine, far more than the hand-off) eats the gain.
MIN_SAVING_US = 2 * HANDOFF_US
# How many statements after a product may run beside it (a longer run of statements is as
# likely to meet one that reads its result, and the product is long done).
WINDOW = 8


@dataclass(frozen=True)
class Concurrent:
    """Node ``submitted`` (a product) runs in the pool while nodes ``submitted + 1`` to
    ``joined`` run on the calling thread; its result is waited for after node ``joined``."""

    submitted: int
    joined: int
    reason: str


@dataclass(frozen=True)
class Split:
    """Nodes ``start`` to ``stop`` (a row loop, or one statement) run in ``parts`` parts of
    their rows at once, all but the last part in the pool."""

    start: int
    stop: int
    parts: int
    reason: str


@dataclass
class ThreadPlan:
    """What runs on the pool of a program compiled with ``threads`` threads."""

    threads: int
    concurrent: list[Concurrent] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.concurrent or self.splits)


def estimated_us(node) -> float:
    """The cost model's time for ``node`` on one core (a fused kernel's: its members')."""
    return sum(_times_us(node))


def _times_us(node) -> tuple[float, float]:
    """The one-core time of ``node``'s products and of the rest of its work."""
    if node.op == FUSED:
        parts = [_times_us(member) for member in body_of(node).nodes]
        return sum(p for p, _ in parts), sum(r for _, r in parts)
    cost = node_cost(node)
    itemsize = node.outputs[0].type.dtype.np.itemsize
    products = cost.product_operations * itemsize / PRODUCT_BYTES_PER_US
    op = OPS.get(node.op)
    rate = CHEAP_OPERATIONS_PER_US if op is not None and CHEAP in op.props else OPERATIONS_PER_US
    return products, (cost.operations - cost.product_operations) / rate


def _big_product(node) -> bool:
    """A product long enough that running it beside other work could pay."""
    return node_cost(node).product_operations > 0 and estimated_us(node) >= MIN_SAVING_US


def _threads_needed(graph: Graph, threads: int = 1, blas_threads: int = 1) -> bool:
    return threads > 1 and blas_threads == 1


@register_pass("threads", needed=_threads_needed)
def threads(graph: Graph, threads: int = 1, blas_threads: int = 1) -> Graph:
    """With ``threads`` > 1 and BLAS on one thread: each large product's next independent
    large product moves up beside it, where the cost model says running the two at once pays
    (first, when its result could otherwise be placed in the memory of an input the other one
    reads last)."""
    nodes = graph.nodes
    producer = _positions(nodes)
    readers: dict = {}
    for i, node in enumerate(nodes):
        for v in node.inputs:
            readers.setdefault(v, []).append(i)
    root = aliases(graph)
    last_read: dict = {}  # each memory's root value -> the last node reading it or a view of it
    for v, positions in readers.items():
        last_read[root[v]] = max(last_read.get(root[v], -1), *positions)
    dependencies = _dependencies(nodes)
    places: dict[int, float] = {}
    paired: set[int] = set()
    for i, node in enumerate(nodes):
        if i in paired or not _big_product(node):
            continue
        after = nx.descendants(dependencies, i)
        partner = next(
            (
                j
                for j in range(i + 1, len(nodes))
                if j not in after
                and j not in paired
                and nodes[j].phase is node.phase
                and _big_product(nodes[j])
                and _pair_pays(node, nodes[j])
            ),
            None,
        )
        if partner is None:
            continue
        paired.update((i, partner))
        cone = _view_cone(nodes, partner, producer, readers)
        side = -0.5 if _may_reuse(graph, i, nodes[partner], root, last_read) else 0.5
        places.update((k, i + side + k / len(nodes) / 4) for k in cone)
    order = list(
        nx.lexicographical_topological_sort(dependencies, key=lambda k: (places.get(k, k), k))
    )
    for position, k in enumerate(order):
        if position < k and k in places and _big_product(nodes[k]):
            note("moved beside a product", nodes[k])
    graph.nodes = [nodes[k] for k in order]
    return graph


def _pair_pays(first, second) -> bool:
    """Whether two products side by side, one in the pool, beat them one after the other
    (``_window``'s test for a product beside another)."""
    alone = estimated_us(first) + estimated_us(second)
    together = max(estimated_us(first), estimated_us(second)) + HANDOFF_US
    return alone - together >= MIN_SAVING_US


def _may_reuse(graph: Graph, index: int, second, root: dict, last_read: dict) -> bool:
    """Whether the memory plan could put ``second``'s result where an input of node ``index``
    (or the value it is a view of) lives that dies there (buffers are reused by shape and
    dtype): the two could then not run at once in that order. (A layer's weight gradient
    ``x^T @ g``, the last to read ``x``, before its input gradient ``g @ W^T``, of ``x``'s
    type.)"""
    result = second.outputs[0].type
    return any(
        root[v].type == result and last_read[root[v]] == index and root[v] not in graph.inputs
        for v in graph.nodes[index].inputs
    )


# --- the plan, after the memory plan ----------------------------------------------------------


def plan_threads(
    graph: Graph,
    plan: MemoryPlan,
    threads: int,
    row_runs: list[tuple[int, int]],
    blas_threads: int = 1,
) -> ThreadPlan:
    """What runs on the pool, for ``threads`` threads, BLAS running ``blas_threads`` (products
    go to the pool only while it runs one). ``row_runs`` are the (start, stop) node ranges
    codegen may run by rows: its row loops, and single elementwise statements whose rows are
    independent; a row loop is one unit, never cut by a product's window."""
    result = ThreadPlan(threads)
    if threads < 2:
        return result
    units = _units(len(graph.nodes), row_runs)
    taken: set[int] = set()
    for k, (start, stop) in enumerate(units):
        if blas_threads > 1 or start in taken or stop - start != 1:
            continue
        if not _big_product(graph.nodes[start]):
            continue
        window = _window(graph, plan, units, k, taken)
        if window is not None:
            result.concurrent.append(window)
            taken.update(range(window.submitted, window.joined + 1))
    row_starts = {start: stop for start, stop in row_runs}
    for start, stop in units:
        if start in row_starts and start not in taken:
            split = _split(graph, start, stop, threads)
            if split is not None:
                result.splits.append(split)
    return result


def _units(n: int, row_runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, stop) ranges covering nodes 0..n in order: each row run whole, other nodes
    alone."""
    stops = dict(row_runs)
    units, index = [], 0
    while index < n:
        units.append((index, stops.get(index, index + 1)))
        index = units[-1][1]
    return units


def _window(graph: Graph, plan: MemoryPlan, units, k: int, taken: set[int]):
    """The statements after product ``units[k]`` that may run while it runs in the pool: up
    to the first that touches its memory (or a new phase, or ``WINDOW`` statements), the
    shortest run that takes as long as it; None when that does not pay."""
    product = graph.nodes[units[k][0]]
    its_time, beside, joined = estimated_us(product), 0.0, None
    for start, stop in units[k + 1 : k + 1 + WINDOW]:
        members = graph.nodes[start:stop]
        if start in taken or any(
            m.phase is not product.phase or conflicts(product, m, plan) for m in members
        ):
            break
        beside += sum(map(estimated_us, members))
        joined = stop - 1
        if beside >= its_time:
            break
    # (one after the other, the two take its_time + beside; side by side, the longer one)
    saving = min(its_time, beside) - HANDOFF_US
    if joined is None or saving < MIN_SAVING_US:
        return None
    reason = (
        f"{product.op} ({its_time:.0f} us) in the pool beside {joined - units[k][0]} "
        f"statements ({beside:.0f} us) that touch none of its memory"
    )
    return Concurrent(units[k][0], joined, reason)


def _split(graph: Graph, start: int, stop: int, threads: int) -> Split | None:
    """``threads`` parts of rows for nodes ``start`` to ``stop`` when that pays: their time
    on one core against their time on ``threads`` cores at once (``_roofline_us``), plus the
    GIL's hand-overs between the parts' NumPy calls and the hand-off."""
    members = graph.nodes[start:stop]
    rows = members[0].outputs[0].type.shape[0]
    parts = min(threads, rows)
    if parts < 2:
        return None
    alone = sum(_roofline_us(m, 1) for m in members)
    calls = sum(math.ceil(m.outputs[0].type.numel / CHUNK / parts) for m in members)
    together = sum(_roofline_us(m, parts) for m in members) + GIL_US * calls
    if alone - together - HANDOFF_US * (parts - 1) < MIN_SAVING_US:
        return None
    what = "row loop" if stop - start > 1 else members[0].op
    reason = (
        f"{what} ({alone:.0f} us, {together:.0f} us in {parts} parts at once) split in "
        f"{parts} parts of its {rows} rows"
    )
    return Split(start, stop, parts, reason)


def _roofline_us(node, parts: int) -> float:
    """``node``'s time run in ``parts`` parts on as many cores at once: its arithmetic divides
    among them, the bytes it reads and writes share one memory system. Exp, tanh or a fused
    chain of them are bound by arithmetic and gain from every core; an add or an optimizer's
    update streaming large arrays is bound by its bytes and gains little."""
    bandwidth = BYTES_PER_US if parts == 1 else SHARED_BYTES_PER_US
    return max(estimated_us(node) / parts, node_cost(node).bytes / bandwidth)


def memories(values, plan: MemoryPlan) -> set:
    """The memories ``values`` live in (``MemoryPlan.memory_of``; a value the plan does not
    settle, such as a second output, is its own)."""
    return {plan.memory.get(v, v) for v in values}


def conflicts(a, b, plan: MemoryPlan) -> bool:
    """Whether nodes ``a`` and ``b`` may not run at once: one writes memory the other reads or
    writes."""
    a_reads, a_writes = memories(a.inputs, plan), memories(a.outputs, plan)
    b_reads, b_writes = memories(b.inputs, plan), memories(b.outputs, plan)
    return bool(a_writes & (b_reads | b_writes) or b_writes & a_reads)


def concurrent_pairs(thread_plan: ThreadPlan) -> list[tuple[int, int]]:
    """(pool node, calling-thread node) index pairs that run at the same time."""
    return [
        (c.submitted, k)
        for c in thread_plan.concurrent
        for k in range(c.submitted + 1, c.joined + 1)
    ]
