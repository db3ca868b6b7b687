"""The page's module boxes, search, zoom, pan, minimap and code links: the grouping by module
scope read back in Python, then the page driven in headless Chromium as a user would."""

from __future__ import annotations

import json
import re

import networkx as nx
import pytest
from viz_helpers import GPT, READABLE, browser, run_browser, value

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, viz
from tracegrad.ir.core import Node
from tracegrad.ir.graph import Graph
from tracegrad.scopes import Scope
from tracegrad.viz.draw import draw
from tracegrad.viz.modules import EXPAND_AT, group, panes
from tracegrad.viz.scene import MODULE, build_scene, leaf_boxes

# --- grouping (Python) ---------------------------------------------------------------------------


def tree(boxes) -> list:
    """Module boxes as [name, [their module boxes and other boxes' names]]."""
    return [[b.name, tree(b.members)] if b.op == MODULE else b.name for b in boxes]


def nested_model():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 3), nn.ReLU()))
    return model, tg.trace(model, tg.randn(5, 4))


def test_modules_nest_like_the_module_tree_with_their_parameters_inside():
    _, graph = nested_model()
    grouped = group(build_scene("traced", graph, 0))
    names = {b.name: b for b in grouped.boxes if b.op == MODULE}
    assert [b.name for b in grouped.boxes] == ["x", "0", "1", "2"]
    assert tree(names["2"].members)[0][0] == "2.0" and tree(names["2"].members)[1][0] == "2.1"
    linear = tree([names["0"]])[0][1]
    assert linear[:2] == ["0.weight", "0.bias"]  # its parameters go in the module's box
    assert names["0"].label == "Linear 0 · 40 weights"  # 8 * 4 + 8
    assert names["2"].label == "Sequential 2 · 27 weights"  # 3 * 8 + 3, in its Linear
    assert ("weights", "27 in 2 parameters and buffers") in names["2"].details
    assert names["2"].type == "f32[5,3]"  # the graph's output leaves it
    assert names["0"].type == "f32[5,8]"  # read by the ReLU outside it


def test_a_collapsed_module_is_one_box_with_edges_to_the_outside_only():
    _, graph = nested_model()
    scene = build_scene("traced", graph, 0)
    [expanded, root, *inside] = panes(scene)
    assert (expanded.key, root.key) == ("expanded", "root")
    assert [p.key for p in inside] == [
        "g0_mod_0",
        "g0_mod_1",
        "g0_mod_2",
        "g0_mod_2.0",
        "g0_mod_2.1",
    ]
    assert [p.title for p in inside][3] == "Linear 2.0 · 27 weights"
    assert [b.name for b in inside[3].trail] == ["2"]  # the way back out
    drawing = draw(root.scene)
    placed = {n.box.id: n for n in drawing.nodes}
    assert set(placed) == {"g0_x", "g0_mod_0", "g0_mod_1", "g0_mod_2"}
    assert all(n.box.collapsed and not n.group for n in placed.values() if n.box.op == MODULE)
    top = {leaf.id: box.id for box in root.scene.boxes for leaf in leaf_boxes(box)}
    drawn = {tuple(sorted({top[end] for end in p.ends.split()})) for p in drawing.paths}
    assert drawn == {("g0_mod_0", "g0_x"), ("g0_mod_0", "g0_mod_1"), ("g0_mod_1", "g0_mod_2")}
    # Open, every module is a frame around its members, and each leaf box is drawn once.
    framed = draw(expanded.scene)
    assert {n.box.id for n in framed.nodes if n.group} == {p.key for p in inside}
    leaves = [n.box.id for n in framed.nodes if n.box.op != MODULE]
    assert sorted(leaves) == sorted(b.id for b in scene.leaves())


def scoped(path: str) -> Scope:
    return Scope(path, "Linear")


def test_interleaved_modules_get_one_box_per_run_and_no_cycle():
    """a, then b, then a again (as a pass or the backward graph may order them): one box
    per run keeps the picture acyclic, where one box for a would make a -> b -> a."""
    v = {n: value(n, "f32[2]") for n in ("x", "1", "2", "3")}
    nodes = [
        Node("exp", [v["x"]], [v["1"]], scope=scoped("a")),
        Node("neg", [v["1"]], [v["2"]], scope=scoped("b")),
        Node("exp", [v["2"]], [v["3"]], scope=scoped("a")),
    ]
    scene = build_scene("interleaved", Graph([v["x"]], nodes, [v["3"]]), 0)
    grouped = group(scene)
    assert [b.label for b in grouped.boxes[1:]] == ["Linear a", "Linear b", "Linear a (part 2)"]
    assert [b.id for b in grouped.boxes[1:]] == ["g0_mod_a", "g0_mod_b", "g0_mod_a~2"]
    root = draw(panes(scene)[1].scene)
    edges = nx.DiGraph(tuple(p.ends.split()) for p in root.paths)
    assert nx.is_directed_acyclic_graph(edges)


