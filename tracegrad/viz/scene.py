"""What a picture shows, before any geometry: boxes, edges and fused groups of one view.

A *view* is a titled Graph, with the generated function (``FunctionSource``) that computes it
when there is one: then the boxes take the code's variable names and the memory plan's badges
from what the code generator recorded. Its scene has one ``Box`` per graph input and per IR
node (a fused node's box holds the boxes of its body's nodes as ``members``) and one ``Edge``
per producer -> consumer pair between leaf boxes. Box ids are the value name of the node's
first output, prefixed per view (``g0_12``, ``g1_grad_7``); members of a fused node are named
after it (``g0_15/3``). Every output format (DOT, SVG, HTML) is drawn from this one
description.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from tracegrad.codegen.emit import FunctionSource
from tracegrad.codegen.naming import Namer
from tracegrad.ir.core import CONSTANT, CUSTOM, Value
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ops import ELEMENTWISE, OPS, REDUCE, VIEW, ops_with
from tracegrad.passes.memory import InPlace, MemoryPlan, Pooled
from tracegrad.scopes import Scope

FUSED = "fused"
MODULE = "module"  # a box of the nodes one module call made (see viz.modules)


class Kind(NamedTuple):
    label: str  # for the legend
    fill: str
    stroke: str


# Colour classes by kind of op. Every format reads its colours from this table only.
KINDS = {
    "input": Kind("graph input", "#c7f0d2", "#2f8a4c"),
    "constant": Kind("constant", "#eeeeec", "#8a8a85"),
    "elementwise": Kind("elementwise", "#d6e6fb", "#3f6fb5"),
    "reduce": Kind("reduce", "#fbe7a6", "#b38600"),
    "view": Kind("view / shape / index", "#e4e4ea", "#6b6b80"),
    "linalg": Kind("matmul / linear algebra", "#f9cdcd", "#b83a3a"),
    "nn": Kind("nn op", "#e2d8fb", "#6a4cc0"),
    "custom": Kind("custom Function", "#f9d3e8", "#b33b7c"),
    "fused": Kind("fused kernel", "#fff3e6", "#e06c00"),
    "module": Kind("module (click to open)", "#f3f8ee", "#4f7a28"),
    "other": Kind("other", "#ffffff", "#555555"),
}

# Op families (the ops/ file an op is declared in) that name a kind of their own.
_FAMILY_KINDS = {"linalg": "linalg", "nn": "nn", "random": "nn", "shape": "view", "index": "view"}


@functools.cache
def kind_of(op: str) -> str:
    """The colour class of an op: special node kinds, then family, then property sets."""
    if op in (CONSTANT, CUSTOM, FUSED):
        return op
    if op not in OPS:
        return "other"
    family = OPS[op].infer.__module__.rsplit(".", 1)[-1]
    if family in ("linalg", "nn", "random"):
        return _FAMILY_KINDS[family]
    for prop, kind in ((REDUCE, "reduce"), (VIEW, "view"), (ELEMENTWISE, "elementwise")):
        if op in ops_with(prop):
            return kind
    return _FAMILY_KINDS.get(family, "other")


@dataclass
class Box:
    """One drawn box: a graph input, an IR node, or a fused node holding its members."""

    id: str
    name: str  # value name of the (first) output
    op: str  # op name, or "input"
    kind: str
    label: str  # the short text in the box: op, or a constant's value, or the input's name
    type: str  # the IR type text of the first output, e.g. "f32[5,8]"
    details: list[tuple[str, str]]  # rows for tooltips and the side panel
    var: str | None = None  # the generated-code variable holding the value
    output: bool = False  # a graph output (or an updated input)
    inplace: int | None = None  # the input it is written over, by the memory plan
    buffer: int | None = None  # the pooled buffer it lives in, by the memory plan
    members: list[Box] = field(default_factory=list)
    member_edges: list[Edge] = field(default_factory=list)
    scope: Scope | None = None  # the module call that made the node (ir.core.Node.scope)
    collapsed: bool = False  # a module box drawn as one box, its members hidden
    change: str | None = None  # "added" or "rewritten" by the pass a snapshot shows
    role: Role | None = None  # what a backward graph's value is (see backward_roles)

    @property
    def framed(self) -> bool:
        """Drawn as a frame around its members: a fused kernel, or an open module box."""
        return self.op == FUSED or (self.op == MODULE and not self.collapsed)

    @property
    def badges(self) -> list[str]:
        """Notes drawn next to the box: buffer reuse planned by the in-place and memory passes."""
        notes = [] if self.inplace is None else [f"in-place ← input {self.inplace}"]
        return notes + ([] if self.buffer is None else [f"buf {self.buffer}"])

    @property
    def tooltip(self) -> str:
        return "\n".join(f"{key}: {value}" for key, value in self.details)


@dataclass
class Edge:
    src: str
    dst: str
    label: str  # the IR type of the value(s) flowing


@dataclass
class Scene:
    title: str
    prefix: str
    boxes: list[Box]  # top level: inputs first, then nodes in graph order
    edges: list[Edge]  # between leaf boxes (fused members stand for their group)

    def leaves(self):
        """Every box that stands for one graph input or one non-fused IR node."""
        for box in self.boxes:
            yield from leaf_boxes(box)


def leaf_boxes(box: Box):
    """The boxes in ``box`` (itself, when it holds none) standing for one input or node."""
    if box.op in (FUSED, MODULE):
        for member in box.members:
            yield from leaf_boxes(member)
    else:
        yield box


class Role(NamedTuple):
    """What a value of a backward graph is, for its box: ``label`` in the box, ``text`` in
    its details (``grad of fc1.weight``; ``saved relu``, ``saved output of relu in block.2``)
    and whether it is a value the forward saved (``saved``)."""

    label: str
    text: str
    saved: bool = False


def backward_roles(forward: Graph, backward: Graph, wrt: list[str]) -> dict[str, Role]:
    """Value name -> Role for the backward's inputs (values saved by ``forward``, its inputs,
    and the gradients flowing in) and outputs (the gradients of the inputs named ``wrt``, in
    order)."""
    roles = saved_roles(forward, [v.name for v in backward.inputs])
    for v in backward.inputs:
        if v.name not in roles and v.name.startswith("grad_"):
            name = v.name.removeprefix("grad_")
            roles[v.name] = Role(
                f"grad of output {name}", f"gradient of the forward's output {name}"
            )
    for v, name in zip(backward.outputs, wrt, strict=False):
        roles.setdefault(v.name, Role(f"grad of {name}", f"gradient of {name}"))
    return roles


def saved_roles(forward: Graph, names: list[str]) -> dict[str, Role]:
    """Value name -> Role for those of ``names`` that ``forward`` makes or takes as input:
    the values it saves for the backward (``saved output of relu in block.2 (ReLU)``,
    ``saved input x``)."""
    made = {v.name: node for node in forward.nodes for v in node.outputs}
    inputs = {v.name for v in forward.inputs}
    roles = {}
    for name in names:
        node = _maker(made.get(name), name)
        if node is not None:
            where = f" in {node.scope}" if node.scope is not None else ""
            text = f"saved output of {_label(node)}{where}"
            roles[name] = Role(f"saved {_label(node)}", text, saved=True)
        elif name in inputs:
            roles[name] = Role(f"saved {name}", f"saved input {name}", saved=True)
    return roles


def _maker(node, name: str):
    """The node that made value ``name``: in a fused node, the member making it."""
    if node is None or node.op != FUSED:
        return node
    body = body_of(node)
    inner = body.outputs[[v.name for v in node.outputs].index(name)]
    return next((m for m in body.nodes if inner in m.outputs), node)


def build_scene(
    title: str,
    graph: Graph,
    index: int,
    emitted: FunctionSource | None = None,
    roles: dict[str, Role] | None = None,
) -> Scene:
    """The scene of one view (see the module docstring); ``roles`` (``backward_roles``)
    label the values of a backward graph with what they are."""
    prefix = f"g{index}_"
    if emitted is None:
        variables, plan = code_vars(graph), None
    else:
        variables = {value.name: name for value, name in emitted.names.items()}
        plan = emitted.plan
    outputs = {*graph.outputs, *graph.updates.values()}
    outputs |= {v for v in graph.inputs if v.name in graph.updates}
    where: dict[Value, str] = {}  # value -> id of the leaf box producing it
    boxes = [_input_box(v, prefix, variables, v in outputs) for v in graph.inputs]
    for v, box in zip(graph.inputs, boxes, strict=True):
        where[v] = box.id
    edges = _EdgeSet()
    for node in graph.nodes:
        box = _node_box(node, prefix, variables, where, edges)
        if plan is not None and node.outputs:
            _mark_memory(box, plan, node.outputs[0])
        box.output = any(v in outputs for v in node.outputs)
        boxes.append(box)
    if roles:
        for box in boxes:
            _mark_role(box, roles)
    return Scene(title, prefix, boxes, edges.items())


def _mark_role(box: Box, roles: dict[str, Role]) -> None:
    role = box.role = roles.get(box.name)
    if role is not None:
        box.label = role.label
        box.details.insert(0, ("is", role.text))


class _EdgeSet:
    """Edges keyed by (src, dst): a value read twice, or two outputs of one node read by the
    same consumer, draw one edge whose label lists the distinct types."""

    def __init__(self):
        self.table: dict[tuple[str, str], Edge] = {}

    def add(self, src: str, dst: str, label: str) -> None:
        edge = self.table.get((src, dst))
        if edge is None:
            self.table[src, dst] = Edge(src, dst, label)
        elif label not in edge.label.split(", "):
            edge.label += ", " + label

    def items(self) -> list[Edge]:
        return list(self.table.values())


def _node_box(node, prefix: str, variables: dict, where: dict, edges: _EdgeSet) -> Box:
    """The box of one node; records its incoming edges and where its outputs come from."""
    name = node.outputs[0].name if node.outputs else f"node{id(node)}"
    box = Box(
        id=prefix + name,
        name=name,
        op=node.op,
        kind=kind_of(node.op),
        label=_label(node),
        type=str(node.outputs[0].type) if node.outputs else "",
        details=_node_details(node),
        var=variables.get(name),
        scope=node.scope,
    )
    if node.op == FUSED:
        _fill_fused(box, node, where, edges)
        return box
    for v in node.inputs:
        edges.add(where[v], box.id, str(v.type))
    for v in node.outputs:
        where[v] = box.id
    return box


def _mark_memory(box: Box, plan: MemoryPlan, value) -> None:
    """Badges from the memory plan: the input written over, the pooled buffer lived in."""
    placement = plan.placement(value)
    if isinstance(placement, InPlace):
        box.inplace = placement.input
    memory = plan.memory_of(value)
    if placement is not None and isinstance(memory, Pooled):
        box.buffer = memory.buffer
    if box.badges:
        box.details.append(("memory plan", " · ".join(box.badges)))


def _fill_fused(box: Box, node, where: dict, edges: _EdgeSet) -> None:
    """Members are the body's nodes; body inputs stand for the node's inputs, and the node's
    outputs come from the members producing the body's outputs."""
    body: Graph = body_of(node)
    inner = dict(where)
    for outer, v in zip(node.inputs, body.inputs, strict=True):
        inner[v] = where[outer]
    internal = _EdgeSet()
    for member in body.nodes:
        collected = _EdgeSet()
        box.members.append(_node_box(member, box.id + "/", {}, inner, collected))
        for edge in collected.items():
            inside = edge.src.startswith(box.id + "/")
            (internal if inside else edges).add(edge.src, edge.dst, edge.label)
    box.member_edges = internal.items()
    for outer, v in zip(node.outputs, body.outputs, strict=True):
        where[outer] = inner[v]


