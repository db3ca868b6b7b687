"""Buffer planning: in-place writes and a pool of preallocated buffers, as a typed plan.

Liveness runs over the whole program (forward, backward and update in one graph, or each part
of a compiled module). Alias analysis comes first: view ops (reshape, permute, broadcast_to,
basic slicing, windows) share their input's memory, so a buffer stays live while any view of
it is. Then, in program order, a node whose op can write into a given array (its ``out``
template) gets, in this order of preference:

1. the memory of an input that dies at it (elementwise ops, same shape and dtype): a value of
   its own, or a state input that the program updates (``graph.updates``: a parameter or an
   optimizer buffer) once nothing reads its old value — so updates happen in place;
2. a buffer from a pool keyed by shape and dtype, reused once its previous value is dead.

``plan_memory(graph)`` returns a ``MemoryPlan``: per value its ``Placement`` (``InPlace`` for
case 1, ``InBuffer`` for case 2, ``Assembled`` for a copy or concatenation whose inputs were
computed straight into its buffer, no entry for a value in fresh memory), the buffers (shape,
dtype name) the generated module allocates once, and ``memory_of(value)``: the one alias
analysis that codegen, row loops and the compiled step ask which memory a value lives in. The
graph itself is not changed. Graph inputs are never written except as declared updates, and
values the caller keeps (outputs) never live in pooled memory unless listed as ``persistent``.

One aliasing rule (``clobbers``) decides whether a write may go where it would: the node must
not read that memory through a view (a transpose, reshape, slice or broadcast of it, or a view
made once beside the buffers), nor after its kernel started writing it (a later member of a
fused kernel). Row loops ask the same rule (``tracegrad.codegen.emit``), and ``verify_plan``
checks every finished plan against it and the in-place rule.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from tracegrad.dtypes import TensorType, from_name
from tracegrad.ir.core import CONSTANT, FUSED, Node, Value
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ops import ELEMENTWISE, OPS, OVERWRITES_INPUT, VIEW
from tracegrad.passes.fuse import is_linear
from tracegrad.passes.pipeline import note, register_pass

# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InPlace:
    """Written into the memory of the node's input number ``input``, which dies there."""

    input: int


@dataclass(frozen=True)
class InBuffer:
    """Written into pooled buffer number ``buffer``: whole, or into ``view`` of it, a Python
    suffix (``[:, :, 64:128].reshape(...)``) naming the place an assembly gives its part."""

    buffer: int
    view: str = ""


@dataclass(frozen=True)
class Assembled(InBuffer):
    """Nothing to compute: its inputs were written in place into (``view`` of) the buffer, so
    it is that buffer (the consumer of an assembly, or a copy the assembly made unneeded)."""


Placement = InPlace | InBuffer


@dataclass(frozen=True)
class Pooled:
    """The memory of pooled buffer number ``buffer`` (a value's own memory is the Value)."""

    buffer: int


Memory = Value | Pooled


@dataclass
class MemoryPlan:
    """Where each value of one graph lives (see the module docstring).

    ``placements`` holds the first output of every node written into planned memory (a value
    absent from it gets fresh memory, or is a view); ``buffers`` the (shape, dtype name) of each
    pooled buffer; ``root`` maps each value to the value whose memory it shares as a view (itself
    when it is none, see ``aliases``); ``persistent`` names the outputs allowed in pooled memory.
    """

    placements: dict[Value, Placement]
    buffers: list[tuple[tuple, str]]
    root: dict[Value, Value]
    persistent: frozenset[str] = frozenset()
    memory: dict[Value, Memory] = field(init=False, repr=False)

    def __post_init__(self):
        self.memory = {}
        for value in self.root:
            if self.root[value] is value and value not in self.placements:
                self.memory[value] = value

    @classmethod
    def fresh(cls, graph: Graph) -> MemoryPlan:
        """No planned memory: every result in memory of its own (``passes=None``)."""
        return cls.of(graph, {}, [])

    @classmethod
    def of(cls, graph: Graph, placements, buffers, persistent=frozenset()) -> MemoryPlan:
        """The plan of ``graph`` with these placements, its memories settled node by node."""
        plan = cls(placements, buffers, aliases(graph), persistent)
        for node in graph.nodes:
            plan.settle(node)
        return plan

    def placement(self, value) -> Placement | None:
        return self.placements.get(value)

    def memory_of(self, value) -> Memory:
        """The memory ``value`` lives in: a pooled buffer, or the value whose own memory it is
        (itself for graph inputs and fresh results, the base of a view, the input an in-place
        write went into)."""
        return self.memory[value]

    def settle(self, node) -> None:
        """Enter the memory of ``node``'s outputs (those of its inputs are settled)."""
        out = node.outputs[0]
        placement = self.placements.get(out)
        if isinstance(placement, InBuffer):
            self.memory[out] = Pooled(placement.buffer)
        elif isinstance(placement, InPlace):
            self.memory[out] = self.memory[node.inputs[placement.input]]
        elif self.root[out] is not out:
            self.memory[out] = self.memory[self.root[out]]

    def is_whole(self, value: Value, owner: Value) -> bool:
        """Whether ``value`` is ``owner``'s memory, whole: no view, of its type, living there
        (an update written in place over its state input)."""
        return (
            self.root[value] is value and self.memory[value] is owner and owner.type == value.type
        )

    def count(self, kind: type) -> int:
        """How many values have a placement of ``kind`` (``InPlace``, ``InBuffer``)."""
        return sum(isinstance(p, kind) for p in self.placements.values())


