"""Smoke test of ``benchmarks/``: a quick run of the harness on W1 and (reduced) W3 through the
command line, checking the table and JSON structure and that the hand-written NumPy steps compute
the same training run as tracegrad. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks import workloads as W  # noqa: E402

ROW_KEYS = {
    "workload",
    "implementation",
    "label",
    "status",
    "error",
    "error_phase",
    "first_call_s",
    "losses",
    "loss_final",
    "times_ms",
    "median_ms",
    "min_ms",
    "ratio",
    "alloc_mib",
    "loss_rel_diff_vs_handwritten",
    "loss_rel_diff_vs_eager",
}
# PyTorch and JAX (slow to import) are left out of the command-line run and checked on their
# own (below, and in test_jax_steps.py).
IMPLS = [k for k in W.IMPLEMENTATIONS if k not in ("torch", "jax")]
HEADER = (
    "| workload | implementation | median ms | min ms | ratio vs hand-written | first call s "
    "| peak alloc/step MiB | loss@50 |"
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path = out / "results.json", out / "results.md"
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--size",
        "small",
        "--workloads",
        "W1,W3",
        "--impls",
        ",".join(IMPLS),
        "--loss-steps",
        "50",
        "--json",
        str(json_path),
        "--markdown",
        str(md_path),
        "--quiet",
    ]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(json_path.read_text()), md_path.read_text(), proc.stdout


def test_json_structure(quick_run):
    results, _, _ = quick_run
    meta = results["meta"]
    assert set(meta["threads"].values()) == {"1"}
    assert meta["settings"]["loss_steps"] == 50 and meta["settings"]["quick"]
    assert [w["name"] for w in results["workloads"]] == ["W1", "W3"]
    for wl in results["workloads"]:
        assert [r["implementation"] for r in wl["rows"]] == IMPLS
        assert {c["implementation"] for c in wl["checks"]} == {"step", "module"}
        for row in wl["rows"]:
            assert set(row) >= ROW_KEYS
            assert row["status"] in ("ok", "error")
            if row["status"] == "error":
                assert row["error"] and row["error_phase"]
                continue
            assert len(row["losses"]) == 50 and row["loss_final"] == row["losses"][-1]
            assert len(row["times_ms"]) == 2 * 3 and row["median_ms"] >= row["min_ms"] > 0
            assert row["first_call_s"] > 0
            assert row["alloc_mib"] is not None and row["alloc_mib"] >= 0
        hand = next(r for r in wl["rows"] if r["implementation"] == "handwritten")
        assert hand["status"] == "ok" and hand["ratio"] == pytest.approx(1.0)


def test_markdown_table(quick_run):
    results, markdown, stdout = quick_run
    assert stdout == markdown + "\n"  # the table is also printed
    lines = markdown.splitlines()
    assert HEADER in lines
    table = lines[lines.index(HEADER) + 2 :]
    table = table[: next(i for i, line in enumerate(table) if not line.startswith("|"))]
    n_rows = sum(len(wl["rows"]) for wl in results["workloads"])
    assert len(table) == n_rows
    assert all(line.count(" | ") == 7 for line in table)
    for wl in results["workloads"]:
        for row in wl["rows"]:
            start = f"| {wl['name']}"
            assert any(row["label"] in line and line.startswith(start) for line in table)
    assert "## Targets" in lines


def test_losses_agree_after_50_steps(quick_run):
    """Same initial weights, same batches, same math: the loss after 50 steps of the
    hand-written step (and of every tracegrad variant that ran) matches tracegrad eager."""
    results, _, _ = quick_run
    for wl in results["workloads"]:
        rows = {r["implementation"]: r for r in wl["rows"]}
        eager = rows["eager"]["loss_final"]
        assert eager is not None
        assert rows["handwritten"]["loss_final"] == pytest.approx(eager, rel=0.03)
        assert rows["handwritten"]["losses"][0] == pytest.approx(rows["eager"]["losses"][0], 1e-5)
        for row in rows.values():
            if row["status"] == "ok":
                assert row["loss_final"] == pytest.approx(eager, rel=0.03), row["label"]


@pytest.mark.parametrize(
    "name, other",
    [
        ("W1", "handwritten"),
        ("W2", "handwritten"),
        ("W3", "handwritten"),
        ("W4", "handwritten"),
        ("W1", "torch"),
        ("W4", "torch"),
    ],
)
def test_parameters_match_eager(name, other):
    """After two steps, every parameter of the hand-written step (and of the PyTorch step)
    equals tracegrad eager's (at reduced sizes; relative to how far the parameters moved)."""
    if other == "torch":
        pytest.importorskip("torch")
    setup = W.make_setup(W.get_workload(name, **harness.SMALL[name]))
    eager = W.make_implementation("eager", setup)
    hand = W.make_implementation(other, setup)
    for i in range(2):
        loss_e = eager.loss_value(eager.step(i))
        loss_h = hand.loss_value(hand.step(i))
        assert loss_h == pytest.approx(loss_e, rel=1e-4)
    ours, ref = hand.parameters(), eager.parameters()
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        moved = np.abs(value - setup.init[key]).max()
        assert ours[key].shape == value.shape, key
        assert np.abs(ours[key] - value).max() <= 2e-2 * moved + 1e-7, key


@pytest.mark.parametrize("layout", ["W1X", "W1F"])
@pytest.mark.parametrize("impl", ["eager", "step", "handwritten"])
def test_w1_layouts_train_exactly_as_w1(layout, impl):
    """W1 written x @ W + b and with F.linear starts from W1's weights and sees its batches:
    every implementation's losses and final weights (under nn.Linear's names) are W1's."""
    runs = {}
    for name in ("W1", layout):
        setup = W.make_setup(W.get_workload(name))
        impl_of = W.make_implementation(impl, setup)
        losses = [impl_of.loss_value(impl_of.step(i)) for i in range(3)]
        params = impl_of.parameters()  # (the hand-written step holds nn.Linear's already)
        if impl != "handwritten":
            params = setup.workload.linear_layout(params)
        runs[name] = losses, params
    (losses, params), (layout_losses, layout_params) = runs["W1"], runs[layout]
    assert layout_losses == pytest.approx(losses, rel=1e-5)
    for key, value in params.items():
        np.testing.assert_allclose(layout_params[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