def test_a_parameter_read_before_its_module_stays_outside_it():
    """``a.weight`` read first by a node outside ``a`` (a step's clone of it) whose result
    ``a`` reads: inside ``a``'s box it would make a -> clone -> a."""
    v = {n: value(n, "f32[2]") for n in ("x", "a.weight", "1", "2", "3")}
    nodes = [
        Node("neg", [v["a.weight"]], [v["1"]]),
        Node("add", [v["x"], v["1"]], [v["2"]], scope=scoped("a")),
        Node("mul", [v["2"], v["a.weight"]], [v["3"]], scope=scoped("a")),
    ]
    scene = build_scene("step", Graph([v["x"], v["a.weight"]], nodes), 0)
    assert [b.name for b in group(scene).boxes] == ["x", "a.weight", "1", "a"]
    root = draw(panes(scene)[1].scene)  # lays out: no cycle
    assert {n.box.name for n in root.nodes} == {"x", "a.weight", "1", "a"}


@pytest.fixture(scope="module")
def gpt12(tmp_path_factory):
    """A 12-block transformer compiled, run forward and backward, and its page written."""
    tg.manual_seed(0)
    model = GPT(blocks=12)
    cm = tg.compile(model)
    idx = tg.tensor([[i % 65 for i in range(16)], [(7 * i) % 65 for i in range(16)]])
    F.cross_entropy(cm(idx).reshape(-1, 65), idx.reshape(-1)).backward()
    path = tmp_path_factory.mktemp("gpt12") / "graph.html"
    viz.render(cm.views(), path, code=cm.code)
    return cm, path


def test_a_12_block_transformer_opens_with_its_blocks_collapsed(gpt12):
    cm, _ = gpt12
    scene = build_scene("forward", cm.graph, 0)
    assert sum(1 for _ in scene.leaves()) > EXPAND_AT
    first, *inside = panes(scene)
    assert first.key == "root"
    modules = [b.label for b in first.scene.boxes if b.op == MODULE]
    assert modules == ["Sequential blocks · 155.5k weights", "LayerNorm ln · 64 weights",
                       "Linear head · 2.1k weights"]  # fmt: skip
    sequential = next(p for p in inside if p.key == "g0_mod_blocks")
    blocks = [b for b in sequential.scene.boxes if b.op == MODULE]
    assert [b.name for b in blocks] == [f"blocks.{i}" for i in range(12)]
    # 12,704 parameters and the 16 x 16 mask buffer per block
    assert all(b.collapsed and b.label.endswith("13.0k weights") for b in blocks)
    for pane in (first, sequential):
        drawing = draw(pane.scene)
        assert len(drawing.nodes) < 40 and drawing.height < 1000  # readable at a glance


def test_backward_values_are_labelled_with_what_they_are(tmp_path):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cm = tg.compile(model)
    cm(tg.randn(5, 4)).sum().backward()
    wrt = ["0.weight", "0.bias", "2.weight", "2.bias"]
    for forward, backward in (cm.latest.readable, (cm.latest.program.graph,
                                                   cm.latest.program.backward_graph)):  # fmt: skip
        roles = viz.backward_roles(forward, backward, wrt)
        grads = [roles[v.name].label for v in backward.outputs]
        assert grads == [f"grad of {name}" for name in wrt]
        texts = {roles[v.name].text for v in backward.inputs}
        assert "saved output of relu in 1 (ReLU)" in texts  # inside the fused kernel
        assert "saved input x" in texts
    text = cm.visualize(tmp_path / "page.html").read_text(encoding="utf-8")
    scene = build_scene("backward", cm.backward_graph, 1, roles=cm._roles()[id(cm.backward_graph)])
    boxes = {b.name: b for b in scene.leaves()}
    grad = boxes[cm.backward_graph.outputs[0].name]
    assert grad.label == "grad of 0.weight" and grad.details[0] == ("is", "gradient of 0.weight")
    assert ">grad of 0.weight</text>" in text and ">saved relu</text>" in text
    # a saved value read only inside one module is drawn in that module's box
    linear = next(b for b in group(scene).boxes if b.op == MODULE and b.name == "0")
    assert "x" in [b.name for b in linear.members]
    assert "x" in [b.name for b in group(build_scene("forward", cm.graph, 0)).boxes]