def aliases(graph: Graph) -> dict[Value, Value]:
    """Each value -> the value whose memory it lives in (itself unless produced by a view)."""
    root: dict[Value, Value] = {v: v for v in graph.values()}
    for node in graph.nodes:
        op = OPS.get(node.op)
        if op is not None and VIEW in op.props and node.inputs:
            root[node.outputs[0]] = root[node.inputs[0]]
    return root


# --- the aliasing rule: what a write may not destroy ------------------------------------------


def reads_of(node) -> list[tuple[Value, bool]]:
    """(input, read at the index written) for each input of ``node`` written into memory: True
    where its kernel reads the element before writing that same element, and nothing else
    after (an elementwise op; the first member alone of a fused kernel; the input a row-wise
    kernel such as softmax overwrites). Anything else it reads while or after writing: the
    later members of a fused kernel, the operands of a product, a mask or a gradient, and an
    array given twice (a kernel of several steps may read its second operand after writing)."""
    if node.op == FUSED:
        first = set(_read_first_only(node))
        return [(v, v in first) for v in node.inputs]
    props = OPS[node.op].props if node.op in OPS else frozenset()
    once = [sum(u is v for u in node.inputs) == 1 for v in node.inputs]
    if ELEMENTWISE in props:
        return list(zip(node.inputs, once, strict=True))
    return [
        (v, k == 0 and once[k] and OVERWRITES_INPUT in props) for k, v in enumerate(node.inputs)
    ]


def clobbers(reads, written, shape: tuple, plan: MemoryPlan) -> bool:
    """The aliasing rule every write into planned memory obeys: whether writing a result of
    ``shape`` into the memories ``written`` (see ``MemoryPlan.memory_of``) destroys something
    of ``reads`` ((value, read at the index written) pairs, see ``reads_of``) before it is read.

    A value living in written memory is safe only read at the index written, and only as that
    memory itself, whole: its own array, of the result's shape. Read through any view of it
    (transposed, reshaped, broadcast, sliced, or a view made once beside the buffers), its
    elements are read elsewhere than written, some after they were overwritten. (A value that
    is no view lives in its memory whole: the parts of an assembly, which do not, are read by
    their assembly alone.)"""
    return any(
        plan.memory_of(value) in written
        and not (same_index and plan.root[value] is value and value.type.shape == shape)
        for value, same_index in reads
    )


class PlanError(RuntimeError):
    """A memory plan writes over values before they are read."""


def last_uses(graph: Graph, root: dict[Value, Value]) -> dict[Value, int]:
    """Root value -> index of the last node reading it or a view of it (the node count for
    values the caller reads)."""
    last: dict[Value, int] = {}
    for index, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[root[v]] = index
    for v in [*graph.outputs, *graph.updates.values()]:
        last[root[v]] = len(graph.nodes)
    return last


