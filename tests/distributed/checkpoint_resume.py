"""Under ``mpiexec -n 2``: a checkpoint that rank 0 alone saves (``tg.save``) and every rank
loads (``tg.load``) resumes data-parallel training exactly: training interrupted halfway and
resumed in a fresh model and optimizer equals uninterrupted training, on both ranks.

Usage: checkpoint_resume.py MODEL PATH (PATH: the checkpoint file to write).
"""

from __future__ import annotations

import sys

import numpy as np
from models import MODELS, assert_same_on_every_rank, batches, flat_state, shard

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import distributed as dist
from tracegrad.nn.parallel import DistributedDataParallel

STEPS, SAVE_AT, GLOBAL_BATCH = 6, 3, 8


def fresh(build, seed: int):
    """A new data-parallel model (rank 0's parameters) and its Adam optimizer."""
    tg.manual_seed(seed)
    ddp = DistributedDataParallel(build(), bucket_cap_mb=0.001)
    return ddp, tg.optim.Adam(ddp.parameters(), lr=0.01)


def train(ddp, opt, data) -> None:
    for batch in data:
        x, y = shard(batch, dist.get_rank(), dist.get_world_size())
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()


def save_checkpoint(ddp, opt, path: str) -> None:
    if dist.get_rank() == 0:  # every rank holds the same state: one writes it
        tg.save({"model": ddp.module.state_dict(), "optimizer": opt.state_dict()}, path)
    dist.barrier()  # the file is complete before any rank reads it


def resume(build, path: str):
    """A fresh start (other parameters on every rank) that loads the checkpoint."""
    ddp, opt = fresh(build, seed=100 + dist.get_rank())
    checkpoint = tg.load(path)
    ddp.module.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    return ddp, opt


def main(name: str, path: str) -> None:
    dist.init_process_group()
    build, inputs = MODELS[name]
    data = batches(inputs, STEPS, GLOBAL_BATCH)
    ddp, opt = fresh(build, seed=0)
    train(ddp, opt, data)
    uninterrupted = flat_state(ddp.module)
    ddp, opt = fresh(build, seed=0)
    train(ddp, opt, data[:SAVE_AT])
    save_checkpoint(ddp, opt, path)
    ddp, opt = resume(build, path)
    train(ddp, opt, data[SAVE_AT:])
    resumed = flat_state(ddp.module)
    assert_same_on_every_rank(resumed)
    error = np.abs(resumed - uninterrupted).max()
    assert error == 0, f"{name}: resumed training differs from uninterrupted by {error}"
    print(f"rank {dist.get_rank()}: {name} checkpoint ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
