"""``python -m benchmarks.tables``: one summary table per thread count from runs of
``python -m benchmarks``; and the targets that apply at two threads (the whole step against
PyTorch eager and jax.jit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness, tables  # noqa: E402
from benchmarks import workloads as W  # noqa: E402

# implementation -> (median ms, first call s)
TIMES = {"handwritten": (2.0, 0.01), "step": (1.5, 0.05), "torch": (3.0, 0.02), "jax": (1.0, 2.0)}


def _record(threads: int, skip_jax: bool = False) -> dict:
    rows = {}
    for key, (median, first) in TIMES.items():
        row = harness.Row("W1", key, W.LABELS[key], first_call_s=first, times_ms=[median])
        if key == "jax" and skip_jax:
            row = harness.Row("W1", key, W.LABELS[key])
            row.skip("jax not installed")
        rows[key] = row
    return harness._record(W.get_workload("W1"), None, list(rows), rows, threads)


def _results(threads: int, **kw) -> dict:
    meta = {"num_threads": threads, "load_before": "1.50 1.2 1.0", "load_after": "2.25 1 1"}
    return {"meta": meta, "workloads": [_record(threads, **kw)]}


def _checks(record: dict) -> dict:
    return {c["what"]: c for c in record["checks"]}


def test_two_thread_targets_compare_the_step_with_pytorch_and_jax():
    one, two = _checks(_record(1)), _checks(_record(2))
    assert "whole step / jax.jit's" not in one and "whole step / PyTorch eager's" not in one
    assert two["whole step / PyTorch eager's"]["value"] == pytest.approx(0.5)
    assert two["whole step / PyTorch eager's"]["met"] is True
    assert two["whole step / jax.jit's"]["value"] == pytest.approx(1.5)
    assert two["whole step / jax.jit's"]["met"] is False
    for checks in (one, two):
        first = checks["first call, whole step / jax.jit's"]
        assert first["value"] == pytest.approx(0.025) and first["met"] is True


def test_summary_tables_one_per_thread_count():
    text = tables.summary_tables([_results(2), _results(1, skip_jax=True)])
    lines = text.splitlines()
    assert lines.index("#### One thread") < lines.index("#### 2 threads (`--threads 2`)")
    rows = [line for line in lines if line.startswith("| W1 |")]
    assert len(rows) == 2
    one, two = (line.split(" | ") for line in rows)
    header = next(line for line in lines if line.startswith("| workload |")).split(" | ")
    assert len(one) == len(header) == len(tables.COLUMNS) + 3
    # one thread first: hand-written ms, ratios, first calls, jax skipped, load
    assert one[1:6] == ["2.00", "0.75", "—", "1.50", "skipped"]
    assert one[6:8] == ["0.050", "skipped"] and one[-2:] == ["—", "1.50-2.25 |"]
    assert two[5] == "0.50" and two[7] == "2.000" and two[-2] == "0.025"


def test_command_line_alternates_thread_counts(tmp_path):
    markdown = tmp_path / "tables.md"
    command = [sys.executable, "-m", "benchmarks.tables", "--threads", "1,2"]
    command += ["--workloads", "W1,W1F", "--quick", "--size", "small"]
    command += ["--impls", "handwritten,step", "--markdown", str(markdown)]
    command += ["--json-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == markdown.read_text() + "\n"
    # written in the order run: the thread counts alternate which goes first
    runs = sorted(tmp_path.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert [p.stem for p in runs] == [
        "W1-threads1",
        "W1-threads2",
        "W1F-threads2",
        "W1F-threads1",
    ]
    lines = markdown.read_text().splitlines()
    two = lines.index("#### 2 threads (`--threads 2`)")
    names = [line.split(" | ")[0] for line in lines if line.startswith("| W1")]
    assert names == ["| W1", "| W1F", "| W1", "| W1F"]
    assert all(line.startswith("| W1") for line in lines[two + 4 : two + 6])
