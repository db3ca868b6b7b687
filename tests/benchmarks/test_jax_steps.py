"""The ``jax`` implementation of the benchmarks: each workload's jitted JAX step trains as
tracegrad eager does (losses and weights after two steps at reduced sizes, float32; W6's
batch-norm running statistics too), XLA's CPU thread pools follow ``--threads``, the harness
reports the whole step's first call over jax.jit's, and without JAX the row is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402
import tracegrad as tg  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks import workloads as W  # noqa: E402

ALL = ("W1", "W1X", "W1F", "W2", "W3", "W4", "W5", "W6", "W7")
STEPS = 2
# Adam's first updates are about lr * sign(g): where a gradient is near zero, float32 rounding
# moves m / sqrt(v) by a fraction of the step, so its weights agree less closely than SGD's.
WEIGHT_TOL = {"W2": 2e-2, "W4": 2e-2, "W7": 2e-2}


# JAX runs in a child process: once its CPU client has started, its threads make a later fork
# (DataLoader workers in other tests) unsafe.
JAX_RUN = """
import sys
import numpy as np
import benchmarks
import tracegrad as tg
from benchmarks import harness, workloads as W
name, seed, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
impl = W.make_implementation("jax", W.make_setup(W.get_workload(name, **harness.SMALL[name])))
tg.manual_seed(seed)
losses = [impl.loss_value(impl.step(i)) for i in range(steps)]
arrays = {f"param {k}": v for k, v in impl.parameters().items()}
arrays.update({f"stat {k}": v for k, v in impl.running_statistics().items()})
np.savez(out, losses=np.array(losses), **arrays)
"""


def _run_jax(name: str, seed: int, steps: int, tmp_path: Path):
    """Losses, parameters and batch-norm statistics of ``steps`` jax steps (in a child)."""
    out = tmp_path / f"{name}-{seed}-{len(list(tmp_path.iterdir()))}.npz"
    proc = subprocess.run(
        [sys.executable, "-c", JAX_RUN, name, str(seed), str(steps), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files}
    pick = lambda prefix: {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    return list(arrays["losses"]), pick("param "), pick("stat ")


def _train_eager(setup: W.Setup):
    """Losses of STEPS eager steps and the implementation; W7's noise seeded as the child's."""
    impl = W.make_implementation("eager", setup)
    tg.manual_seed(7)
    losses = [impl.loss_value(impl.step(i)) for i in range(STEPS)]
    return losses, impl


@pytest.mark.parametrize("name", ALL)
def test_jax_trains_as_eager(name, tmp_path):
    pytest.importorskip("jax")
    setup = W.make_setup(W.get_workload(name, **harness.SMALL[name]))
    ref_losses, ref = _train_eager(setup)
    losses, ours, stats = _run_jax(name, 7, STEPS, tmp_path)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert losses[0] != losses[1]
    expected = ref.parameters()
    assert ours.keys() == expected.keys()
    tol = WEIGHT_TOL.get(name, 1e-3)
    exact = None
    for key, value in expected.items():
        moved = np.abs(value - setup.init[key]).max()
        assert moved > 0, key
        assert ours[key].dtype == np.float32 and ours[key].shape == value.shape, key
        if np.abs(ours[key] - value).max() > tol * moved:
            # An update Adam made of a gradient near 0 depends on its rounding: then jax's
            # weights must be as close to float64 eager's as tracegrad's float32 ones are
            exact = exact or _train_eager(W.make_setup(setup.workload, np.float64))[1].parameters()
            ours_off, eager_off = (np.abs(w - exact[key]).max() for w in (ours[key], value))
            assert ours_off <= 2 * eager_off + tol * moved, key
    if name == "W6":  # the batch norms' running mean and (unbiased) variance
        running = {
            k: v.numpy() for k, v in ref.model.state_dict().items() if k.endswith(("_mean", "_var"))
        }
        assert stats.keys() == running.keys() and len(running) == 2 * (1 + 2 * 4 + 2)
        for key, value in running.items():
            np.testing.assert_allclose(stats[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    else:
        assert stats == {}


def test_jax_noise_is_drawn_from_tracegrad_generator(tmp_path):
    """W7's step draws its noise as tg.randn_like does: seeded differently, another loss."""
    pytest.importorskip("jax")
    losses = [_run_jax("W7", seed, 1, tmp_path)[0][0] for seed in (7, 7, 8)]
    assert losses[0] == losses[1] != losses[2]


