"""Turning graphs into NumPy source.

Each node becomes one statement named after its value, built from its op's ``emit`` template
(``tracegrad.ops``), with the user's source line as a comment. Values are deleted after their
last use so memory is released as the function runs. jinja2 lays out the module
(``templates/module.py.j2``); the logic stays here.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

import jinja2
import numpy as np

from tracegrad.codegen import names as safe
from tracegrad.codegen.naming import RESERVED, Namer
from tracegrad.ir.core import CONSTANT, CUSTOM, FUSED, Node, Phase, Value
from tracegrad.ir.graph import Graph, body_of
from tracegrad.logs import timed
from tracegrad.ops import ELEMENTWISE, LAYOUT_VIEW, OPS
from tracegrad.ops import kernels as rt
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.fuse import is_linear
from tracegrad.passes.memory import COPIES, Assembled, InBuffer, InPlace, MemoryPlan, clobbers
from tracegrad.passes.threads import Concurrent, Split, ThreadPlan
from tracegrad.version import __version__

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tracegrad.codegen", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    # Compiling the templates costs ~15 ms; their bytecode is cached on disk (per user, keyed
    # by each template's source) so only a machine's first process pays it.
    bytecode_cache=jinja2.FileSystemBytecodeCache(),
)
# Text from outside tracegrad enters templates only through these (tracegrad.codegen.names)
_ENV.filters.update(comment=safe.comment, literal=safe.literal)


# Generated lines are wrapped at this width (header comments, long signatures).
WIDTH = 100


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RowLoop:
    """Nodes ``start`` to ``stop`` (graph indices) run piece of rows by piece of rows; the
    values ``inside`` are read only by later members and live in buffers of one piece."""

    start: int
    stop: int
    inside: list[Value]


@dataclass
class FunctionSource:
    """One generated function and what it emitted: the template's data (name, parameters,
    sections of statements, returns, constants, buffers, kernels, views of buffers) and the
    record that explain() and pictures read: the Python name of each value (``names``), the
    kernel each fused node calls (``kernel_names``), the row loops, and the memory plan
    the code follows."""

    name: str
    params: list[str]
    sections: list[Section]
    returns: list[str]
    constants: dict[str, np.ndarray]
    buffers: list[tuple[str, tuple, str]] = field(default_factory=list)  # name, shape, dtype
    kernels: list[FunctionSource] = field(default_factory=list)  # fused kernels it calls
    views: list[tuple[str, str]] = field(default_factory=list)  # name, expression of buffers
    returns_tuple: bool = True  # a kernel returns its one array as it is
    return_notes: list[str] = field(default_factory=list)  # what each returned value is
    names: dict[Value, str] = field(default_factory=dict)
    kernel_names: dict[Node, str] = field(default_factory=dict)
    row_loops: list[RowLoop] = field(default_factory=list)
    plan: MemoryPlan | None = None
    threads: ThreadPlan | None = None  # what runs on the thread pool (tg.compile(threads=n))

    @property
    def signature(self) -> list[str]:
        """The ``def`` line, its parameters wrapped onto lines of their own when it would be
        wider than WIDTH."""
        line = f"def {self.name}({', '.join(self.params)}):"
        if len(line) <= WIDTH:
            return [line]
        params = textwrap.wrap(
            ", ".join(self.params), WIDTH - 4, break_long_words=False, break_on_hyphens=False
        )
        return [f"def {self.name}(", *(f"    {p}" for p in params), "):"]

    @property
    def noted_returns(self) -> list[tuple[str, str]]:
        """(returned name, what it is) pairs, when ``return_notes`` says."""
        return list(zip(self.returns, self.return_notes, strict=True))


class Literal:
    """Source text standing for an attribute value (so ``-inf`` prints as ``-np.inf``)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def literal(value):
    """An attribute value as op templates print it: a subclass of bool, int, float or str as
    its base type (its own repr or str could print any text), non-finite floats as NumPy's."""
    base = next((t for t in (bool, int, float, str) if isinstance(value, t)), None)
    value = base(value) if base is not None else value
    if isinstance(value, float) and not math.isfinite(value):
        return Literal("np.nan" if math.isnan(value) else ("np.inf" if value > 0 else "-np.inf"))
    if isinstance(value, tuple):
        return tuple(literal(v) for v in value)
    return value


