"""Logs of compilation stages, printed when ``TRACEGRAD_LOGS`` names their kind
(``graph``, ``passes``, ``code``, ``recompiles``)."""

from __future__ import annotations

import os
import sys


def log_kinds() -> set[str]:
    return {k.strip() for k in os.environ.get("TRACEGRAD_LOGS", "").split(",") if k.strip()}


def log(kind: str, text) -> None:
    """Print a stage of compilation when TRACEGRAD_LOGS names its kind. ``text`` may be a
    function making the text, so big graphs are only printed when asked for."""
    if kind in log_kinds():
        print(f"[tracegrad:{kind}] {text() if callable(text) else text}", file=sys.stderr)
