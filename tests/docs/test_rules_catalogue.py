"""The generated catalogue of passes and rewrite rules (docs/_hooks/rules_catalogue.py) lists
every pass of the pipeline and every rule of the rule tables, each with an example that its
pass really rewrites."""

from __future__ import annotations

import importlib.util

import pytest
from markdown_code import DOCS

from tracegrad.passes.pipeline import DEFAULT_PIPELINE, PASSES

HOOK = DOCS / "_hooks" / "rules_catalogue.py"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("rules_catalogue", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page(hook) -> str:
    return hook.catalogue()


def test_every_pipeline_pass_is_listed_with_its_docstring(page):
    for name in DEFAULT_PIPELINE:
        assert f"| `{name}` |" in page
    assert "fused\\[h,g,f\\](x)" in page  # formulas in prose are escaped, not links


def test_every_rule_has_a_row_and_a_section(hook, page):
    for pass_name, rules in hook.REWRITE_PASSES.items():
        assert f"## {pass_name}\n" in page and pass_name in PASSES
        for rule in rules:
            assert f"[`{rule.name}`](#{rule.name})" in page
            assert f"\n### {rule.name}\n" in page


def test_each_example_shows_the_rewrite(page):
    section = page.split("\n### mul-one\n")[1].split("\n### ")[0]
    before, after = section.split("After `canonicalize` and `dce`:")
    assert "mul %x, %1" in before
    assert "return %x, %x" in after and "mul" not in after