def _section_of(node) -> str:
    return node.phase.value  # "forward", "backward", "update" or "recompute"


def _comment(node) -> str:
    """The node's module call and source line, as the graph's text form writes them, and
    the op it is the gradient of."""
    parts = [] if node.scope is None else [str(node.scope)]
    if node.location is not None:
        parts.append(f"{node.location.filename}:{node.location.lineno}")
    if node.origin:
        parts.append(f"({node.origin})")
    return f"  # {safe.comment(' '.join(parts))}" if parts else ""


def expression(
    node, args: list[str], constants: dict, key: str, out: str | None = None, kernel=None
):
    """The right-hand side for one node; with ``out``, the op writes into that array. A fused
    node calls the function named ``kernel``; a constant array is put in ``constants`` under
    ``key`` (the module's constants ``C`` hold those of all its functions)."""
    if node.op == CONSTANT:
        value = node.attrs["value"]
        if value.ndim == 0:
            text = repr(literal(value.item()))
            return f"np.{value.dtype.name}({text})"
        constants[key] = value
        return f"C[{safe.literal(key)}]"
    if node.op == CUSTOM:
        raise ValueError("codegen: expand custom nodes first (passes.inline_custom)")
    if node.op == FUSED:
        destination = f", out={out}" if out is not None else ""
        return f"{kernel}({', '.join(args)}{destination})"
    op = OPS[node.op]
    attrs = {k: literal(v) for k, v in node.attrs.items()}
    template = op.emit if out is None else op.out
    if template is None:
        raise ValueError(f"codegen: op {node.op!r} has no {'out= ' if out else ''}template")
    return template.format(
        *args, inputs=", ".join(args), indices=", ".join(args[1:]), out=out, **attrs
    )


def emit_kernel(node, name: str, passed: dict[Value, str]) -> FunctionSource:
    """The function computing a fused chain: each member writes into ``out`` in turn, so the
    chain's intermediates need no memory of their own. A parameter is named after the value
    the caller passes for it (``passed``: ``model_0_weight``, ``model_0_permute``)."""
    body = body_of(node)
    names: dict[Value, str] = {}
    taken = set(RESERVED)  # (a value passed twice is a second parameter: x, x_1)
    for outer, inner in zip(node.inputs, body.inputs, strict=True):
        names[inner] = safe.identifier(passed[outer], taken)
    result = node.outputs[0].type
    lines = [f"out = np.empty({result.shape}, np.{result.dtype.name}) if out is None else out"]
    for member in body.nodes:
        args = [names[v] for v in member.inputs]
        lines.append(f"out = {expression(member, args, {}, 'out', 'out')}")
        names[member.outputs[0]] = "out"
    params = [*(names[v] for v in body.inputs), "out=None"]
    section = Section(f"{node.attrs['kind']} (one buffer, in place)", lines)
    return FunctionSource(name, params, [section], ["out"], {}, returns_tuple=False)


@dataclass
class _Frame:
    """What the statements of one function are written against: its graph and memory plan,
    the names of values, kernels and buffers, and the values living in row loops' pieces."""

    graph: Graph
    plan: MemoryPlan
    name: str
    namer: Namer
    kernel_names: dict[Node, str]
    buffers: list[tuple[str, tuple, str]]
    local: dict[Value, str]  # value -> the piece buffer it lives in, inside its row loop
    whole: dict[Value, str]  # value -> the planned buffer it is, whole
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    views: list[tuple[str, str]] = field(default_factory=list)
    threads: ThreadPlan | None = None  # what runs on the thread pool
    jobs: int = 0  # thread pool jobs and row functions named so far
    # (piece buffer, pool part) -> the buffer that part of a split row loop uses instead
    twins: dict[tuple[str, int], str] = field(default_factory=dict)


