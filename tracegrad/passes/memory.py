"""Buffer planning: in-place writes and a pool of preallocated buffers.

Liveness runs over the whole program (forward, backward and update in one graph, or each part
of a compiled module). Alias analysis comes first: view ops (reshape, permute, broadcast_to,
basic slicing, windows) share their input's memory, so a buffer stays live while any view of
it is. Then, in program order, a node whose op can write into a given array (its ``out``
template) gets, in this order of preference:

1. the memory of an input that dies at it (elementwise ops, same shape and dtype): a value of
   its own, or a state input that the program updates (``graph.updates``: a parameter or an
   optimizer buffer) once nothing reads its old value — so updates happen in place;
2. a buffer from a pool keyed by shape and dtype, reused once its previous value is dead.

Case 1 sets ``meta["inplace"] = k`` (write into input k); case 2 sets
``meta["buffer"] = b``, an index into ``graph.meta["buffers"]`` (shape, dtype name) which the
generated module allocates once. Graph inputs are never written except as declared updates, and
values the caller keeps (outputs) never live in pooled memory unless listed as ``persistent``.

One aliasing rule (``clobbers``) decides whether a write may go where it would: the node must
not read that memory through a view (a transpose, reshape, slice or broadcast of it, or a view
made once beside the buffers), nor after its kernel started writing it (a later member of a
fused kernel). Row loops ask the same rule (``tracegrad.codegen.emit``), and ``verify`` checks
every finished plan against it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from tracegrad.dtypes import TensorType, from_name
from tracegrad.ir.core import CONSTANT, FUSED, Node
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ops import ELEMENTWISE, OPS, OVERWRITES_INPUT, VIEW
from tracegrad.passes.fuse import is_linear
from tracegrad.passes.pipeline import note, register_pass


def aliases(graph: Graph) -> dict[int, object]:
    """id(value) -> the value whose memory it lives in (itself unless produced by a view)."""
    root: dict[int, object] = {id(v): v for v in graph.values()}
    for node in graph.nodes:
        op = OPS.get(node.op)
        if op is not None and VIEW in op.props and node.inputs:
            root[id(node.outputs[0])] = root[id(node.inputs[0])]
    return root


def homes(graph: Graph, root: dict[int, object]) -> dict[int, tuple]:
    """id(value) -> the memory a planned graph puts it in: ("buffer", k) for a pooled
    buffer, else ("value", id(v)) of the value whose memory it is: itself for graph inputs
    and fresh results, the base for views (``root``, from ``aliases``) and in-place writes."""
    home: dict[int, tuple] = {id(v): ("value", id(v)) for v in graph.inputs}
    for node in graph.nodes:
        settle(node, home, root)
    return home


def settle(node, home: dict[int, tuple], root: dict[int, object]) -> None:
    """Enter in ``home`` (see ``homes``) the memory the plan gave ``node``'s outputs."""
    out = node.outputs[0]
    if "buffer" in node.meta:
        home[id(out)] = ("buffer", node.meta["buffer"])
    elif "inplace" in node.meta:
        home[id(out)] = home[id(node.inputs[node.meta["inplace"]])]
    elif root[id(out)] is not out:
        home[id(out)] = home[id(root[id(out)])]
    for v in node.outputs:
        home.setdefault(id(v), ("value", id(v)))


# --- the aliasing rule: what a write may not destroy ------------------------------------------


def reads_of(node) -> list[tuple[object, bool]]:
    """(input, read at the index written) for each input of ``node`` written into memory: True
    where its kernel reads the element before writing that same element, and nothing else
    after (an elementwise op; the first member alone of a fused kernel; the input a row-wise
    kernel such as softmax overwrites). Anything else it reads while or after writing: the
    later members of a fused kernel, the operands of a product, a mask or a gradient, and an
    array given twice (a kernel of several steps may read its second operand after writing)."""
    if node.op == FUSED:
        first = set(map(id, _read_first_only(node)))
        return [(v, id(v) in first) for v in node.inputs]
    props = OPS[node.op].props if node.op in OPS else frozenset()
    once = [sum(u is v for u in node.inputs) == 1 for v in node.inputs]
    if ELEMENTWISE in props:
        return list(zip(node.inputs, once, strict=True))
    return [
        (v, k == 0 and once[k] and OVERWRITES_INPUT in props) for k, v in enumerate(node.inputs)
    ]


