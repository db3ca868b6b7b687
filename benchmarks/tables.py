"""``python -m benchmarks.tables``: issue 18's summary tables, one per thread count.

python -m benchmarks.tables                                    # W1-W7 at one and two threads
python -m benchmarks.tables --threads 1,2 --workloads W1,W2 --quick

Runs ``python -m benchmarks`` once per workload and thread count, in its own process (BLAS and
XLA size their thread pools when they load), the thread counts alternating workload by workload
so that the machine's load falls on each alike. Writes one Markdown table per thread count
(ratios to the hand-written step of the same run, first calls, allocation, load) to
``--markdown`` and prints it. Options it does not know pass through to ``python -m benchmarks``
(``--impls``, ``--rounds``, ``--quick``, ...); ``--json-dir`` keeps each run's JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
ALL_WORKLOADS = "W1,W1X,W1F,W2,W3,W4,W5,W6,W7"

# (column title, implementation, row field, format); ratios are to the hand-written step
COLUMNS = (
    ("hand-written ms", "handwritten", "median_ms", ".2f"),
    ("whole step", "step", "ratio", ".2f"),
    ("module + eager loss/opt", "module", "ratio", ".2f"),
    ("PyTorch eager", "torch", "ratio", ".2f"),
    ("jax.jit", "jax", "ratio", ".2f"),
    ("first call, step s", "step", "first_call_s", ".3f"),
    ("first call, jax.jit s", "jax", "first_call_s", ".3f"),
    ("alloc/step MiB (step)", "step", "alloc_mib", ".2f"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tables",
        description="Issue 18's summary tables: python -m benchmarks per workload and thread "
        "count; other options pass through to it.",
    )
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (1,2)")
    p.add_argument("--workloads", default=ALL_WORKLOADS, help="comma-separated (default: all)")
    p.add_argument("--markdown", type=Path, default=RESULTS / "tables.md", help="output path")
    p.add_argument("--json-dir", type=Path, help="keep each run's JSON here")
    return p


def run_benchmark(workload: str, threads: int, json_path: Path, passed: list[str]) -> dict:
    """One ``python -m benchmarks`` run; its results."""
    command = [sys.executable, "-m", "benchmarks", "--workloads", workload]
    command += ["--threads", str(threads), "--json", str(json_path)]
    command += ["--markdown", str(json_path.with_suffix(".md")), "-q", *passed]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(json_path.read_text())


def _cell(row: dict | None, field: str, spec: str) -> str:
    if row is None:
        return "—"
    if row["status"] == "skipped":
        return "skipped"
    value = row.get(field)
    return "—" if value is None else format(value, spec)


def _check_value(record: dict, what: str) -> float | None:
    return next((c["value"] for c in record["checks"] if c["what"] == what), None)


def _load(value: str) -> str:
    return value.split()[0] if value else "?"


def summary_tables(runs: list[dict]) -> str:
    """One Markdown table per thread count from ``python -m benchmarks`` results (each run's
    workloads, in order), with the whole step's first call over jax.jit's."""
    by_threads: dict[int, list[str]] = {}
    for results in runs:
        meta = results["meta"]
        for wl in results["workloads"]:
            rows = {r["implementation"]: r for r in wl["rows"]}
            cells = [_cell(rows.get(impl), field, spec) for _, impl, field, spec in COLUMNS]
            ratio = _check_value(wl, "first call, whole step / jax.jit's")
            cells.append("—" if ratio is None else f"{ratio:.3f}")
            cells.append(f"{_load(meta['load_before'])}-{_load(meta.get('load_after', ''))}")
            name = wl["name"] + (" (reduced)" if wl["reduced"] else "")
            line = "| " + " | ".join([name, *cells]) + " |"
            by_threads.setdefault(meta["num_threads"], []).append(line)
    titles = [title for title, *_ in COLUMNS] + ["first call, step / jax.jit", "load"]
    text = []
    for threads, lines in sorted(by_threads.items()):
        heading = "One thread" if threads == 1 else f"{threads} threads (`--threads {threads}`)"
        text += [f"#### {heading}", "", "| workload | " + " | ".join(titles) + " |"]
        text += ["|---" + "|--:" * (len(titles) - 1) + "|---|", *lines, ""]
    return "\n".join(text)


def main(argv=None) -> int:
    args, passed = build_parser().parse_known_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        json_dir = args.json_dir or Path(scratch)
        json_dir.mkdir(parents=True, exist_ok=True)
        runs = []
        for i, workload in enumerate(workloads):
            # alternate which thread count runs first
            for n in threads[i % len(threads) :] + threads[: i % len(threads)]:
                path = json_dir / f"{workload}-threads{n}.json"
                runs.append(run_benchmark(workload, n, path, passed))
    text = summary_tables(runs)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
