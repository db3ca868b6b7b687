"""tracegrad.distributed in a group of one process (no launcher), the gradient hooks DDP
builds on, and DistributedDataParallel's errors."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import distributed as dist
from tracegrad.distributed import ReduceOp
from tracegrad.nn.parallel import DistributedDataParallel


@pytest.fixture
def group(monkeypatch):
    for name in dist._LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dist.init_process_group()
    yield
    dist.destroy_process_group()


def test_a_single_process_group(group):
    assert dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() == 1
    assert dist.get_backend() == "single"
    t = tg.tensor([1.0, -2.0])
    for op in ReduceOp:
        dist.all_reduce(t, op=op)
    dist.broadcast(t, src=0)
    parts = [tg.zeros(2)]
    dist.all_gather(parts, t)
    dist.barrier()
    assert t.tolist() == [1.0, -2.0] and parts[0].tolist() == [1.0, -2.0]


def test_collectives_reject_bad_input(group):
    with pytest.raises(tg.DTypeError, match="AVG needs a floating tensor"):
        dist.all_reduce(tg.tensor([1, 2]), op=ReduceOp.AVG)
    with pytest.raises(TypeError, match="ReduceOp"):
        dist.all_reduce(tg.tensor([1.0]), op="sum")
    with pytest.raises(TypeError, match="tracegrad Tensor"):
        dist.all_reduce(np.ones(2))
    with pytest.raises(ValueError, match="src rank 1 is not in"):
        dist.broadcast(tg.tensor([1.0]), src=1)
    with pytest.raises(tg.ShapeError, match=r"float32\[2\]"):
        dist.all_gather([tg.zeros(3)], tg.zeros(2))
    with pytest.raises(ValueError, match="2 tensors for 1 processes"):
        dist.all_gather([tg.zeros(2), tg.zeros(2)], tg.zeros(2))
    with pytest.raises(tg.ShapeError, match="contiguous"):
        dist.all_reduce(tg.zeros((2, 3)).t())


def test_uninitialized_group_says_what_to_call():
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.get_rank()
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedDataParallel(tg.nn.Linear(2, 2))


def test_init_twice_and_unknown_backend(group):
    with pytest.raises(RuntimeError, match="twice"):
        dist.init_process_group()
    dist.destroy_process_group()
    with pytest.raises(ValueError, match="'mpi' backend only"):
        dist.init_process_group("nccl")
    dist.init_process_group()


def test_post_accumulate_hooks_fire_as_soon_as_a_leaf_is_complete():
    """The last layer's gradients are accumulated before the first layer's are computed, so
    a data-parallel bucket can start communicating while the backward still runs."""
    first, last = tg.nn.Linear(3, 4), tg.nn.Linear(4, 2)
    seen = []

    def hook(param):
        seen.append((param is last.weight, first.weight.grad is None))

    handle = last.weight.register_post_accumulate_grad_hook(hook)
    last(first(tg.ones((5, 3))).tanh()).sum().backward()
    assert seen == [(True, True)]
    handle.remove()
    last(first(tg.ones((5, 3)))).sum().backward()
    assert len(seen) == 1
    with pytest.raises(RuntimeError, match="non-leaf"):
        (first.weight * 2).register_post_accumulate_grad_hook(hook)


def test_gradients_unchanged_by_early_accumulation():
    x = tg.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    w = tg.tensor([0.5, -2.0], requires_grad=True)
    ((x * w).sum() + (x * x).sum() + w.sum()).backward()
    assert np.allclose(x.grad.numpy(), w.detach().numpy() + 2 * x.detach().numpy())
    assert np.allclose(w.grad.numpy(), x.detach().numpy().sum(0) + 1)


def test_ddp_on_one_process_trains_like_the_module(group, training_step):
    tg.manual_seed(0)
    plain = tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.ReLU(), tg.nn.Linear(8, 3)).double()
    tg.manual_seed(0)
    wrapped = tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.ReLU(), tg.nn.Linear(8, 3)).double()
    ddp = DistributedDataParallel(wrapped, bucket_cap_mb=0.0002)
    assert len(ddp._buckets) > 1
    assert list(ddp.state_dict()) == [f"module.{k}" for k in plain.state_dict()]
    x, y = tg.randn(6, 4, dtype=tg.float64), tg.tensor([0, 1, 2, 0, 1, 2])
    steps = [
        training_step(m, tg.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)) for m in (plain, ddp)
    ]
    for _ in range(3):
        for step in steps:
            step(x, y)
    for a, b in zip(plain.parameters(), ddp.parameters(), strict=True):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())


def test_no_sync_accumulates(group):
    model = tg.nn.Linear(3, 1).double()
    ddp = DistributedDataParallel(model)
    x = tg.ones((2, 3), dtype=tg.float64)
    with ddp.no_sync():
        ddp(x).sum().backward()
    ddp(x).sum().backward()
    assert np.array_equal(model.weight.grad.numpy(), np.full((1, 3), 4.0))


def test_ddp_loss_is_the_module_loss(group):
    model = tg.nn.Linear(3, 2)
    ddp = DistributedDataParallel(model)
    x, y = tg.ones((2, 3)), tg.tensor([0, 1])
    assert F.cross_entropy(ddp(x), y).item() == F.cross_entropy(model(x), y).item()