def _input_box(v, prefix: str, variables: dict, output: bool) -> Box:
    details = [("input", v.name), *_type_details(v.type)]
    return Box(prefix + v.name, v.name, "input", "input", v.name, str(v.type), details,
               variables.get(v.name), output)  # fmt: skip


def _label(node) -> str:
    if node.op == CONSTANT:
        value = node.attrs.get("value")
        if isinstance(value, np.ndarray) and value.ndim == 0:
            return f"const {value.item()!r}"
        return "constant"
    if node.op == CUSTOM:
        fn = node.attrs.get("fn")
        return getattr(fn, "__name__", "custom")
    if node.op == FUSED:
        return f"fused {node.attrs.get('kind', '')}".strip()
    return node.op


def _node_details(node) -> list[tuple[str, str]]:
    rows = [("op", node.op)]
    if node.scope is not None:
        rows.append(("module", str(node.scope)))
    if node.outputs:
        rows.append(("name", ", ".join(v.name for v in node.outputs)))
        rows += _type_details(node.outputs[0].type)
    if node.location is not None:
        rows.append(("source", f"{node.location.filename}:{node.location.lineno}"))
        if node.location.line:
            rows.append(("line", node.location.line))
    if node.origin:
        rows.append(("origin", node.origin))
    rows += [(key, _short(value)) for key, value in node.attrs.items() if key != "body"]
    return rows