@timed(lambda graph, name, *args, **kwargs: f"codegen {name}")
def emit_function(
    graph: Graph,
    name: str,
    plan: MemoryPlan | None = None,
    *,
    debug_nans: bool = False,
    notes: list[str] | None = None,
    known: dict[str, str] | None = None,
    threads: ThreadPlan | None = None,
) -> FunctionSource:
    """The function computing ``graph``, writing where ``plan`` says (no plan: every result
    in fresh memory); ``notes`` say what outputs are beyond what the graph says (a stored
    .grad, say), by position, "" where they say nothing; ``known`` names inputs as an earlier
    function named values of the same IR name (the values a forward saves), see ``Namer``;
    ``threads`` what runs on the thread pool (``plan_threads``'s plan, made with this
    function's row loops)."""
    plan = MemoryPlan.fresh(graph) if plan is None else plan
    namer = Namer(graph, notes or [], known)
    params = [namer(v) for v in graph.inputs]
    fused = [node for node in graph.nodes if node.op == FUSED]
    kernel_names = {node: f"{name}_kernel{i}" for i, node in enumerate(fused)}
    buffers = [(f"{name}_b{i}", shape, dtype) for i, (shape, dtype) in enumerate(plan.buffers)]
    loops = [] if debug_nans else loop_plan(graph, plan)
    local = _piece_buffers(graph, loops, name, buffers)
    whole = _whole_buffers(graph, plan, buffers, local)
    frame = _Frame(graph, plan, name, namer, kernel_names, buffers, local, whole)
    frame.threads = None if debug_nans else threads
    sections = _sections(frame, loops, debug_nans)
    returns = [namer(v) for v in graph.outputs]
    kernels = [emit_kernel(node, kernel, namer.names) for node, kernel in kernel_names.items()]
    return FunctionSource(
        name, params, sections, returns, frame.constants, _allocated(plan, buffers, local),
        kernels, frame.views, names=namer.names, kernel_names=kernel_names, row_loops=loops,
        plan=plan, return_notes=_return_notes(graph, notes or []), threads=frame.threads,
    )  # fmt: skip


def _return_notes(graph: Graph, given: list[str]) -> list[str]:
    """What each output is, where the graph says (the new value of an input it updates:
    ``new fc1.weight``) or ``given`` does; none when nothing says anything of any."""
    updated = {value: name for name, value in graph.updates.items()}
    given = given + [""] * (len(graph.outputs) - len(given))
    notes = [
        f"new {updated[v]}" if v in updated else note
        for v, note in zip(graph.outputs, given, strict=True)
    ]
    return notes if any(notes) else []


def _allocated(plan: MemoryPlan, buffers: list, local: dict[Value, str]) -> list:
    """The buffers the module allocates: every piece buffer, and each planned buffer some
    value outside row loops lives in (one that only values inside loops were given is never
    touched)."""
    placed = plan.placements.items()
    used = {p.buffer for v, p in placed if isinstance(p, InBuffer) and v not in local}
    planned = len(plan.buffers)
    return [b for i, b in enumerate(buffers) if i >= planned or i in used]


def _sections(frame: _Frame, loops: list[RowLoop], debug_nans: bool) -> list[Section]:
    """The function's statements, in ``# forward``, ``# backward`` and ``# update`` sections:
    one per node (a row loop's members together), each value deleted after its last use."""
    graph, namer = frame.graph, frame.namer
    last_use = _last_uses(graph)
    keep = set(graph.outputs)
    sections: list[Section] = []
    windows = _Windows(frame)
    splits = {split.start: split for split in frame.threads.splits} if frame.threads else {}
    for start, stop in _runs(graph, {loop.start: loop.stop for loop in loops}):
        node, members = graph.nodes[start], graph.nodes[start:stop]
        title = _section_of(node)
        if not sections or sections[-1].title != title:
            sections.append(Section(title))
        lines: list[str] = []
        if start in windows.submitted:
            lines.append(windows.submit(start, node))
        elif start in splits:
            lines += _split_rows(members, frame, splits[start])
        elif len(members) > 1:
            lines += _row_loop(members, frame)
        else:
            lines.append(_statement(node, frame))
        # where/masked_fill outputs may hold an intended -inf (attention masks): not checked
        if debug_nans and node.op not in (CONSTANT, "where"):
            lines.append(_finite_check(node, namer(node.outputs[0]), title))
        dead = [
            namer(v)
            for i in range(start, stop)
            for v in graph.nodes[i].inputs
            if last_use.get(v) == i and v not in keep and v not in frame.local
        ]
        if dead:
            lines.append(f"del {', '.join(dict.fromkeys(dead))}")
        sections[-1].lines += windows.around(start, stop, lines)
    return sections or [Section("nothing to compute")]


