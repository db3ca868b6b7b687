"""DistributedSampler against torch.utils.data.DistributedSampler, and with DataLoader."""

from __future__ import annotations

import pytest

import tracegrad as tg
from tracegrad.data import DistributedSampler


@pytest.mark.parametrize("n", [0, 1, 5, 10, 11])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_unshuffled_shares_equal_pytorch(n, replicas, drop_last):
    torch = pytest.importorskip("torch")
    for rank in range(replicas):
        ours = DistributedSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last)
        theirs = torch.utils.data.DistributedSampler(
            range(n), replicas, rank, shuffle=False, drop_last=drop_last
        )
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_shares_partition_like_pytorch(drop_last):
    torch = pytest.importorskip("torch")
    n, replicas = 13, 3

    def shares(make):
        return [list(make(rank)) for rank in range(replicas)]

    ours = shares(lambda r: DistributedSampler(range(n), replicas, r, drop_last=drop_last))
    theirs = shares(
        lambda r: torch.utils.data.DistributedSampler(range(n), replicas, r, drop_last=drop_last)
    )
    assert [len(s) for s in ours] == [len(s) for s in theirs]
    merged = sorted(i for s in ours for i in s)
    assert len(merged) == len(sorted(i for s in theirs for i in s))
    assert set(merged) <= set(range(n)) and len(set(merged)) == (12 if drop_last else 13)


def test_set_epoch_changes_the_shuffle_and_the_seed_fixes_it():
    def order(epoch, seed=0):
        sampler = DistributedSampler(range(20), 2, 0, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0) == order(0) and order(0) != order(1) and order(0) != order(0, seed=1)


def test_bad_rank_and_missing_group():
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval \[0, 1"):
        DistributedSampler(range(4), 2, 2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSampler(range(4))


def test_data_loader_reads_the_sampler_share():
    x = tg.arange(10)
    sampler = DistributedSampler(tg.data.TensorDataset(x), 2, 1, shuffle=False)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x), batch_size=2, sampler=sampler)
    assert len(loader) == 3
    assert [b[0].tolist() for b in loader] == [[1, 3], [5, 7], [9]]
    with pytest.raises(ValueError, match="mutually exclusive"):
        tg.data.DataLoader(tg.data.TensorDataset(x), shuffle=True, sampler=sampler)