def verify_plan(graph: Graph, plan: MemoryPlan) -> None:
    """Check ``plan`` against the rules every memory plan of ``graph`` obeys, and raise
    ``PlanError`` naming the first node that breaks one:

    1. the in-place rule: a memory is written only when every reader of the value living there
       (or of a view of it) has run; the writing node itself reads it only at the index it
       writes, as that memory whole (the aliasing rule, ``clobbers``);
    2. graph inputs are written only where declared as updates (``graph.updates``), and a state
       input's memory holds no result but its own new value; constants are never written;
    3. a buffer holds one live value at a time (the parts of an assembly, written into views
       of it, count as one);
    4. an output the caller keeps lives in no pooled buffer unless it is ``persistent``.

    Views are read only while their base is live, as a view's readers count as its base's."""
    last = last_uses(graph, plan.root)
    protected = _protection(graph, plan)
    occupants: dict[Memory, list[Value]] = {}  # the values living in a memory, as roots
    parts: dict[Memory, set[Value]] = defaultdict(set)  # an assembly's parts written so far
    for index, node in enumerate(graph.nodes):
        out = node.outputs[0] if node.outputs else None
        placement = plan.placement(out)
        if out is None or placement is None:
            continue
        memory = plan.memory_of(out)
        living = occupants.get(memory, _owner(memory))
        if placement_view(placement):  # (the assembly's earlier parts stay)
            living = [v for v in living if v not in parts[memory]]
        problem = (
            protected(out, memory)
            or _overwritten(graph, living, last, index)
            or _clobbered(node, placement, memory, plan)
        )
        if problem is not None:
            raise PlanError(
                f"memory plan: %{out.name} = {node.op} {problem}; fix the plan "
                "(passes/memory.py: the planner, or its aliasing rule clobbers)"
            )
        if placement_view(placement):
            parts[memory].add(out)
            occupants[memory] = list(parts[memory])
        else:
            parts.pop(memory, None)
            occupants[memory] = [out]


def _overwritten(graph: Graph, living: list[Value], last: dict, index: int) -> str | None:
    """Rules 1 and 3 before the writing node: no value living in the memory is read later."""
    for value in living:
        end = last.get(value, -1)
        if end > index:
            reader = graph.nodes[end] if end < len(graph.nodes) else None
            who = "the caller" if reader is None else f"%{reader.outputs[0].name} = {reader.op}"
            return (
                f"overwrites %{value.name}, which {who} reads later (a memory is written only "
                "once every reader of the value living there has run)"
            )
    return None


def _clobbered(node, placement: Placement, memory: Memory, plan: MemoryPlan) -> str | None:
    """Rule 1 at the writing node: a node computing its result into the whole memory of its
    placement (not a view of a buffer, nor assembled by others) reads it as it writes."""
    computed = isinstance(placement, InPlace) or (
        type(placement) is InBuffer and not placement.view
    )
    out = node.outputs[0]
    if computed and clobbers(reads_of(node), {memory}, out.type.shape, plan):
        return (
            "reads the memory it writes through a view, or after writing it (an in-place "
            "write reads each element only where it writes it)"
        )
    return None


def placement_view(placement: Placement) -> str:
    """The view of its buffer a placement writes ("" for the buffer whole, or in place)."""
    return placement.view if isinstance(placement, InBuffer) else ""


def _owner(memory: Memory) -> list[Value]:
    """Who lives in a memory before the program writes it: a value in its own memory."""
    return [memory] if isinstance(memory, Value) else []


def _protection(graph: Graph, plan: MemoryPlan):
    """``check(out, memory)``: what rules 2 and 4 of ``verify_plan`` say against writing
    ``out`` into ``memory`` (None when nothing)."""
    inputs = set(graph.inputs)
    constants = {n.outputs[0] for n in graph.nodes if n.op == CONSTANT}
    kept = {plan.root[v] for v in graph.outputs if v.name not in plan.persistent}
    results = {plan.root[v] for v in [*graph.outputs, *graph.updates.values()]}

    def check(out, memory: Memory) -> str | None:
        if isinstance(memory, Pooled):
            if plan.root[out] in kept:
                return (
                    f"is kept by the caller, but lives in pooled buffer {memory.buffer} (only "
                    "persistent outputs may)"
                )
            return None
        if memory in constants:
            return f"writes constant %{memory.name} (constants are never written)"
        if memory not in inputs:
            return None
        if memory.name not in graph.updates:
            return (
                f"writes graph input %{memory.name}, which the program does not update (graph "
                "inputs are written only where declared as updates)"
            )
        own = plan.root[graph.updates[memory.name]]
        if plan.root[out] in results and plan.root[out] is not own:
            return (
                f"puts a result in the memory of %{memory.name}, which holds its own new value "
                "(written back there after the run)"
            )
        return None

    return check


# --- the planner --------------------------------------------------------------------------------