def test_explain_says_which_module_made_each_saved_value():
    """explain()'s saved values read as the picture labels them: the op and the module call
    that made each, or the input it is."""
    model, _ = nested_model()
    cm = tg.compile(model)
    cm(tg.randn(5, 4)).sum().backward()
    section = cm.explain().split("saved for the backward")[1].split("\n\n")[0]
    saved = [line for line in section.splitlines() if line.startswith("  %")]
    assert len(saved) == int(section.split()[0].strip("("))  # (4 values, 396 B):
    described = {line.split(":")[0].strip(): line.split(", ")[1] for line in saved}
    assert "saved output of relu in 1 (ReLU)" in described.values()
    assert "saved output of relu in 2.1 (ReLU)" in described.values()
    assert described["%x"] == "saved input x"
    assert all(text.startswith(("saved output of", "saved input")) for text in described.values())


# --- in a browser --------------------------------------------------------------------------------

# Opens the page in a frame and uses it as a person would, writing what each step left into
# #log as JSON; errors on the page's console are logged too.
WALK = """<!DOCTYPE html><html><body><pre id="log">not loaded</pre>
<iframe id="page" src="graph.html" width="1200" height="800"></iframe>
<script>
var frame = document.getElementById("page");
frame.addEventListener("load", function () {
  var win = frame.contentWindow, doc = frame.contentDocument, log = { errors: [] };
  win.addEventListener("error", function (e) { log.errors.push(e.message); });
  function shown() { return doc.querySelector("#canvas > .pane:not([hidden])"); }
  function width() { return Number(shown().querySelector("svg").getAttribute("width")); }
  var canvas = doc.getElementById("canvas");
  log.opened = { pane: shown().dataset.pane, width: width(), canvas: canvas.clientWidth,
                 height: Number(shown().querySelector("svg").getAttribute("height")),
                 canvasHeight: canvas.clientHeight };
  log.tabs = [];
  doc.querySelectorAll("#tabs button").forEach(function (tab) {
    tab.click();
    var before = width();
    canvas.dispatchEvent(new win.WheelEvent("wheel", { deltaY: -200, clientX: 300, clientY: 300,
                                                       bubbles: true, cancelable: true }));
    var wheeled = width();
    doc.getElementById("zoom-fit").click();
    log.tabs.push([tab.dataset.view, before, wheeled, width(),
                   Number(shown().querySelector("svg").dataset.w)]);
  });
  doc.querySelector('#tabs button[data-view="0"]').click();
  var collapse = shown().querySelector('button[data-open="root"]');
  if (collapse) { collapse.click(); }
  log.root = shown().dataset.pane;
  var module = shown().querySelector(".node.collapsed");
  module.dispatchEvent(new win.MouseEvent("click", { bubbles: true }));
  log.opened_module = [module.dataset.box, shown().dataset.pane,
                       shown().querySelectorAll(".node").length];
  shown().querySelector('.trail button[data-open="root"]').click();
  log.back = shown().dataset.pane;
  var search = doc.getElementById("search");
  search.value = "matmul";
  search.dispatchEvent(new win.Event("input"));
  log.found = doc.getElementById("found").textContent;
  log.marked = doc.querySelectorAll(".node.found").length;
  search.dispatchEvent(new win.KeyboardEvent("keydown", { key: "Enter" }));
  var on = doc.querySelector(".node.on");
  log.search_selected = [on.dataset.box, doc.getElementById("panel-title").textContent,
                         doc.getElementById("details").textContent];
  var table = JSON.parse(doc.getElementById("nodes").textContent);
  var leaf = Array.prototype.filter.call(doc.querySelectorAll(".node.leaf"), function (box) {
    return table[box.dataset.box].line !== null;
  })[0];
  leaf.dispatchEvent(new win.MouseEvent("click", { bubbles: true }));
  var line = doc.querySelector(".line.on");
  log.clicked = [leaf.dataset.box, line ? line.dataset.nodes : null];
  var stmt = doc.querySelectorAll(".line.stmt")[5];
  stmt.click();
  log.code = [stmt.dataset.nodes, doc.querySelector(".node.on").dataset.box];
  for (var k = 0; k < 8; k++) { doc.getElementById("zoom-in").click(); }
  canvas.scrollLeft = 0;
  canvas.scrollTop = 0;
  canvas.dispatchEvent(new win.MouseEvent("mousedown", { button: 0, clientX: 400, clientY: 400,
                                                         bubbles: true }));
  win.dispatchEvent(new win.MouseEvent("mousemove", { clientX: 300, clientY: 330 }));
  win.dispatchEvent(new win.MouseEvent("mouseup", {}));
  log.panned = [canvas.scrollLeft, canvas.scrollTop];
  var mini = doc.getElementById("minimap");
  var pixels = mini.getContext("2d").getImageData(0, 0, mini.width, mini.height).data;
  var painted = 0;
  for (var i = 3; i < pixels.length; i += 4) { if (pixels[i] > 0) { painted += 1; } }
  log.minimap = painted;
  log.steps = [];
  var step = doc.getElementById("step");
  if (step) {
    doc.querySelector('#tabs button[data-view="passes"]').click();
    for (var s = 0; s <= Number(step.max); s++) {
      step.value = String(s);
      step.dispatchEvent(new win.Event("input"));
      log.steps.push([shown().dataset.view, shown().querySelectorAll(".node.added").length,
                      shown().querySelectorAll(".node.rewritten").length,
                      doc.getElementById("step-text").textContent,
                      doc.getElementById("timeline").hidden]);
    }
  }
  document.getElementById("log").textContent = JSON.stringify(log);
});
</script></body></html>"""


