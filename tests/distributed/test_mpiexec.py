"""The scripts of this directory run as two processes under ``mpiexec -n 2`` (skipped when
mpiexec or mpi4py is missing): data-parallel training equals one process on the global
batch (an MLP, a CNN, a small transformer), the collectives, the sampler's partition, and a
raising rank ending the job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracegrad import distributed

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("mpiexec") is None or not distributed.is_available(),
    reason="needs mpiexec and mpi4py: pip install 'tracegrad[mpi]'",
)


def run_two(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``mpiexec -n 2 python SCRIPT ARGS`` (SCRIPT in this directory, or ``-m``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    where = script if script.startswith("-") else str(HERE / script)
    command = ["mpiexec", "-n", "2", sys.executable, where, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def assert_both_ranks_say(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        assert f"rank {rank}: {words}" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("mode", ["eager", "module", "step", "no_sync"])
@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_data_parallel_equals_one_process_on_the_global_batch(model, mode):
    """Eager DDP, the DDP module compiled, and the whole step compiled (its averaging part of
    the generated step, which also equals eager DDP), in float64 to 1e-10."""
    result = run_two("ddp_equivalence.py", model, mode)
    assert_both_ranks_say(result, f"{model} {mode} float64 ok")


@pytest.mark.parametrize("mode", ["eager", "module", "step", "no_sync"])
def test_sync_batch_norm_trains_as_batch_norm_on_the_global_batch(mode):
    """A CNN whose BatchNorm layers become SyncBatchNorm on two ranks equals the CNN with
    BatchNorm on the global batch in one process: parameters and running statistics (DDP
    broadcasting rank 0's buffers before each forward, compiled too)."""
    result = run_two("ddp_equivalence.py", "cnn_bn", mode)
    assert_both_ranks_say(result, f"cnn_bn {mode} float64 ok")


@pytest.mark.parametrize("model", ["mlp", "cnn", "cnn_bn", "transformer"])
def test_a_compiled_float32_step_equals_one_process_to_1e_5(model):
    result = run_two("ddp_equivalence.py", model, "step", "float32")
    assert_both_ranks_say(result, f"{model} step float32 ok")


def test_collectives_buffers_and_shape_mismatch():
    assert_both_ranks_say(run_two("collectives.py"), "collectives ok")


def test_distributed_sampler_partitions_the_dataset():
    assert_both_ranks_say(run_two("sampler_partition.py"), "sampler ok")


def test_a_raising_rank_ends_every_rank_with_its_message():
    result = run_two("raising_rank.py", timeout=120)
    ended = time.time()
    raised = float(re.search(r"raising at ([0-9.]+)", result.stdout).group(1))
    assert result.returncode != 0
    assert "[rank 1]" in result.stderr and "rank one failed on purpose" in result.stderr
    assert ended - raised < 10, f"the job took {ended - raised:.1f} s to end after the raise"


def test_the_demo_trains_data_parallel_to_the_accuracy_of_one_process(tmp_path):
    """``mpiexec -n 2 tracegrad demo``: rank 0 alone prints the summary and the progress bar
    and writes the picture; the test accuracy is one process's, within a digit or two."""
    from tracegrad.demo import run_demo

    picture = tmp_path / "demo.html"
    command = ["-m", "tracegrad", "demo", "--epochs", "10", "-o", str(picture)]
    result = run_two(*command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("test accuracy") == 1, result.stdout
    assert "data-parallel on 2 processes" in result.stdout
    # one progress bar, rank 0's: drawn empty once, when it starts
    assert result.stderr.count("0/10 [00:00<?, ?epoch/s]") == 1, result.stderr
    assert picture.stat().st_size > 1000
    alone = run_demo(epochs=10, picture=tmp_path / "alone.html", progress=False, threads=1)
    assert abs(accuracy_in(result.stdout) - accuracy_in(alone)) < 1.0
    assert accuracy_in(result.stdout) > 95.0


def accuracy_in(summary: str) -> float:
    return float(re.search(r"test accuracy: ([0-9.]+)%", summary).group(1))


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_a_checkpoint_saved_by_rank_0_resumes_training_on_every_rank(model, tmp_path):
    result = run_two("checkpoint_resume.py", model, str(tmp_path / "checkpoint.tg"))
    assert_both_ranks_say(result, f"{model} checkpoint ok")
    assert (tmp_path / "checkpoint.tg").is_file()


def test_the_data_parallel_benchmark_reports_both_runs():
    """``python -m benchmarks.data_parallel W4``: one process, then two under mpiexec, in one
    table row: the ratio, the bytes W4's step reduces (its 112,577 float32 gradients) and the
    communication measured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "benchmarks.data_parallel", "W4", "--steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| W4 |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3].endswith("x") and float(cells[3][:-1]) > 0
    assert cells[4] == "1 (25 MB)" and cells[5] == f"{112_577 * 4 / 1e6:.2f} MB"
    assert float(cells[6]) > 0  # a blocking Allreduce of the bucket, timed
