"""Grouping a scene by module scope: one box per module call, nested like the module tree.

``group(scene)`` puts every top-level box made inside a module call (``Box.scope``) into a
box of kind ``module`` for that call, inside the boxes of the calls around it. Such a box is
drawn either *expanded* (a frame around its members, as a fused kernel is) or *collapsed*
(one box showing the module's class, its weights' count and output types, with edges to the
outside only). ``panes(scene)`` gives the drawings the page holds for one view:

- the whole view with every module expanded, when it has at most ``EXPAND_AT`` boxes;
- the view with its outermost modules collapsed (opened by default above ``EXPAND_AT``);
- per module, its inside with the modules in it collapsed: opening a collapsed box shows
  that drawing, so no drawing is ever laid out in the browser and each box is drawn once
  per pane it can appear in.
"""

from __future__ import annotations

import ast
import dataclasses
from math import prod

from tracegrad.viz.scene import MODULE, Box, Edge, Scene, leaf_boxes

EXPAND_AT = 300  # boxes; a view with more opens with its modules collapsed
MAX_TYPES = 2  # output types written in a collapsed box


@dataclasses.dataclass
class Pane:
    """One drawing of a view: ``key`` names it in the page (``root``, ``expanded`` or the id
    of the module box it shows the inside of); ``trail`` is the module boxes above it and
    ``title`` the module's label."""

    key: str
    scene: Scene
    trail: list[Box]
    title: str = ""


def group(scene: Scene) -> Scene:
    """The scene with its top-level boxes nested in module boxes (see the module docstring).

    A module box holds a run of consecutive boxes (in graph order) made inside its call: runs
    of a topological order only have edges to later runs, so the drawing stays acyclic. A
    module whose nodes are interleaved with others' (a pass moved them, or the backward
    graph mixes layers) gets one box per run, ``part 2`` and on. A graph input named after
    a module (its parameter ``blocks.0.fc.weight``) goes in the module's first box, a value
    the forward saved for the backward in the innermost box holding all its readers, when
    that box cannot reach a reader outside it (it ends before every such reader, so the
    drawing stays acyclic); else it stays at the top."""
    root: list[Box] = []
    made: list[Box] = []
    inside: dict[str, tuple[Box, ...]] = {}  # leaf id -> the module boxes it is in
    order: dict[str, int] = {}  # leaf id -> position of its box in graph order
    opened: list[Box] = []  # the module boxes the last box went into, outermost first
    parts: dict[str, int] = {}
    for position, box in enumerate(scene.boxes):
        if box.op == "input":
            continue
        calls = box.scope.chain() if box.scope is not None else ()
        keep = 0
        while keep < min(len(calls), len(opened)) and opened[keep].scope == calls[keep]:
            keep += 1
        del opened[keep:]
        for call in calls[keep:]:
            module = _module_box(scene.prefix, call, parts)
            (opened[-1].members if opened else root).append(module)
            opened.append(module)
            made.append(module)
        (opened[-1].members if opened else root).append(box)
        for leaf in leaf_boxes(box):
            inside[leaf.id], order[leaf.id] = tuple(opened), position
    inputs = [b for b in scene.boxes if b.op == "input"]
    _place_inputs(inputs, root, made, scene.edges, inside, order)
    for module in made:
        _describe(module, scene.edges, inputs)
    return Scene(scene.title, scene.prefix, root, scene.edges)


def _place_inputs(inputs, root, made, edges, inside, order) -> None:
    """Each input in the module box it belongs to (see ``group``), else at the top."""
    first = {m.name: m for m in reversed(made)}
    ends: dict[int, int] = {}  # id of a module box -> the last position of a leaf in it
    for leaf, boxes in inside.items():
        for box in boxes:
            ends[id(box)] = max(ends.get(id(box), -1), order[leaf])
    readers: dict[str, list[str]] = {}
    for edge in edges:
        readers.setdefault(edge.src, []).append(edge.dst)
    for box in reversed(inputs):
        read = readers.get(box.id, [])
        owner = _owner(box.name, first)
        if owner is None and box.role is not None and box.role.saved:
            owner = _common(inside[r] for r in read)
        if owner is not None and not all(
            any(b is owner for b in inside[r]) or order[r] > ends[id(owner)] for r in read
        ):
            owner = None  # (a reader before its end and outside it would close a cycle)
        (owner.members if owner else root).insert(0, box)


