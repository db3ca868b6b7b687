"""Processes that train together over MPI, with ``torch.distributed``'s names.

``init_process_group()`` joins the MPI world when the program was launched by ``mpiexec`` (or
``srun``) and mpi4py is installed (``pip install 'tracegrad[mpi]'``); otherwise it sets up a
group of one process, in which every collective leaves its tensors as they are. Collectives
work on the tensors' NumPy arrays through MPI's buffer interface, in place where MPI can (no
pickling). mpi4py is imported only when a group is set up, so tracegrad imports without it.

Under MPI, ``init_process_group`` also makes an uncaught exception on any rank print that
rank's traceback and abort every rank, instead of leaving the others waiting forever.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
import traceback
from typing import Any

import numpy as np

from tracegrad.errors import DTypeError, ShapeError

__all__ = [
    "ReduceOp",
    "Work",
    "all_gather",
    "all_reduce",
    "barrier",
    "broadcast",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_available",
    "is_initialized",
]


class ReduceOp(enum.Enum):
    SUM = "SUM"
    AVG = "AVG"
    MAX = "MAX"
    MIN = "MIN"


class _SingleProcess:
    """The communicator of a group of one process: every collective is the identity."""

    def Get_rank(self) -> int:  # noqa: N802  (mpi4py's names)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1


_group: dict[str, Any] = {"comm": None, "backend": None}

# Environment variables that MPI launchers set in the processes they start.
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_PROCID")


def is_available() -> bool:
    """Whether mpi4py (and so an MPI library) can be imported."""
    return importlib.util.find_spec("mpi4py") is not None


def _launched_by_mpi() -> bool:
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def init_process_group(backend: str | None = None, **kwargs) -> None:
    """Join the processes started by ``mpiexec``/``srun`` (backend ``"mpi"``), or form a group
    of this process alone when not launched under MPI or without mpi4py."""
    if is_initialized():
        raise RuntimeError("trying to initialize the default process group twice")
    if backend not in (None, "mpi"):
        raise ValueError(f"tracegrad.distributed supports the 'mpi' backend only, got {backend!r}")
    if is_available() and (backend == "mpi" or _launched_by_mpi()):
        from mpi4py import MPI

        _group.update(comm=MPI.COMM_WORLD, backend="mpi")
        sys.excepthook = _abort_every_rank
    else:
        _group.update(comm=_SingleProcess(), backend="single")


def destroy_process_group() -> None:
    """Leave the group (MPI itself stays up until the process exits, as mpi4py arranges)."""
    if _group["backend"] == "mpi" and sys.excepthook is _abort_every_rank:
        sys.excepthook = sys.__excepthook__
    _group.update(comm=None, backend=None)


def is_initialized() -> bool:
    return _group["comm"] is not None


def get_rank() -> int:
    return _comm().Get_rank()


def get_world_size() -> int:
    return _comm().Get_size()


def get_backend() -> str:
    _comm()
    return _group["backend"]


def _comm():
    if _group["comm"] is None:
        raise RuntimeError(
            "Default process group has not been initialized, please make sure to call "
            "tracegrad.distributed.init_process_group()"
        )
    return _group["comm"]


def mpi_comm():
    """The mpi4py communicator of the group, or None in a group of one process."""
    return _comm() if _group["backend"] == "mpi" else None


def _abort_every_rank(kind, value, tb) -> None:
    """sys.excepthook under MPI: print this rank's error, then abort the whole job."""
    rank = _comm().Get_rank()
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(f"[rank {rank}] {text}")
    sys.stderr.write(f"[rank {rank}] aborting every rank after this uncaught exception\n")
    sys.stderr.flush()
    _comm().Abort(1)


# --- collectives ---------------------------------------------------------------------------------