def _statement(node, frame: _Frame) -> str:
    """The one statement computing ``node``'s value where the plan puts it."""
    target = frame.namer(node.outputs[0])
    return f"{target} = {_right_side(node, frame, target)}{_comment(node)}"


def _right_side(node, frame: _Frame, target: str) -> str:
    namer = frame.namer
    key = f"{frame.name}.{target}"  # (a constant's, unique in the module)
    args = [namer(v) for v in node.inputs]
    destination = _destination(node, args, frame)
    if isinstance(frame.plan.placement(node.outputs[0]), Assembled) and node.op in COPIES:
        assert destination is not None  # (an assembly's buffer, or the view of it)
        rhs = destination  # its inputs were written in place: nothing to copy
    elif _layout_view_of_buffer(node, frame.whole):
        rhs = f"{frame.name}_v{len(frame.views)}"
        buffer = frame.whole[node.inputs[0]]
        frame.views.append((rhs, expression(node, [buffer], frame.constants, key)))
    else:
        kernel = frame.kernel_names.get(node)
        rhs = expression(node, args, frame.constants, key, destination, kernel)
    return rhs


def _whole_buffers(graph: Graph, plan: MemoryPlan, buffers, local: dict) -> dict[Value, str]:
    """Value -> the name of the planned buffer it is, whole: written there by its node, or in
    place over a value that is (the same array on every call)."""
    whole = {}
    for node in graph.nodes:
        out = node.outputs[0]
        placement = plan.placement(out)
        if out in local or (isinstance(placement, InBuffer) and placement.view):
            continue
        if isinstance(placement, InBuffer):
            buffer, shape, _ = buffers[placement.buffer]
            if tuple(out.type.shape) == tuple(shape):
                whole[out] = buffer
        elif isinstance(placement, InPlace):
            written = node.inputs[placement.input]
            if written in whole and written.type.shape == out.type.shape:
                whole[out] = whole[written]
    return whole


def _layout_view_of_buffer(node, whole: dict[Value, str]) -> bool:
    """Whether ``node`` is a layout view of a whole buffer: made once, beside the buffers."""
    op = OPS.get(node.op)
    return op is not None and LAYOUT_VIEW in op.props and node.inputs[0] in whole


def _runs(graph: Graph, loops: dict[int, int]) -> list[tuple[int, int]]:
    """(start, stop) ranges covering the nodes in order: a row loop's members together, every
    other node alone (with debug_nans there are no loops, so each node gets its check)."""
    runs, index = [], 0
    while index < len(graph.nodes):
        runs.append((index, loops.get(index, index + 1)))
        index = runs[-1][1]
    return runs


def _finite_check(node, target: str, section: str) -> str:
    where = f"{node.location.filename}:{node.location.lineno}" if node.location else "?"
    what = node.origin if node.phase is Phase.BACKWARD else node.op  # "grad of mul"
    texts = ", ".join(safe.literal(t) for t in (what, section, where))
    return f"rt.check_finite({target}, {texts})"


# --- row loops ------------------------------------------------------------------------------------
#
# Neighbouring elementwise nodes over one large shape, each writing into planned memory, run
# together in one loop over pieces of rows (CHUNK elements a piece): a piece's arrays stay in
# cache from the first node of the loop to the last, instead of streaming whole arrays through
# memory once per node (an optimizer's moment and parameter updates, say). A value only later
# members of its loop read (lr * g in an SGD update) lives in a buffer of one piece.


# Elements a result must exceed for a row loop: pieces pay once the loop's arrays overflow the
# L2 cache (2 MiB a core here); below, the loop's slicing costs more than it saves (a 100k
# float SGD update ran 20% slower in pieces than whole) unless a value of the loop needs
# only a piece-sized buffer: then results of more than one piece loop too, as the buffer
# they no longer stream through memory pays for the slicing (W1's update of its 100352
# weights: 5-10 us less per step).
ROW_LOOP_MIN = 4 * rt.CHUNK


def row_loops(graph: Graph, plan: MemoryPlan) -> list[tuple[int, int]]:
    """(start, stop) index ranges of the nodes that run together in row loops."""
    return [(loop.start, loop.stop) for loop in loop_plan(graph, plan)]


