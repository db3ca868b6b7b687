"""The code blocks of Markdown pages (README.md, docs/**), read and run as the reader would.

A page's ```python blocks run in order as one program in one namespace, in a fresh working
directory, each compiled under the page's name so a failure names the page and block.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
DOCS = REPOSITORY / "docs"
FENCED = re.compile(r"^```(?P<language>[\w-]*)\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(page: Path, language: str = "python") -> list[str]:
    """The fenced blocks of ``page`` in ``language`` ("" for blocks without one), in order."""
    text = page.read_text()
    return [m["code"] for m in FENCED.finditer(text) if m["language"] == language]


def run_page(page: Path, workdir: Path) -> tuple[dict, str]:
    """Run ``page``'s python blocks in order in ``workdir``: the namespace they leave and
    what they printed."""
    namespace: dict = {"__name__": "__main__"}
    printed = io.StringIO()
    where = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(printed):
            for number, code in enumerate(blocks(page), 1):
                name = f"{page.relative_to(REPOSITORY)} (python block {number})"
                exec(compile(code, name, "exec"), namespace)
    finally:
        os.chdir(where)
    return namespace, printed.getvalue()
