"""``DistributedDataParallel``: one model replica per process, gradients averaged over MPI.

At construction every process takes rank 0's parameters and buffers. During backward, the
gradients are averaged in buckets (parameters in reverse order, as the backward produces them,
up to ``bucket_cap_mb`` each): a bucket's non-blocking allreduce starts as soon as the last of
its gradients is accumulated, so the communication overlaps the rest of the backward, and
backward() waits for every bucket before it returns. Buffers (BatchNorm's running statistics)
follow rank 0: they are broadcast before each forward (in a compiled forward or step, by a
``broadcast`` node of its graph).
"""

from __future__ import annotations

import contextlib

import numpy as np

from tracegrad import distributed, tape
from tracegrad.errors import ShapeError
from tracegrad.nn.module import Module
from tracegrad.ops.collective import bucket_groups
from tracegrad.tensor import call, where, wrap
from tracegrad.tensor.tracing import active_tracer

__all__ = ["DistributedDataParallel"]


class _Bucket:
    """Gradients of a few parameters of one dtype, averaged as one flat buffer."""

    def __init__(self, params: list):
        self.params = params
        sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.buffer = np.empty(int(self.offsets[-1]), params[0].array.dtype)
        self.reset()

    def reset(self) -> None:
        self.ready: set[int] = set()
        self.work: distributed.Work | None = None

    def mark_ready(self, param) -> None:
        self.ready.add(id(param))
        if len(self.ready) == len(self.params):
            self.start()

    def start(self) -> None:
        """Copy the gradients into the buffer and start averaging it (a missing gradient
        counts as zeros, so every rank sends the same number of bytes)."""
        for param, start, stop in self._slices():
            part = self.buffer[start:stop]
            if param.grad is None:
                part[...] = 0
            else:
                part[...] = param.grad.array.reshape(-1)
        self.work = distributed.all_reduce(
            wrap(self.buffer), op=distributed.ReduceOp.AVG, async_op=True
        )

    def finish(self) -> None:
        """Wait for the average and hand each parameter its share as its ``.grad``."""
        if self.work is None:
            self.start()
        assert self.work is not None  # (start() began the average)
        self.work.wait()
        for param, start, stop in self._slices():
            if param.grad is not None:
                param.grad = wrap(self.buffer[start:stop].reshape(param.array.shape).copy())
        self.reset()

    def _slices(self):
        return zip(self.params, self.offsets[:-1], self.offsets[1:], strict=True)


def _buckets(params: list, cap_bytes: int) -> list[_Bucket]:
    """Consecutive parameters of one dtype, at most ``cap_bytes`` of gradients each (a single
    larger parameter gets a bucket of its own)."""
    sizes, dtypes = [p.array.nbytes for p in params], [p.array.dtype for p in params]
    groups = bucket_groups(sizes, dtypes, cap_bytes)
    return [_Bucket([params[i] for i in group]) for group in groups]


