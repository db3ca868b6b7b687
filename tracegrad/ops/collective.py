"""Collective ops: a reduction over every process of a data-parallel job, as nodes of a
compiled training step (``DistributedDataParallel`` averages each gradient with one).

- ``all_reduce(x)[reduce, bucket_cap, order]``: ``x`` reduced over every process (``reduce``:
  sum, avg, max or min), blocking, into an array of its own. A traced step has one per
  gradient; ``order`` is the gradient's place in bucket order (parameters reversed, as the
  backward completes them) and ``bucket_cap`` the bytes a bucket may hold. Both are None for
  a reduction that is not a gradient's average (``SyncBatchNorm``'s batch statistics), which
  stays blocking and out of buckets. A sum or an average is linear, its VJP the same
  reduction of the cotangents: every process's output read every process's input.
- ``all_reduce_start(*xs)[reduce, bucket]``: the ``bucket`` pass's form of several of those:
  the arrays packed into one flat buffer whose non-blocking reduction (MPI's ``Iallreduce``)
  starts, and ``all_reduce_wait(buffer)``: the same buffer once the reduction is complete.
  The gradients are then views (``getitem``, ``reshape``) of the waited buffer.
- ``broadcast(x)[src]``: process ``src``'s ``x`` on every process, blocking, into an array of
  its own (``DistributedDataParallel`` makes every rank's buffers rank 0's before a forward).

The processes are MPI's world, which ``tracegrad.distributed.init_process_group`` joins: the
kernels reach it through mpi4py when it is loaded and more than one process runs. With one
process every collective is the identity (it returns its input's values). The bucket ops
have no VJP: they run on gradients, after the backward.
"""

from __future__ import annotations

import sys

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import rules
from tracegrad.ops.registry import VIEW, Sample, call, register
from tracegrad.ops.runtime import kernel

REDUCTIONS = ("sum", "avg", "max", "min")

# Non-blocking reductions started and not yet waited on: buffer id -> MPI request
_IN_FLIGHT: dict = {}


def _mpi():
    """mpi4py's MPI module when more than one process runs, else None (then every collective
    is the identity). mpi4py is never imported here: a job launched over MPI has loaded it."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi if mpi.COMM_WORLD.Get_size() > 1 else None


def _mpi_op(mpi, reduce: str):
    """MPI's operation for ``reduce`` (an average is a sum, divided afterwards)."""
    return getattr(mpi, "SUM" if reduce == "avg" else reduce.upper())


def _finish(array, reduce: str, mpi):
    """The reduced ``array``, divided by the number of processes for an average (in place,
    as ``tracegrad.distributed.all_reduce`` does, so both round alike)."""
    if reduce == "avg" and mpi is not None:
        np.divide(array, mpi.COMM_WORLD.Get_size(), out=array)
    return array


@kernel
def all_reduce(x, reduce):
    """``x`` reduced over every process, blocking, in a new array."""
    result = np.array(x, order="C")
    mpi = _mpi()
    if mpi is not None:
        mpi.COMM_WORLD.Allreduce(mpi.IN_PLACE, result, op=_mpi_op(mpi, reduce))
    return _finish(result, reduce, mpi)


@kernel
def all_reduce_start(xs, reduce, out=None):
    """The arrays ``xs`` packed into a flat buffer (``out``, or a new one), whose reduction
    over every process starts without blocking; ``all_reduce_wait`` completes it."""
    buffer = _packed(xs, out)
    mpi = _mpi()
    if mpi is not None:
        # (MPI progresses the reductions started before on each call: poke them too)
        mpi.Request.Testall(list(_IN_FLIGHT.values()))
        comm = mpi.COMM_WORLD
        _IN_FLIGHT[id(buffer)] = comm.Iallreduce(mpi.IN_PLACE, buffer, op=_mpi_op(mpi, reduce))
    return buffer


def _packed(xs, out):
    """``xs`` one after the other in ``out`` (a new array without it). An array already in its
    place there (the memory plan had its producer write it into that piece of the bucket) is
    not copied."""
    if out is None:
        return np.concatenate([np.reshape(x, -1) for x in xs])
    offset = 0
    for x in xs:
        piece = out[offset : offset + np.size(x)]
        offset += piece.size
        if not (isinstance(x, np.ndarray) and _occupies(x, piece)):
            piece.reshape(np.shape(x))[...] = x
    return out


