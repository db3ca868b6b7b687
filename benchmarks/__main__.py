"""``python -m benchmarks``: time the DESIGN.md workloads and write the Markdown table and JSON.

python -m benchmarks                       # every workload (W1 in three layouts), full settings
python -m benchmarks --workloads W1 --rounds 5
python -m benchmarks --quick               # a fast smoke run (few steps; loss@10)
python -m benchmarks --quick --size small  # reduced model sizes too
python -m benchmarks --threads 2           # BLAS and PyTorch on two threads
"""

# The thread counts (one, or --threads N) are set by the package, before NumPy is loaded.
import benchmarks  # isort: skip

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

import tracegrad
from benchmarks import harness
from benchmarks import workloads as W

RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time tracegrad's compiled training steps against a hand-written NumPy step, "
        "PyTorch eager and jax.jit, on one thread (or --threads N), on the workloads of "
        "DESIGN.md (W1 also written x @ W + b and with F.linear) and W5-W7.",
    )
    p.add_argument(
        "--workloads",
        default="W1,W1X,W1F,W2,W3,W4,W5,W6,W7",
        help="comma-separated (default: all)",
    )
    p.add_argument(
        "--impls",
        default=",".join(W.DEFAULT_IMPLEMENTATIONS),
        help=f"comma-separated implementations (default: all of {','.join(W.IMPLEMENTATIONS)})",
    )
    p.add_argument("--rounds", type=int, help="interleaved timing rounds (default 7; quick 2)")
    p.add_argument(
        "--steps-per-round", type=int, help="timed steps per round (default 10; quick 3)"
    )
    p.add_argument("--loss-steps", type=int, help="steps before the reported loss (default 50)")
    p.add_argument("--alloc-steps", type=int, help="steps measured with tracemalloc (default 3)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: few steps, loss@10")
    p.add_argument(
        "--size",
        choices=("full", "small"),
        default="full",
        help="'small' runs reduced model/batch sizes (for smoke tests)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for BLAS (NumPy, tracegrad) and PyTorch (default 1)",
    )
    p.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="JSON output path")
    p.add_argument("--markdown", type=Path, default=RESULTS / "latest.md", help="Markdown path")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def settings_from(args) -> harness.Settings:
    values = dict(harness.QUICK) if args.quick else {}
    for key in ("rounds", "steps_per_round", "loss_steps", "alloc_steps"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    impls = tuple(k.strip() for k in args.impls.split(",") if k.strip())
    unknown = set(impls) - set(W.IMPLEMENTATIONS)
    if unknown:
        raise SystemExit(f"unknown implementation(s) {sorted(unknown)}; see --help")
    return harness.Settings(**values, implementations=impls, threads=args.threads)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def jax_metadata(settings: harness.Settings) -> dict:
    """JAX's version, XLA's flags and the size of its CPU thread pools (the client is started
    here, with the thread count, before any workload: its start is not a first call's)."""
    jax_steps = W.jax_steps_module() if "jax" in settings.implementations else None
    return {
        "jax": jax_steps.jax.__version__ if jax_steps else None,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "jax_cpu_threads": jax_steps.start_cpu_client() if jax_steps else None,
        "jax_loaded_before_thread_settings": benchmarks.JAX_LOADED_BEFORE_THREAD_SETTINGS,
    }


def metadata(settings: harness.Settings, args) -> dict:
    torch = W.torch_module() if "torch" in settings.implementations else None
    return {
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "tracegrad": tracegrad.__version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_before": _load(),
        "threads": {k: os.environ.get(k) for k in benchmarks.THREAD_VARIABLES},
        "num_threads": args.threads,
        "blas_threads": tracegrad.get_num_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "numpy_loaded_before_thread_settings": benchmarks.NUMPY_LOADED_BEFORE_THREAD_SETTINGS,
        **jax_metadata(settings),
        "settings": {
            "rounds": settings.rounds,
            "steps_per_round": settings.steps_per_round,
            "loss_steps": settings.loss_steps,
            "alloc_steps": settings.alloc_steps,
            "implementations": list(settings.implementations),
            "quick": bool(args.quick),
            "size": args.size,
        },
    }


def run(argv=None) -> dict:
    """Parse ``argv``, run, write the outputs; returns the results dict."""
    args = build_parser().parse_args(argv)
    if args.threads != benchmarks.THREADS:  # (run() called with other arguments than argv's)
        raise SystemExit(f"--threads {args.threads}: the thread count is read from sys.argv")
    tracegrad.set_num_threads(args.threads)
    settings = settings_from(args)
    names = [n.strip().upper() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in W.WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {', '.join(W.WORKLOADS)}")

    def log(message):
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    results = {"meta": metadata(settings, args), "workloads": []}
    for name in names:
        overrides = harness.SMALL[name] if args.size == "small" else None
        log(f"--- {name}: {W.WORKLOADS[name].title}" + (" (reduced)" if overrides else ""))
        results["workloads"].append(harness.run_workload(name, settings, overrides, log))
    results["meta"]["load_after"] = _load()
    text = harness.markdown(results)
    for path, content in ((args.json, json.dumps(results, indent=1) + "\n"), (args.markdown, text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    print(text)
    return results


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