def _type_details(t) -> list[tuple[str, str]]:
    shape = "(" + ", ".join(map(str, t.shape)) + ("," if len(t.shape) == 1 else "") + ")"
    return [("type", str(t)), ("shape", shape), ("dtype", t.dtype.name),
            ("bytes", _bytes(t.nbytes))]  # fmt: skip


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{n} B ({size:.1f} {unit})"


def _short(value) -> str:
    """Attribute text for a tooltip: arrays by type, classes by name, the rest cut at 80."""
    if isinstance(value, np.ndarray):
        return repr(value.item()) if value.ndim == 0 else f"array {value.dtype}{list(value.shape)}"
    if isinstance(value, type):
        return value.__qualname__
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def code_vars(graph: Graph) -> dict[str, str]:
    """Value name -> the Python variable the code generator gives it (its ``Namer``'s, which
    names every value of a graph from the graph alone)."""
    return {value.name: name for value, name in Namer(graph).names.items()}


# A view with more leaf boxes than this is drawn collapsed (see ``collapse``): a picture of
# tens of thousands of boxes takes minutes and gigabytes to lay out and no one can read it.
COLLAPSE_AT = 5000
GROUP = "group"


def collapse(scene: Scene, limit: int = COLLAPSE_AT) -> Scene:
    """``scene`` itself when it is small; else one box per run of consecutive nodes made by
    one source line and phase (``model.py:12 · 340 ops``), the graph inputs as one box, and
    the edges between those groups. Runs follow the graph's order, so the groups' graph has
    no cycle; more runs than ``limit`` are merged a few at a time."""
    leaves = list(scene.leaves())
    if len(leaves) <= limit:
        return scene
    runs = _runs(scene.boxes)
    per = -(-len(runs) // limit)
    groups = [[b for run in runs[i : i + per] for b in run] for i in range(0, len(runs), per)]
    group_of, boxes = {}, []
    for k, members in enumerate(groups):
        box = _group_box(scene.prefix, k, members)
        boxes.append(box)
        for member in members:
            for leaf in leaf_boxes(member):
                group_of[leaf.id] = box.id
    edges = _EdgeSet()
    for edge in scene.edges:
        src, dst = group_of[edge.src], group_of[edge.dst]
        if src != dst:
            edges.add(src, dst, "")
    return Scene(
        f"{scene.title} (collapsed: {len(leaves)} boxes)", scene.prefix, boxes, edges.items()
    )


def _runs(boxes: list[Box]) -> list[list[Box]]:
    """Consecutive top-level boxes sharing a source line and phase; the inputs are one run."""
    runs: list[list[Box]] = []
    last = None
    for box in boxes:
        key = "input" if box.op == "input" else (_detail(box, "source"), _detail(box, "origin"))
        if key != last:
            runs.append([])
            last = key
        runs[-1].append(box)
    return runs


def _group_box(prefix: str, k: int, members: list[Box]) -> Box:
    leaves = [leaf for m in members for leaf in leaf_boxes(m)]
    counts: dict[str, int] = {}
    for leaf in leaves:
        counts[leaf.op] = counts.get(leaf.op, 0) + 1
    ops = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda i: -i[1])[:6])
    inputs = all(m.op == "input" for m in members)
    where = "graph inputs" if inputs else (_detail(members[0], "source") or "?")
    phase = _detail(members[0], "origin")
    label = f"{where} · {len(leaves)} {'inputs' if inputs else 'ops'}"
    details = [("group of", f"{len(leaves)} boxes"), ("ops", ops), ("source", where)]
    if phase:
        details.append(("origin", phase))
    kind = "input" if inputs else kind_of(max(counts, key=counts.__getitem__))
    return Box(f"{prefix}group{k}", f"group{k}", GROUP, kind, label, "", details)


def _detail(box: Box, key: str) -> str:
    return next((value for k, value in box.details if k == key), "")