def _occupies(x: np.ndarray, piece: np.ndarray) -> bool:
    """Whether ``x`` is exactly the memory of the contiguous ``piece``."""
    return x.flags.c_contiguous and x.size == piece.size and x.ctypes.data == piece.ctypes.data


@kernel
def all_reduce_wait(buffer, reduce):
    """``buffer`` once its reduction has completed: the same array."""
    request = _IN_FLIGHT.pop(id(buffer), None)
    if request is None:  # one process: nothing was started
        return buffer
    request.Wait()
    return _finish(buffer, reduce, _mpi())


@kernel
def broadcast(x, src):
    """Process ``src``'s ``x`` on every process, in a new array."""
    result = np.array(x, order="C")
    mpi = _mpi()
    if mpi is not None:
        mpi.COMM_WORLD.Bcast(result, root=src)
    return result


def bucket_groups(nbytes: list[int], kinds: list, cap: int) -> list[list[int]]:
    """Consecutive positions grouped into buckets of at most ``cap`` bytes (``nbytes`` each)
    and of one kind (a dtype); an item larger than ``cap`` gets a bucket of its own. The rule
    eager ``DistributedDataParallel`` and the ``bucket`` pass share."""
    groups: list[list[int]] = []
    size = 0
    for i, (n, kind) in enumerate(zip(nbytes, kinds, strict=True)):
        fits = groups and size + n <= cap and kinds[groups[-1][0]] == kind
        if not fits:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


def _all_reduce_grad(c, g):
    """y = x_1 + ... + x_p on every process, so each x_r's cotangent is the sum of every
    process's cotangent of y (the mean of them for an average)."""
    if c.attrs["reduce"] not in ("sum", "avg"):
        raise NotImplementedError(
            f"all_reduce: no gradient through a {c.attrs['reduce']} reduction (sum and avg only)"
        )
    return call("all_reduce", g, reduce=c.attrs["reduce"], bucket_cap=None, order=None)


def _reduction(op: str, reduce: str, t: TensorType) -> TensorType:
    if reduce not in REDUCTIONS:
        raise ValueError(f"{op}: reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    if reduce == "avg":
        rules.floating(op, t)
    return t


def _start_infer(*xs: TensorType, reduce, bucket) -> TensorType:
    if not xs:
        raise ShapeError("all_reduce_start: a bucket needs at least one tensor")
    dtype = rules.same_dtype("all_reduce_start", *xs)
    flat = TensorType((sum(x.numel for x in xs),), dtype)
    return _reduction("all_reduce_start", reduce, flat)


def _wait_infer(buffer: TensorType, reduce, bucket) -> TensorType:
    if buffer.ndim != 1:
        raise ShapeError(
            f"all_reduce_wait: expected a flat bucket buffer, got shape {buffer.shape}"
        )
    return _reduction("all_reduce_wait", reduce, buffer)


# all_reduce(x) = the reduction of x over every process (the identity with one process).
register(
    "all_reduce",
    ("x",),
    lambda x, reduce, bucket_cap, order: _reduction("all_reduce", reduce, x),
    lambda x, reduce, bucket_cap, order: all_reduce(x, reduce),
    (_all_reduce_grad,),
    "rt.all_reduce({0}, {reduce!r})",
)

# all_reduce_start(x1, ..., xk) = [x1.ravel(), ..., xk.ravel()], its reduction started. The
# memory plan gives it a bucket buffer and has the gradients computed straight into their
# pieces of it where it can (an assembly, as for cat).
register(
    "all_reduce_start",
    ("*xs",),
    _start_infer,
    lambda *xs, reduce, bucket: all_reduce_start(xs, reduce),
    None,
    "rt.all_reduce_start([{inputs}], {reduce!r})",
    out="rt.all_reduce_start([{inputs}], {reduce!r}, out={out})",
)

# all_reduce_wait(buffer) = buffer, reduced: the same array (a view).
register(
    "all_reduce_wait",
    ("buffer",),
    _wait_infer,
    lambda buffer, reduce, bucket: all_reduce_wait(buffer, reduce),
    None,
    "rt.all_reduce_wait({0}, {reduce!r})",
    props={VIEW},
)

# broadcast(x) = process src's x, on every process (buffers, so no gradient).
register(
    "broadcast",
    ("x",),
    lambda x, src: x,
    lambda x, src: broadcast(x, src),
    None,
    "rt.broadcast({0}, {src!r})",
    samples=(Sample(attrs={"src": 0}, ref=lambda x, src: x),),
)
