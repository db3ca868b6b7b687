"""Under ``mpiexec -n 2``: DistributedSampler's shares, gathered, cover the dataset once
(plus the padding), the same shuffle on every rank, a new one after set_epoch."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import distributed as dist


def gathered_indices(n: int, epoch: int, drop_last: bool) -> np.ndarray:
    sampler = tg.data.DistributedSampler(range(n), shuffle=True, seed=7, drop_last=drop_last)
    sampler.set_epoch(epoch)
    mine = tg.tensor(list(sampler))
    parts = [tg.zeros(mine.shape, dtype=tg.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return np.stack([p.numpy() for p in parts])  # [rank, position]


def main() -> None:
    dist.init_process_group()
    padded = gathered_indices(11, epoch=0, drop_last=False)
    assert padded.shape == (2, 6)
    order = padded.T.ravel()  # interleaved back: the padded permutation
    assert sorted(order[:11]) == list(range(11)) and order[11] == order[0], order
    dropped = gathered_indices(11, epoch=0, drop_last=True)
    assert dropped.shape == (2, 5) and len(set(dropped.ravel())) == 10
    assert not np.array_equal(gathered_indices(11, epoch=1, drop_last=False), padded)
    print(f"rank {dist.get_rank()}: sampler ok", flush=True)


if __name__ == "__main__":
    main()
