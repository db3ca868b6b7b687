"""Every page of the documentation site runs as written: each page's ```python blocks are
executed in order, as one program, in a fresh directory. The pages assert what they claim
(compiled equals eager, errors raised), so a tutorial that stops working fails here."""

from __future__ import annotations

import pytest
from markdown_code import DOCS, blocks, run_page

PAGES = sorted(page for page in DOCS.rglob("*.md") if blocks(page))
TUTORIALS = [
    "train-eagerly",
    "compile-a-module",
    "compile-the-step",
    "inspect",
    "custom-function",
    "debugging",
    "export",
]


def test_every_tutorial_has_code_to_run():
    with_code = {page.stem for page in PAGES if page.parent.name == "tutorials"}
    assert with_code == set(TUTORIALS)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_the_page_runs_as_written(page, tmp_path):
    run_page(page, tmp_path)