def clobbers(reads, written, shape: tuple, home: dict, root: dict) -> bool:
    """The aliasing rule every write into planned memory obeys: whether writing a result of
    ``shape`` into the memories ``written`` (homes, see ``homes``) destroys something of
    ``reads`` ((value, read at the index written) pairs, see ``reads_of``) before it is read.

    A value living in written memory is safe only read at the index written, and only as that
    memory itself, whole: its own array, of the result's shape. Read through any view of it
    (transposed, reshaped, broadcast, sliced, or a view made once beside the buffers), its
    elements are read elsewhere than written, some after they were overwritten. (A value that
    is no view lives in its memory whole: the parts of an assembly, which do not, are read by
    their assembly alone.)"""
    return any(
        home[id(value)] in written
        and not (same_index and root[id(value)] is value and value.type.shape == shape)
        for value, same_index in reads
    )


def verify(graph: Graph) -> None:
    """Check a planned graph against the aliasing rule (``clobbers``): no node writes memory
    that one of its inputs is read from elsewhere than at the index written."""
    root = aliases(graph)
    home = {id(v): ("value", id(v)) for v in graph.inputs}
    for node in graph.nodes:
        settle(node, home, root)
        out = node.outputs[0]
        # (an assembly's nodes write views of its buffer that nothing else reads, or nothing)
        planned = ("inplace" in node.meta or "buffer" in node.meta) and not (
            "view" in node.meta or "assembled" in node.meta
        )
        if planned and clobbers(reads_of(node), {home[id(out)]}, out.type.shape, home, root):
            raise PlanError(
                f"memory plan: %{out.name} = {node.op} is written into memory one of its "
                "inputs is read from through a view (or after it is written); fix the "
                "plan's aliasing rule (passes/memory.py clobbers)"
            )


class PlanError(RuntimeError):
    """A memory plan writes over values before they are read."""


def last_uses(graph: Graph, root: dict[int, object]) -> dict[int, int]:
    """id(root value) -> index of the last node reading it or a view of it (the node count
    for values the caller reads)."""
    last: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[id(root[id(v)])] = index
    for v in [*graph.outputs, *graph.updates.values()]:
        last[id(root[id(v)])] = len(graph.nodes)
    return last