def test_xla_flags_follow_threads():
    assert benchmarks.xla_flags(1) == "--xla_cpu_multi_thread_eigen=false"
    assert benchmarks.xla_flags(2, "--xla_dump_to=/tmp/x") == (
        "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=true"
    )
    # a choice of the caller stands
    assert benchmarks.xla_flags(1, "--xla_cpu_multi_thread_eigen=true") == (
        "--xla_cpu_multi_thread_eigen=true"
    )


POOL_SIZE = """
import os, sys
import benchmarks
from benchmarks import jax_steps
size = jax_steps.start_cpu_client()
tasks = os.listdir("/proc/self/task")
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
pinned = [t for t in tasks if os.sched_getaffinity(int(t)) != os.sched_getaffinity(0)]
print(size, names.count("tf_XLAEigen"), len(pinned), os.environ["XLA_FLAGS"])
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_xla_cpu_pool_follows_threads(threads):
    """XLA's intra-op pool has ``--threads`` threads, and no thread is left pinned."""
    pytest.importorskip("jax")
    if not Path("/proc/self/task").exists() or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and two CPUs")
    proc = subprocess.run(
        [sys.executable, "-c", POOL_SIZE, "--threads", str(threads)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    size, pool, pinned, flags = proc.stdout.split()
    assert (int(size), int(pool), int(pinned)) == (threads, threads, 0)
    assert flags == benchmarks.xla_flags(threads)


def test_command_line_run_with_jax(tmp_path):
    """The JSON records XLA's settings; the jax row's first call includes compiling; the
    targets include the whole step's first call over jax.jit's; its allocation is n/a."""
    pytest.importorskip("jax")
    json_path = tmp_path / "results.json"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--workloads", "W1"]
    command += ["--impls", "step,handwritten,jax", "--json", str(json_path)]
    command += ["--markdown", str(tmp_path / "results.md"), "--quiet"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(json_path.read_text())
    meta = results["meta"]
    assert meta["xla_flags"].endswith("--xla_cpu_multi_thread_eigen=false")
    assert meta["jax_cpu_threads"] == 1 and meta["jax"]
    (wl,) = results["workloads"]
    rows = {r["implementation"]: r for r in wl["rows"]}
    jax_row = rows["jax"]
    assert jax_row["status"] == "ok" and jax_row["alloc_mib"] is None
    # compiling makes the first call far slower than a steady step
    assert jax_row["first_call_s"] * 1e3 > 5 * jax_row["median_ms"]
    assert jax_row["loss_final"] == pytest.approx(rows["handwritten"]["loss_final"], rel=1e-3)
    (check,) = [c for c in wl["checks"] if "jax.jit" in c["what"]]
    expected = rows["step"]["first_call_s"] / jax_row["first_call_s"]
    assert check["value"] == pytest.approx(expected) and check["target"] == 0.1
    assert check["met"] == (expected <= 0.1)
    assert f"| W1 | {jax_row['label']} |" in proc.stdout
    assert "| n/a |" in proc.stdout


def test_jax_row_skipped_when_not_installed(monkeypatch):
    monkeypatch.setattr(W, "jax_steps_module", lambda: None)
    settings = harness.Settings(
        rounds=1, steps_per_round=1, loss_steps=2, alloc_steps=1, implementations=("step", "jax")
    )
    record = harness.run_workload("W1", settings, log=None)
    rows = {r["implementation"]: r for r in record["rows"]}
    assert rows["jax"]["status"] == "skipped" and rows["jax"]["error"] == "jax not installed"
    assert rows["jax"]["first_call_s"] is None and rows["step"]["status"] == "ok"
    (check,) = [c for c in record["checks"] if "jax.jit" in c["what"]]
    assert check["value"] is None and check["met"] is None
    meta = {
        "timestamp": "t",
        "cpu": "c",
        "cpu_count": 2,
        "load_before": "0",
        "python": "3",
        "numpy": "2",
        "torch": None,
        "tracegrad": "0",
        "num_threads": 1,
        "settings": {"loss_steps": 2, "rounds": 1, "steps_per_round": 1, "alloc_steps": 1},
    }
    text = harness.markdown({"meta": meta, "workloads": [record]})
    assert "| W1 | JAX jax.jit | skipped: jax not installed | — |" in text
    assert "## Failures" not in text
