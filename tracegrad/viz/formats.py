"""The three output formats, each one template over the same scenes and drawings.

``views`` is always a list of ``(title, Graph)`` pairs; box ids get the prefix ``g<i>_`` of
the view's position, so the same graph shown twice keeps unique ids. ``generated`` (optional,
a compiled program's ``parts``: (FunctionSource, Graph) pairs) gives the views of generated
graphs the code's variable names and the memory plan's badges, as the code generator recorded
them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import jinja2
import markupsafe

from tracegrad.viz.codelinks import first_lines, link_code
from tracegrad.viz.draw import Drawing, draw
from tracegrad.viz.modules import Pane, panes
from tracegrad.viz.scene import KINDS, Scene, build_scene, collapse

TITLE_HEIGHT = 30  # room above each drawing for its title
VIEW_GAP = 40  # between views shown side by side


def _dot_quote(text) -> str:
    """A DOT string literal; newlines become DOT's centred line break."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


# Characters XML 1.0 cannot hold: C0 controls other than tab, newline and carriage return,
# lone surrogates (which UTF-8 cannot encode either), U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(value):
    """Every value a template prints: names and source text may hold any character, and those
    XML cannot hold are written as their Python escapes (``\\x0b``). Markup (a macro's
    output, JSON) was made of values already seen here."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return _NOT_XML.sub(lambda found: repr(found.group())[1:-1], value)
    return value


def _px(value: float) -> str:
    return f"{value:.1f}"


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tracegrad.viz", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "svg.j2")),
    finalize=_xml_safe,
)
_ENV.filters.update(dot=_dot_quote, px=_px)
_ENV.globals.update(kinds=KINDS, title_height=TITLE_HEIGHT)


def built_scenes(views, generated=(), roles=None) -> list[Scene]:
    """A scene per view, every box in it; ``roles`` (id of a backward graph -> its
    ``scene.backward_roles``) label the values of backward graphs."""
    emitted = {id(graph): fn for fn, graph in generated}
    roles = roles or {}
    return [
        build_scene(title, graph, i, emitted.get(id(graph)), roles.get(id(graph)))
        for i, (title, graph) in enumerate(views)
    ]


def scenes(views, generated=()) -> list[Scene]:
    """A scene per view; a very large one collapsed into groups (see scene.collapse)."""
    return [collapse(scene) for scene in built_scenes(views, generated)]


def to_dot(views, generated=()) -> str:
    """Graphviz DOT text (no Graphviz needed to write it)."""
    return _ENV.get_template("graph.dot.j2").render(scenes=scenes(views, generated))


def to_svg(views, generated=()) -> str:
    """A standalone SVG with the views side by side, laid out by tracegrad itself."""
    drawings = [draw(scene) for scene in scenes(views, generated)]
    placed, offset = [], 0.0
    for d in drawings:
        placed.append((offset, d))
        offset += d.width + VIEW_GAP
    height = max((d.height for d in drawings), default=0.0) + TITLE_HEIGHT
    return _ENV.get_template("graph.svg.j2").render(
        placed=placed, width=max(offset - VIEW_GAP, 1.0), height=height
    )


# Snapshots of the pipeline with more nodes than this are left out of a page's time line:
# each snapshot is a whole drawing, and a big graph's dozen of them would make pages of
# hundreds of megabytes.
HISTORY_LIMIT = 400


def to_html(views, code: str | None = None, generated=(), history=(), roles=None) -> str:
    """One self-contained page: tabs per view, modules as boxes to open, details on hover,
    code linked to nodes. Each view holds several drawings (``viz.modules.panes``).

    ``history`` (``passes_history()`` of a compiled callable: snapshots with ``title``,
    ``graph``, ``pass_name``, ``rules``, ``added``, ``removed``, ``rewritten``) adds a
    "passes" tab: a time line over the snapshots of at most HISTORY_LIMIT nodes, the nodes
    each pass added or rewrote marked. ``roles`` label backward graphs' values (see
    ``built_scenes``)."""
    built = built_scenes(views, generated, roles)
    steps = [s for s in history if len(s.graph.nodes) <= HISTORY_LIMIT]
    built += [_snapshot_scene(s, len(built) + k) for k, s in enumerate(steps)]
    shown = [[_drawn(pane) for pane in panes(scene)] for scene in built]
    lines = link_code(code, built[: len(views)]) if code else []
    return _ENV.get_template("page.html.j2").render(
        views=shown,
        titles=[scene.title for scene in built],
        tabs=len(views),
        counts=[_count(scene) for scene in built],
        steps=[_step_text(s) for s in steps],
        left_out=len(history) - len(steps),
        history_limit=HISTORY_LIMIT,
        lines=lines,
        nodes=_node_table(shown, first_lines(lines)),
    )


def _snapshot_scene(snapshot, index: int) -> Scene:
    scene = build_scene(snapshot.title, snapshot.graph, index)
    marks = dict.fromkeys(snapshot.added, "added") | dict.fromkeys(snapshot.rewritten, "rewritten")
    for box in scene.boxes:
        box.change = marks.get(box.name)
    return scene


def _step_text(snapshot) -> str:
    """The time line's caption of a snapshot: the rules that fired and the node counts."""
    text = f"{snapshot.title} ({len(snapshot.graph.nodes)} nodes)"
    if snapshot.pass_name is None:
        return text
    rules = ", ".join(f"{rule} x{n}" for rule, n in snapshot.rules.items()) or "nodes moved"
    counts = f"+{len(snapshot.added)} added, -{len(snapshot.removed)} removed, "
    return f"{text}: {rules}; {counts}{len(snapshot.rewritten)} rewritten"


