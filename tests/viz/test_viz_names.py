"""Names from the user's program in the pictures: escaped in HTML and SVG (never markup or
script), the SVG still well-formed XML whatever characters they hold."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import markupsafe
import pytest

import tracegrad as tg
from tracegrad import nn

SCRIPT = "<script>alert(1)</script>"
NAMES = [SCRIPT, '"><img src=x onerror=alert(1)>', "a\x0bb\x00c\x1c\ud800", "w\u00b2 \u2028"]


def model_named(name: str) -> nn.Module:
    tg.manual_seed(0)
    cls = type(f"Net{SCRIPT}", (nn.Module,), {"forward": lambda self, x: self.d[name](x).sum()})
    model = cls()
    model.d = nn.ModuleDict({name: nn.Linear(2, 2)})
    model.register_parameter(name.replace(".", ","), nn.Parameter(tg.ones(2)))
    return model


@pytest.mark.parametrize("name", NAMES)
def test_pictures_escape_names(name, tmp_path):
    compiled = tg.compile(model_named(name))
    compiled(tg.randn(3, 2)).backward()
    page = compiled.visualize(tmp_path / "g.html").read_text(encoding="utf-8")
    assert SCRIPT not in page and "<img" not in page
    # the page's own: its data, the time line's captions and its code
    assert len(re.findall("<script", page)) == 3
    svg = compiled.visualize(tmp_path / "g.svg").read_text(encoding="utf-8")
    root = ET.fromstring(svg.encode("utf-8"))  # well-formed XML
    assert not list(root.iter("{http://www.w3.org/2000/svg}script"))
    assert "<script" not in svg and "<img" not in svg
    # what XML cannot hold shows as its escape
    shown = markupsafe.escape(
        "".join(repr(c)[1:-1] if c in "\x00\x0b\x1c\ud800" else c for c in name)
    )
    assert shown in page and shown in svg
    dot = compiled.visualize(tmp_path / "g.dot").read_text(encoding="utf-8")
    assert dot.startswith("// Generated")


def test_a_large_view_is_drawn_collapsed_by_source_line():
    from tracegrad.viz.scene import GROUP, build_scene, collapse

    def chain(x, w):
        for _ in range(30):
            x = (x * w).tanh() + x  # one line: one group of 90 ops
        return x.sum()

    graph = tg.trace(chain, tg.ones(3), tg.ones(3))
    scene = build_scene("chain", graph, 0)
    assert collapse(scene, limit=10_000) is scene  # small views are drawn as they are
    small = collapse(scene, limit=20)
    groups = [b for b in small.boxes if b.op == GROUP]
    assert len(groups) == len(small.boxes) <= 20
    assert sum(int(b.details[0][1].split()[0]) for b in groups) == len(list(scene.leaves()))
    assert any("test_viz_names.py" in b.label for b in groups)
    ids = [b.id for b in small.boxes]
    assert all(ids.index(e.src) < ids.index(e.dst) for e in small.edges)  # no cycle
    assert tg.viz.to_svg([("chain", graph)]).count("<svg") >= 1
