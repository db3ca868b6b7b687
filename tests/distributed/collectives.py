"""Under ``mpiexec -n 2``: the collectives of tracegrad.distributed, rank by rank."""

from __future__ import annotations

import contextlib

import numpy as np

# this script's directory is on sys.path
from models import assert_same_on_every_rank, batches, cnn_bn, flat_state, normal_inputs, shard

import tracegrad as tg
import tracegrad.nn.functional as F
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
    """Before each forward, eager or compiled, every rank takes rank 0's buffers."""
    for compiled in (False, True):
        model = tg.nn.Sequential(tg.nn.Linear(3, 2), tg.nn.BatchNorm1d(2)).double()
        ddp = tg.nn.parallel.DistributedDataParallel(model)
        forward = tg.compile(ddp) if compiled else ddp
        ddp.eval()
        model[1].running_mean.fill_(float(rank + 5))  # drifts on every rank differently
        out = forward(tg.ones((4, 3), dtype=tg.float64))
        assert np.array_equal(model[1].running_mean.numpy(), np.full(2, 5.0)), compiled
        assert_same_on_every_rank(out.detach().numpy())


# PyTorch's DDP broadcasts the buffers before a forward when the forward before it (if any)
# ran with gradients enabled and outside no_sync() (require_forward_param_sync): a forward
# under no_sync() or no_grad() still broadcasts, the next one does not. PyTorch 2 gives this
# pattern for this sequence (counting its _sync_buffers calls).
FORWARDS = ["plain", "no_sync", "plain", "no_grad", "plain", "no_grad", "no_grad", "plain", "plain"]
BROADCASTS = [True, True, False, True, False, True, False, False, True]


def check_buffers_are_broadcast_when_pytorch_does(rank: int) -> None:
    """Eager, as a compiled module and inside a compiled function, DDP broadcasts before
    exactly the forwards PyTorch's does."""
    for kind in ("eager", "module", "function"):
        model = tg.nn.Sequential(tg.nn.Linear(3, 2), tg.nn.BatchNorm1d(2)).double()
        ddp = tg.nn.parallel.DistributedDataParallel(model).eval()
        forward = {
            "eager": ddp,
            "module": tg.compile(ddp),
            "function": tg.compile(lambda x, ddp=ddp: ddp(x)),
        }[kind]
        for i, (context, broadcast) in enumerate(zip(FORWARDS, BROADCASTS, strict=True)):
            model[1].running_mean.fill_(float(rank + 5 + i))  # each rank's own value
            within = {"no_sync": ddp.no_sync, "no_grad": tg.no_grad}.get(
                context, contextlib.nullcontext
            )
            with within():
                forward(tg.ones((4, 3), dtype=tg.float64))
            followed = np.array_equal(model[1].running_mean.numpy(), np.full(2, 5.0 + i))
            assert followed == (broadcast or rank == 0), (kind, i, context)


def check_a_compiled_step_broadcasts_buffers(rank: int, world: int) -> None:
    """Plain BatchNorm under DDP: each rank's running statistics move by its own share of the
    batch, and are rank 0's again at the start of the next forward. A compiled whole step does
    what eager DDP does, rank by rank, with a broadcast node per buffer."""
    data = batches(normal_inputs((1, 8, 8)), steps=3, global_batch=8)
    states, step = [], None
    for compiled in (False, True):
        tg.manual_seed(rank)
        ddp = tg.nn.parallel.DistributedDataParallel(cnn_bn())
        opt = tg.optim.SGD(ddp.parameters(), lr=0.1)

        def train_step(x, y, ddp=ddp, opt=opt):
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()

        step = tg.compile(train_step) if compiled else train_step
        for batch in data:
            step(*shard(batch, rank, world))
        states.append(flat_state(ddp.module))
    assert np.abs(states[1] - states[0]).max() < 1e-12, "a compiled step differs from eager DDP"
    assert step.graph.op_counts()["broadcast"] == 6  # 3 buffers in each of 2 BatchNorms
    gathered = [tg.zeros(states[1].shape, dtype=tg.float64) for _ in range(world)]
    dist.all_gather(gathered, tg.tensor(states[1]))
    assert not np.array_equal(gathered[0].numpy(), gathered[1].numpy())  # the last update


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
    check_buffers_are_broadcast_when_pytorch_does(rank)
    check_a_compiled_step_broadcasts_buffers(rank, world)
    check_shape_mismatch(rank)
    dist.barrier()
    print(f"rank {rank}: collectives ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
