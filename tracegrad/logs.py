"""Logs of compilation stages, printed to stderr when ``TRACEGRAD_LOGS`` names their kind:

    graph       each traced graph
    passes      each pass that changed the graph
    code        the generated source
    recompiles  why a compiled callable compiles again
    timing      how long each stage took: trace, each pass, autodiff, codegen, load
    all         every kind above

A name outside these is a mistake: the ``tracegrad`` command reports it as an error, a program
with a warning the first time it logs.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from contextlib import contextmanager

LOG_KINDS = ("graph", "passes", "code", "recompiles", "timing")


def log_kinds() -> set[str]:
    named = {k.strip() for k in os.environ.get("TRACEGRAD_LOGS", "").split(",") if k.strip()}
    return set(LOG_KINDS) if "all" in named else named


def unknown_log_kinds() -> list[str]:
    """The names in TRACEGRAD_LOGS that are no log kind (typos)."""
    return sorted(log_kinds() - set(LOG_KINDS))


_warned: set[str] = set()  # unknown names already warned about


def log(kind: str, text) -> None:
    """Print a stage of compilation when TRACEGRAD_LOGS names its kind. ``text`` may be a
    function making the text, so big graphs are only printed when asked for."""
    unknown = set(unknown_log_kinds()) - _warned
    if unknown:
        _warned.update(unknown)
        warnings.warn(
            f"TRACEGRAD_LOGS names no log {', '.join(sorted(unknown))}: use "
            f"{', '.join(LOG_KINDS)} or all",
            stacklevel=2,
        )
    if kind in log_kinds():
        print(f"[tracegrad:{kind}] {text() if callable(text) else text}", file=sys.stderr)


@contextmanager
def timing(stage: str):
    """Log how long the block took, as the stage ``stage``, when TRACEGRAD_LOGS has timing."""
    if "timing" not in log_kinds():
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        log("timing", f"{stage}: {(time.perf_counter() - start) * 1e3:.2f} ms")


def timed(stage):
    """Decorate a function so that each call is logged as ``stage`` by ``timing``; ``stage``
    is a name, or a function of the call's arguments making it (``pass {name}``)."""

    def decorate(fn):
        @functools.wraps(fn)
        def run_timed(*args, **kwargs):
            label = stage(*args, **kwargs) if callable(stage) else stage
            with timing(label):
                return fn(*args, **kwargs)

        return run_timed

    return decorate
