"""Turning graphs into NumPy source.

Each node becomes one statement named after its value, built from its op's ``emit`` template
(``tracegrad.ops``), with the user's source line as a comment. Values are deleted after their
last use so memory is released as the function runs. jinja2 lays out the module
(``templates/module.py.j2``); the logic stays here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import jinja2
import numpy as np

import tracegrad
from tracegrad.codegen import names as safe
from tracegrad.ir.core import CONSTANT, CUSTOM, FUSED, Phase
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ops import ELEMENTWISE, LAYOUT_VIEW, OPS
from tracegrad.ops import kernels as rt
from tracegrad.ops.registry import RANDOM
from tracegrad.passes.fuse import is_linear
from tracegrad.passes.memory import aliases, clobbers, homes

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tracegrad.codegen", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
# Text from outside tracegrad enters templates only through these (tracegrad.codegen.names)
_ENV.filters.update(comment=safe.comment, literal=safe.literal)


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass
class FunctionSource:
    name: str
    params: list[str]
    sections: list[Section]
    returns: list[str]
    constants: dict[str, np.ndarray]
    buffers: list[tuple[str, tuple, str]] = field(default_factory=list)  # name, shape, dtype
    kernels: list[FunctionSource] = field(default_factory=list)  # fused kernels it calls
    views: list[tuple[str, str]] = field(default_factory=list)  # name, expression of buffers
    returns_tuple: bool = True  # a kernel returns its one array as it is


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


# Names of a function's module-level buffers, piece buffers, views and kernels (forward_b0,
# step_kernel1): a value named so would hide them inside the function.
GLOBALS = re.compile(r"\w+_(?:b|p|v|kernel)\d+")


class Namer:
    """Python identifiers for IR values: inputs keep their (sanitized) names, nodes get v<N>."""

    def __init__(self):
        self.names: dict[int, str] = {}
        self.taken: set[str] = {"np", "rt", "C", "rng", "start", "piece"}

    def __call__(self, value, prefix: str = "") -> str:
        if id(value) not in self.names:
            base = value.name
            # A value named by the IR (7, s7) reads the same wherever it appears: v7, vs7 (a
            # value saved for the backward is a node's output in the forward function and
            # an input of the backward function).
            if prefix or base[:1].isdigit() or re.fullmatch(r"[a-z]\d+", base):
                base = (prefix or "v") + base
            self.names[id(value)] = safe.identifier(base, self.taken, GLOBALS)
        return self.names[id(value)]


def _section_of(node) -> str:
    return node.phase.value  # "forward", "backward" or "update"


def _comment(node) -> str:
    parts = []
    if node.location is not None:
        parts.append(f"{node.location.filename}:{node.location.lineno}")
    if node.origin:
        parts.append(f"({node.origin})")
    return f"  # {safe.comment(' '.join(parts))}" if parts else ""


def expression(node, args: list[str], constants: dict, target: str, out: str | None = None):
    """The right-hand side for one node; with ``out``, the op writes into that array."""
    if node.op == CONSTANT:
        value = node.attrs["value"]
        if value.ndim == 0:
            text = repr(literal(value.item()))
            return f"np.{value.dtype.name}({text})"
        constants[target] = value
        return f"C[{safe.literal(target)}]"
    if node.op == CUSTOM:
        raise ValueError("codegen: expand custom nodes first (passes.inline_custom)")
    if node.op == FUSED:
        destination = f", out={out}" if out is not None else ""
        return f"{node.meta['kernel']}({', '.join(args)}{destination})"
    op = OPS[node.op]
    attrs = {k: literal(v) for k, v in node.attrs.items()}
    template = op.emit if out is None else op.out
    return template.format(
        *args, inputs=", ".join(args), indices=", ".join(args[1:]), out=out, **attrs
    )


def emit_kernel(node, name: str) -> FunctionSource:
    """The function computing a fused chain: each member writes into ``out`` in turn, so the
    chain's intermediates need no memory of their own."""
    body = body_of(node)
    names = {id(v): f"a{i}" for i, v in enumerate(body.inputs)}
    result = node.outputs[0].type
    lines = [f"out = np.empty({result.shape}, np.{result.dtype.name}) if out is None else out"]
    for member in body.nodes:
        args = [names[id(v)] for v in member.inputs]
        lines.append(f"out = {expression(member, args, {}, 'out', 'out')}")
        names[id(member.outputs[0])] = "out"
    params = [*(names[id(v)] for v in body.inputs), "out=None"]
    section = Section(f"{node.attrs['kind']} (one buffer, in place)", lines)
    return FunctionSource(name, params, [section], ["out"], {}, returns_tuple=False)


