"""The thread-local tracer switch: while ``tracegrad.tracer`` traces a function, ops on traced
tensors become graph nodes instead of running. Another thread's eager code meanwhile runs
eagerly. Also the creation counter tracing uses to tell tensors older than itself, and the
check ``tg.manual_seed`` makes (tracegrad.random) to refuse seeding while tracing."""

from __future__ import annotations

import itertools
import threading

from tracegrad import random


class _Tracing(threading.local):
    tracer = None  # (a class attribute: every thread starts with none)


_TRACING = _Tracing()
_serials = itertools.count()


def set_tracer(tracer):
    """Install ``tracer`` (or None) for this thread; returns the previous one."""
    previous, _TRACING.tracer = _TRACING.tracer, tracer
    return previous


def active_tracer():
    return _TRACING.tracer


def _tracing() -> bool:
    return _TRACING.tracer is not None


random.is_tracing = _tracing


def next_serial() -> int:
    """A number larger than that of every tensor made before (creation order)."""
    return next(_serials)
