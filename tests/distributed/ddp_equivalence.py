"""Under ``mpiexec -n 2``: N steps of DistributedDataParallel (each rank half the global batch)
leave the same parameters on every rank, equal to one process training on the global batch.

Usage: ddp_equivalence.py MODEL MODE, MODE one of eager, compiled (the DDP module compiled,
forward and backward) or no_sync (two micro-batches per step, the first under no_sync()).
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


def train_parallel(build, data, mode: str, micro: int) -> np.ndarray:
    rank, world = dist.get_rank(), dist.get_world_size()
    tg.manual_seed(rank)  # different starting points: DDP must broadcast rank 0's
    ddp = DistributedDataParallel(build(), bucket_cap_mb=0.001)  # a few buckets
    model = tg.compile(ddp) if mode == "compiled" else ddp
    opt = tg.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    for batch in data:
        opt.zero_grad()
        for part in range(micro):
            x, y = shard(shard(batch, part, micro), rank, world)
            sync = ddp.no_sync() if part < micro - 1 else contextlib.nullcontext()
            with sync:
                F.cross_entropy(model(x), y).backward()
        opt.step()
    return flat_state(ddp.module)


def main(name: str, mode: str) -> None:
    dist.init_process_group()
    build, inputs = MODELS[name]
    micro = 2 if mode == "no_sync" else 1
    data = batches(inputs, STEPS, GLOBAL_BATCH * micro)
    state = train_parallel(build, data, mode, micro)
    assert_same_on_every_rank(state)
    expected = train_reference(build, data, micro)
    error = np.abs(state - expected).max()
    assert error < 1e-10, f"{name} {mode}: parallel differs from one process by {error}"
    print(f"rank {dist.get_rank()}: {name} {mode} ok, max error {error:.1e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
