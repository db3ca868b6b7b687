"""What notebooks show (IPython's rich display): a graph's interactive page in a frame, a
compiled callable's summary card and ``explain()``'s report as HTML.

``Graph`` (in ``ir``, a layer below) asks ``ir.graph.PICTURES`` for its pictures; importing
this package fills it with ``graph_html`` and ``graph_svg``. A graph a compiled callable gave
out (``cm.graph``, ``cm.backward_graph``) is drawn as that callable's pictures draw it, with
the time line over its passes and its backward values labelled: the callable ``remember``s
it with the keyword arguments of ``formats.to_html`` it draws with.
"""

from __future__ import annotations

import html
import weakref

from tracegrad.viz.formats import to_html, to_svg

FRAME_HEIGHT = 640  # px: the frame a graph's page is shown in

# id of a graph -> (a weak reference to the graph, a weak reference to a function from the
# graph to the keyword arguments of ``to_html``, or to None when it no longer knows it)
_REMEMBERED: dict[int, tuple[weakref.ref, weakref.WeakMethod]] = {}


def remember(graph, picture: weakref.WeakMethod) -> None:
    """Draw ``graph`` in notebooks with ``picture()(graph)``, the keyword arguments of
    ``to_html`` (``views`` among them), as long as both live."""
    key = id(graph)

    def forget(_):  # the graph was freed: its id may be another graph's next
        _REMEMBERED.pop(key, None)

    _REMEMBERED[key] = (weakref.ref(graph, forget), picture)


def _picture_of(graph, title: str) -> dict:
    """The keyword arguments of ``to_html`` for ``graph``: those of the callable that gave
    it out, while it knows them, else the graph alone."""
    graph_ref, method_ref = _REMEMBERED.get(id(graph), (None, None))
    alive = graph_ref is not None and graph_ref() is graph
    picture = method_ref() if alive and method_ref is not None else None
    found = picture(graph) if picture is not None else None
    return found if found is not None else {"views": [(title, graph)]}


def graph_html(graph, title: str = "graph") -> str:
    """The graph's self-contained page (tabs, zoom, details on hover) in an iframe: its
    styles and script stay its own, and it needs no network."""
    return page_frame(to_html(**_picture_of(graph, title)), title)


def page_frame(page: str, title: str) -> str:
    """A page of ``to_html`` shown inline, in a frame of its own."""
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" title="tracegrad {html.escape(title)}" '
        f'style="width: 100%; height: {FRAME_HEIGHT}px; border: 1px solid #d8d8e0"></iframe>'
    )


def graph_svg(graph, title: str = "graph") -> str:
    return to_svg([(title, graph)])


def summary_card(title: str, rows: list[tuple[str, str]]) -> str:
    """A small table headed ``title``: one row per (label, value)."""
    cells = "".join(
        f'<tr><th style="text-align: left; padding-right: 1em">{html.escape(label)}</th>'
        f'<td style="text-align: left">{html.escape(str(value))}</td></tr>'
        for label, value in rows
    )
    return (
        '<div class="tracegrad-card" style="font-family: system-ui, sans-serif">'
        f"<strong>{html.escape(title)}</strong><table>{cells}</table></div>"
    )


def report_html(text: str) -> str:
    """``explain()``'s text as HTML: its first line a heading, each section (the lines after
    a blank one) a heading and its indented lines as preformatted text."""
    title, *rest = text.split("\n")
    parts = [f"<h3>{html.escape(title)}</h3>"]
    for section in "\n".join(rest).strip("\n").split("\n\n"):
        head, *lines = section.split("\n")
        parts.append(f"<h4 style='margin-bottom: 0.2em'>{html.escape(head)}</h4>")
        if lines:
            parts.append(f"<pre style='margin-top: 0'>{html.escape(chr(10).join(lines))}</pre>")
    return f'<div class="tracegrad-report">{"".join(parts)}</div>'
