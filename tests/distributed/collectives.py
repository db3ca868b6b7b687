"""Under ``mpiexec -n 2``: the collectives of tracegrad.distributed, rank by rank."""

from __future__ import annotations

import numpy as np

import tracegrad as tg
from tracegrad import distributed as dist
from tracegrad.distributed import ReduceOp


def check_all_reduce(rank: int, world: int) -> None:
    values = [np.arange(6.0).reshape(2, 3) + 10 * r for r in range(world)]
    expected = {
        ReduceOp.SUM: sum(values),
        ReduceOp.AVG: sum(values) / world,
        ReduceOp.MAX: np.maximum.reduce(values),
        ReduceOp.MIN: np.minimum.reduce(values),
    }
    for op, want in expected.items():
        t = tg.tensor(values[rank])
        array = t.array
        dist.all_reduce(t, op=op)
        assert t.array is array, "all_reduce must work in place on the tensor's array"
        assert np.array_equal(t.numpy(), want), (op, t.numpy(), want)
    t = tg.tensor(values[rank])
    work = dist.all_reduce(t, op=ReduceOp.AVG, async_op=True)
    work.wait()
    assert work.is_completed() and np.array_equal(t.numpy(), expected[ReduceOp.AVG])


def check_broadcast_and_gather(rank: int, world: int) -> None:
    t = tg.full((3,), float(rank + 1), dtype=tg.float32)
    dist.broadcast(t, src=world - 1)
    assert np.array_equal(t.numpy(), np.full(3, world, np.float32))
    parts = [tg.zeros((2,), dtype=tg.int64) for _ in range(world)]
    dist.all_gather(parts, tg.tensor([rank, -rank]))
    assert [p.tolist() for p in parts] == [[r, -r] for r in range(world)]


def check_buffers_follow_rank_0(rank: int) -> None:
    model = tg.nn.Sequential(tg.nn.Linear(3, 2), tg.nn.BatchNorm1d(2)).double()
    ddp = tg.nn.parallel.DistributedDataParallel(model)
    ddp.eval()
    model[1].running_mean.fill_(float(rank + 5))  # drifts on every rank differently
    ddp(tg.ones((4, 3), dtype=tg.float64))
    assert np.array_equal(model[1].running_mean.numpy(), np.full(2, 5.0))


def check_shape_mismatch(rank: int) -> None:
    model = tg.nn.Linear(3, 2 + rank)
    try:
        tg.nn.parallel.DistributedDataParallel(model)
    except tg.ShapeError as error:
        message = str(error)
        assert "'weight'" in message and "rank 1" in message and "float32[3, 3]" in message, message
    else:
        raise AssertionError("a parameter shape mismatch across ranks must raise")


def main() -> None:
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    assert dist.is_initialized() and world == 2, world
    check_all_reduce(rank, world)
    check_broadcast_and_gather(rank, world)
    check_buffers_follow_rank_0(rank)
    check_shape_mismatch(rank)
    dist.barrier()
    print(f"rank {rank}: collectives ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