def emit_function(graph: Graph, name: str, *, debug_nans: bool = False) -> FunctionSource:
    namer = Namer()
    params = [namer(v) for v in graph.inputs]
    last_use = _last_uses(graph)
    keep = {id(v) for v in graph.outputs}
    constants: dict[str, np.ndarray] = {}
    sections: list[Section] = []
    kernels: list[FunctionSource] = []
    buffers = [
        (f"{name}_b{i}", shape, dtype)
        for i, (shape, dtype) in enumerate(graph.meta.get("buffers", []))
    ]
    plan = [] if debug_nans else loop_plan(graph)
    loops = {start: stop for start, stop, _ in plan}
    local = _piece_buffers(graph, plan, name, buffers)
    whole = _whole_buffers(graph, buffers, local)
    views: list[tuple[str, str]] = []
    for start, stop in _runs(graph, loops):
        node, members = graph.nodes[start], graph.nodes[start:stop]
        title = _section_of(node)
        if not sections or sections[-1].title != title:
            sections.append(Section(title))
        lines = sections[-1].lines
        for member in members:
            if member.op == FUSED:
                kernels.append(emit_kernel(member, f"{name}_kernel{len(kernels)}"))
                member.meta["kernel"] = kernels[-1].name
        if len(members) > 1:
            lines += _row_loop(members, namer, buffers, local)
        else:
            target = namer(node.outputs[0], prefix="v")
            args = [namer(v) for v in node.inputs]
            destination = _destination(node, args, buffers)
            if node.meta.get("assembled"):  # its inputs were written in place: nothing to copy
                rhs = destination
            elif _layout_view_of_buffer(node, whole):
                rhs = f"{name}_v{len(views)}"
                buffer = whole[id(node.inputs[0])]
                views.append((rhs, expression(node, [buffer], constants, target)))
            else:
                rhs = expression(node, args, constants, target, destination)
            lines.append(f"{target} = {rhs}{_comment(node)}")
        # where/masked_fill outputs may hold an intended -inf (attention masks): not checked
        if debug_nans and node.op not in (CONSTANT, "where"):
            lines.append(_finite_check(node, namer(node.outputs[0], prefix="v"), title))
        dead = [
            namer(v)
            for i in range(start, stop)
            for v in graph.nodes[i].inputs
            if last_use.get(id(v)) == i and id(v) not in keep and id(v) not in local
        ]
        if dead:
            lines.append(f"del {', '.join(dict.fromkeys(dead))}")
    returns = [namer(v) for v in graph.outputs]
    sections = sections or [Section("nothing to compute")]
    # A whole buffer only values inside row loops were given is never touched: not allocated
    used = {
        n.meta["buffer"]
        for n in graph.nodes
        if "buffer" in n.meta and id(n.outputs[0]) not in local
    }
    planned = len(graph.meta.get("buffers", []))
    buffers = [b for i, b in enumerate(buffers) if i >= planned or i in used]
    return FunctionSource(name, params, sections, returns, constants, buffers, kernels, views)