class _Planner:
    def __init__(self, graph: Graph, persistent: frozenset[str], pooled: bool, unpooled=()):
        self.graph, self.pooled, self.unpooled = graph, pooled, frozenset(unpooled)
        self.plan = MemoryPlan.of(graph, {}, [], persistent)
        self.root = self.plan.root
        self.last = last_uses(graph, self.root)
        kept = [v for v in graph.outputs if v.name not in persistent]
        constants = [n.outputs[0] for n in graph.nodes if n.op == CONSTANT]
        self.protected = {*graph.inputs, *constants} | {self.root[v] for v in kept}
        # A state input's old value may be overwritten once dead: its new value goes there.
        targets = {v.name: v for v in graph.inputs if v.name in graph.updates}
        self.targets = set(targets.values())
        # value -> the state input whose memory it lives in. That memory may hold the input's
        # own new value, never another result: the caller writes each new value back into its
        # input after the run, which would overwrite it first.
        self.home = {v: name for name, v in targets.items()}
        self.results = {self.root[v] for v in [*graph.outputs, *graph.updates.values()]}
        self.free: dict[tuple, list[int]] = defaultdict(list)
        self.owner: dict[Value, int] = {}  # root value -> buffer index
        # node -> its assembly (see _assemblies), for its consumer and the nodes it gathers
        self.assembly: dict[Node, Assembly] = {}
        for assembly in _assemblies(graph, self.protected, self.root) if pooled else ():
            if pool_key(assembly.consumer.outputs[0]) in self.unpooled:
                continue
            for node in [assembly.consumer, *assembly.parts]:
                self.assembly[node] = assembly

    def dies_at(self, value, index: int) -> bool:
        return self.last.get(self.root[value]) == index

    def writable_input(self, node, index: int, candidates) -> int | None:
        """Position of an input the node may overwrite: one of ``candidates``, not a view,
        read by nothing later, of the output's type, and none of the node's reads destroyed
        by writing there (``clobbers``)."""
        out = node.outputs[0]
        for k, value in enumerate(node.inputs):
            if (
                value in candidates
                and self.root[value] is value
                and self.dies_at(value, index)
                and value.type == out.type
                and self.may_hold(value, out)
                and not self.clobbers(node, self.plan.memory_of(value))
            ):
                return k
        return None

    def clobbers(self, node, memory) -> bool:
        shape = node.outputs[0].type.shape
        return clobbers(reads_of(node), {memory}, shape, self.plan)

    def may_hold(self, value, out) -> bool:
        """Whether ``out`` may be written into ``value``'s memory (see ``self.home``)."""
        home = self.home.get(value)
        if home is None or out not in self.results:
            return True
        return self.root[self.graph.updates[home]] is out

    def place(self, node, index: int) -> None:
        assembly = self.assembly.get(node)
        if assembly is not None:
            self.place_assembled(node, assembly)
            return
        op, out = OPS.get(node.op), node.outputs[0]
        writes_out = node.op == FUSED or (op is not None and op.out is not None)
        if not writes_out or self.root[out] is not out or out in self.protected:
            return
        ours = [v for v in node.inputs if v not in self.protected or v in self.targets]
        if not out.type.shape:
            # NumPy hands back 0-d results as scalars, which cannot be written into later;
            # a ufunc given out= writes there, so a 0-d state (a step count) is updated in place
            ours = [v for v in ours if v in self.targets]
            if op is None or not isinstance(op.impl, np.ufunc) or not ours:
                return
        k = self.writable_input(node, index, ours)
        if k is not None:
            self.place_in(node, k)
        elif self.pooled and out.type.shape and pool_key(out) not in self.unpooled:
            # (a 0-d result comes back as a scalar)
            self.owner[out] = self.take(pool_key(out))
            self.plan.placements[out] = InBuffer(self.owner[out])

    def place_in(self, node, k: int) -> None:
        """Write ``node``'s result over its input ``k``, whose memory (and owner) it takes."""
        out, written = node.outputs[0], node.inputs[k]
        self.plan.placements[out] = InPlace(k)
        if written in self.home:
            self.home[out] = self.home[written]
        if written in self.owner:
            self.owner[out] = self.owner.pop(written)
        note("inplace", node)

    def place_assembled(self, node, assembly: Assembly) -> None:
        """A node of an assembly writes (or, for a copy it makes unneeded, is) a view of the
        consumer's buffer, taken from the pool at the first of them and held until the
        consumer's value dies."""
        if assembly.buffer is None:
            result = assembly.consumer.outputs[0].type
            assembly.buffer = self.take((result.shape, result.dtype.name))
        out = node.outputs[0]
        if node is assembly.consumer:
            self.plan.placements[out] = Assembled(assembly.buffer)
            self.owner[out] = assembly.buffer
            note("assembled", node)
            return
        kind = Assembled if node in assembly.copied else InBuffer
        self.plan.placements[out] = kind(assembly.buffer, assembly.parts[node])

    def take(self, key) -> int:
        """A free buffer of ``key`` (shape, dtype name), or a new one."""
        if self.free[key]:
            return self.free[key].pop()
        self.plan.buffers.append(key)
        return len(self.plan.buffers) - 1

    def release(self, node, index: int) -> None:
        for v in node.inputs:
            base = self.root[v]
            if self.dies_at(v, index) and base in self.owner:
                buffer = self.owner.pop(base)
                self.free[self.plan.buffers[buffer]].append(buffer)


