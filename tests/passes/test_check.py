"""check=True, the pass logs and explain(): what they say about the passes is true.

``tg.compile(..., check=True)`` runs every pass snapshot against the unoptimized program on
the first call and names the first pass that changes a result and the first node whose value
changed. A deliberately broken pass (registered here under a ``test_`` name and removed after
each test) must be caught; the real pipeline must pass silently.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.compiled.check import CheckError
from tracegrad.passes import DEFAULT_PIPELINE, PASSES
from tracegrad.passes.autodiff import differentiate
from tracegrad.passes.pipeline import register_pass, transforms

BROKEN = "test_broken_add_to_sub"


@pytest.fixture
def broken_pass():
    """Registers a pass that turns the first ``add`` into ``sub`` (same types, so lint
    passes); yields the list of the names of the nodes it changed."""
    changed: list[str] = []

    @register_pass(BROKEN)
    def add_to_sub(graph):
        """Turn the first add into a sub (a wrong rewrite for the tests)."""
        for node in graph.nodes:
            if node.op == "add":
                node.op = "sub"
                changed.append(node.outputs[0].name)
                break
        return graph

    try:
        yield changed
    finally:
        PASSES.pop(BROKEN, None)


def mlp():
    tg.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def batch():
    rng = np.random.default_rng(0)
    return tg.tensor(rng.standard_normal((6, 4))), tg.tensor(rng.integers(0, 3, 6))


def test_check_names_a_broken_pass_and_the_node_it_changed(broken_pass):
    cm = tg.compile(mlp(), passes=["fold", BROKEN, "cse"], check=True)
    x, _ = batch()
    with pytest.raises(CheckError) as info:
        cm(x)
    message = str(info.value)
    assert f"pass {BROKEN!r}" in message
    assert broken_pass, "the broken pass never ran"
    assert f"first changed node: %{broken_pass[0]} = sub" in message


def test_check_names_a_broken_pass_in_a_whole_training_step(broken_pass, training_step):
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    step = tg.compile(training_step(model, opt), passes=["simplify", BROKEN, "dce"], check=True)
    before = [p.detach().numpy().copy() for p in model.parameters()]
    with pytest.raises(CheckError) as info:
        step(*batch())
    message = str(info.value)
    assert f"pass {BROKEN!r}" in message
    assert f"first changed node: %{broken_pass[0]} = sub" in message
    after = [p.detach().numpy() for p in model.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def test_broken_pass_is_unregistered_after_its_test():
    assert BROKEN not in PASSES


def test_check_is_silent_with_the_default_pipeline_on_a_model(capsys, monkeypatch):
    monkeypatch.delenv("TRACEGRAD_LOGS", raising=False)
    model = mlp()
    x, _ = batch()
    checked = tg.compile(model, check=True)
    out = checked(x)
    out.sum().backward()
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    plain = tg.compile(model, check=False)
    np.testing.assert_allclose(plain(x).detach().numpy(), out.detach().numpy(), rtol=1e-12)
    plain(x).sum().backward()
    for got, p in zip(grads, model.parameters(), strict=True):
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-12)
    assert capsys.readouterr() == ("", "")


def test_check_is_silent_with_the_default_pipeline_on_a_training_step(capsys, monkeypatch):
    monkeypatch.delenv("TRACEGRAD_LOGS", raising=False)
    losses = []
    for check in (True, False):
        model = mlp()
        opt = optim.Adam(model.parameters(), lr=0.01)

        def train_step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step, check=check)
        losses.append([step(*batch()).item() for _ in range(3)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-12)
    assert capsys.readouterr() == ("", "")


# --- TRACEGRAD_LOGS=passes ------------------------------------------------------------------

LOG_LINE = re.compile(r"\[tracegrad:passes\] (\S+): (\d+) -> (\d+) nodes, (\d+) changes")


def logged(text: str) -> list[tuple]:
    lines = [line for line in text.splitlines() if line.startswith("[tracegrad:passes]")]
    parsed = [LOG_LINE.fullmatch(line) for line in lines]
    assert all(parsed), f"unexpected log lines: {lines}"
    return [(m[1], int(m[2]), int(m[3]), int(m[4])) for m in parsed]


def test_pass_log_has_one_line_per_pass_that_changed_something(capsys, monkeypatch):
    monkeypatch.setenv("TRACEGRAD_LOGS", "passes")
    x, _ = batch()
    graph = tg.trace(lambda t: ((t * 1.0).exp().log() + t).tanh(), x.numpy())
    report = []
    tg.passes.run(graph, "default", report)
    want = [(r.name, r.nodes_before, r.nodes_after, len(r.notes)) for r in report if r.changed]
    changed = [name for name, *_ in want]
    # (canonicalize drops the nodes its rewrites leave dead: dce has nothing left here)
    assert "canonicalize" in changed and "fuse" in changed and "dce" not in changed
    assert "fold" not in changed  # no constants: fold changes nothing and is not logged
    assert logged(capsys.readouterr().err) == want


def test_pass_log_of_a_compile_matches_its_report(capsys, monkeypatch):
    monkeypatch.setenv("TRACEGRAD_LOGS", "passes")
    cm = tg.compile(mlp())
    x, _ = batch()
    cm(x)
    lines = logged(capsys.readouterr().err)
    results = [r for _, stage in cm.latest.report.stages for r in stage]
    want = [(r.name, r.nodes_before, r.nodes_after, len(r.notes)) for r in results if r.changed]
    assert lines == want and lines


def test_no_pass_log_without_the_setting(capsys, monkeypatch):
    monkeypatch.delenv("TRACEGRAD_LOGS", raising=False)
    tg.compile(mlp())(batch()[0])
    assert "[tracegrad:passes]" not in capsys.readouterr().err


# --- explain() ------------------------------------------------------------------------------

PASS_LINE = re.compile(r"^  (\S+)\s+(\d+) -> (\d+)\s+nodes", re.MULTILINE)


def stages(text: str) -> list[list[tuple[str, int, int]]]:
    """The pass lines of each 'passes on the ...' section of an explain() report."""
    sections = text.split("passes on the ")[1:]
    return [
        [(m[1], int(m[2]), int(m[3])) for m in PASS_LINE.finditer(s.split("\n\n")[0])]
        for s in sections
    ]


def test_explain_names_every_default_pass_with_true_node_counts():
    model = mlp()
    x, _ = batch()
    cm = tg.compile(model)
    cm(x)
    text = cm.explain()
    forward_stage, joint_stage = stages(text)
    rewriting = transforms("default")
    assert [name for name, *_ in forward_stage] == rewriting
    assert [name for name, *_ in joint_stage] == rewriting
    assert "memory plan" in text and set(DEFAULT_PIPELINE) - set(rewriting) == {
        "schedule",
        "recompute",
        "overlap",
        "threads",
        "memory",
    }
    # each pass starts from what the one before it left
    for stage in (forward_stage, joint_stage):
        for (_, _, after), (_, before, _) in itertools.pairwise(stage):
            assert before == after
    # recomputed from the graphs themselves
    traced = tg.trace(model, x)
    assert forward_stage[0][1] == len(traced.nodes)
    optimized = tg.passes.run(traced, rewriting)
    assert forward_stage[-1][2] == len(optimized.nodes)
    wrt = [name for name, p in model.named_parameters()]
    joint, _, _ = differentiate(optimized, wrt, n_differentiable=1)
    assert joint_stage[0][1] == len(joint.nodes)
    assert joint_stage[-1][2] == len(tg.passes.run(joint, rewriting).nodes)
    generated = cm.latest.program  # (explain() counts the nodes of the generated functions)
    forward, backward = generated.graph, generated.backward_graph
    assert f"forward: {len(forward.nodes)} nodes" in text
    assert f"backward: {len(backward.nodes)} nodes" in text
    assert len(forward.nodes) + len(backward.nodes) >= joint_stage[-1][2]


def test_check_accepts_the_stability_rewrites():
    """log(softmax(x)) is -inf unoptimized at |x| ~ 1000; simplify's finite log_softmax is
    the right value, not a divergence."""
    step = tg.compile(lambda x: x.softmax(0).log(), check=True)
    out = step(tg.tensor(np.array([1000.0, -1000.0, 0.0])))
    np.testing.assert_allclose(out.numpy(), [0.0, -2000.0, -1000.0])