def _whole_buffers(graph: Graph, buffers, local: dict[int, str]) -> dict[int, str]:
    """id(value) -> the name of the planned buffer it is, whole: written there by its node,
    or in place over a value that is (the same array on every call)."""
    whole = {}
    for node in graph.nodes:
        out = node.outputs[0]
        if id(out) in local or "view" in node.meta:
            continue
        if "buffer" in node.meta:
            buffer, shape, _ = buffers[node.meta["buffer"]]
            if tuple(out.type.shape) == tuple(shape):
                whole[id(out)] = buffer
        elif "inplace" in node.meta:
            written = node.inputs[node.meta["inplace"]]
            if id(written) in whole and written.type.shape == out.type.shape:
                whole[id(out)] = whole[id(written)]
    return whole


def _layout_view_of_buffer(node, whole: dict[int, str]) -> bool:
    """Whether ``node`` is a layout view of a whole buffer: made once, beside the buffers."""
    op = OPS.get(node.op)
    return op is not None and LAYOUT_VIEW in op.props and id(node.inputs[0]) in whole


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


def row_loops(graph: Graph) -> list[tuple[int, int]]:
    """(start, stop) index ranges of the nodes that run together in row loops."""
    return [(start, stop) for start, stop, _ in loop_plan(graph)]


def loop_plan(graph: Graph) -> list[tuple[int, int, list]]:
    """(start, stop, values living inside) of each row loop: the values only later members
    of the loop read, none writing over them in place (its result would live on in that
    memory): each needs a buffer of one piece."""
    root = aliases(graph)
    home = homes(graph, root)
    loops, start = [], None
    for index, node in enumerate(graph.nodes):
        if start is not None and not _joins(graph.nodes[start : index + 1], home, root):
            if index - start > 1:
                loops.append((start, index))
            start = None
        if start is None and _row_candidate(node):
            start = index
    if start is not None and len(graph.nodes) - start > 1:
        loops.append((start, len(graph.nodes)))
    users = graph.users()
    kept = {id(v) for v in [*graph.outputs, *graph.updates.values()]}
    plan = [
        (start, stop, _loop_locals(graph.nodes[start:stop], users, kept, root))
        for start, stop in loops
    ]
    big = [start for start, _, _ in plan if graph.nodes[start].outputs[0].type.numel > ROW_LOOP_MIN]
    return [(start, stop, local) for start, stop, local in plan if local or start in big]


def _loop_locals(members, users, kept: set[int], root) -> list:
    position = {id(n): i for i, n in enumerate(members)}

    def local(i: int, value) -> bool:
        readers = users.get(value, [])
        return (
            bool(readers)
            and id(value) not in kept
            and all(position.get(id(r), -1) > i and not _overwrites(r, value) for r in readers)
        )

    return [
        node.outputs[0]
        for i, node in enumerate(members)
        if "buffer" in node.meta
        and "view" not in node.meta
        and root[id(node.outputs[0])] is node.outputs[0]
        and local(i, node.outputs[0])
    ]


def _overwrites(node, value) -> bool:
    k = node.meta.get("inplace")
    return k is not None and node.inputs[k] is value


def _piece_buffers(graph: Graph, plan, name: str, buffers) -> dict[int, str]:
    """id(value) -> the piece-sized buffer (appended to ``buffers``) of each value living
    inside its row loop. Loops take turns with the same piece buffers."""
    pieces: dict[tuple, list[str]] = {}
    local = {}
    for start, _, values in plan:
        shape = graph.nodes[start].outputs[0].type.shape
        taken: dict[tuple, int] = {}
        for value in values:
            key = ((_piece_rows(shape), *shape[1:]), value.type.dtype.name)
            names = pieces.setdefault(key, [])
            taken[key] = taken.get(key, 0) + 1
            if len(names) < taken[key]:
                names.append(f"{name}_p{sum(map(len, pieces.values()))}")
                buffers.append((names[-1], *key))
            local[id(value)] = names[taken[key] - 1]
    return local


