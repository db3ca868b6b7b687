"""Executing generated source: compiled under a name registered with ``linecache`` so that
tracebacks show the generated line."""

from __future__ import annotations

import hashlib
import linecache

from tracegrad.logs import timed


@timed(lambda source, constants, label, *args, **kwargs: f"load {label}")
def load(source: str, constants: dict, label: str, names: dict | None = None) -> dict:
    """Execute ``source`` as a module (with ``names`` defined) and return its namespace."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    filename = f"<tracegrad {label} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {**(names or {}), "C": constants, "__name__": f"tracegrad_generated_{digest}"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace
