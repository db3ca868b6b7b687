"""The only ways text from outside tracegrad enters generated source.

Class and function names, parameter and buffer names, dict keys, file names and the user's
source lines are arbitrary strings: a newline in a class name printed into a comment would
start a statement of its own. So generated source takes such text only through these three
functions (jinja2 templates through the filters of the same names):

- ``comment(text)``: text to print inside a ``#`` comment;
- ``identifier(name, taken)``: a Python name standing for ``name``;
- ``literal(value)``: a string (or int, or list of those) as a Python literal.
"""

from __future__ import annotations

import keyword
import re

# The types literal() writes: their repr reads back as the same value, on one line.
_PLAIN = (str, int, bool, type(None))


def comment(text: str) -> str:
    """``text`` safe inside a ``#`` comment: every character that is not printable is written
    as its Python escape. Line breaks of every kind (``\\n \\r \\v \\f \\x1c-\\x1e \\x85
    \\u2028 \\u2029``, on which the tokenizer or ``str.splitlines`` end a line) are among
    them, as are NUL (which ``compile`` refuses) and lone surrogates (which cannot be
    encoded)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def identifier(
    name: str,
    taken: set[str],
    reserved: re.Pattern | None = None,
    suffixes: dict[str, int] | None = None,
) -> str:
    """An ASCII Python identifier for ``name``, not in ``taken`` (it is added there).
    Characters outside ``[A-Za-z0-9_]`` become ``_`` (so ``model.0.weight`` reads
    ``model_0_weight``); a name the ``reserved`` pattern matches whole gets a leading ``_``,
    and a clash a suffix ``_1``, ``_2``... (``suffixes``, kept by the caller across calls,
    remembers the next one to try per name: n clashes of one name then cost n tries, not
    n * n / 2).

    ASCII only: Python folds identifiers with NFKC, so two distinct Unicode names (``fi`` and
    ``\\ufb01``) could otherwise become one variable."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"
    if base[0].isdigit() or (reserved is not None and reserved.fullmatch(base)):
        base = "_" + base
    if keyword.iskeyword(base):
        base += "_"
    suffixes = {} if suffixes is None else suffixes
    found, k = base, suffixes.get(base, 1)
    while found in taken:
        found, k = f"{base}_{k}", k + 1
    suffixes[base] = k
    taken.add(found)
    return found


def literal(value) -> str:
    """``value`` as Python source: the repr of a str, int, bool or None, or of a list
    or tuple of those (a repr escapes quotes, backslashes and line breaks). Anything else is
    refused: its repr could be any text."""
    if isinstance(value, (list, tuple)):
        items = [literal(v) for v in value]
        if isinstance(value, list):
            return f"[{', '.join(items)}]"
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if type(value) not in _PLAIN:
        raise TypeError(f"codegen: cannot write a {type(value).__name__} as a literal")
    return repr(value)