def loop_plan(graph: Graph, plan: MemoryPlan) -> list[RowLoop]:
    """The row loops of ``graph`` under ``plan``, each with the values living inside it: those
    only later members of the loop read, none writing over them in place (its result would
    live on in that memory): each needs a buffer of one piece."""
    loops, start = [], None
    for index, node in enumerate(graph.nodes):
        if start is not None and not _joins(graph.nodes[start : index + 1], plan):
            if index - start > 1:
                loops.append((start, index))
            start = None
        if start is None and _row_candidate(node, plan):
            start = index
    if start is not None and len(graph.nodes) - start > 1:
        loops.append((start, len(graph.nodes)))
    users = graph.users()
    kept = {*graph.outputs, *graph.updates.values()}
    found = [
        RowLoop(start, stop, _loop_locals(graph.nodes[start:stop], users, kept, plan))
        for start, stop in loops
    ]
    return [
        loop
        for loop in found
        if loop.inside or graph.nodes[loop.start].outputs[0].type.numel > ROW_LOOP_MIN
    ]


def _loop_locals(members, users, kept: set[Value], plan: MemoryPlan) -> list[Value]:
    position = {n: i for i, n in enumerate(members)}

    def local(i: int, value) -> bool:
        readers = users.get(value, [])
        return (
            bool(readers)
            and value not in kept
            and all(position.get(r, -1) > i and not _overwrites(r, value, plan) for r in readers)
        )

    return [
        node.outputs[0]
        for i, node in enumerate(members)
        if _whole_in_buffer(plan.placement(node.outputs[0]))
        and plan.root[node.outputs[0]] is node.outputs[0]
        and local(i, node.outputs[0])
    ]


def _whole_in_buffer(placement) -> bool:
    return isinstance(placement, InBuffer) and not placement.view


def _overwrites(node, value, plan: MemoryPlan) -> bool:
    placement = plan.placement(node.outputs[0])
    return isinstance(placement, InPlace) and node.inputs[placement.input] is value


def _piece_buffers(graph: Graph, loops: list[RowLoop], name: str, buffers) -> dict[Value, str]:
    """Value -> the piece-sized buffer (appended to ``buffers``) of each value living inside
    its row loop. Loops take turns with the same piece buffers."""
    pieces: dict[tuple, list[str]] = {}
    local = {}
    for loop in loops:
        shape = graph.nodes[loop.start].outputs[0].type.shape
        taken: dict[tuple, int] = {}
        for value in loop.inside:
            key = ((_piece_rows(shape), *shape[1:]), value.type.dtype.name)
            names = pieces.setdefault(key, [])
            taken[key] = taken.get(key, 0) + 1
            if len(names) < taken[key]:
                names.append(f"{name}_p{sum(map(len, pieces.values()))}")
                buffers.append((names[-1], *key))
            local[value] = names[taken[key] - 1]
    return local