def _owner(name: str, modules: dict[str, Box]) -> Box | None:
    """The innermost module whose path ``name`` extends (``blocks.0.fc`` for its weight)."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        owner = modules.get(".".join(parts[:end]))
        if owner is not None:
            return owner
    return None


def _common(chains) -> Box | None:
    """The innermost module box in every one of ``chains`` (module boxes, outermost first)."""
    common = None
    for boxes in zip(*chains, strict=False):
        if any(b is not boxes[0] for b in boxes):
            break
        common = boxes[0]
    return common


def _module_box(prefix: str, call, parts: dict[str, int]) -> Box:
    part = parts[call.path] = parts.get(call.path, 0) + 1
    key = f"{prefix}mod_{call.path}" + (f"~{part}" if part > 1 else "")
    label = f"{call.kind} {call.path}" + (f" (part {part})" if part > 1 else "")
    return Box(key, call.path, MODULE, MODULE, label, "", [], scope=call)


def _describe(box: Box, edges: list[Edge], inputs: list[Box]) -> None:
    """The collapsed box's text: class and path, output types, parameter count; and the edges
    between its members, drawn when it is expanded."""
    leaves = list(leaf_boxes(box))
    inside = {leaf.id for leaf in leaves}
    box.member_edges = [e for e in edges if e.src in inside and e.dst in inside]
    leaving = dict.fromkeys(e.label for e in edges if e.src in inside and e.dst not in inside)
    leaving.update(dict.fromkeys(leaf.type for leaf in leaves if leaf.output))
    shown = list(leaving)[:MAX_TYPES]  # (the details list them all)
    box.type = ", ".join(shown) + (
        f" +{len(leaving) - len(shown)}" if len(leaving) > len(shown) else ""
    )
    params = [b for b in inputs if b.name.startswith(box.name + ".")]
    count = sum(prod(ast.literal_eval(_row(b, "shape"))) for b in params)
    box.details = [("module", str(box.scope)), ("boxes", str(len(inside)))]
    if params:  # the graph does not tell parameters from buffers: both are counted
        box.details.append(("weights", f"{count:,} in {len(params)} parameters and buffers"))
        box.label += f" · {_short_count(count)} weights"
    if leaving:
        box.details.append(("outputs", ", ".join(leaving)))


def _row(box: Box, key: str) -> str:
    return next(value for k, value in box.details if k == key)


def _short_count(n: int) -> str:
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def panes(scene: Scene) -> list[Pane]:
    """The drawings of one view, the one to open first first (see the module docstring)."""
    grouped = group(scene)
    collapsed = Pane("root", _collapsed(grouped, grouped.boxes, scene.edges), [])
    inside = [
        Pane(box.id, _collapsed(grouped, box.members, box.member_edges), trail, box.label)
        for box, trail in _modules(grouped.boxes, [])
    ]
    if sum(1 for _ in scene.leaves()) > EXPAND_AT:
        return [collapsed, *inside]
    return [Pane("expanded", grouped, []), collapsed, *inside]


def _modules(boxes: list[Box], trail: list[Box]):
    """Every module box with the module boxes around it, outermost first."""
    for box in boxes:
        if box.op == MODULE:
            yield box, trail
            yield from _modules(box.members, [*trail, box])


def _collapsed(scene: Scene, boxes: list[Box], edges: list[Edge]) -> Scene:
    """``boxes`` with their module boxes shut: members kept (edges find their box through
    them) but drawn as one box."""
    shut = [dataclasses.replace(b, collapsed=True) if b.op == MODULE else b for b in boxes]
    return Scene(scene.title, scene.prefix, shut, edges)
