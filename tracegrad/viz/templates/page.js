// Behaviour of the graph page: tabs, zoom, the details panel and code <-> node links.
// Plain DOM, no dependencies. Data: #nodes maps a box id to {rows, line, view}. A view's
// drawing sits in a .pane (the class .view is the kind of op of view nodes and their key).
(function () {
  "use strict";
  var nodes = JSON.parse(document.getElementById("nodes").textContent);
  var canvas = document.getElementById("canvas");
  var views = Array.prototype.slice.call(document.querySelectorAll("#canvas > .pane"));
  var tabs = Array.prototype.slice.call(document.querySelectorAll("#tabs button"));
  var details = document.querySelector("#details tbody");
  var state = { view: "0", zoom: 1, pinned: null };

  function showView(which) {
    state.view = which;
    views.forEach(function (v) { v.hidden = which !== "all" && v.dataset.view !== which; });
    tabs.forEach(function (t) { t.classList.toggle("on", t.dataset.view === which); });
    canvas.classList.toggle("all", which === "all");
  }

  function setZoom(zoom) {
    state.zoom = Math.max(0.05, Math.min(4, zoom));
    views.forEach(function (v) {
      var svg = v.querySelector("svg");
      svg.setAttribute("width", svg.dataset.w * state.zoom);
      svg.setAttribute("height", svg.dataset.h * state.zoom);
    });
  }

  function fitWidth() {
    var shown = views.filter(function (v) { return !v.hidden; });
    var total = shown.reduce(function (sum, v) { return sum + Number(v.querySelector("svg").dataset.w) + 24; }, 0);
    setZoom(Math.min(1, (canvas.clientWidth - 8) / total));
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

  function highlight(selector, on) {
    document.querySelectorAll(selector).forEach(function (el) { el.classList.remove("on"); });
    on.forEach(function (el) { el.classList.add("on"); });
  }

  // `from` is where the user clicked ("graph", "code" or "link"); the other side scrolls.
  function select(id, from) {
    var box = document.getElementById(id);
    var info = nodes[id];
    if (!box || !info) { return; }
    state.pinned = id;
    if (state.view !== "all" && state.view !== String(info.view)) { showView(String(info.view)); }
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
  }

  function boxOf(target) { return target.closest ? target.closest("g.node") : null; }

  canvas.addEventListener("click", function (event) {
    var box = boxOf(event.target);
    if (box) { select(box.id, "graph"); }
  });
  canvas.addEventListener("mouseover", function (event) {
    var box = boxOf(event.target);
    if (box) { showDetails(box.id); }
  });
  canvas.addEventListener("mouseleave", function () {
    if (state.pinned) { showDetails(state.pinned); }
  });

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

  tabs.forEach(function (t) { t.addEventListener("click", function () { showView(t.dataset.view); }); });
  document.getElementById("zoom-in").addEventListener("click", function () { setZoom(state.zoom * 1.25); });
  document.getElementById("zoom-out").addEventListener("click", function () { setZoom(state.zoom / 1.25); });
  document.getElementById("zoom-reset").addEventListener("click", function () { setZoom(1); });
  document.getElementById("zoom-fit").addEventListener("click", fitWidth);
  showView("0");
  // page.html#g1_12 opens with that node selected.
  var wanted = decodeURIComponent(window.location.hash.slice(1));
  if (nodes[wanted]) { select(wanted, "link"); }
})();
