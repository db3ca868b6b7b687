"""Under ``mpiexec -n 2``: N steps of DistributedDataParallel (each rank half the global batch)
leave the same parameters on every rank, equal to one process training on the global batch.

Usage: ddp_equivalence.py MODEL MODE [DTYPE], MODE one of eager, module (the DDP module
compiled, forward and backward), step (the whole training step compiled: the averaging is in
its graph; it must also equal eager DDP) or no_sync (two micro-batches per step, the first
under no_sync()); DTYPE float64 (the default, to 1e-10) or float32 (to 1e-5).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

# this script's directory is on sys.path
from models import MODELS, assert_same_on_every_rank, batches, flat_state, shard

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import distributed as dist
from tracegrad.nn.parallel import DistributedDataParallel

STEPS, GLOBAL_BATCH = 4, 8
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def train_reference(build, data, micro: int) -> np.ndarray:
    """One process, the global batch, the same starting parameters as rank 0."""
    tg.manual_seed(0)
    model = build()
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for batch in data:
        opt.zero_grad()
        for part in range(micro):
            x, y = shard(batch, part, micro)
            F.cross_entropy(model(x), y).backward()
        opt.step()
    return flat_state(model)


def train_parallel(build, data, mode: str, micro: int) -> tuple[np.ndarray, list]:
    """The state after training, and the .grad tensors of every step, kept (a compiled step
    hands out gradients living in their bucket: a kept one must keep its step's values)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    tg.manual_seed(rank)  # different starting points: DDP must broadcast rank 0's
    # BatchNorm layers become SyncBatchNorm: the statistics of the global batch
    replica = tg.nn.SyncBatchNorm.convert_sync_batchnorm(build())
    ddp = DistributedDataParallel(replica, bucket_cap_mb=0.0005)  # a few buckets
    model = tg.compile(ddp) if mode == "module" else ddp
    opt = tg.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)

    def train_step(x, y):
        opt.zero_grad()
        for part in range(micro):
            xs, ys = shard(shard((x, y), part, micro), rank, world)
            sync = ddp.no_sync() if part < micro - 1 else contextlib.nullcontext()
            with sync:
                F.cross_entropy(model(xs), ys).backward()
        opt.step()

    step = tg.compile(train_step) if mode == "step" else train_step
    kept = []
    for batch in data:
        step(*batch)
        kept.append([p.grad for p in ddp.parameters()])
    if mode == "step":
        check_the_step_averages_in_its_graph(step, ddp)
    return flat_state(ddp.module), kept


def check_the_step_averages_in_its_graph(step, ddp) -> None:
    ops = step.graph.op_counts()
    # each SyncBatchNorm: its statistics' all_reduce in the forward, their cotangents' in the
    # backward; rank 0's buffers broadcast before the forward
    syncs = sum(isinstance(m, tg.nn.SyncBatchNorm) for m in ddp.modules())
    assert ops.get("all_reduce", 0) == 2 * syncs, ops
    assert ops.get("broadcast", 0) == len(list(ddp.buffers())), ops
    assert ops.get("all_reduce_start", 0) > 1, ops  # a few buckets (bucket_cap_mb=0.0005)
    assert ops["all_reduce_start"] == ops["all_reduce_wait"], ops
    assert "rt.all_reduce_start(" in step.code and "rt.all_reduce_wait(" in step.code
    assert "gradient all_reduce:" in step.explain()


def assert_same_kept_grads(kept: list, kept_eager: list, tolerance: float) -> None:
    """Every step's .grad tensors, kept until the end, hold that step's averaged gradients
    as eagerly, and are or are not the last step's .grad as eagerly."""
    for step, (grads, grads_eager) in enumerate(zip(kept, kept_eager, strict=True)):
        for g, e, now, now_eager in zip(grads, grads_eager, kept[-1], kept_eager[-1], strict=True):
            error = np.abs(g.numpy() - e.numpy()).max()
            assert error < tolerance, f"step {step}'s kept .grad differs from eager's by {error}"
            assert (g is now) == (e is now_eager)


def main(name: str, mode: str, dtype: str = "float64") -> None:
    dist.init_process_group()
    make, inputs = MODELS[name]

    def build():
        return make().to(getattr(tg, dtype))

    micro = 2 if mode == "no_sync" else 1
    data = [
        (x.to(getattr(tg, dtype)) if x.is_floating_point() else x, y)
        for x, y in batches(inputs, STEPS, GLOBAL_BATCH * micro)
    ]
    state, kept = train_parallel(build, data, mode, micro)
    assert_same_on_every_rank(state.astype(np.float64))
    expected = train_reference(build, data, micro)
    error = np.abs(state - expected).max()
    assert error < TOLERANCE[dtype], f"{name} {mode}: parallel differs from one process by {error}"
    if mode == "step":
        eager, kept_eager = train_parallel(build, data, "eager", micro)
        difference = np.abs(state - eager).max()
        assert difference < TOLERANCE[dtype], f"{name}: compiled step differs from eager DDP"
        assert_same_kept_grads(kept, kept_eager, TOLERANCE[dtype])
    print(f"rank {dist.get_rank()}: {name} {mode} {dtype} ok, max error {error:.1e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