class DistributedDataParallel(Module):
    """Data parallelism over the processes of ``tracegrad.distributed``, as in PyTorch.

    ``forward`` is the wrapped module's (``self.module``); the state_dict keys gain the
    ``module.`` prefix, as PyTorch's.
    """

    def __init__(
        self,
        module: Module,
        device_ids=None,
        output_device=None,
        dim: int = 0,
        broadcast_buffers: bool = True,
        process_group=None,
        bucket_cap_mb: float = 25,
    ):
        super().__init__()
        if not distributed.is_initialized():
            raise RuntimeError(
                "DistributedDataParallel: call tracegrad.distributed.init_process_group() first"
            )
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.require_backward_grad_sync = True
        # PyTorch's require_forward_param_sync: whether the next forward broadcasts the
        # buffers (none ran yet, or the last one ran with gradients and outside no_sync()).
        # A tensor: a compiled forward reads it fresh and writes it back, as an eager one.
        self._buffers_sync_next = wrap(np.array(True))
        _check_same_shapes(module)
        for _, tensor in _named_state(module):
            distributed.broadcast(tensor, src=0)
        params = [p for p in module.parameters() if p.requires_grad]
        self._cap = int(bucket_cap_mb * 1024 * 1024)
        self._buckets = _buckets(params[::-1], self._cap)
        self._pending = False
        order = 0
        for bucket in self._buckets:
            for param in bucket.params:
                param.register_post_accumulate_grad_hook(self._hook_for(bucket, order))
                order += 1

    def forward(self, *args, **kwargs):
        """The wrapped module's forward, after rank 0's buffers are broadcast when PyTorch's
        DDP would: ``broadcast_buffers`` and the previous forward (if any) ran with gradients
        enabled and outside ``no_sync()`` (this one may be under either)."""
        if self.broadcast_buffers:
            self._broadcast_buffers()
        output = self.module(*args, **kwargs)
        tracer = active_tracer()  # (tracing turns gradients on: the caller's mode counts)
        grad = tape.is_grad_enabled() and (tracer is None or tracer.grad_enabled_outside)
        sync_next = grad and self.require_backward_grad_sync
        with tape.no_grad():
            self._buffers_sync_next.fill_(sync_next)
        return output

    def _broadcast_buffers(self) -> None:
        """Every rank takes rank 0's buffers, in place, if the last forward asked for it. In
        a compiled program the broadcast is a node of its graph, whose result (rank 0's, or
        the buffer's own when the flag read at run time is false) is written back into the
        buffer: every rank runs it or none does, the flag being the same on every rank."""
        flag = self._buffers_sync_next
        for buffer in self.module.buffers():
            if active_tracer() is None:
                if flag.item():
                    distributed.broadcast(buffer, src=0)
            else:
                with tape.no_grad():
                    buffer.copy_(where(flag, call("broadcast", buffer, src=0), buffer))

    @contextlib.contextmanager
    def no_sync(self):
        """Inside, backward only accumulates local gradients (for gradient accumulation);
        the first backward after it averages the accumulated ones."""
        before, self.require_backward_grad_sync = self.require_backward_grad_sync, False
        try:
            yield
        finally:
            self.require_backward_grad_sync = before

    def _hook_for(self, bucket: _Bucket, order: int):
        """The hook of a parameter, ``order``-th in bucket order."""

        def hook(param) -> None:
            if not self.require_backward_grad_sync:
                return
            if active_tracer() is not None:  # a compiled step: the average is a node of it
                param.grad = call(
                    "all_reduce", param.grad, reduce="avg", bucket_cap=self._cap, order=order
                )
                return
            if not self._pending:  # the first gradient of this backward
                self._pending = True
                tape.queue_callback(self._finish_backward)
            bucket.mark_ready(param)

        return hook

    def _finish_backward(self) -> None:
        self._pending = False
        for bucket in self._buckets:
            bucket.finish()


def _check_same_shapes(module: Module) -> None:
    """Every rank must hold the same parameters and buffers; say which one differs."""
    comm = distributed.mpi_comm()
    if comm is None:
        return
    mine = {name: (tuple(t.shape), t.dtype.name) for name, t in _named_state(module)}
    every = comm.allgather(mine)  # small metadata: pickling is fine here
    for rank, theirs in enumerate(every):
        for name in [*every[0], *(n for n in theirs if n not in every[0])]:
            if every[0].get(name) != theirs.get(name):
                raise ShapeError(
                    f"DistributedDataParallel: parameter or buffer '{name}' is "
                    f"{_describe(every[0].get(name))} on rank 0 but "
                    f"{_describe(theirs.get(name))} on rank {rank}; every process must build "
                    "the same model"
                )


def _named_state(module: Module):
    return [*module.named_parameters(), *module.named_buffers()]


def _describe(entry) -> str:
    return "missing" if entry is None else f"{entry[1]}{list(entry[0])}"