class _Planner:
    def __init__(self, graph: Graph, persistent: frozenset[str]):
        self.graph = graph
        self.root = aliases(graph)
        self.last = last_uses(graph, self.root)
        kept = [v for v in graph.outputs if v.name not in persistent]
        constants = [n.outputs[0] for n in graph.nodes if n.op == CONSTANT]
        self.protected = {id(v) for v in [*graph.inputs, *constants]}
        self.protected |= {id(self.root[id(v)]) for v in kept}
        # A state input's old value may be overwritten once dead: its new value goes there.
        targets = {v.name: v for v in graph.inputs if v.name in graph.updates}
        self.targets = {id(v) for v in targets.values()}
        # id(value) -> the state input whose memory it lives in. That memory may hold the
        # input's own new value, never another result: the caller writes each new value
        # back into its input after the run, which would overwrite it first.
        self.home = {id(v): name for name, v in targets.items()}
        self.results = {id(self.root[id(v)]) for v in [*graph.outputs, *graph.updates.values()]}
        # id(value) -> its memory (see ``homes``), for the nodes planned so far
        self.where: dict[int, tuple] = {id(v): ("value", id(v)) for v in graph.inputs}
        self.buffers: list[tuple] = []
        self.free: dict[tuple, list[int]] = defaultdict(list)
        self.owner: dict[int, int] = {}  # id(root value) -> buffer index
        # id(node) -> its assembly (see _assemblies), for its consumer and the nodes it gathers
        self.assembly: dict[int, Assembly] = {}
        for assembly in _assemblies(graph, self.protected, self.root):
            for node in [assembly.consumer, *assembly.parts]:
                self.assembly[id(node)] = assembly

    def dies_at(self, value, index: int) -> bool:
        return self.last.get(id(self.root[id(value)])) == index

    def writable_input(self, node, index: int, candidates) -> int | None:
        """Position of an input the node may overwrite: one of ``candidates``, not a view,
        read by nothing later, of the output's type, and none of the node's reads destroyed
        by writing there (``clobbers``)."""
        out = node.outputs[0]
        for k, value in enumerate(node.inputs):
            if (
                value in candidates
                and self.root[id(value)] is value
                and self.dies_at(value, index)
                and value.type == out.type
                and self.may_hold(value, out)
                and not self.clobbers(node, self.where[id(value)])
            ):
                return k
        return None

    def clobbers(self, node, memory) -> bool:
        shape = node.outputs[0].type.shape
        return clobbers(reads_of(node), {memory}, shape, self.where, self.root)

    def may_hold(self, value, out) -> bool:
        """Whether ``out`` may be written into ``value``'s memory (see ``self.home``)."""
        home = self.home.get(id(value))
        if home is None or id(out) not in self.results:
            return True
        return self.root[id(self.graph.updates[home])] is out

    def place(self, node, index: int) -> None:
        assembly = self.assembly.get(id(node))
        if assembly is not None:
            self.place_assembled(node, assembly)
            return
        op, out = OPS.get(node.op), node.outputs[0]
        writes_out = node.op == FUSED or (op is not None and op.out is not None)
        if not writes_out or self.root[id(out)] is not out:
            return
        if id(self.root[id(out)]) in self.protected:
            return
        ours = [v for v in node.inputs if id(v) not in self.protected or id(v) in self.targets]
        if not out.type.shape:
            # NumPy hands back 0-d results as scalars, which cannot be written into later;
            # a ufunc given out= writes there, so a 0-d state (a step count) is updated in place
            ours = [v for v in ours if id(v) in self.targets]
            if op is None or not isinstance(op.impl, np.ufunc) or not ours:
                return
        k = self.writable_input(node, index, ours)
        if k is not None:
            node.meta["inplace"] = k
            if id(node.inputs[k]) in self.home:
                self.home[id(out)] = self.home[id(node.inputs[k])]
            if id(node.inputs[k]) in self.owner:
                self.owner[id(out)] = self.owner.pop(id(node.inputs[k]))
            note("inplace", node)
            return
        if not out.type.shape:
            return  # (no buffer: a 0-d result comes back as a scalar)
        key = (out.type.shape, out.type.dtype.name)
        buffer = self.free[key].pop() if self.free[key] else self._new(key)
        node.meta["buffer"] = buffer
        self.owner[id(out)] = buffer

    def place_assembled(self, node, assembly: Assembly) -> None:
        """A node of an assembly writes (or, for a copy it makes unneeded, is) a view of the
        consumer's buffer, taken from the pool at the first of them and held until the
        consumer's value dies."""
        if assembly.buffer is None:
            key = (
                assembly.consumer.outputs[0].type.shape,
                assembly.consumer.outputs[0].type.dtype.name,
            )
            assembly.buffer = self.free[key].pop() if self.free[key] else self._new(key)
        node.meta["buffer"] = assembly.buffer
        if node is assembly.consumer:
            node.meta["assembled"] = True
            self.owner[id(node.outputs[0])] = assembly.buffer
            note("assembled", node)
            return
        node.meta["view"] = assembly.parts[node]
        if node.op in ASSEMBLERS:
            node.meta["assembled"] = True

    def _new(self, key) -> int:
        self.buffers.append(key)
        return len(self.buffers) - 1

    def release(self, node, index: int) -> None:
        for v in node.inputs:
            base = self.root[id(v)]
            if self.dies_at(v, index) and id(base) in self.owner:
                buffer = self.owner.pop(id(base))
                self.free[self.buffers[buffer]].append(buffer)


# --- assemblies: results written straight into their place in a copy or concatenation -----

# Ops that only copy their inputs into a fresh array: a contiguous copy of a transposed view
# (attention's heads merged back) and a concatenation (the gradients of q, k and v).
ASSEMBLERS = ("contiguous", "cat")


@dataclass(eq=False)
class Assembly:
    """A copy or concatenation whose inputs are computed straight into their place in its
    buffer: ``parts`` maps each node on the way (a product, or a copy made unneeded) to the
    view of the buffer it writes, as a Python suffix (``[:, :, 64:128].reshape(...)``)."""

    consumer: Node
    parts: dict = field(default_factory=dict)  # Node -> view suffix (str)
    buffer: int | None = None


