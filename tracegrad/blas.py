"""How many threads BLAS uses: ``tg.set_num_threads(n)`` and ``tg.get_num_threads()``.

tracegrad computes with NumPy, whose matrix products run in a BLAS library (OpenBLAS, MKL...)
that starts one thread per core by default. Threads pay off on large products; on the small
ones of most training steps, or on a machine shared with other work, they cost more in waking
and waiting than they save (the demo took 1.5-9.9 s with the default threads on a loaded
2-core machine and 0.2-0.5 s with one). threadpoolctl, the standard library for this, sets the
limit in every BLAS library loaded in the process, at run time.

Code compiled with ``tg.compile(..., threads=n)`` runs some statements on a small pool of
threads of its own (``thread_pool``); a product goes there only when BLAS ran one thread as the
program compiled, and keeps to one thread while it runs there (``one_blas_thread``), since
BLAS's limit holds for the whole process and two products each on BLAS's n threads would ask
for 2n cores.
"""

from __future__ import annotations

import functools
import operator
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits

__all__ = ["get_num_threads", "one_blas_thread", "set_num_threads", "thread_pool"]


def set_num_threads(n: int) -> None:
    """Set the number of threads BLAS uses for NumPy's matrix products, as
    ``torch.set_num_threads`` does for PyTorch's.

    The setting holds for the whole process, eager and compiled code alike, from the call on.
    Call it after importing tracegrad (which loads NumPy and its BLAS): a BLAS library loaded
    later keeps its own default.

    Args:
        n: the number of threads, at least 1. One is usually fastest for small models and on
            busy machines; the default is one per core.

    Raises:
        TypeError: if ``n`` is not an integer.
        ValueError: if ``n`` is less than 1.

    Examples:
        >>> import tracegrad as tg
        >>> previous = tg.get_num_threads()
        >>> tg.set_num_threads(1)
        >>> tg.get_num_threads()
        1
        >>> tg.set_num_threads(previous)
    """
    if isinstance(n, bool):
        raise TypeError(f"set_num_threads() takes an int, not {type(n).__name__}")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads() takes an int, not {type(n).__name__}") from None
    if count < 1:
        raise ValueError(f"set_num_threads() needs at least 1 thread, got {count}")
    threadpool_limits(limits=count, user_api="blas")


def get_num_threads() -> int:
    """The number of threads BLAS uses for NumPy's matrix products, as
    ``torch.get_num_threads`` tells PyTorch's.

    Returns:
        The largest thread count among the BLAS libraries loaded in the process; 1 when none
        is loaded (NumPy then multiplies matrices on the calling thread).

    Examples:
        >>> import tracegrad as tg
        >>> tg.get_num_threads() >= 1
        True
    """
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts, default=1)


@functools.cache
def thread_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads that compiled code hands work to (one pool per
    size, shared by every program compiled with that many threads)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="tracegrad")


class one_blas_thread:  # noqa: N801 (used as a context manager, like threadpool_limits)
    """``with one_blas_thread():``: BLAS at one thread inside, its limit as before after.

    Entered on every call of compiled code that runs two products at once, so it talks to
    the BLAS libraries directly (a few microseconds) instead of through ``threadpool_limits``
    (which looks the libraries up each time, 15 us and more). The libraries are looked up once,
    the first time; one loaded later keeps its own limit.
    """

    def __enter__(self):
        self.previous = [(lib, lib.get_num_threads()) for lib in _blas_libraries()]
        for lib, count in self.previous:
            if count != 1:
                lib.set_num_threads(1)
        return self

    def __exit__(self, *exc_info):
        for lib, count in self.previous:
            if count != 1:
                lib.set_num_threads(count)


@functools.cache
def _blas_libraries() -> tuple:
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
