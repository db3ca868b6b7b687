// Behaviour of the graph page: tabs, module panes, zoom (buttons and wheel), drag to pan, the
// minimap, search, the details panel and code <-> node links. Plain DOM, no dependencies.
// Data: #nodes maps a box id to {rows, line, view, pane, scope}. A view's drawings sit in
// .pane elements (the class .view is the kind of op of view nodes and their key); one pane
// per view is shown at a time: state.pane[view] is its key.
(function () {
  "use strict";
  var nodes = JSON.parse(document.getElementById("nodes").textContent);
  var canvas = document.getElementById("canvas");
  var panes = Array.prototype.slice.call(document.querySelectorAll("#canvas > .pane"));
  var tabs = Array.prototype.slice.call(document.querySelectorAll("#tabs button"));
  var details = document.querySelector("#details tbody");
  var minimap = document.getElementById("minimap");
  var search = document.getElementById("search");
  var state = { view: "0", zoom: 1, pinned: null, pane: {}, found: [], next: 0 };
  // The pipeline's snapshots are the views from timeline.dataset.first on, shown by the
  // "passes" tab one at a time, as the slider #step picks.
  var timeline = document.getElementById("timeline");
  var first = timeline ? Number(timeline.dataset.first) : Infinity;
  var step = document.getElementById("step");
  var steps = timeline ? JSON.parse(document.getElementById("steps").textContent) : [];
  function isSnapshot(view) { return view !== "all" && Number(view) >= first; }
  panes.forEach(function (p) {
    if (!(p.dataset.view in state.pane)) { state.pane[p.dataset.view] = p.dataset.pane; }
  });

  function shownPanes() { return panes.filter(function (p) { return !p.hidden; }); }

  function layout() {
    panes.forEach(function (p) {
      var view = p.dataset.view;
      var wanted = state.view === "all" ? !isSnapshot(view) : view === state.view;
      p.hidden = !wanted || state.pane[view] !== p.dataset.pane;
    });
    var current = isSnapshot(state.view) ? "passes" : state.view;
    tabs.forEach(function (t) { t.classList.toggle("on", t.dataset.view === current); });
    if (timeline) { timeline.hidden = current !== "passes"; }
    canvas.classList.toggle("all", state.view === "all");
    drawMinimap();
  }

  function showView(which) {
    state.view = which;
    layout();
    if (search.value) { find(search.value); }
  }

  function openPane(view, key) { state.pane[view] = key; layout(); opening(); }

  function setZoom(zoom) {
    state.zoom = Math.max(0.02, Math.min(4, zoom));
    panes.forEach(function (p) {
      var svg = p.querySelector("svg");
      svg.setAttribute("width", svg.dataset.w * state.zoom);
      svg.setAttribute("height", svg.dataset.h * state.zoom);
    });
    drawMinimap();
  }

  // The whole of the shown drawings in the canvas, never enlarged past their actual size.
  function fit() {
    var svgs = shownPanes().map(function (p) { return p.querySelector("svg"); });
    var width = svgs.reduce(function (sum, s) { return sum + Number(s.dataset.w) + 24; }, 0);
    var height = Math.max.apply(null, svgs.map(function (s) { return Number(s.dataset.h) + 40; }));
    // offsetWidth counts the scroll bars, so the fit does not depend on whether they are shown.
    setZoom(Math.min(1, (canvas.offsetWidth - 24) / width, (canvas.offsetHeight - 24) / height));
  }

  // A drawing opens fitted, unless fitted it would be drawn too small to read (a wide
  // training step, a long column of layers): then it opens at READABLE from its top left,
  // where the graph's inputs are; the minimap shows the rest, and "fit" shows it whole.
  var READABLE = 0.75;
  function opening() {
    fit();
    if (state.zoom >= READABLE) { return; }
    setZoom(READABLE);
    canvas.scrollLeft = 0;
    canvas.scrollTop = 0;
  }

  // Zooms keeping the drawing's point under (x, y) of the canvas where it is.
  function zoomAt(factor, x, y) {
    var old = state.zoom;
    setZoom(old * factor);
    var scale = state.zoom / old;
    canvas.scrollLeft = (canvas.scrollLeft + x) * scale - x;
    canvas.scrollTop = (canvas.scrollTop + y) * scale - y;
  }

  // Rows are set with textContent, so names and source lines are never parsed as HTML.
  function showDetails(id) {
    var info = nodes[id];
    if (!info) { return; }
    document.getElementById("hint").hidden = true;
    document.getElementById("panel-title").textContent = "node " + id;
    details.textContent = "";
    info.rows.forEach(function (row) {
      var tr = details.insertRow();
      tr.insertCell().textContent = row[0];
      tr.insertCell().textContent = row[1];
    });
  }

  function highlight(selector, on, name) {
    name = name || "on";
    document.querySelectorAll(selector).forEach(function (el) { el.classList.remove(name); });
    on.forEach(function (el) { el.classList.add(name); });
  }

  // The drawn box of `id`: in a shown pane if there is one (the expanded drawing also holds
  // boxes), else in the pane that draws it with modules collapsed, which is then opened.
  function boxFor(id) {
    var info = nodes[id];
    var shown = shownPanes().filter(function (p) { return p.dataset.view === String(info.view); });
    for (var i = 0; i < shown.length; i++) {
      var box = shown[i].querySelector('[data-box="' + id + '"]');
      if (box) { return box; }
    }
    if (state.view !== "all") { state.view = String(info.view); }
    openPane(String(info.view), info.pane);
    return paneOf(info.view, info.pane).querySelector('[data-box="' + id + '"]');
  }

  function paneOf(view, key) {
    return panes.filter(function (p) { return p.dataset.view === String(view) && p.dataset.pane === key; })[0];
  }

  // `from` is where the user clicked ("graph", "code", "search" or "link"); the other side scrolls.
  function select(id, from) {
    var info = nodes[id];
    if (!info) { return; }
    var box = boxFor(id);
    if (!box) { return; }
    state.pinned = id;
    showDetails(id);
    var edges = Array.prototype.filter.call(box.ownerSVGElement.querySelectorAll(".edge"), function (e) {
      return e.dataset.ends.split(" ").indexOf(id) >= 0;
    });
    highlight(".node.on", [box]);
    highlight(".edge.on", edges);
    var line = info.line === null ? null : document.getElementById("L" + info.line);
    highlight(".line.on", line ? [line] : []);
    if (from !== "graph") { box.scrollIntoView({ block: "center", inline: "center" }); }
    if (from !== "code" && line) { line.scrollIntoView({ block: "center" }); }
    drawMinimap();
  }

  function boxOf(target) { return target.closest ? target.closest("g.node") : null; }

  // Search: boxes of the shown view (of every tab's view side by side) whose id, name, op
  // or module path holds the text; module boxes holding a match are marked too. Enter goes
  // to the next match.
  function searched(view) {
    return state.view === "all" ? !isSnapshot(String(view)) : String(view) === state.view;
  }
  function find(text) {
    text = text.trim().toLowerCase();
    var hits = [];
    var modules = {};
    if (text) {
      Object.keys(nodes).forEach(function (id) {
        var info = nodes[id];
        if (!searched(info.view)) { return; }
        var words = [id].concat(info.rows.filter(function (r) { return r[0] === "op" || r[0] === "name" || r[0] === "module"; })
          .map(function (r) { return r[1]; }));
        if (words.join(" ").toLowerCase().indexOf(text) < 0) { return; }
        hits.push(id);
        info.scope.forEach(function (s) { modules["g" + info.view + "_mod_" + s[0]] = true; });
      });
    }
    state.found = hits;
    state.next = 0;
    var marked = [];
    hits.concat(Object.keys(modules)).forEach(function (id) {
      document.querySelectorAll('[data-box="' + id + '"]').forEach(function (el) { marked.push(el); });
    });
    highlight(".node.found", marked, "found");
    document.getElementById("found").textContent = text ? hits.length + " found" : "";
  }

  function nextFound() {
    if (!state.found.length) { return; }
    select(state.found[state.next % state.found.length], "search");
    state.next += 1;
  }

  // The minimap: every box of the first shown drawing as a dot of its colour, and the part
  // in view framed; clicking or dragging on it moves the view there.
  function drawMinimap() {
    var pane = shownPanes()[0];
    var ctx = minimap.getContext("2d");
    ctx.clearRect(0, 0, minimap.width, minimap.height);
    if (!pane) { return; }
    var svg = pane.querySelector("svg");
    var scale = Math.min(minimap.width / svg.dataset.w, minimap.height / svg.dataset.h);
    pane.querySelectorAll(".node.leaf > .shape").forEach(function (shape) {
      var box = shape.getBBox();
      ctx.fillStyle = getComputedStyle(shape).stroke;
      ctx.fillRect(box.x * scale, (box.y + 30) * scale, Math.max(1, box.width * scale), Math.max(1, box.height * scale));
    });
    var k = scale / state.zoom;
    var at = origin(svg);
    ctx.strokeStyle = "#e06c00";
    ctx.strokeRect((canvas.scrollLeft - at.x) * k, (canvas.scrollTop - at.y) * k,
      canvas.clientWidth * k, canvas.clientHeight * k);
  }

  // Where the drawing's top-left corner is in the canvas's scrolled content.
  function origin(svg) {
    var box = svg.getBoundingClientRect(), frame = canvas.getBoundingClientRect();
    return { x: box.left - frame.left + canvas.scrollLeft, y: box.top - frame.top + canvas.scrollTop };
  }

  function fromMinimap(event) {
    var svg = shownPanes()[0].querySelector("svg");
    var scale = Math.min(minimap.width / svg.dataset.w, minimap.height / svg.dataset.h) / state.zoom;
    var rect = minimap.getBoundingClientRect(), at = origin(svg);
    canvas.scrollLeft = at.x + (event.clientX - rect.left) / scale - canvas.clientWidth / 2;
    canvas.scrollTop = at.y + (event.clientY - rect.top) / scale - canvas.clientHeight / 2;
  }

  var drag = null;
  canvas.addEventListener("mousedown", function (event) {
    if (event.button !== 0 || boxOf(event.target) || event.target.closest("button")) { return; }
    drag = { x: event.clientX, y: event.clientY, moved: false };
    event.preventDefault();
  });
  window.addEventListener("mousemove", function (event) {
    if (!drag) { return; }
    canvas.scrollLeft -= event.clientX - drag.x;
    canvas.scrollTop -= event.clientY - drag.y;
    drag.x = event.clientX;
    drag.y = event.clientY;
    drag.moved = true;
  });
  window.addEventListener("mouseup", function () { drag = null; });
  canvas.addEventListener("scroll", drawMinimap);
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    var rect = canvas.getBoundingClientRect();
    zoomAt(Math.pow(1.0015, -event.deltaY), event.clientX - rect.left, event.clientY - rect.top);
  }, { passive: false });

  canvas.addEventListener("click", function (event) {
    var open = event.target.closest("button[data-open]");
    if (open) { openPane(open.closest(".pane").dataset.view, open.dataset.open); return; }
    var box = boxOf(event.target);
    if (!box) { return; }
    var id = box.dataset.box;
    if (box.classList.contains("collapsed")) {
      openPane(String(nodes[id].view), id);
      showDetails(id);
    } else {
      select(id, "graph");
    }
  });
  canvas.addEventListener("mouseover", function (event) {
    var box = boxOf(event.target);
    if (box) { showDetails(box.dataset.box); }
  });
  canvas.addEventListener("mouseleave", function () {
    if (state.pinned) { showDetails(state.pinned); }
  });
  var minimapDrag = false;
  minimap.addEventListener("mousedown", function (event) { minimapDrag = true; fromMinimap(event); });
  minimap.addEventListener("mousemove", function (event) { if (minimapDrag) { fromMinimap(event); } });
  window.addEventListener("mouseup", function () { minimapDrag = false; });

  var code = document.getElementById("code");
  if (code) {
    code.addEventListener("click", function (event) {
      var stmt = event.target.closest(".stmt");
      if (!stmt) { return; }
      var ids = stmt.dataset.nodes.split(" ");
      var here = ids.filter(function (id) { return String(nodes[id].view) === state.view; });
      select(here.length ? here[0] : ids[0], "code");
    });
  }

  search.addEventListener("input", function () { find(search.value); });
  search.addEventListener("keydown", function (event) { if (event.key === "Enter") { nextFound(); } });
  function showStep() {
    document.getElementById("step-text").textContent = steps[Number(step.value)];
    showView(String(first + Number(step.value)));
    opening();
  }
  if (step) { step.addEventListener("input", showStep); }
  tabs.forEach(function (t) {
    t.addEventListener("click", function () {
      if (t.dataset.view === "passes") { showStep(); return; }
      showView(t.dataset.view);
      opening();
    });
  });
  document.getElementById("zoom-in").addEventListener("click", function () { setZoom(state.zoom * 1.25); });
  document.getElementById("zoom-out").addEventListener("click", function () { setZoom(state.zoom / 1.25); });
  document.getElementById("zoom-reset").addEventListener("click", function () { setZoom(1); });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  showView("0");
  opening();
  // page.html#g1_12 opens with that node selected.
  var wanted = decodeURIComponent(window.location.hash.slice(1));
  if (nodes[wanted]) { select(wanted, "link"); }
})();
