"""Datasets and batching: ``TensorDataset``, ``DataLoader`` and the samplers, with PyTorch's
behaviour."""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.data.digits import load_digits
from tracegrad.data.sampler import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    check_no_generator,
)
from tracegrad.errors import ShapeError
from tracegrad.tensor import Tensor, as_tensor, stack, tensor, wrap

__all__ = [
    "BatchSampler",
    "DataLoader",
    "Dataset",
    "DistributedSampler",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "TensorDataset",
    "load_digits",
]


class Dataset:
    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class TensorDataset(Dataset):
    """Samples are the i-th rows of each tensor, which must share their first dim.

    Raises:
        ShapeError: if the tensors' first dimensions differ.

    Examples:
        >>> data = tg.data.TensorDataset(tg.zeros(4, 2), tg.arange(4))
        >>> len(data), data[1][1]
        (4, tensor(1))
    """

    def __init__(self, *tensors):
        self.tensors = tuple(as_tensor(t) for t in tensors)
        sizes = {t.shape[0] for t in self.tensors}
        if len(sizes) != 1:
            shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
            raise ShapeError(
                f"TensorDataset: tensors must share their first dim, got shapes {shapes}"
            )

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


class DataLoader:
    """Iterates over batches of a dataset, with ``torch.utils.data.DataLoader``'s arguments in
    its order: with ``shuffle``, a new order each epoch from tracegrad's seed; with a
    ``sampler`` (a ``RandomSampler``, a ``DistributedSampler``, any iterable of indices), in
    its order; with a ``batch_sampler``, in the batches it yields.

    Args:
        dataset: a ``TensorDataset`` (or anything with ``len`` and integer indexing).
        batch_size: samples per batch; None: the samples one by one, not batched.
        shuffle: draw a new order at the start of each epoch (not with ``sampler``).
        sampler: the indices to draw, in order, each epoch.
        batch_sampler: the lists of indices of each batch (instead of ``batch_size``,
            ``shuffle``, ``sampler`` and ``drop_last``).
        num_workers: accepted; batches are always loaded in this process, in the same
            order (no worker processes: ``timeout``, ``worker_init_fn``,
            ``multiprocessing_context``, ``prefetch_factor``, ``persistent_workers`` and
            ``in_order`` change nothing, but are checked as PyTorch checks them).
        collate_fn: makes a batch of a list of samples (default: stack them, by field).
        pin_memory: accepted; memory is the CPU's (``pin_memory_device`` likewise).
        drop_last: leave out a last batch smaller than ``batch_size`` (which would compile
            a second specialization of a compiled step).
        generator: None; tracegrad shuffles with its one generator (``tg.manual_seed``).

    Raises:
        ValueError: for arguments PyTorch refuses together (``sampler`` with ``shuffle``,
            ``batch_sampler`` with ``batch_size``, ``shuffle``, ``sampler`` or ``drop_last``,
            ``batch_size=None`` with ``drop_last``) or out of range.

    Examples:
        >>> data = tg.data.TensorDataset(tg.arange(5), tg.arange(5) * 10)
        >>> [y.tolist() for _, y in tg.data.DataLoader(data, batch_size=2)]
        [[0, 10], [20, 30], [40]]
    """

    def __init__(
        self,
        dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler=None,
        batch_sampler=None,
        num_workers: int = 0,
        collate_fn=None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn=None,
        multiprocessing_context=None,
        generator=None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
    ):
        check_no_generator("DataLoader", generator)
        _check_workers(num_workers, timeout, prefetch_factor, persistent_workers)
        _check_batching(batch_size, shuffle, sampler, batch_sampler, drop_last)
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        if sampler is None:
            sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        if batch_sampler is None and batch_size is not None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.sampler, self.batch_sampler = sampler, batch_sampler

    def __len__(self) -> int:
        return len(self.sampler if self.batch_sampler is None else self.batch_sampler)

    def __iter__(self):
        if self.batch_sampler is None:  # batch_size=None: each sample as it is
            return (self.dataset[i] for i in self.sampler)
        return (self._batch(np.asarray(indices, np.int64)) for indices in self.batch_sampler)

    def _batch(self, indices: np.ndarray):
        if isinstance(self.dataset, TensorDataset) and self.collate_fn is None:
            index = wrap(indices)
            return [t[index] for t in self.dataset.tensors]
        samples = [self.dataset[int(i)] for i in indices]
        return (self.collate_fn or collate)(samples)


def _check_workers(num_workers, timeout, prefetch_factor, persistent_workers) -> None:
    """PyTorch's checks of the worker arguments (which change nothing here)."""
    if num_workers < 0:
        raise ValueError(
            "num_workers option should be non-negative; use num_workers=0 to disable "
            "multiprocessing."
        )
    if timeout < 0:
        raise ValueError("timeout option should be non-negative")
    if num_workers == 0 and prefetch_factor is not None:
        raise ValueError(
            "prefetch_factor option could only be specified in multiprocessing: let "
            "num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None."
        )
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers option needs num_workers > 0")


def _check_batching(batch_size, shuffle, sampler, batch_sampler, drop_last) -> None:
    """PyTorch's rules for the arguments that choose the batches."""
    if sampler is not None and shuffle:
        raise ValueError("sampler option is mutually exclusive with shuffle")
    if batch_sampler is not None:
        if batch_size != 1 or shuffle or sampler is not None or drop_last:
            raise ValueError(
                "batch_sampler option is mutually exclusive with batch_size, shuffle, "
                "sampler, and drop_last"
            )
    elif batch_size is None:
        if drop_last:
            raise ValueError(
                "batch_size=None option disables auto-batching and is mutually exclusive "
                "with drop_last"
            )
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size should be a positive integer, got {batch_size!r}")


def collate(samples):
    """Stack a list of samples (tensors, numbers, or tuples of them) into batches."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return [collate([s[i] for s in samples]) for i in range(len(first))]
    if isinstance(first, dict):
        return {key: collate([s[key] for s in samples]) for key in first}
    if isinstance(first, float):  # PyTorch's default_collate makes Python floats float64
        return tensor(samples, dtype=dtypes.float64)
    return stack([as_tensor(s) for s in samples])