def _assemblies(graph: Graph, protected: set[int], root: dict) -> list[Assembly]:
    """The copies and concatenations whose every input can be written in place: each traced
    back, through reshapes, transposes and copies read by nothing else, to a product or a
    fused kernel read by nothing else (NumPy writes those into any strided view). The last
    consumer of a chain claims it first."""
    producers = {id(v): n for n in graph.nodes for v in n.outputs}
    reads: dict[int, int] = defaultdict(int)
    for v in [*(v for n in graph.nodes for v in n.inputs), *graph.outputs]:
        reads[id(v)] += 1
    for v in graph.updates.values():
        reads[id(v)] += 1

    def trace_part(value, view, suffix, assembly) -> bool:
        """Follow ``value`` (to be found in ``view`` of the consumer's buffer) back to the
        node that can write it there, noting each node on the way in ``assembly.parts``."""
        while True:
            node = producers.get(id(value))
            if node is None or reads[id(value)] != 1 or id(root[id(value)]) in protected:
                return False
            if node.op == "reshape":
                source = node.inputs[0].type.shape
                reshaped = view.reshape(source)
                if not np.may_share_memory(reshaped, view):
                    return False  # the buffer's view takes the source's shape only as a copy
                view, suffix = reshaped, f"{suffix}.reshape({source})"
            elif node.op == "permute":
                inverse = tuple(int(i) for i in np.argsort(node.attrs["dims"]))
                view, suffix = view.transpose(inverse), f"{suffix}.transpose({inverse})"
            elif node.op == "contiguous" and node.inputs[0].type == value.type:
                assembly.parts[node] = suffix
            elif _writes_anywhere(node) and node.outputs[0].type == value.type:
                assembly.parts[node] = suffix
                return True
            else:
                return False
            value = node.inputs[0]

    claimed: set[int] = set()
    found = []
    for node in reversed(graph.nodes):
        out = node.outputs[0] if node.outputs else None
        if node.op not in ASSEMBLERS or id(node) in claimed or not out.type.shape:
            continue
        if id(root[id(out)]) in protected:
            continue
        assembly = Assembly(node)
        probe = np.empty(out.type.shape, np.int8)  # strides only: its pages are never touched
        offset = 0
        for value in node.inputs:
            view, suffix = probe, ""
            if node.op == "cat":
                dim, size = node.attrs["dim"] % out.type.ndim, value.type.shape[node.attrs["dim"]]
                cut = (slice(None),) * dim + (slice(offset, offset + size),)
                view, suffix = probe[cut], _index_suffix(dim, offset, offset + size)
                offset += size
            if not trace_part(value, view, suffix, assembly):
                break
        else:
            claimed.update(id(n) for n in assembly.parts)
            found.append(assembly)
    return found


def _writes_anywhere(node) -> bool:
    """Whether the node's kernel writes its result into any strided ``out``: a product (BLAS
    takes a row stride), and a fused kernel (NumPy calls with ``out``)."""
    return node.op in ("matmul", FUSED)


def _index_suffix(dim: int, start: int, stop: int) -> str:
    return "[" + ", ".join([":"] * dim + [f"{start}:{stop}"]) + "]"


def _read_first_only(node) -> list:
    """The inputs of a fused node its kernel reads only in its first member, once: the kernel
    writes its buffer from that member on, so only those may share it (none for a product,
    which cannot write over its operands)."""
    if is_linear(node):
        return []
    body = body_of(node)
    first, later = body.nodes[0], body.nodes[1:]
    return [
        v
        for v, b in zip(node.inputs, body.inputs, strict=True)
        if sum(b is i for i in first.inputs) == 1
        and not any(b is i for m in later for i in m.inputs)
    ]


def plan(graph: Graph, persistent: frozenset[str] = frozenset()) -> Graph:
    """Annotate ``graph`` in place with in-place writes and pooled buffers (see above).

    ``persistent`` names outputs that may live in planned memory (the caller copies or uses
    them before the next call)."""
    for node in graph.nodes:  # a new plan replaces an earlier one, which may be stale
        for key in ("inplace", "buffer", "view", "assembled"):
            node.meta.pop(key, None)
    planner = _Planner(graph, persistent)
    for index, node in enumerate(graph.nodes):
        planner.place(node, index)
        settle(node, planner.where, planner.root)
        planner.release(node, index)
    graph.meta["buffers"] = planner.buffers
    verify(graph)
    return graph


@register_pass("memory")
def memory(graph: Graph) -> Graph:
    """Plan in-place writes and pooled buffers from liveness over the whole program."""
    return plan(graph)


def peak_bytes(graph: Graph, buffers: list[tuple] | None = None) -> int:
    """Estimated peak of memory the program allocates (graph inputs not counted): planned
    buffers once (``buffers``, (shape, dtype name) pairs, when the generated code allocates
    others than the plan's), plus every other value from its definition to its last use."""
    root = aliases(graph)
    last = last_uses(graph, root)
    buffers = graph.meta.get("buffers", []) if buffers is None else buffers
    pool = sum(TensorType(shape, from_name(dtype)).nbytes for shape, dtype in buffers)
    live: dict[int, int] = {}
    peak = 0
    for index, node in enumerate(graph.nodes):
        for out in node.outputs:
            owns = root[id(out)] is out and "inplace" not in node.meta and "buffer" not in node.meta
            if owns and node.op != CONSTANT:
                live[id(out)] = out.type.nbytes
        peak = max(peak, sum(live.values()))
        for v in node.inputs:
            if last.get(id(root[id(v)])) == index:
                live.pop(id(root[id(v)]), None)
    return pool + peak