def pool_key(value) -> tuple[tuple, str]:
    """The pool a value's buffer comes from: its (shape, dtype name)."""
    return value.type.shape, value.type.dtype.name


# --- assemblies: results written straight into their place in a copy or concatenation -----

# Ops that only copy their inputs into a fresh array: a contiguous copy of a transposed view
# (attention's heads merged back) and a concatenation (the gradients of q, k and v).
COPIES = ("contiguous", "cat")
# ... and a bucket of gradients packed flat before its reduction starts (a data-parallel
# step): its kernel still runs (it starts the reduction, and copies the gradients that could
# not be written in place), so its assembly may leave some inputs out.
PACKS = ("all_reduce_start",)
ASSEMBLERS = COPIES + PACKS


@dataclass(eq=False)
class Assembly:
    """A copy or concatenation whose inputs are computed straight into their place in its
    buffer: ``parts`` maps each node on the way (a product, or a copy made unneeded) to the
    view of the buffer it writes, as a Python suffix (``[:, :, 64:128].reshape(...)``);
    ``copied`` holds those with nothing left to compute (copies, concatenations of parts)."""

    consumer: Node
    parts: dict[Node, str] = field(default_factory=dict)  # node -> view suffix
    copied: set[Node] = field(default_factory=set)
    buffer: int | None = None


def _assemblies(graph: Graph, protected: set[Value], root: dict) -> list[Assembly]:
    """The copies and concatenations whose every input can be written in place: each traced
    back, through reshapes, transposes, copies and concatenations, to a product, a fused
    kernel or a concatenation (NumPy writes those into any strided view). A value on the
    way is read on it once, and otherwise only by nodes before the consumer (its buffer
    outlives them). The last consumer of a chain claims it first, its inner concatenations
    with it (a sequence's gradient gathering each step's gates)."""
    producers = {v: n for n in graph.nodes for v in n.outputs}
    position = {node: index for index, node in enumerate(graph.nodes)}
    last = last_uses(graph, root)
    claimed: set[Node] = set()  # the nodes of the assemblies found

    def on_the_way_only(value, reader: int, consumer: int) -> bool:
        """Read once by the node at ``reader``, and otherwise (through any view too) only up
        to ``consumer``, whose buffer outlives those reads."""
        reads = sum(v is value for v in graph.nodes[reader].inputs)
        return reads == 1 and last[root[value]] <= consumer

    def trace_part(value, reader, view, suffix, assembly) -> bool:
        """Follow ``value`` (read by the node at ``reader``, to be found in ``view`` of the
        consumer's buffer) back to the node that can write it there, noting each node on the
        way in ``assembly.parts``."""
        consumer = position[assembly.consumer]
        while True:
            node = producers.get(value)
            if node is None or root[value] in protected or node in claimed:
                return False
            if node in assembly.parts or not on_the_way_only(value, reader, consumer):
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
                assembly.copied.add(node)
            elif node.op == "cat" and node.outputs[0].type == value.type:
                assembly.parts[node] = suffix
                if trace_inputs(node, view, suffix, assembly):
                    assembly.copied.add(node)
                return True  # (a concatenation it cannot gather writes into the view)
            elif _writes_anywhere(node) and node.outputs[0].type == value.type:
                assembly.parts[node] = suffix
                return True
            else:
                return False
            value, reader = node.inputs[0], position[node]

    def trace_inputs(node, view, suffix, assembly) -> bool:
        """Trace each input of a copy or concatenation to its place in ``view``; on failure
        the parts noted for them are forgotten."""
        noted, offset = dict(assembly.parts), 0
        for value in node.inputs:
            place, at = view, suffix
            if node.op == "cat":
                dim, size = node.attrs["dim"] % view.ndim, value.type.shape[node.attrs["dim"]]
                place = view[(slice(None),) * dim + (slice(offset, offset + size),)]
                at, offset = suffix + _index_suffix(dim, offset, offset + size), offset + size
            elif node.op in PACKS:
                (place, at), offset = (
                    _flat_piece(view, offset, value.type.shape),
                    offset + (value.type.numel),
                )
            before = dict(assembly.parts)
            if trace_part(value, position[node], place, at, assembly):
                continue
            if node.op in PACKS:  # (the kernel copies this one in)
                assembly.parts = before
                assembly.copied &= set(before)
                continue
            assembly.parts = noted
            assembly.copied &= set(noted)
            return False
        return True

    found = []
    for node in reversed(graph.nodes):
        out = node.outputs[0] if node.outputs else None
        if out is None or node.op not in ASSEMBLERS or node in claimed or not out.type.shape:
            continue
        if root[out] in protected:
            continue
        assembly = Assembly(node)
        probe = np.empty(out.type.shape, np.int8)  # strides only: its pages are never touched
        if trace_inputs(node, probe, "", assembly):
            claimed.update(assembly.parts)
            found.append(assembly)
    return found


