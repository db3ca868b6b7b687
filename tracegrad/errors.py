"""Exceptions users can catch, and the helper that finds the user's own source line."""

from __future__ import annotations

import contextlib
import functools
import linecache
import os
import sys
from dataclasses import dataclass
from types import FrameType

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# contextlib runs the context managers tracegrad writes (an error raised in one passes through
# its __exit__ on the way to the user): its frames are never the user's.
_CONTEXTLIB = os.path.abspath(contextlib.__file__)


class ShapeError(RuntimeError, ValueError):
    """Operand shapes do not fit the op. A RuntimeError as in PyTorch, and a ValueError.

    Examples:
        >>> try:
        ...     tg.ones(2) + tg.ones(3)
        ... except tg.ShapeError as error:
        ...     print(str(error).splitlines()[0])
        add: shapes (2,) and (3,) cannot be broadcast together
    """


class DTypeError(RuntimeError, TypeError):
    """An operand has a dtype the op cannot take. A RuntimeError as in PyTorch, and a TypeError.

    Examples:
        >>> try:
        ...     tg.tensor([1, 2], requires_grad=True)
        ... except tg.DTypeError as error:
        ...     print(str(error).splitlines()[0])
        only tensors of floating point dtype can require gradients, got tracegrad.int64
    """


class TraceError(RuntimeError):
    """Tracing met something a graph cannot capture (data-dependent control flow, an
    unsupported operation); the message names the user's source line.

    Examples:
        >>> def f(x):
        ...     return x * 2 if x.sum() > 0 else x
        >>> try:
        ...     tg.compile(f)(tg.ones(2))
        ... except tg.TraceError as error:
        ...     print(str(error).split(", which")[0])
        bool(tensor) (an if or while on a tensor) needs the value of a traced tensor
    """


class MemoryBudgetError(ValueError):
    """``tg.compile(..., memory_budget=...)``: even recomputing every forward value that
    helps, the estimated peak of the program stays above the budget. ``smallest`` is the
    smallest budget it fits (bytes), ``budget`` the one asked for, ``unbudgeted`` the peak
    without recomputation."""

    def __init__(self, budget: int, smallest: int, unbudgeted: int):
        self.budget, self.smallest, self.unbudgeted = budget, smallest, unbudgeted
        super().__init__(
            f"memory_budget={budget} bytes ({_mib(budget)}) is below the smallest feasible "
            f"budget, {smallest} bytes ({_mib(smallest)}): recomputing every forward value "
            f"that helps brings the estimated peak from {_mib(unbudgeted)} down to "
            f"{_mib(smallest)} and no lower; pass memory_budget >= {smallest}"
        )


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


@dataclass(frozen=True)
class SourceLocation:
    filename: str
    lineno: int
    line: str = ""

    def __str__(self) -> str:
        text = f"{self.filename}:{self.lineno}"
        return f"{text}: {self.line}" if self.line else text


def user_frame() -> SourceLocation | None:
    """The innermost stack frame outside the tracegrad package: where the user called us."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if outside_tracegrad(frame):
            return frame_location(frame)
        frame = frame.f_back
    return None


def outside_tracegrad(frame) -> bool:
    """Whether a stack frame runs the user's code (not tracegrad's, nor Python's own)."""
    return not _is_ours(frame.f_code.co_filename)


@functools.cache  # (asked for every recorded op, of the same few files)
def _is_ours(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR) or path == _CONTEXTLIB or filename.startswith("<frozen")


def frame_location(frame) -> SourceLocation:
    return SourceLocation(frame.f_code.co_filename, frame.f_lineno, _line(frame))


def _line(frame) -> str:
    try:
        return linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    except (UnicodeError, OSError):  # (a file name no file system can hold)
        return ""


def at_user_line(message: str) -> str:
    """Append the user's source location to an error message, when one is known."""
    where = user_frame()
    return f"{message}\n  at {where}" if where else message