def _piece_rows(shape: tuple) -> int:
    return max(1, rt.CHUNK * shape[0] // math.prod(shape))


def _row_candidate(node, plan: MemoryPlan) -> bool:
    op = OPS.get(node.op)
    elementwise = (op is not None and ELEMENTWISE in op.props) or (
        node.op == FUSED and not is_linear(node)
    )
    if not elementwise or (op is not None and (RANDOM in op.props or op.out is None)):
        return False
    shape = node.outputs[0].type.shape
    placement = plan.placement(node.outputs[0])
    planned = isinstance(placement, InPlace) or _whole_in_buffer(placement)
    return planned and len(shape) > 0 and shape[0] > 1 and math.prod(shape) > rt.CHUNK


def _joins(members, plan: MemoryPlan) -> bool:
    """Whether ``members`` may run piece by piece: all candidates of one shape, and no member
    reads memory a member writes other than row for row (the same array, same rows: each
    member's own reads the memory plan allowed already; across members, a piece is read
    before any member writes that piece over)."""
    shape = members[0].outputs[0].type.shape
    if not all(_row_candidate(m, plan) and m.outputs[0].type.shape == shape for m in members):
        return False
    written = {plan.memory_of(m.outputs[0]) for m in members}
    reads = [(value, True) for member in members for value in member.inputs]
    return not clobbers(reads, written, shape, plan)


def _row_loop(members, frame: _Frame) -> list[str]:
    """The loop running ``members`` piece by piece, then each member's value bound to the
    whole array it wrote (a value living in a piece buffer is dead after the loop)."""
    shape = members[0].outputs[0].type.shape
    loop, binds = _rows(members, frame, _piece_rows(shape), ("0", str(shape[0])))
    return loop + binds


def _rows(members, frame: _Frame, step: int, bounds: tuple[str, str]):
    """The loop over pieces of ``step`` rows from row ``bounds[0]`` to ``bounds[1]`` (source
    text), and the lines binding each member's value after it."""
    namer, local = frame.namer, frame.local
    shape = members[0].outputs[0].type.shape
    # member output -> the whole array it writes, or its piece of a buffer
    written: dict[Value, str] = {}
    body = []
    for member in members:
        args = [written.get(v) or _piece(v, shape, namer) for v in member.inputs]
        out = member.outputs[0]
        whole = _destination(member, [namer(v) for v in member.inputs], frame)
        placement = frame.plan.placement(out)
        if isinstance(placement, InPlace) and member.inputs[placement.input] in written:
            # an in-place write goes where its input lives
            whole = written[member.inputs[placement.input]].removesuffix("[piece]")
        piece = f"{local[out]}[: {shape[0]} - start]" if out in local else None
        written[out] = piece or f"{whole}[piece]"
        kernel = frame.kernel_names.get(member)
        rhs = expression(member, args, {}, "", written[out], kernel)
        body.append(f"    {rhs}{_comment(member)}")
    first, last = bounds
    header = [
        f"for start in range({first}, {last}, {step}):  # rows of {shape} in pieces of {step}",
        f"    piece = slice(start, start + {step})",
    ]
    binds = [
        f"{namer(m.outputs[0])} = {written[m.outputs[0]].removesuffix('[piece]')}"
        for m in members
        if m.outputs[0] not in local
    ]
    return header + body, binds


def _piece(value, shape, namer: Namer) -> str:
    """How a loop member reads ``value`` from outside the loop: the piece of a whole array as
    long as the loop's shape along axis 0, else whole (a scalar, or an array broadcast along
    the rows)."""
    rows = len(value.type.shape) == len(shape) and value.type.shape[0] == shape[0]
    return f"{namer(value)}[piece]" if rows else namer(value)


def _destination(node, args: list[str], frame: _Frame) -> str | None:
    """Where the memory plan says the node writes: an input it overwrites, or a buffer (the
    whole buffer, or the view of it an assembly writes)."""
    placement = frame.plan.placement(node.outputs[0])
    if isinstance(placement, InPlace):
        return args[placement.input]
    if isinstance(placement, InBuffer):
        return frame.buffers[placement.buffer][0] + placement.view
    return None


# --- the thread pool ----------------------------------------------------------------------------
#
# A program compiled with threads=n runs what its ThreadPlan (tracegrad.passes.threads) says on
# the process's pool of n - 1 threads (tracegrad.blas.thread_pool), named POOL in the module.
# A standalone export copies the helpers instead (tracegrad.codegen.export.pool_source).
POOL_IMPORT = "from tracegrad.blas import one_blas_thread, thread_pool"


def row_runs(graph: Graph, plan: MemoryPlan) -> list[tuple[int, int]]:
    """(start, stop) ranges of the nodes that may run by rows, for ``plan_threads``: the row
    loops, and each other elementwise statement whose rows are independent."""
    loops = row_loops(graph, plan)
    inside = {i for start, stop in loops for i in range(start, stop)}
    singles = [
        (i, i + 1) for i, node in enumerate(graph.nodes) if i not in inside and _joins([node], plan)
    ]
    return sorted(loops + singles)


class _Windows:
    """The products a function runs in the pool, each beside the statements after it: its
    ``pool.submit`` opens a ``with one_blas_thread():`` block holding them, closed by
    ``.result()`` after the last."""

    def __init__(self, frame: _Frame):
        self.frame = frame
        concurrent = frame.threads.concurrent if frame.threads else []
        self.submitted: dict[int, Concurrent] = {c.submitted: c for c in concurrent}
        self.open: tuple[Concurrent, str] | None = None  # the window running, its result line

    def submit(self, index: int, node) -> str:
        """The statement handing ``node`` to the pool, its inputs bound as they are now (the
        calling thread may delete their names before the pool reads them)."""
        frame = self.frame
        target = frame.namer(node.outputs[0])
        job = f"{frame.name}_job{frame.jobs}"
        frame.jobs += 1
        self.open = (self.submitted[index], f"{target} = {job}.result()")
        names = dict.fromkeys(frame.namer(v) for v in node.inputs)
        bound = ", ".join(f"{n}={n}" for n in names)
        rhs = _right_side(node, frame, target)
        return f"{job} = POOL.submit(lambda {bound}: {rhs}){_comment(node)}"

    def around(self, start: int, stop: int, lines: list[str]) -> list[str]:
        """The lines of nodes ``start`` to ``stop``, inside a window when one is open."""
        if self.open is None:
            return lines
        window, result = self.open
        indented = [f"    {line}" for line in lines]
        if start == window.submitted:
            indented.insert(0, f"with one_blas_thread():  # {safe.comment(window.reason)}")
        if stop - 1 == window.joined:
            indented.append(f"    {result}")
            self.open = None
        return indented


def _split_rows(members, frame: _Frame, split: Split) -> list[str]:
    """Nodes running by rows in ``split.parts`` parts at once: their loop as a function of
    its rows (and of the piece buffers it uses), called in the pool for every part but the
    last, which the calling thread runs; each pool part has piece buffers of its own."""
    shape = members[0].outputs[0].type.shape
    rows = shape[0]
    step = _piece_rows(shape) if len(members) > 1 else -(-rows // split.parts)
    pieces = -(-rows // step)
    per_part = -(-pieces // min(split.parts, pieces)) * step  # whole pieces: the same as unsplit
    bounds = [(lo, min(rows, lo + per_part)) for lo in range(0, rows, per_part)]
    loop, binds = _rows(members, frame, step, ("first", "last"))
    own = sorted({frame.local[m.outputs[0]] for m in members if m.outputs[0] in frame.local})
    name = f"{frame.name}_rows{frame.jobs}"
    lines = [f"def {name}({', '.join(['first', 'last', *own])}):  # {split.reason}"]
    lines += [f"    {line}" for line in loop]
    jobs = []
    for part, (lo, hi) in enumerate(bounds[:-1]):
        job = f"{frame.name}_job{frame.jobs + 1 + part}"
        buffers = "".join(f", {_twin(frame, buffer, part)}" for buffer in own)
        lines.append(f"{job} = POOL.submit({name}, {lo}, {hi}{buffers})")
        jobs.append(job)
    frame.jobs += 1 + len(jobs)
    lo, hi = bounds[-1]
    lines.append(f"{name}({', '.join([str(lo), str(hi), *own])})")
    lines += [f"{job}.result()" for job in jobs]
    return lines + binds


def _twin(frame: _Frame, buffer: str, part: int) -> str:
    """The piece buffer standing for ``buffer`` in pool part ``part`` (allocated once)."""
    key = (buffer, part)
    if key not in frame.twins:
        _, shape, dtype = next(b for b in frame.buffers if b[0] == buffer)
        frame.twins[key] = f"{buffer}_pool{part}"
        frame.buffers.append((frame.twins[key], shape, dtype))
    return frame.twins[key]


def _last_uses(graph: Graph) -> dict[Value, int]:
    last = {}
    for index, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[v] = index
    return last


def render_module(
    functions: list[FunctionSource], title: str, runtime: str, graphs, pool: str = POOL_IMPORT
) -> str:
    """The module's source: ``runtime`` (source text) binds the kernels as ``rt``, ``pool``
    the thread pool's helpers (used when a function runs statements on the pool)."""
    header = []
    for fn, graph in zip(functions, graphs, strict=True):
        counts = ", ".join(f"{op} {n}" for op, n in graph.op_counts().items())
        header += _wrapped(f"{fn.name}: {len(graph.nodes)} nodes ({counts})", "  ")
        header += _wrapped(f"  {fn.name}({', '.join(fn.params)}) -> ({', '.join(fn.returns)})")
    return _ENV.get_template("module.py.j2").render(
        version=__version__,
        title=title,
        header=header,
        runtime=runtime,
        functions=functions,
        pool=pool,
        threads=max((fn.threads.threads for fn in functions if fn.threads), default=1),
    )


def _wrapped(line: str, indent: str = "      ") -> list[str]:
    """A header line as lines of at most WIDTH columns once commented (``# ``), at commas."""
    return textwrap.wrap(
        line,
        WIDTH - 2,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [line]
