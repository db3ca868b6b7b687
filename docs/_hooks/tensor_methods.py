"""MkDocs hook: ``reference/tensor-methods.md``, every public member of ``tg.Tensor`` with its
signature and docstring, read from the class at build time.

Tensor's methods are installed on the class when ``tracegrad.tensor`` is imported (written-out
ones and one per entry of the one-op table), so they are read from the live class, where a
reader of the source would not find them.
"""

from __future__ import annotations

import inspect
import re

from tracegrad import Tensor

INTRO = """\
# Tensor methods

Every public method and property of `tracegrad.Tensor`, read from the class when the
documentation is built. Arithmetic and comparison operators (`+ - * / ** @`, `==`, `<`...)
follow PyTorch's type promotion and broadcasting.
"""
DOCTEST = re.compile(r"((?:^ *>>>.*\n|^ *\.\.\..*\n)(?:^(?! *$).*\n)*)", re.MULTILINE)


def on_files(files, config):
    """Add the generated page to the site."""
    # MkDocs is imported here, not at the top, so the page can be built without it.
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/tensor-methods.md", content=page()))
    return files


def page() -> str:
    """The page's Markdown: one section per public member, alphabetically."""
    names = sorted(name for name in dir(Tensor) if not name.startswith("_"))
    return INTRO + "".join(_section(name, inspect.getattr_static(Tensor, name)) for name in names)


def _section(name: str, member) -> str:
    doc = inspect.getdoc(member) or "No docstring yet."
    if isinstance(member, property):
        heading = f"`{name}` (property)"
    else:
        heading = f"`{name}{_signature(member)}`"
    return f"\n## {name}\n\n{heading}\n\n{_markdown(doc)}\n"


def _signature(member) -> str:
    function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return "(...)"
    parameters = [_unquoted(p) for name, p in signature.parameters.items() if name != "self"]
    returns = signature.return_annotation
    returns = _Annotation(returns) if isinstance(returns, str) else returns
    return str(signature.replace(parameters=parameters, return_annotation=returns))


class _Annotation(str):
    """An annotation kept as text (``from __future__ import annotations``), shown unquoted."""

    def __repr__(self) -> str:
        return str(self)


def _unquoted(parameter: inspect.Parameter) -> inspect.Parameter:
    annotation = parameter.annotation
    if isinstance(annotation, str):
        return parameter.replace(annotation=_Annotation(annotation))
    return parameter


def _markdown(doc: str) -> str:
    """A docstring as Markdown: its doctest examples fenced as Python."""
    return DOCTEST.sub(lambda m: f"```python\n{m.group(1)}```\n", doc + "\n").rstrip()
