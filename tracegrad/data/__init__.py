"""Datasets and batching: ``TensorDataset`` and ``DataLoader`` with PyTorch's behaviour."""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes
from tracegrad.data.digits import load_digits
from tracegrad.errors import ShapeError
from tracegrad.random import generator
from tracegrad.tensor import Tensor, as_tensor, stack, tensor, wrap

__all__ = ["DataLoader", "Dataset", "TensorDataset", "load_digits"]


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
    """Iterates over batches; with ``shuffle``, a new order each epoch from tracegrad's seed.

    Args:
        dataset: a ``TensorDataset`` (or anything with ``len`` and integer indexing).
        batch_size: samples per batch.
        shuffle: draw a new order at the start of each epoch.
        drop_last: leave out a last batch smaller than ``batch_size`` (which would compile
            a second specialization of a compiled step).

    Examples:
        >>> data = tg.data.TensorDataset(tg.arange(5), tg.arange(5) * 10)
        >>> [y.tolist() for _, y in tg.data.DataLoader(data, batch_size=2)]
        [[0, 10], [20, 30], [40]]
    """

    def __init__(
        self, dataset, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        order = generator().permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            yield self._batch(order[b * self.batch_size : (b + 1) * self.batch_size])

    def _batch(self, indices: np.ndarray):
        if isinstance(self.dataset, TensorDataset):
            index = wrap(indices.astype(np.int64))
            return [t[index] for t in self.dataset.tensors]
        samples = [self.dataset[int(i)] for i in indices]
        return collate(samples)


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
