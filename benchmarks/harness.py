"""The timing harness: interleaved rounds, first-call time, allocation per step, loss after N steps.

For one workload, every implementation is built from the same initial weights and then:

1. first call: step 0 is timed on its own (for tracegrad this includes tracing and compiling);
2. loss steps: steps 1 .. N-1 run untimed (they are also the warm-up, recompiles included);
   the loss returned by step N (computed before that step's update) is "loss@N";
3. timing: ``rounds`` rounds, round-robin over the implementations (the starting one rotates),
   ``steps_per_round`` steps each, every step timed with ``time.perf_counter``; so machine noise
   hits every implementation alike. Median and min per step over all rounds;
4. allocation: a separate short pass with ``tracemalloc`` started after all of the above; for
   each step, the traced peak minus the traced size at the start of the step. (PyTorch's and
   XLA's allocators are invisible to tracemalloc, so their rows say n/a.)

A failing implementation does not stop the run: its row records the error (phase, text and the
last frames of the traceback) and the others go on. An optional comparator whose library is
missing (JAX) has a row marked skipped.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import traceback
import tracemalloc
from dataclasses import asdict, dataclass, field

from benchmarks import workloads as W

MIB = 1024 * 1024

# Implementations whose memory tracemalloc does not see (their own allocators)
UNTRACED_ALLOCATIONS = ("torch", "jax")
# The targets against jax.jit and PyTorch: the whole step's first call under a tenth of
# jax.jit's; at two threads and more, its steady step faster than both
FIRST_CALL_VS_JAX = 0.1
STEP_VS_OTHERS = 1.0


@dataclass
class Settings:
    rounds: int = 7
    steps_per_round: int = 10
    loss_steps: int = 50
    alloc_steps: int = 3
    implementations: tuple[str, ...] = W.DEFAULT_IMPLEMENTATIONS
    threads: int = 1  # (recorded; set before NumPy loads, by the package)


QUICK = dict(rounds=2, steps_per_round=3, loss_steps=10, alloc_steps=2)

# Reduced configurations (``--size small``) for smoke tests; the full sizes are DESIGN.md's.
SMALL = {
    "W1": {},
    "W1X": {},
    "W1F": {},
    "W2": dict(inputs=256, hidden=256, batch=32),
    "W3": dict(batch=8),
    "W4": dict(batch=4, ctx=32, layers=1),
    "W5": dict(batch=4, ctx=8, emb=16, hidden=32),
    "W6": dict(batch=4, image=8),
    "W7": dict(batch=16),
}


@dataclass
class Row:
    workload: str
    implementation: str
    label: str
    status: str = "ok"  # "ok", "error" or "skipped" (its library is not installed)
    error: str | None = None
    error_phase: str | None = None
    error_traceback: str | None = None
    error_where: str | None = None  # innermost frame: "path:line in function"
    first_call_s: float | None = None
    second_call_s: float | None = None
    losses: list[float] = field(default_factory=list)
    loss_final: float | None = None
    times_ms: list[float] = field(default_factory=list)
    median_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    round_medians_ms: list[float] = field(default_factory=list)
    ratio: float | None = None
    alloc_mib: float | None = None  # max over the measured steps
    alloc_mib_steps: list[float] = field(default_factory=list)
    loss_rel_diff_vs_handwritten: float | None = None
    loss_rel_diff_vs_eager: float | None = None

    def skip(self, reason: str) -> None:
        self.status, self.error = "skipped", reason

    def fail(self, phase: str, exc: BaseException) -> None:
        self.status, self.error_phase = "error", phase
        self.error = f"{type(exc).__name__}: {exc}".strip()
        frames = traceback.format_exception(exc)
        self.error_traceback = "".join(frames[-4:])[-3000:]
        stack = traceback.extract_tb(exc.__traceback__)
        if stack:
            last = stack[-1]
            self.error_where = f"{_short_path(last.filename)}:{last.lineno} in {last.name}"


def _short_path(filename: str) -> str:
    parts = filename.replace("\\", "/").split("/")
    for anchor in ("tracegrad", "benchmarks", "torch", "numpy"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor) :])
    return filename


def _log(log, message: str) -> None:
    if log is not None:
        log(message)


def run_workload(name: str, settings: Settings, overrides: dict | None = None, log=print) -> dict:
    """Run one workload; returns its JSON-ready record (config, rows, checks)."""
    workload = W.get_workload(name, **(overrides or {}))
    setup = W.make_setup(workload)
    keys = [k for k in settings.implementations if k != "torch" or W.torch_module() is not None]
    rows = {k: Row(name, k, W.LABELS[k]) for k in keys}
    built = {}
    for key in keys:
        try:
            built[key] = W.make_implementation(key, setup)
        except W.NotInstalledError as exc:
            rows[key].skip(str(exc))
            _log(log, f"{name} {key}: skipped ({exc})")
        except Exception as exc:
            rows[key].fail("setup", exc)
            _log(log, f"{name} {key}: FAILED in setup: {rows[key].error.splitlines()[0][:200]}")
    # Everything alive now (libraries, models, data) moves to the permanent generation, so the
    # collections below (outside the timed regions) and any during a step stay cheap.
    gc.collect()
    gc.freeze()
    try:
        _measure(name, settings, rows, built, log)
    finally:
        gc.unfreeze()
    return _record(workload, overrides, keys, rows, settings.threads)


def _measure(name, settings: Settings, rows: dict, built: dict, log) -> None:
    impls: dict[str, W.Implementation] = {}
    counters: dict[str, int] = {}
    # 1-2: first call, then the loss steps (the warm-up)
    for key, impl in built.items():
        row = rows[key]
        try:
            phase = "first call"
            gc.collect()
            start = time.perf_counter()
            result = impl.step(0)
            row.first_call_s = time.perf_counter() - start
            row.losses.append(impl.loss_value(result))
            phase = "loss steps"
            for i in range(1, settings.loss_steps):
                start = time.perf_counter()
                result = impl.step(i)
                if i == 1:
                    row.second_call_s = time.perf_counter() - start
                row.losses.append(impl.loss_value(result))
            row.loss_final = row.losses[-1]
            if not all(math.isfinite(v) for v in row.losses):
                raise FloatingPointError(f"non-finite loss: {row.losses}")
        except Exception as exc:
            row.fail(phase, exc)
            _log(log, f"{name} {key}: FAILED in {phase}: {row.error.splitlines()[0][:200]}")
            continue
        impls[key] = impl
        counters[key] = settings.loss_steps
        _log(
            log,
            f"{name} {key}: first call {row.first_call_s:.3f} s, "
            f"loss@{settings.loss_steps} {row.loss_final:.5f}",
        )

    # 3: interleaved timing rounds
    for r in range(settings.rounds):
        order = list(impls)
        order = order[r % len(order) :] + order[: r % len(order)] if order else order
        for key in order:
            impl, row = impls[key], rows[key]
            gc.collect()
            times = []
            try:
                for _ in range(settings.steps_per_round):
                    i = counters[key]
                    start = time.perf_counter()
                    impl.step(i)
                    times.append((time.perf_counter() - start) * 1e3)
                    counters[key] = i + 1
            except Exception as exc:
                row.fail(f"timing round {r}", exc)
                del impls[key]
                _log(log, f"{name} {key}: FAILED while timing: {row.error[:200]}")
                continue
            row.times_ms.extend(times)
            row.round_medians_ms.append(statistics.median(times))

    # 4: allocation per steady step
    for key, impl in impls.items():
        row = rows[key]
        if key in UNTRACED_ALLOCATIONS:
            continue
        result = None
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(settings.alloc_steps):
                result = None
                tracemalloc.reset_peak()
                current, _ = tracemalloc.get_traced_memory()
                result = impl.step(counters[key])
                counters[key] += 1
                _, peak = tracemalloc.get_traced_memory()
                row.alloc_mib_steps.append((peak - current) / MIB)
        except Exception as exc:
            row.fail("allocation pass", exc)
        finally:
            tracemalloc.stop()
        del result
        if row.alloc_mib_steps:
            row.alloc_mib = max(row.alloc_mib_steps)


def _record(workload, overrides, keys, rows, threads: int = 1) -> dict:
    """Statistics, ratios and loss agreement; the JSON-ready record of one workload."""
    for row in rows.values():
        if row.times_ms:
            row.median_ms = statistics.median(row.times_ms)
            row.min_ms = min(row.times_ms)
            row.mean_ms = statistics.fmean(row.times_ms)
    base = rows.get("handwritten")
    eager = rows.get("eager")
    for row in rows.values():
        if base is not None and base.median_ms and row.median_ms:
            row.ratio = row.median_ms / base.median_ms
        for ref, attr in (
            (base, "loss_rel_diff_vs_handwritten"),
            (eager, "loss_rel_diff_vs_eager"),
        ):
            if ref is not None and ref.loss_final is not None and row.loss_final is not None:
                setattr(row, attr, abs(row.loss_final - ref.loss_final) / abs(ref.loss_final))
    record = {
        "name": workload.name,
        "title": workload.title,
        "config": workload.config,
        "reduced": bool(overrides),
        "threads": threads,
        "targets": workload.targets,
        "rows": [asdict(rows[k]) for k in keys],
    }
    record["checks"] = target_checks(record)
    return record


def target_checks(record: dict) -> list[dict]:
    """The issue's targets for this workload, each with the measured value and met/missed
    (``met`` is None when the value could not be measured)."""
    rows = {r["implementation"]: r for r in record["rows"]}
    t = record["targets"]

    def check(what, impl, key, target, unit):
        value = rows.get(impl, {}).get(key)
        met = None if value is None else value <= target
        return dict(what=what, implementation=impl, value=value, target=target, unit=unit, met=met)

    checks = [
        check("whole step vs hand-written", "step", "ratio", t["step_ratio"], "x"),
        step_versus(rows, "first_call_s", "jax", FIRST_CALL_VS_JAX, "first call, whole step"),
        check(
            "compiled module + eager loss/opt vs hand-written",
            "module",
            "ratio",
            t["module_ratio"],
            "x",
        ),
        check("first call, whole step", "step", "first_call_s", t["first_call_s"], "s"),
        check("first call, compiled module", "module", "first_call_s", t["first_call_s"], "s"),
        check("allocation per steady whole step", "step", "alloc_mib", t["alloc_mib"], "MiB"),
    ]
    if record.get("threads", 1) > 1:
        checks += [
            step_versus(rows, "median_ms", "torch", STEP_VS_OTHERS, "whole step"),
            step_versus(rows, "median_ms", "jax", STEP_VS_OTHERS, "whole step"),
        ]
    return checks


COMPARATORS = {"torch": "PyTorch eager", "jax": "jax.jit"}


def step_versus(rows: dict, key: str, other: str, target: float, what: str) -> dict:
    """The whole step's ``key`` (first call, median) over ``other``'s row's, against ``target``
    (the first calls include tracing and compiling in both)."""
    step, theirs = (rows.get(k, {}).get(key) for k in ("step", other))
    value = step / theirs if step is not None and theirs else None
    met = None if value is None else value <= target
    what = f"{what} / {COMPARATORS[other]}'s"
    return dict(what=what, implementation="step", value=value, target=target, unit="x", met=met)


# --- Markdown -------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _threads_text(meta: dict) -> str:
    n = meta.get("num_threads", 1)
    return "One thread" if n == 1 else f"{n} threads (BLAS and PyTorch)"


def markdown(results: dict) -> str:
    meta = results["meta"]
    loss_steps = meta["settings"]["loss_steps"]
    lines = [
        "# tracegrad benchmarks",
        "",
        f"{meta['timestamp']} · {meta['cpu']} ({meta['cpu_count']} CPUs, load "
        f"{meta['load_before']}) · Python {meta['python']} · NumPy {meta['numpy']} · "
        f"PyTorch {meta['torch'] or 'not installed'} · "
        + (f"JAX {meta['jax']} · " if meta.get("jax") else "")
        + f"tracegrad {meta['tracegrad']}"
        + (f" ({meta['git_commit'][:10]})" if meta.get("git_commit") else ""),
        "",
        f"{_threads_text(meta)}. {meta['settings']['rounds']} interleaved rounds x "
        f"{meta['settings']['steps_per_round']} steps per implementation; ratio = median step "
        f"time / hand-written NumPy median (same run); first call = step 0 including "
        f"tracing and compiling; peak alloc = tracemalloc peak above the start of a steady step "
        f"(max of {meta['settings']['alloc_steps']}); loss@{loss_steps} = loss returned by step "
        f"{loss_steps}, all implementations from the same initial weights and batches.",
        "",
        f"| workload | implementation | median ms | min ms | ratio vs hand-written "
        f"| first call s | peak alloc/step MiB | loss@{loss_steps} |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    failures = []
    for wl in results["workloads"]:
        name = wl["name"] + (" (reduced)" if wl["reduced"] else "")
        for row in wl["rows"]:
            if row["status"] == "skipped":
                cells = [name, row["label"], f"skipped: {row['error']}", *["—"] * 5]
            elif row["status"] == "error" and row["median_ms"] is None:
                failures.append((wl["name"], row))
                message = f"error in {row['error_phase']}: {row['error'].splitlines()[0][:90]}"
                cells = [name, row["label"], message, "—", "—", "—", "—", "—"]
                if row["first_call_s"] is not None:
                    cells[5] = _fmt(row["first_call_s"], ".3f")
            else:
                if row["status"] == "error":
                    failures.append((wl["name"], row))
                untraced = row["implementation"] in UNTRACED_ALLOCATIONS
                alloc = "n/a" if untraced else _fmt(row["alloc_mib"], ".2f")
                cells = [
                    name,
                    row["label"],
                    _fmt(row["median_ms"], ".3f"),
                    _fmt(row["min_ms"], ".3f"),
                    _fmt(row["ratio"], ".2f"),
                    _fmt(row["first_call_s"], ".3f"),
                    alloc,
                    _fmt(row["loss_final"], ".4f"),
                ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "## Targets", "", "| workload | target | value | met |", "|---|---|--:|---|"]
    for wl in results["workloads"]:
        for c in wl["checks"]:
            value = "—" if c["value"] is None else f"{c['value']:.3g} {c['unit']}"
            met = {True: "yes", False: "**no**", None: "—"}[c["met"]]
            target = f"{c['what']} ≤ {c['target']:g} {c['unit']}"
            lines.append(f"| {wl['name']} | {_cell(target)} | {value} | {met} |")
    agreement = []
    for wl in results["workloads"]:
        for row in wl["rows"]:
            diff = row["loss_rel_diff_vs_handwritten"]
            if diff is not None and diff > 0.05:
                agreement.append(
                    f"- {wl['name']} {row['label']}: loss@{loss_steps} differs from the "
                    f"hand-written step's by {diff:.1%}"
                )
    if agreement:
        lines += ["", "## Loss disagreements (> 5%)", "", *agreement]
    if failures:
        lines += ["", "## Failures", ""]
        for wl_name, row in failures:
            where = f" at `{row['error_where']}`" if row.get("error_where") else ""
            lines.append(
                f"- **{wl_name} / {row['label']}** ({row['error_phase']}): "
                f"`{_cell(row['error'].splitlines()[0][:300])}`{where}"
            )
    return "\n".join(lines) + "\n"
