"""``passes_history()``: a compiled module's and a compiled step's graph through the pipeline,
checked against the passes' own reports and against the graphs the program runs."""

from __future__ import annotations

import itertools

import pytest

import tracegrad as tg
from tracegrad import nn
from tracegrad.compiled.explain import Report


@pytest.fixture()
def compiled():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cm = tg.compile(model)
    cm(tg.randn(5, 4)).sum().backward()
    return model, cm


def names(graph) -> set[str]:
    return {node.outputs[0].name for node in graph.nodes if node.outputs}


def test_history_runs_from_the_traced_graph_to_the_planned_ones(compiled):
    _, cm = compiled
    history = cm.passes_history()
    assert history[0].title == "traced forward graph" and history[0].pass_name is None
    assert str(history[0].graph) == str(cm.latest.traced.graph)  # (a copy of it)
    planned = [s for s in history if s.title.startswith("planned ")]
    assert [s.title for s in planned] == ["planned forward", "planned backward"]
    assert [s.graph for s in planned] == [g for _, g in cm.latest.report.planned]
    # every pass that changed something is there once per stage, none that did not
    changed = [(stage, r.name) for stage, rs in cm.latest.report.stages for r in rs if r.changed]
    shown = [(s.title.rsplit(": after ", 1)[0], s.pass_name) for s in history if s.pass_name]
    assert [c for c in shown if not c[0].startswith("planning ")] == changed
    assert {"canonicalize", "fuse"} <= {name for _, name in changed}


def test_each_snapshot_says_what_its_pass_changed(compiled):
    _, cm = compiled
    history = cm.passes_history()
    for before, after in itertools.pairwise(history):
        if after.pass_name is None:
            continue
        old, new = names(before.graph), names(after.graph)
        assert set(after.added) == new - old
        assert set(after.removed) == old - new
        assert set(after.rewritten) <= old & new
        assert after.rules and all(count > 0 for count in after.rules.values())
    for dce in (s for s in history if s.pass_name == "dce"):
        assert dce.rules == {"removed": len(dce.removed)} and dce.removed and not dce.added
    # (the rewrite engine drops the nodes its rules replace: they show as removed there)
    canonicalize = next(s for s in history if s.pass_name == "canonicalize")
    assert canonicalize.removed and set(canonicalize.rewritten).isdisjoint(canonicalize.removed)
    fuse = next(s for s in history if s.pass_name == "fuse")
    fused = {n.outputs[0].name for n in fuse.graph.nodes if n.op == "fused"}
    assert fused and fused <= set(fuse.rewritten) | set(fuse.added)
    assert "fused" in fuse.rules


def test_a_compiled_training_step_has_a_history_too():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = tg.optim.SGD(model.parameters(), lr=0.1)

    @tg.compile
    def step(x):
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    for _ in range(2):
        step(tg.randn(5, 4))
    history = step.passes_history()
    assert history[0].title.startswith("traced step")
    assert history[-1].title == "planned step"
    assert history[-1].graph is step.latest.report.planned[-1][1]
    assert any(s.pass_name == "cse" and s.rules.get("merged") for s in history)


def test_before_any_call_it_says_to_call_first():
    cm = tg.compile(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="call the compiled"):
        cm.passes_history()


@pytest.mark.parametrize("kind", ["module", "step"])
def test_the_history_made_again_is_the_one_the_compile_made(monkeypatch, kind):
    # A compile lets go of each pass's graph; passes_history() runs the passes again. What it
    # shows must be what the compile made, value names included.
    made = []
    keep = Report.drop_pass_graphs

    def remembering(report):
        for _, results in report._all_stages():
            made.extend(str(r.graph) for r in results if r.changed)
        keep(report)

    monkeypatch.setattr(Report, "drop_pass_graphs", remembering)
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3))
    x = tg.randn(5, 4)
    if kind == "module":
        compiled = tg.compile(model)
        compiled(x).sum().backward()
    else:
        opt = tg.optim.Adam(model.parameters(), lr=0.1)

        def step(x):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            return loss

        compiled = tg.compile(step)
        compiled(x)
    shown = [str(s.graph) for s in compiled.passes_history() if s.pass_name]
    assert len(made) > 5 and shown == made
