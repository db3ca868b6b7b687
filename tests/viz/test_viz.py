"""Pictures of graphs: DOT, SVG and HTML for real compiled graphs, a hand-built fused graph and
a 24-block transformer, read back by hand-written readers; the page opened in Chromium."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from viz_helpers import (
    GPT,
    READABLE,
    TagBalance,
    all_node_ids,
    browser,
    data_edges,
    fused_view,
    leaf_ids,
    odd_graph,
    parse_dot,
    pixel_counts,
    read_png,
    run_browser,
)

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, viz
from tracegrad.ir.graph import Graph, body_of
from tracegrad.viz import layout as layout_module
from tracegrad.viz.codelinks import link_code
from tracegrad.viz.draw import draw
from tracegrad.viz.formats import scenes
from tracegrad.viz.scene import KINDS, code_vars, kind_of

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def mlp():
    """Forward and backward of a compiled MLP, its traced graph and its generated code (without
    the fuse pass: these tests read edges off plain nodes; fused pictures are tested below)."""
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cm = tg.compile(model, passes=[p for p in tg.passes.DEFAULT_PIPELINE if p != "fuse"])
    loss = F.cross_entropy(cm(tg.randn(5, 4)), tg.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    program = cm.latest.program  # the generated graphs: the code's names are theirs
    views = [
        ("generated forward", program.graph),
        ("generated backward", program.backward_graph),
        ("forward (traced)", tg.trace(model, tg.randn(5, 4))),
    ]
    return views, cm.code, program.parts


@pytest.fixture(scope="module")
def transformer():
    """A 26-block transformer (d=32, 2 heads, ctx 16), compiled and run forward + backward."""
    tg.manual_seed(0)
    model = GPT(blocks=26)
    cm = tg.compile(model)
    idx = tg.tensor([[i % 65 for i in range(16)], [(7 * i) % 65 for i in range(16)]])
    loss = F.cross_entropy(cm(idx).reshape(-1, 65), idx.reshape(-1))
    loss.backward()
    program = cm.latest.program  # the generated graphs: the code's names are theirs
    views = [
        ("generated forward", program.graph),
        ("generated backward", program.backward_graph),
        ("forward (traced)", tg.trace(model, idx)),
    ]
    return views, cm.code


FUSED_TITLE, FUSED_GRAPH, FUSED_CODE = fused_view()
FUSED = [(FUSED_TITLE, FUSED_GRAPH)]
ODD = [('odd <&> "names"', odd_graph()), ("empty", Graph())]


# --- what is shown -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, kind",
    [("add", "elementwise"), ("exp", "elementwise"), ("sum", "reduce"), ("sum_to", "reduce"),
     ("reshape", "view"), ("permute", "view"), ("cat", "view"), ("getitem", "view"),
     ("matmul", "linalg"), ("softmax", "nn"), ("layer_norm", "nn"), ("constant", "constant"),
     ("custom", "custom"), ("fused", "fused"), ("no_such_op", "other")],
)  # fmt: skip
def test_kind_of_op(op, kind):
    assert kind_of(op) == kind
    assert kind in KINDS


def test_code_vars_name_every_value_as_the_generator_does(mlp):
    _, _, generated = mlp
    (fn, forward), (_, backward) = generated
    assert code_vars(forward) == {v.name: name for v, name in fn.names.items()}
    assert code_vars(forward)["0.weight"] == "_0_weight"
    assert code_vars(forward)["x"] == "x"
    # a graph alone: the backward's outputs after their ops (the generator, told what they
    # are, names them 0_weight_grad...), its saved inputs after their IR names
    named = code_vars(backward)
    assert len(set(named.values())) == len(named) == len(backward.inputs) + len(backward.nodes)
    assert all(name.isidentifier() for name in named.values())


def test_every_statement_is_linked_to_the_node_it_defines(mlp):
    views, code, generated = mlp
    lines = link_code(code, scenes(views, generated))
    defining = {}  # Python name -> ids of the boxes of the values the generator named so
    for i, (fn, _) in enumerate(generated):
        for value, name in fn.names.items():
            defining.setdefault(name, set()).add(f"g{i}_{value.name}")
    for line in lines:
        match = re.match(r"^    (\w+) = ", line.text)
        if match and match.group(1) != "out":  # (a fused kernel's buffer)
            assert set(line.targets) & defining[match.group(1)], line
    linked = {t for line in lines for t in line.targets}
    nodes = [f"g{i}_{n.outputs[0].name}" for i in (0, 1) for n in views[i][1].nodes]
    assert set(nodes) <= linked


def test_dot_has_one_node_per_input_and_ir_node_and_the_data_edges(mlp):
    views, _, _ = mlp
    nodes, edges, clusters = parse_dot(viz.to_dot(views))
    assert sorted(nodes) == sorted(leaf_ids(views))
    assert len(nodes) == len(set(nodes))
    assert set(edges) == data_edges(views)
    assert len(edges) == len(set(edges))
    assert clusters == [f"cluster_g{i}_view" for i in range(len(views))]


def test_dot_draws_a_fused_node_as_a_cluster_of_its_members():
    text = viz.to_dot(FUSED, FUSED_CODE)
    nodes, edges, clusters = parse_dot(text)
    assert sorted(nodes) == sorted(leaf_ids(FUSED))
    assert "cluster_g0_4" in clusters
    assert {("g0_2", "g0_4/a"), ("g0_fc.bias", "g0_4/a"), ("g0_4/a", "g0_4/s")} <= set(edges)
    assert ("g0_4/s", "g0_5") in edges
    assert 'xlabel="in-place ← input 0, buf 1"' in text


def test_dot_labels_edges_with_types_and_colours_nodes_by_kind(mlp):
    views, _, _ = mlp
    text = viz.to_dot(views[:1])
    matmul = next(n for n in views[0][1].nodes if n.op == "matmul")
    me, x = f"g0_{matmul.outputs[0].name}", matmul.inputs[0]
    assert f'"g0_{x.name}" -> "{me}" [label="{x.type}"]' in text
    fill = KINDS["linalg"].fill
    assert f'"{me}" [label="matmul\\n{matmul.outputs[0].type}", fillcolor="{fill}"' in text


# --- SVG -----------------------------------------------------------------------------------------


def svg_nodes(text: str) -> list[ET.Element]:
    root = ET.fromstring(text.encode())
    return [g for g in root.iter(SVG + "g") if "node" in g.get("class", "").split()]


def test_svg_is_well_formed_with_one_shape_per_node(mlp):
    views, _, _ = mlp
    nodes = svg_nodes(viz.to_svg(views))
    assert sorted(g.get("id") for g in nodes) == sorted(all_node_ids(views))
    for g in nodes:
        shapes = [e for e in g if e.get("class") == "shape"]
        assert len(shapes) == 1
        title = g.find(SVG + "title").text
        assert "type: " in title and "dtype: " in title and "bytes: " in title
        if title.startswith("op: "):  # nodes, not inputs
            assert "source: " in title


def a_backward_node(views):
    """The first backward node that is a matrix: its id and the node."""
    node = next(n for n in views[1][1].nodes if n.origin and n.outputs[0].type.ndim == 2)
    return f"g1_{node.outputs[0].name}", node


def test_svg_tooltips_have_op_shape_source_and_origin(mlp):
    views, _, _ = mlp
    box_id, node = a_backward_node(views)
    g = {g.get("id"): g for g in svg_nodes(viz.to_svg(views))}[box_id]
    title = g.find(SVG + "title").text
    out = node.outputs[0].type
    assert f"op: {node.op}\n" in title and f"shape: {out.shape}\n" in title
    assert f"bytes: {out.nbytes} B" in title and f"dtype: {out.dtype.name}" in title
    assert f"source: {node.location.filename}:{node.location.lineno}" in title
    assert f"origin: {node.origin}" in title
    assert [t.text for t in g.iter(SVG + "text")][:2] == [node.op, str(out)]


def test_svg_frames_fused_members_and_marks_buffer_reuse():
    nodes = {g.get("id"): g for g in svg_nodes(viz.to_svg(FUSED, FUSED_CODE))}
    assert sorted(nodes) == sorted(all_node_ids(FUSED))
    assert "group" in nodes["g0_4"].get("class").split()
    assert "inplace" in nodes["g0_5"].get("class").split()
    badges = [t.text for t in nodes["g0_5"].iter(SVG + "text") if t.get("class") == "badge"]
    assert badges == ["in-place ← input 0 · buf 1"]
    frame = _rect(nodes["g0_4"])
    for member in ("g0_4/a", "g0_4/s"):
        x, y, w, h = _rect(nodes[member])
        assert frame[0] < x and x + w < frame[0] + frame[2]
        assert frame[1] < y and y + h < frame[1] + frame[3]


def _rect(g) -> tuple[float, ...]:
    shape = next(e for e in g if e.get("class") == "shape")
    return tuple(float(shape.get(k)) for k in ("x", "y", "width", "height"))


def test_layout_keeps_boxes_apart_and_routes_between_them(mlp):
    views, _, _ = mlp
    model = GPT(blocks=2)
    graph = tg.trace(model, tg.tensor([[1, 2, 3, 4]]))
    for scene in scenes([*views, ("gpt", graph)]):
        drawing = draw(scene)
        boxes = [(n.x, n.y, n.w, n.h) for n in drawing.nodes]
        assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[:i])
        for path in drawing.paths:
            for x, y0, y1 in _straight_segments(path.d):
                ends = path.ends.split()
                others = [(n.x, n.y, n.w, n.h) for n in drawing.nodes if n.box.id not in ends]
                assert not any(_crosses(x, y0, y1, box) for box in others), (path, x, y0)


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _straight_segments(d: str):
    """(x, y0, y1) of the vertical straight pieces of a path: where routes cross rows."""
    points = [tuple(map(float, p.split(","))) for p in re.findall(r"[-\d.]+,[-\d.]+", d)]
    commands = re.findall(r"[MLC]", d)
    pos, previous = 0, None
    for command in commands:
        count = 3 if command == "C" else 1
        end = points[pos + count - 1]
        if command == "L":
            yield previous[0], min(previous[1], end[1]), max(previous[1], end[1])
        previous, pos = end, pos + count


def _crosses(x, y0, y1, box) -> bool:
    bx, by, bw, bh = box
    return bx < x < bx + bw and y0 < by + bh and by < y1


def test_layers_put_values_next_to_their_first_use():
    import networkx as nx

    dag = nx.DiGraph([("const", "late"), ("a", "b"), ("b", "c"), ("c", "late")])
    layers = layout_module.assign_layers(dag)
    assert layers["const"] == layers["late"] - 1
    assert layers["a"] == 0 and layers["late"] == 3


# --- HTML ----------------------------------------------------------------------------------------


def check_page(page: str, views) -> None:
    balance = TagBalance()
    balance.feed(page)
    balance.close()
    assert balance.errors == [] and balance.stack == []
    ET.fromstring(page.encode())  # XHTML-compatible too
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and " src=" not in page  # nothing loaded from elsewhere
    ids = set(balance.ids)
    assert set(all_node_ids(views)) <= ids
    assert len(balance.ids) == len(ids)


def test_html_is_self_contained_and_shows_every_node(mlp):
    views, code, generated = mlp
    page = viz.to_html(views, code=code, generated=generated)
    check_page(page, views)
    for kind in KINDS.values():
        assert kind.label in page  # the legend
    for title, _ in views:
        assert f"{title} <small>" in page  # a tab per view
    first = views[0][1].nodes[0].outputs[0]
    name = generated[0][0].names[first]  # (the traced forward's node of that name too)
    assert re.search(f'data-nodes="g0_{first.name} g2_{first.name}">    {name} = ', page)


def test_html_without_code_and_with_fused_groups():
    page = viz.to_html(FUSED, generated=FUSED_CODE)
    check_page(page, FUSED)
    assert 'id="code"' not in page
    assert "in-place ← input 0 · buf 1" in page


def test_names_and_source_text_are_escaped_in_every_format():
    nodes, edges, clusters = parse_dot(viz.to_dot(ODD))
    assert sorted(nodes) == sorted(leaf_ids(ODD))
    assert ('g0_x<&>"', "g0_a") in edges and ("g0_a", "g0_c") in edges
    assert len(clusters) == 2
    svg = viz.to_svg(ODD)
    assert sorted(g.get("id") for g in svg_nodes(svg)) == sorted(all_node_ids(ODD))
    title = {g.get("id"): g for g in svg_nodes(svg)}["g0_a"].find(SVG + "title").text
    assert 'source: C:\\odd "dir"\\model.py:3' in title and "{{ '%' }}" in title
    code = 'def f(x___):\n    va = x___ < 2 & "</span>"\n'
    page = viz.to_html(ODD, code=code)
    check_page(page, ODD)
    assert "&lt;/span&gt;" in page


def test_render_picks_the_format_from_the_suffix(mlp, tmp_path):
    views, code, _ = mlp
    for suffix, start in ((".dot", "// Generated"), (".svg", "<?xml"), (".html", "<!DOCTYPE")):
        path = tmp_path / f"graph{suffix}"
        assert viz.render(views, path, code=code) == path
        assert path.read_text(encoding="utf-8").startswith(start)
    with pytest.raises(ValueError, match="cannot tell the format"):
        viz.render(views, tmp_path / "graph.png")


def test_a_26_block_transformer_renders_every_node(transformer, tmp_path):
    """A graph of over 3000 nodes renders whole in each format. (How fast is not asserted
    here: speed is measured by benchmarks/, never by timed assertions in tests.)"""
    views, code = transformer
    assert sum(len(g.nodes) for _, g in views) > 3000
    for suffix in (".dot", ".svg", ".html"):
        viz.render(views, tmp_path / f"gpt{suffix}", code=code)
    nodes = svg_nodes((tmp_path / "gpt.svg").read_text(encoding="utf-8"))
    assert len(nodes) == len(all_node_ids(views))
    dot_nodes, _, _ = parse_dot((tmp_path / "gpt.dot").read_text(encoding="utf-8"))
    assert len(dot_nodes) == len(leaf_ids(views))
    check_page((tmp_path / "gpt.html").read_text(encoding="utf-8"), views)


# --- in a browser --------------------------------------------------------------------------------


def test_page_in_headless_chromium(mlp, tmp_path):
    binary = browser()
    views, code, _ = mlp
    path = viz.render(views, tmp_path / "graph.html", code=code)
    # The fragment selects a backward node on load, running the panel and code-link script.
    box_id, node = a_backward_node(views)
    url = f"file://{path}#{box_id}"
    png = tmp_path / "shot.png"
    run_browser(binary, url, tmp_path, f"--screenshot={png}")
    pixels = read_png(png)
    assert pixels.shape == (800, 1200, 3)
    graph_area = pixel_counts(pixels, 0, 700, 100, 800)
    assert len(graph_area) > 50  # text, edges and boxes, not a blank page
    fill = bytes.fromhex(KINDS["linalg"].fill[1:])
    assert graph_area.get(fill, 0) > 500  # the matmul boxes are drawn
    dom = run_browser(binary, url, tmp_path, "--dump-dom").stdout
    assert re.search(f'class="node [^"]* on" id="{box_id}"', dom)
    assert re.search(f'class="line stmt on" id="L\\d+" data-nodes="{box_id}"', dom)
    assert f"<td>{node.origin}</td>" in dom


# Opens the page in a frame, then, as a user would, clicks every tab, zooms in and fits; it
# writes what each click left (panes shown, the drawing's width) and any error into #log.
CLICK_THROUGH = """<!DOCTYPE html><html><body><pre id="log">not loaded</pre>
<iframe id="page" src="graph.html" width="1100" height="700"></iframe>
<script>
var frame = document.getElementById("page");
frame.addEventListener("load", function () {
  var win = frame.contentWindow, doc = frame.contentDocument, log = [];
  win.addEventListener("error", function (e) { log.push("error " + e.message); });
  doc.querySelectorAll("#tabs button").forEach(function (tab) {
    tab.click();
    var shown = doc.querySelectorAll("#canvas > .pane:not([hidden])");
    var svg = shown[0].querySelector("svg");
    var opened = svg.getAttribute("width");
    doc.getElementById("zoom-in").click();
    var zoomed = svg.getAttribute("width");
    doc.getElementById("zoom-fit").click();
    log.push(["tab", tab.dataset.view, shown.length, svg.dataset.w, opened, zoomed,
              svg.getAttribute("width")].join(" "));
  });
  log.push("legend view key hidden " + doc.querySelector(".key.view").hidden);
  document.getElementById("log").textContent = log.join("\\n");
});
</script></body></html>"""


def test_every_tab_zooms_and_fits_in_headless_chromium(mlp, tmp_path):
    """Zoom and fit act on the drawing of every tab (the kind class ``view`` of view nodes
    and their legend key is not taken for a tab's pane), with no error on the console."""
    binary = browser()
    views, code, _ = mlp
    viz.render(views, tmp_path / "graph.html", code=code)
    (tmp_path / "click.html").write_text(CLICK_THROUGH)
    dom = run_browser(
        binary, f"file://{tmp_path / 'click.html'}", tmp_path, "--dump-dom",
        "--allow-file-access-from-files", "--virtual-time-budget=5000",
    ).stdout  # fmt: skip
    log = re.search(r'<pre id="log">(.*?)</pre>', dom, re.S).group(1).splitlines()
    assert "error" not in " ".join(log), log
    tabs = [line.split() for line in log if line.startswith("tab ")]
    assert [t[1] for t in tabs] == ["0", "1", "2", "all"]
    for _, view, shown, natural, opened, zoomed, fitted in tabs:
        assert int(shown) == (len(views) if view == "all" else 1)
        assert float(opened) <= float(natural)  # a tab opens fitted, never enlarged
        assert float(zoomed) == pytest.approx(float(opened) * 1.25)  # zoom in acted
        # it opened fitted to the frame, or at READABLE where that would be smaller
        assert float(opened) == pytest.approx(max(float(fitted), READABLE * float(natural)))
    assert log[-1] == "legend view key hidden false"


def test_fused_kernels_from_the_pass_are_drawn_as_boxes_around_their_members():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cm = tg.compile(model)
    cm(tg.randn(5, 4)).sum().backward()
    fused = [n for n in cm.graph.nodes if n.op == "fused"]
    assert fused, "the forward's bias add and relu form one fused kernel"
    svg = viz.to_svg(cm.views())
    members = [m.outputs[0].name for m in body_of(fused[0]).nodes]
    for name in members:
        assert f"g0_{fused[0].outputs[0].name}/{name}" in svg
