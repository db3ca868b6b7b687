"""What notebooks show (IPython's rich display): a graph's interactive page in a frame, a
compiled callable's summary card and ``explain()``'s report as HTML.

``Graph`` (in ``ir``, a layer below) asks ``ir.graph.PICTURES`` for its pictures; importing
this package fills it with ``graph_html`` and ``graph_svg``.
"""

from __future__ import annotations

import html

from tracegrad.viz.formats import to_html, to_svg

FRAME_HEIGHT = 640  # px: the frame a graph's page is shown in


def graph_html(graph, title: str = "graph") -> str:
    """The graph's self-contained page (tabs, zoom, details on hover) in an iframe: its
    styles and script stay its own, and it needs no network."""
    page = to_html([(title, graph)])
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