class Work:
    """A collective started with ``async_op=True``; ``wait()`` completes it."""

    def __init__(self, request=None, finish=None):
        self.request, self.finish = request, finish
        self.completed = request is None

    def wait(self) -> bool:
        if not self.completed:
            self.request.Wait()
            self.completed = True
            if self.finish is not None:
                self.finish()
        return True

    def is_completed(self) -> bool:
        return self.completed


def _array_of(tensor, what: str) -> np.ndarray:
    """The tensor's array, which the collective will write into."""
    from tracegrad.tensor import Tensor
    from tracegrad.tensor.tracing import active_tracer

    if not isinstance(tensor, Tensor):
        raise TypeError(f"{what} expects a tracegrad Tensor, got {type(tensor).__name__}")
    if active_tracer() is not None and active_tracer().traced(tensor):
        raise TypeError(
            f"{what} works on eager tensors; it cannot run inside a compiled function yet"
        )
    if not tensor.array.flags.c_contiguous:
        raise ShapeError(f"{what} needs a contiguous tensor; call .contiguous() first")
    return tensor.array


def _mpi_op(op: ReduceOp):
    from mpi4py import MPI

    return {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.MAX: MPI.MAX}.get(op, MPI.MIN)


def all_reduce(tensor, op: ReduceOp = ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce ``tensor`` over every process, in place: each ends with the same result."""
    array = _array_of(tensor, "all_reduce")
    if not isinstance(op, ReduceOp):
        raise TypeError(f"all_reduce: op must be a ReduceOp, got {op!r}")
    if op is ReduceOp.AVG and not np.issubdtype(array.dtype, np.floating):
        raise DTypeError(f"all_reduce: ReduceOp.AVG needs a floating tensor, got {tensor.dtype}")
    tensor.bump_version()
    comm = mpi_comm()
    if comm is None:
        return Work() if async_op else None
    from mpi4py import MPI

    def finish():
        if op is ReduceOp.AVG:
            np.divide(array, comm.Get_size(), out=array)

    if async_op:
        return Work(comm.Iallreduce(MPI.IN_PLACE, array, op=_mpi_op(op)), finish)
    comm.Allreduce(MPI.IN_PLACE, array, op=_mpi_op(op))
    finish()
    return None


def broadcast(tensor, src: int = 0, group=None, async_op: bool = False):
    """Copy rank ``src``'s ``tensor`` into ``tensor`` on every process, in place."""
    array = _array_of(tensor, "broadcast")
    _check_rank(src, "broadcast: src")
    tensor.bump_version()
    comm = mpi_comm()
    if comm is None:
        return Work() if async_op else None
    if async_op:
        return Work(comm.Ibcast(array, root=src))
    comm.Bcast(array, root=src)
    return None


def all_gather(tensor_list: list, tensor, group=None, async_op: bool = False):
    """Fill ``tensor_list[r]`` with rank r's ``tensor``, on every process."""
    array = _array_of(tensor, "all_gather")
    size = get_world_size()
    if len(tensor_list) != size:
        raise ValueError(
            f"all_gather: tensor_list has {len(tensor_list)} tensors for {size} processes"
        )
    for out in tensor_list:
        if tuple(out.shape) != array.shape or out.array.dtype != array.dtype:
            raise ShapeError(
                f"all_gather: every output must be {tensor.dtype}{list(array.shape)} like the "
                f"input, got {out.dtype}{list(out.shape)}"
            )
    comm = mpi_comm()
    gathered = np.empty((size, *array.shape), array.dtype)
    if comm is None:
        gathered[0] = array
    else:
        comm.Allgather(array, gathered)
    for out, part in zip(tensor_list, gathered, strict=True):
        out.array[...] = part
        out.bump_version()
    return Work() if async_op else None


def barrier(group=None) -> None:
    comm = mpi_comm()
    if comm is not None:
        comm.Barrier()


def _check_rank(rank: int, what: str) -> None:
    size = get_world_size()
    if not 0 <= rank < size:
        raise ValueError(f"{what} rank {rank} is not in [0, {size - 1}]")
