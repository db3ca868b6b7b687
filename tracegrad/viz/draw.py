"""Geometry of a scene: box sizes, the layout, placed boxes and SVG path data for templates.

A fused box, or an open module box, is laid out recursively: its members get their own
layout, and the box is made big enough to frame it. Edges that enter or leave such a group
attach to the group's frame; edges between members are drawn inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import networkx as nx

from tracegrad.viz.layout import Layout, layout
from tracegrad.viz.scene import MODULE, Box, Edge, Scene

CHAR_WIDTH = 6.8  # of the 11px monospace font the templates use
BOX_HEIGHT = 34
BADGE_HEIGHT = 12  # a third line of text in boxes with badges
TEXT_PAD = 10
MIN_WIDTH = 56
MAX_LABEL = 24  # characters; longer labels are cut (the tooltip has the full text)
MAX_GROUP_LABEL = 48
GROUP_PAD = 10
GROUP_HEADER = 20


@dataclass
class Placed:
    """A box with its place: top-left corner and size."""

    box: Box
    x: float
    y: float
    w: float
    h: float
    label: str
    group: bool

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def classes(self) -> str:
        b = self.box
        names = ["node", b.kind, "group" if self.group else "leaf"]
        names += ["output"] * b.output + ["inplace"] * (b.inplace is not None)
        names += ["buffer"] * (b.buffer is not None) + ["collapsed"] * b.collapsed
        names += [b.change] if b.change else []
        return " ".join(names)


@dataclass
class Path:
    d: str  # SVG path data
    label: str  # the type(s) of the value flowing
    ends: str  # space-separated ids of the leaf boxes at either end, for highlighting
    kind: str = "routed"  # or "jump out" / "jump in": the stubs of an edge too long to route


@dataclass
class Drawing:
    scene: Scene
    width: float
    height: float
    nodes: list[Placed]  # group frames come before their members
    paths: list[Path]


@dataclass
class _Frame:
    """A relative layout of sibling boxes, with the inner frames of fused boxes."""

    boxes: list[Box]
    layout: Layout
    sizes: dict
    inner: dict  # fused box id -> _Frame of its members
    edges: dict  # (top src, top dst) -> list of leaf Edges drawn as that route


def draw(scene: Scene) -> Drawing:
    frame = _frame(scene.boxes, scene.edges)
    nodes: list[Placed] = []
    paths: list[Path] = []
    _emit(frame, 0.0, 0.0, nodes, paths)
    return Drawing(scene, frame.layout.width, frame.layout.height, nodes, paths)


def _frame(boxes: list[Box], edges: list[Edge]) -> _Frame:
    inner = {b.id: _frame(b.members, b.member_edges) for b in boxes if b.framed}
    sizes = {b.id: _size(b, inner.get(b.id)) for b in boxes}
    top = {leaf: b.id for b in boxes for leaf in _leaf_ids(b)}
    dag = nx.DiGraph()
    dag.add_nodes_from(b.id for b in boxes)
    grouped: dict[tuple[str, str], list[Edge]] = {}
    for edge in edges:
        key = (top[edge.src], top[edge.dst])
        if key[0] != key[1]:
            grouped.setdefault(key, []).append(edge)
    dag.add_edges_from(grouped)
    return _Frame(boxes, layout(dag, sizes), sizes, inner, grouped)


def _leaf_ids(box: Box):
    yield box.id
    for member in box.members:
        yield from _leaf_ids(member)


def _size(box: Box, inner: _Frame | None) -> tuple[float, float]:
    badges = " · ".join(box.badges)
    if inner is not None:
        chars = len(_label(box)) + len(badges) + 2
        width = max(inner.layout.width, chars * CHAR_WIDTH + TEXT_PAD)
        return width + 2 * GROUP_PAD, inner.layout.height + GROUP_HEADER + GROUP_PAD
    columns = max(len(_label(box)), len(box.type), len(badges) * 0.85)  # badges: smaller font
    height = BOX_HEIGHT + BADGE_HEIGHT * bool(badges)
    return max(MIN_WIDTH, columns * CHAR_WIDTH + 2 * TEXT_PAD), height


def _label(box: Box) -> str:
    if box.framed:
        text, limit = f"{box.label} · {box.type}", MAX_GROUP_LABEL
    elif box.op == MODULE:
        text, limit = box.label, MAX_GROUP_LABEL
    else:
        text, limit = box.label, MAX_LABEL
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _emit(frame: _Frame, dx: float, dy: float, nodes: list, paths: list) -> None:
    """Append the frame's boxes and routes, shifted by (dx, dy), depth first."""
    for box in frame.boxes:
        cx, cy = frame.layout.pos[box.id]
        w, h = frame.sizes[box.id]
        x, y = cx - w / 2 + dx, cy - h / 2 + dy
        group = box.id in frame.inner
        nodes.append(Placed(box, x, y, w, h, _label(box), group))
        if group:
            _emit(frame.inner[box.id], x + GROUP_PAD, y + GROUP_HEADER, nodes, paths)
    for key, points in frame.layout.routes.items():
        label, ends = _edge_text(frame.edges[key])
        paths.append(Path(path_data(points, dx, dy), label, ends))
    for (src, dst), stubs in frame.layout.jumps.items():
        label, ends = _edge_text(frame.edges[src, dst])
        out_stub, in_stub = (path_data(points, dx, dy) for points in stubs)
        paths.append(Path(out_stub, f"{label} to {dst} (further down)", ends, "jump out"))
        paths.append(Path(in_stub, f"{label} from {src} (further up)", ends, "jump in"))


def _edge_text(leaf_edges: list[Edge]) -> tuple[str, str]:
    """The tooltip (types carried) and the ids of the boxes at both ends of a drawn edge."""
    label = ", ".join(dict.fromkeys(e.label for e in leaf_edges))
    ends = " ".join(dict.fromkeys(end for e in leaf_edges for end in (e.src, e.dst)))
    return label, ends


def path_data(points, dx: float = 0.0, dy: float = 0.0) -> str:
    """SVG path data: straight where x stays put, a vertical-tangent cubic where it bends."""
    x0, y0 = points[0]
    parts = [f"M{x0 + dx:.1f},{y0 + dy:.1f}"]
    for (x1, y1), (x2, y2) in pairwise(points):
        if abs(x1 - x2) < 0.05:
            parts.append(f"L{x2 + dx:.1f},{y2 + dy:.1f}")
        else:
            mid = (y1 + y2) / 2 + dy
            parts.append(
                f"C{x1 + dx:.1f},{mid:.1f} {x2 + dx:.1f},{mid:.1f} {x2 + dx:.1f},{y2 + dy:.1f}"
            )
    return " ".join(parts)