def walk(page, tmp_path) -> dict:
    binary = browser()
    (tmp_path / "graph.html").write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "walk.html").write_text(WALK)
    dom = run_browser(
        binary, f"file://{tmp_path / 'walk.html'}", tmp_path, "--dump-dom",
        "--allow-file-access-from-files", "--virtual-time-budget=10000",
    ).stdout  # fmt: skip
    text = re.search(r'<pre id="log">(.*?)</pre>', dom, re.S).group(1)
    return json.loads(
        text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )


def check_walk(log: dict, tabs: list[str]) -> None:
    assert log["errors"] == []
    assert [t[0] for t in log["tabs"]] == tabs
    for _, before, wheeled, fitted, natural in log["tabs"]:
        assert wheeled > before * 1.2  # the wheel zoomed in
        # a tab opens fitted, or at READABLE where fitted would be smaller
        assert before == pytest.approx(max(fitted, READABLE * natural))
    assert log["root"] == log["back"] == "root"
    module, pane, boxes = log["opened_module"]
    assert pane == module and boxes > 1  # clicking a module box shows its inside
    found, marked = int(log["found"].split()[0]), log["marked"]
    assert found > 0 and marked >= found
    selected, title, rows = log["search_selected"]
    assert title == f"node {selected}" and "matmul" in rows  # Enter selected a match
    leaf, nodes = log["clicked"]
    assert nodes is not None and leaf in nodes.split()  # its statement is lit
    statement, lit = log["code"]
    assert lit in statement.split()  # and a statement lights its node
    assert log["panned"] != [0, 0]  # dragging the background moved the view
    assert log["minimap"] > 100


def test_a_12_block_transformer_page_in_headless_chromium(gpt12, tmp_path):
    cm, path = gpt12
    log = walk(path, tmp_path)
    opened = log["opened"]
    assert opened["pane"] == "root"  # blocks collapsed
    assert opened["width"] <= opened["canvas"] and opened["height"] <= opened["canvasHeight"]
    check_walk(log, [str(i) for i in range(len(cm.views()))] + ["all"])
    assert log["steps"] == []  # no history given: no time line


def test_a_small_model_page_in_headless_chromium(tmp_path):
    model, _ = nested_model()
    cm = tg.compile(model)
    cm(tg.randn(5, 4)).sum().backward()
    path = cm.visualize(tmp_path / "small.html")
    log = walk(path, tmp_path)
    assert log["opened"]["pane"] == "expanded"  # few boxes: every module open
    views = len(cm.views())
    check_walk(log, [str(i) for i in range(views)] + ["all", "passes"])
    history = cm.passes_history()
    assert [int(view) for view, *_ in log["steps"]] == list(range(views, views + len(history)))
    for snapshot, (_, added, rewritten, caption, hidden) in zip(history, log["steps"], strict=True):
        assert not hidden and caption.startswith(snapshot.title)
        assert added == len(set(snapshot.added))  # each node the pass added is marked
        assert rewritten == len(set(snapshot.rewritten))
    assert any(added for _, added, *_ in log["steps"])