def _piece_rows(shape: tuple) -> int:
    return max(1, rt.CHUNK * shape[0] // math.prod(shape))


def _row_candidate(node) -> bool:
    op = OPS.get(node.op)
    elementwise = (op is not None and ELEMENTWISE in op.props) or (
        node.op == FUSED and not is_linear(node)
    )
    if not elementwise or (op is not None and (RANDOM in op.props or op.out is None)):
        return False
    shape = node.outputs[0].type.shape
    planned = ("inplace" in node.meta or "buffer" in node.meta) and "view" not in node.meta
    return planned and len(shape) > 0 and shape[0] > 1 and math.prod(shape) > rt.CHUNK


def _joins(members, home: dict, root: dict) -> bool:
    """Whether ``members`` may run piece by piece: all candidates of one shape, and no member
    reads memory a member writes other than row for row (the same array, same rows: each
    member's own reads the memory plan allowed already; across members, a piece is read
    before any member writes that piece over)."""
    shape = members[0].outputs[0].type.shape
    if not all(_row_candidate(m) and m.outputs[0].type.shape == shape for m in members):
        return False
    written = {home[id(m.outputs[0])] for m in members}
    reads = [(value, True) for member in members for value in member.inputs]
    return not clobbers(reads, written, shape, home, root)


def _row_loop(members, namer: Namer, buffers, local: dict[int, str]) -> list[str]:
    """The loop running ``members`` piece by piece, then each member's value bound to the
    whole array it wrote (a value living in a piece buffer is dead after the loop)."""
    shape = members[0].outputs[0].type.shape
    step = _piece_rows(shape)
    written = {}  # id(member output) -> the whole array it writes, or its piece of a buffer
    body = []
    for member in members:
        args = [written.get(id(v)) or _piece(v, shape, namer) for v in member.inputs]
        out = member.outputs[0]
        whole = _destination(member, [namer(v) for v in member.inputs], buffers)
        for k, v in enumerate(member.inputs):  # an in-place write goes where its input lives
            if member.meta.get("inplace") == k and id(v) in written:
                whole = written[id(v)].removesuffix("[piece]")
        piece = f"{local[id(out)]}[: {shape[0]} - start]" if id(out) in local else None
        written[id(out)] = piece or f"{whole}[piece]"
        rhs = expression(member, args, {}, "", written[id(out)])
        body.append(f"    {rhs}{_comment(member)}")
    header = [
        f"for start in range(0, {shape[0]}, {step}):  # rows of {shape} in pieces of {step}",
        f"    piece = slice(start, start + {step})",
    ]
    binds = [
        f"{namer(m.outputs[0], prefix='v')} = {written[id(m.outputs[0])].removesuffix('[piece]')}"
        for m in members
        if id(m.outputs[0]) not in local
    ]
    return header + body + binds


def _piece(value, shape, namer: Namer) -> str:
    """How a loop member reads ``value`` from outside the loop: the piece of a whole array as
    long as the loop's shape along axis 0, else whole (a scalar, or an array broadcast along
    the rows)."""
    rows = len(value.type.shape) == len(shape) and value.type.shape[0] == shape[0]
    return f"{namer(value)}[piece]" if rows else namer(value)


def _destination(node, args: list[str], buffers) -> str | None:
    """Where the memory plan says the node writes: an input it overwrites, or a buffer."""
    if "inplace" in node.meta:
        return args[node.meta["inplace"]]
    if "buffer" in node.meta:  # the whole buffer, or the view of it an assembly writes
        return buffers[node.meta["buffer"]][0] + node.meta.get("view", "")
    return None


def _last_uses(graph: Graph) -> dict[int, int]:
    last = {}
    for index, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[id(v)] = index
    return last


def render_module(functions: list[FunctionSource], title: str, runtime: str, graphs) -> str:
    header = []
    for fn, graph in zip(functions, graphs, strict=True):
        counts = ", ".join(f"{op} {n}" for op, n in graph.op_counts().items())
        header.append(f"{fn.name}: {len(graph.nodes)} nodes ({counts})")
        header.append(f"  {fn.name}({', '.join(fn.params)}) -> ({', '.join(fn.returns)})")
    return _ENV.get_template("module.py.j2").render(
        version=tracegrad.__version__,
        title=title,
        header=header,
        runtime=runtime,
        functions=functions,
    )
