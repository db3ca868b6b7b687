"""Samplers, the orders a ``DataLoader`` reads a dataset in, with ``torch.utils.data``'s
semantics: ``SequentialSampler``, ``RandomSampler`` (from tracegrad's generator),
``BatchSampler`` (indices grouped into batches) and ``DistributedSampler`` (the share of a
dataset's indices that one process of a data-parallel job reads)."""

from __future__ import annotations

import math

import numpy as np

from tracegrad import distributed
from tracegrad.random import generator as global_generator


class Sampler:
    """The base of samplers: iterating yields indices (or, for a batch sampler, lists)."""

    def __iter__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    """``0, 1, ..., len(data_source) - 1``."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(Sampler):
    """A new random order each time it is iterated (a permutation, or ``num_samples`` draws
    with ``replacement``), from tracegrad's generator: ``tg.manual_seed`` decides it.

    Raises:
        ValueError: for ``num_samples`` < 1.
        TypeError: for a ``generator`` (tracegrad has one; seed it with ``tg.manual_seed``).
    """

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None):
        check_no_generator("RandomSampler", generator)
        self.data_source, self.replacement = data_source, replacement
        self._num_samples = num_samples
        if self.num_samples < 1:
            raise ValueError(
                f"num_samples should be a positive integer value, got {self.num_samples}"
            )

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self):
        n, wanted = len(self.data_source), self.num_samples
        if self.replacement:
            return iter(global_generator().integers(0, n, wanted).tolist())
        rounds = [global_generator().permutation(n) for _ in range(-(-wanted // n))]
        return iter(np.concatenate(rounds)[:wanted].tolist())

    def __len__(self) -> int:
        return self.num_samples


class BatchSampler(Sampler):
    """Lists of ``batch_size`` indices of ``sampler``, in its order; a last shorter one unless
    ``drop_last``.

    Examples:
        >>> list(tg.data.BatchSampler(range(5), 2, drop_last=False))
        [[0, 1], [2, 3], [4]]
    """

    def __init__(self, sampler, batch_size, drop_last):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size should be a positive integer value, got {batch_size!r}")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self):
        batch = []
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def check_no_generator(owner: str, generator) -> None:
    if generator is not None:
        raise TypeError(
            f"{owner}: generator= is not supported: tracegrad draws from its one generator "
            "(seed it with tg.manual_seed)"
        )


class DistributedSampler(Sampler):
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