def _drawn(pane: Pane) -> tuple[Pane, Drawing]:
    return pane, draw(collapse(pane.scene))


def _count(scene: Scene) -> str:
    boxes = list(scene.leaves())
    inputs = sum(b.op == "input" for b in boxes)
    return f"{len(boxes) - inputs} nodes"


def _node_table(shown: list[list[tuple[Pane, Drawing]]], lines: dict[str, int]) -> dict:
    """What the page's script needs per box: detail rows, its code line, its view, the pane
    it is drawn in with modules collapsed, and the module calls that made it (``scope``:
    [path, class] pairs, outermost first)."""
    table: dict[str, dict] = {}
    for index, view in enumerate(shown):
        # The expanded pane last: a box's pane is one that shows it with modules collapsed.
        for pane, d in sorted(view, key=lambda item: item[0].key == "expanded"):
            for n in d.nodes:
                table.setdefault(n.box.id, {
                    "rows": n.box.details,
                    "line": lines.get(n.box.id),
                    "view": index,
                    "pane": pane.key,
                    "scope": [[s.path, s.kind] for s in n.box.scope.chain()] if n.box.scope else [],
                })  # fmt: skip
    return table


_WRITERS: dict[str, Callable[..., str]] = {
    ".dot": to_dot,
    ".gv": to_dot,
    ".svg": to_svg,
    ".html": to_html,
    ".htm": to_html,
}
SUFFIXES = tuple(_WRITERS)  # the file suffixes ``render`` knows


def render(views, path, code: str | None = None, generated=(), history=(), roles=None):
    """Write ``views`` to ``path`` in the format its suffix names; returns ``path``. The
    page (.html) also shows ``code``, a time line over ``history`` and backward values
    labelled by ``roles`` (see ``to_html``)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _WRITERS:
        raise ValueError(
            f"cannot tell the format from {os.fspath(path)!r}: use one of {sorted(_WRITERS)}"
        )
    writer = _WRITERS[suffix]
    if writer is to_html:
        text = to_html(views, code, generated, history, roles)
    else:
        text = writer(views, generated)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
