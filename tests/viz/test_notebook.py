"""What notebooks show: a Graph's interactive page and SVG, a compiled callable's summary
card and explain()'s report, through IPython's display formatter where IPython is installed
and read back with html.parser either way; and plain reprs that say what each object is."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim, viz


class Collected(HTMLParser):
    """Tags, their attributes and the text of an HTML fragment."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())

    def named(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture(scope="module")
def compiled():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cm = tg.compile(model)
    cm(tg.randn(5, 4)).sum().backward()
    cm(tg.randn(6, 4)).sum().backward()
    return cm


def test_a_graph_shows_its_interactive_page_in_a_frame_and_an_svg(compiled):
    graph = compiled.graph
    frame = Collected(graph._repr_html_()).named("iframe")
    assert len(frame) == 1  # parsed back, the page is the frame's whole document
    page = Collected(frame[0]["srcdoc"])
    ids = {attrs.get("id") for _, attrs in page.tags}
    for node in graph.nodes:
        assert f"g0_{node.outputs[0].name}" in ids
    assert page.named("script") and not any("src" in s for s in page.named("script"))
    svg = ET.fromstring(graph._repr_svg_().encode())
    assert svg.tag.endswith("svg") and "g0_" + graph.nodes[0].outputs[0].name in ET.tostring(
        svg, encoding="unicode"
    )
    assert repr(graph).startswith("<Graph: ") and f"{len(graph.nodes)} nodes" in repr(graph)


def test_a_compiled_module_shows_a_summary_card(compiled):
    assert repr(compiled) == "CompiledModule(Sequential, 2 specializations)"
    card = Collected(compiled._repr_html_())
    rows = dict(zip(card.text[1::2], card.text[2::2], strict=True))
    assert card.text[0] == repr(compiled)
    assert rows["specializations"] == "2" and rows["recompiles"] == "1"
    assert rows["last recompile"] == "input 0: shape (5, 4) -> (6, 4)"
    forward = next(g for fn, g in compiled.latest.program.parts if fn.name == "forward")
    assert rows["generated forward"] == f"{len(forward.nodes)} nodes"


def test_a_compiled_step_before_and_after_its_first_call():
    model = nn.Linear(3, 1)
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step)
    assert repr(step) == "CompiledFunction(train_step, 0 specializations)"
    assert "nothing compiled yet" in Collected(step._repr_html_()).text[-1]
    step(tg.randn(4, 3), tg.randn(4, 1))
    assert repr(step) == "CompiledFunction(train_step, 1 specialization)"
    assert "generated step" in Collected(step._repr_html_()).text


def test_explain_is_text_that_shows_as_lines_and_as_an_html_report(compiled):
    report = compiled.explain()
    assert isinstance(report, str) and repr(report) == str(report)  # not an escaped string
    parsed = Collected(report._repr_html_())
    assert [t for t, _ in parsed.tags][:1] == ["div"]
    headings = [text for text in parsed.text if text.endswith(":")]
    assert "guards (the signature this code is for):" in headings
    assert any(h.startswith("passes on the") for h in headings)
    assert parsed.text[0] == report.splitlines()[0]
    pre = " ".join(parsed.text)
    assert "input 0 shape = (6, 4)" in pre


def test_ipython_display_formatter():
    pytest.importorskip("IPython")
    from IPython.core.formatters import DisplayFormatter

    tg.manual_seed(0)
    cm = tg.compile(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    cm(tg.randn(3, 2))
    shown = DisplayFormatter()
    graph, _ = shown.format(cm.graph)
    assert {"text/plain", "text/html", "image/svg+xml"} <= set(graph)
    assert "<iframe srcdoc=" in graph["text/html"]
    card, _ = shown.format(cm)
    assert card["text/plain"] == "CompiledModule(Sequential, 1 specialization)"
    assert html.escape("CompiledModule(Sequential, 1 specialization)") in card["text/html"]
    report, _ = shown.format(cm.explain())
    assert report["text/plain"] == str(cm.explain()) and "\n" in report["text/plain"]
    assert '<div class="tracegrad-report">' in report["text/html"]


def framed_page(shown: str) -> str:
    [frame] = Collected(shown).named("iframe")
    return frame["srcdoc"]


def test_a_compiled_callables_graphs_show_as_its_picture_draws_them(compiled, tmp_path):
    """cm.visualize, the card's picture and the graphs cm gives out draw from one code path:
    each with the time line over the passes and the backward values labelled."""
    whole = compiled.visualize(tmp_path / "page.html").read_text(encoding="utf-8")
    assert framed_page(compiled._repr_html_()) == whole
    graph = compiled.backward_graph
    backward = framed_page(graph._repr_html_())
    assert backward == viz.to_html(**compiled.picture([("backward (optimized)", graph)]))
    for page in (whole, backward):
        assert 'data-view="passes"' in page and ">grad of 0.weight</text>" in page
    assert 'data-view="passes"' in framed_page(compiled.graph._repr_html_())
    # a graph no compiled callable gave out is drawn alone
    traced = framed_page(tg.trace(nn.Linear(2, 2), tg.randn(1, 2))._repr_html_())
    assert 'data-view="passes"' not in traced and 'data-view="0"' in traced


def test_a_graph_of_an_older_specialization_is_drawn_alone():
    tg.manual_seed(0)
    cm = tg.compile(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    cm(tg.randn(3, 2, requires_grad=True)).sum().backward()
    older = cm.backward_graph
    cm(tg.randn(4, 2, requires_grad=True)).sum().backward()
    page = framed_page(older._repr_html_())
    assert 'data-view="passes"' not in page and ">grad of" not in page
