"""``DistributedSampler``: the share of a dataset's indices that one process of a data-parallel
job reads, with ``torch.utils.data.DistributedSampler``'s semantics."""

from __future__ import annotations

import math

import numpy as np

from tracegrad import distributed


class DistributedSampler:
    """Yields every ``num_replicas``-th index of the (shuffled, padded) dataset, from ``rank``.

    Each process gets ``len(self)`` indices: without ``drop_last`` the order is padded by
    repeating its first indices up to a multiple of ``num_replicas``; with it the tail is cut.
    With ``shuffle``, the order is a permutation seeded by ``seed + epoch`` (the same on every
    process), so call ``set_epoch(epoch)`` before each epoch to get a new one.
    """

    def __init__(
        self,
        dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if num_replicas is None:
            num_replicas = _from_group("num_replicas", distributed.get_world_size)
        if rank is None:
            rank = _from_group("rank", distributed.get_rank)
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be positive, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(
                f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]"
            )
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        n = len(dataset)
        if drop_last and n % num_replicas != 0:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        # without drop_last, pad by repeating the order from its start, as often as needed
        order = order[: self.total_size] if self.drop_last else np.resize(order, self.total_size)
        return iter(order[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use a different shuffle for ``epoch`` (the same on every process)."""
        self.epoch = epoch


def _from_group(name: str, read):
    if not distributed.is_initialized():
        raise RuntimeError(
            f"DistributedSampler: pass {name}= or call "
            "tracegrad.distributed.init_process_group() first"
        )
    return read()
