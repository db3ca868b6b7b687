"""Errors raised inside generated code, raised again naming the user's line the failing
statement came from (each generated statement carries it in a comment)."""

from __future__ import annotations

import linecache
from typing import NoReturn

# Exception types rebuilt with the user's line in their message (their constructors take one)
_REBUILT = (IndexError, KeyError, ValueError, TypeError, ArithmeticError, RuntimeError)


def at_users_line(exc: Exception) -> NoReturn:
    """Called in an ``except`` clause of the calls running generated code: an exception
    raised inside it (an index out of range) is raised again, of the same type, naming the
    user's line the failing statement came from, instead of a traceback deep inside generated
    code. Any other exception is raised as it is."""
    where = _generated_origin(exc.__traceback__) if isinstance(exc, _REBUILT) else None
    if where is None or where in str(exc) or isinstance(exc, FloatingPointError):
        raise exc  # (debug_nans names the op and the line itself)
    message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else exc
    try:
        rebuilt = type(exc)(f"{message}\n  at {where} (in compiled code)")
    except Exception:  # (a constructor of another shape: the note says it)
        exc.add_note(f"  at {where} (in compiled code)")
        raise exc from None
    raise rebuilt from None


def _generated_origin(tb) -> str | None:
    """The comment (the user's file and line) of the last generated line in a traceback."""
    found = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith("<tracegrad "):
            line = linecache.getline(filename, tb.tb_lineno)
            found = line.partition("  # ")[2].strip() or found
        tb = tb.tb_next
    return found