def _flat_piece(probe: np.ndarray, offset: int, shape: tuple) -> tuple[np.ndarray, str]:
    """The piece of a flat buffer from ``offset`` holding an array of ``shape``, and its
    suffix."""
    stop = offset + int(np.prod(shape, dtype=int))
    return probe[offset:stop].reshape(shape), f"[{offset}:{stop}].reshape({tuple(shape)})"


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


def plan_memory(
    graph: Graph,
    persistent: frozenset[str] = frozenset(),
    pooled: bool = True,
    unpooled=(),
    verify: bool = True,
) -> MemoryPlan:
    """The memory plan of ``graph`` (see above), checked by ``verify_plan`` (unless
    ``verify`` is False: a plan only estimated, never run); the graph is not changed.
    ``persistent`` names outputs that may live in planned memory (the caller copies or uses
    them before the next call). Without ``pooled``, only in-place writes: every other result
    gets fresh memory; so do results whose ``pool_key`` is in ``unpooled`` (a memory
    budget's choice: a pool holds its buffers for the whole run)."""
    planner = _Planner(graph, persistent, pooled, unpooled)
    for index, node in enumerate(graph.nodes):
        planner.place(node, index)
        planner.plan.settle(node)
        planner.release(node, index)
    if verify:
        verify_plan(graph, planner.plan)
    return planner.plan


@register_pass("inplace")
def inplace(graph: Graph) -> Graph:
    """Plan in-place writes: a result overwrites an input nothing reads later (no pooling).

    ``memory`` plans these too; as a pass it plans, checks the plan and leaves the graph."""
    plan_memory(graph, pooled=False)
    return graph


@register_pass("memory")
def memory(graph: Graph) -> Graph:
    """Plan in-place writes and pooled buffers from liveness over the whole program.

    As a pass in a pipeline it plans and checks the plan, and leaves the graph as it is:
    tg.compile takes each generated function's plan from ``plan_memory``."""
    plan_memory(graph)
    return graph


def peak_bytes(graph: Graph, plan: MemoryPlan | None = None, buffers=None) -> int:
    """Estimated peak of memory the program allocates (graph inputs not counted): the buffers
    of ``plan`` once (or ``buffers``, (shape, dtype name) pairs, when the generated code
    allocates others than the plan's), plus every other memory (a fresh result's, holding
    the results written in place over it too) from its making to the last read of a value
    living in it."""
    plan = MemoryPlan.fresh(graph) if plan is None else plan
    buffers = plan.buffers if buffers is None else buffers
    pool = sum(TensorType(shape, from_name(dtype)).nbytes for shape, dtype in buffers)
    last: dict[Memory, int] = {}
    for index, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[plan.memory_of(v)] = index
    for v in [*graph.outputs, *graph.updates.values()]:
        last[plan.memory_of(v)] = len(graph.nodes)
    live: dict[Memory, int] = {}
    held = peak = 0
    for index, node in enumerate(graph.nodes):
        for out in node.outputs:
            if plan.memory_of(out) is out and node.op != CONSTANT:
                live[out] = out.type.nbytes
                held += out.type.nbytes
        peak = max(peak, held)
        for v in node.inputs:
            if last.get(plan.memory_of(v)) == index:
                held -= live.pop(plan.memory_of(v), 0)
    return pool + peak
