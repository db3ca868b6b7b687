"""Data-parallel training of W2 and W4: two processes of one thread each against one process of
one thread, on the same global batch.

    python -m benchmarks.data_parallel                 # W2 and W4 (needs mpiexec and mpi4py)
    python -m benchmarks.data_parallel W4 --steps 10

For each workload the driver runs this module twice: alone (one process, the compiled whole
step on the global batch), then under ``mpiexec -n 2`` (``DistributedDataParallel``, each rank
half of every batch, the compiled whole step averaging its gradients in buckets). Each run
prints one JSON line; the driver prints a Markdown table of:

- samples/s: global samples per second (median step time), and the ratio 2 processes / 1;
- communication: the bytes each step reduces and the time a blocking ``Allreduce`` of the
  step's buckets takes on the two ranks, measured alone after the timed steps;
- waited: the time per step the compiled step spends in ``all_reduce_wait``; hidden: the share
  of the communication time it does not wait for (1 - waited / communication);
- where a rank's step goes: its step alone (one process running the same DDP step on one
  rank's share of the batch: the compute without a partner), its step in the pair, and of
  that the time in ``all_reduce_start`` (copying in the gradients no product writes into the
  bucket, starting the reduction) and in ``all_reduce_wait``; the rest is compute slowed by
  sharing the machine with the other rank.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # one BLAS thread per process, set before NumPy loads

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import tracegrad as tg  # noqa: E402
from benchmarks.workloads import MODEL_SEED, get_workload, make_setup  # noqa: E402
from tracegrad import distributed as dist  # noqa: E402
from tracegrad.nn.parallel import DistributedDataParallel  # noqa: E402
from tracegrad.ops import kernels  # noqa: E402
from tracegrad.passes.buckets import buckets  # noqa: E402

WARMUP = 3


def compiled_step(workload, data_parallel: bool, bucket_cap_mb: float):
    """The workload's model (its seeded initial weights), wrapped in DDP when asked, and its
    whole training step compiled."""
    cfg = workload.config
    tg.manual_seed(MODEL_SEED)
    model = workload.build_model(cfg)
    # (W4's causal masks are buffers no step changes: equal on every rank from construction on)
    wrapped = model
    if data_parallel:
        wrapped = DistributedDataParallel(
            model, broadcast_buffers=False, bucket_cap_mb=bucket_cap_mb
        )
    opt = workload.make_optimizer(cfg, model.parameters())

    def train_step(x, y):
        opt.zero_grad()
        loss = workload.loss_fn(wrapped(x), y)
        loss.backward()
        opt.step()
        return loss

    return tg.compile(train_step)


def my_batches(setup, rank: int, world: int) -> list:
    """This rank's rows of every global batch, as tensors."""
    n = setup.workload.config["batch"] // world
    rows = slice(rank * n, (rank + 1) * n)
    return [(tg.tensor(x[rows].copy()), tg.tensor(y[rows].copy())) for x, y in setup.batches]


class KernelTimer:
    """Generated code looks ``rt.<kernel>`` up on every call: wrapped here, it adds up the
    time the step spends in that kernel (``all_reduce_start``, ``all_reduce_wait``)."""

    def __init__(self, name: str):
        self.name, self.seconds, self.kernel = name, 0.0, getattr(kernels, name)

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.kernel(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(kernels, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(kernels, self.name, self.kernel)


def time_steps(step, batches, steps: int) -> tuple[list[float], float, float]:
    """Each step's seconds, and the seconds spent starting and waiting for buckets over all
    of them."""
    for i in range(WARMUP):
        step(*batches[i % len(batches)])
    dist.barrier()
    times = []
    with KernelTimer("all_reduce_start") as started, KernelTimer("all_reduce_wait") as waited:
        for i in range(steps):
            start = time.perf_counter()
            step(*batches[i % len(batches)])
            times.append(time.perf_counter() - start)
    return times, started.seconds, waited.seconds


def allreduce_seconds(sizes: list[tuple[int, np.dtype]], repeats: int = 20) -> float:
    """Seconds one blocking Allreduce of every bucket takes, per step (median of ``repeats``)."""
    comm = dist.mpi_comm()
    if comm is None:
        return 0.0
    from mpi4py import MPI

    arrays = [np.ones(n // np.dtype(dtype).itemsize, dtype) for n, dtype in sizes]
    seconds = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        for array in arrays:
            comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def worker(name: str, steps: int, bucket_cap_mb: float, share: int) -> None:
    """One run (alone, or a rank under mpiexec): prints rank 0's measurements as JSON. With
    ``share`` > 1, one process runs the DDP step on one rank's share of each batch."""
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    tg.set_num_threads(1)
    workload = get_workload(name)
    setup = make_setup(workload)
    step = compiled_step(workload, world * share > 1, bucket_cap_mb)
    batches = my_batches(setup, rank, world * share)
    times, started, waited = time_steps(step, batches, steps)
    planned = step.specializations[-1].program.parts[0][1]
    found = buckets(planned)
    communication = allreduce_seconds([(b.nbytes, b.dtype.np) for b in found])
    step_seconds = statistics.median(times)
    if rank == 0:
        result = {
            "workload": name,
            "processes": world,
            "step_ms": 1000 * step_seconds,
            "samples_per_s": workload.config["batch"] / share / step_seconds,
            "buckets": len(found),
            "bucket_cap_mb": bucket_cap_mb,
            "bytes_per_step": sum(b.nbytes for b in found),
            "communication_ms": 1000 * communication,
            "started_ms": 1000 * started / steps,
            "waited_ms": 1000 * waited / steps,
        }
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()


def run(name: str, steps: int, processes: int, bucket_cap_mb: float, share: int = 1) -> dict:
    command = [sys.executable, "-m", "benchmarks.data_parallel", name, "--worker"]
    command += ["--steps", str(steps), "--bucket-cap-mb", str(bucket_cap_mb)]
    command += ["--share", str(share)]
    if processes > 1:
        command = ["mpiexec", "-n", str(processes), *command]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def table(rows: list[tuple[dict, dict, dict]]) -> str:
    lines = [
        "| workload | 1 process samples/s | 2 processes samples/s | ratio | buckets (cap) | "
        "bytes/step | communication ms/step | waited ms/step | hidden | rank step ms: "
        "alone on its share / in the pair (start + wait) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for alone, pair, share in rows:
        ratio = pair["samples_per_s"] / alone["samples_per_s"]
        communication, waited = pair["communication_ms"], pair["waited_ms"]
        hidden = max(0.0, 1 - waited / communication) if communication else 0.0
        lines.append(
            f"| {alone['workload']} | {alone['samples_per_s']:,.0f} | "
            f"{pair['samples_per_s']:,.0f} | {ratio:.2f}x | {pair['buckets']} "
            f"({pair['bucket_cap_mb']:g} MB) | "
            f"{pair['bytes_per_step'] / 1e6:.2f} MB | {communication:.2f} | {waited:.2f} | "
            f"{hidden:.0%} | {share['step_ms']:.1f} / {pair['step_ms']:.1f} "
            f"({pair['started_ms']:.1f} + {waited:.1f}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=["W2", "W4"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--bucket-cap-mb", type=float, default=25, help="DDP's bucket_cap_mb")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--share", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.workloads[0], args.steps, args.bucket_cap_mb, args.share)
        return
    rows = [
        (
            run(name, args.steps, 1, args.bucket_cap_mb),
            run(name, args.steps, 2, args.bucket_cap_mb),
            run(name, args.steps, 1, args.bucket_cap_mb, share=2),
        )
        for name in args.workloads
    ]
    print(table(rows))


if __name__ == "__main__":
    main()
