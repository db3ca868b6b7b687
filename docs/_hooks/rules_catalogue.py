"""MkDocs hook: ``rules.md``, the catalogue of passes and rewrite rules, generated at build time.

The passes come from the pipeline (``DEFAULT_PIPELINE`` and each pass's docstring), the rules
from the rule table of each rewrite pass (name, algebra, the ops a rule rewrites, its side
condition), and each rule's example from its case in ``tests/passes/test_rules.py``: the graph
where it fires and what its pass (then ``dce``) makes of it. A new rule appears here by being
in its table.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

from tracegrad.ir.graph import Graph
from tracegrad.passes import (
    canonicalize,
    fuse_training_step,
    run_pass,
    specialize_numpy,
    stabilize,
)
from tracegrad.passes.patterns import always
from tracegrad.passes.pipeline import DEFAULT_PIPELINE, PASSES, PLANNING

REPOSITORY = Path(__file__).resolve().parents[2]
RULE_CASES = REPOSITORY / "tests" / "passes" / "test_rules.py"
# The rewrite passes in pipeline order, each with its rule table
REWRITE_PASSES = {
    "canonicalize": canonicalize.RULES,
    "stabilize": stabilize.RULES,
    "fuse_training_step": fuse_training_step.RULES,
    "specialize_numpy": specialize_numpy.RULES,
}
INTRO = """\
# Passes and rewrite rules

This page is generated from the code when the documentation is built (`docs/_hooks/`): the
pipeline's passes in order, then every rewrite rule of the four rewrite passes, with an example
graph where it fires (its test case) and what the pass makes of it. `cm.explain()` names the
rules that fired on your program and at which of your lines.
"""


def on_files(files, config):
    """Add the generated ``rules.md`` to the site."""
    # MkDocs is imported here, not at the top, so the catalogue can be built without it.
    from mkdocs.structure.files import File

    files.append(File.generated(config, "rules.md", content=catalogue()))
    return files


def catalogue() -> str:
    """The page's Markdown."""
    cases = _rule_cases()
    sections = [INTRO, _pipeline_table()]
    for pass_name, rules in REWRITE_PASSES.items():
        sections.append(f"## {pass_name}\n\n{_summary(pass_name)}\n\n{_rule_table(rules)}")
        sections.extend(_example(rule, pass_name, cases) for rule in _distinct(rules))
    return "\n".join(sections)


def _pipeline_table() -> str:
    rows = ["## The pipeline\n", "| # | pass | what it does |", "|--:|---|---|"]
    order = [*DEFAULT_PIPELINE, *(p for p in PLANNING if p not in DEFAULT_PIPELINE)]
    rows += [f"| {i} | `{name}` | {_summary(name)} |" for i, name in enumerate(order, 1)]
    rows.append(
        "\n`schedule`, `inplace` and `memory` plan each generated function after reverse mode; "
        '`passes=[..., "inplace"]` plans in-place writes alone.\n'
    )
    return "\n".join(rows)


def _summary(pass_name: str) -> str:
    """The first paragraph of the pass's docstring, on one line."""
    doc = inspect.getdoc(PASSES[pass_name].fn) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    return _escaped(text)


def _escaped(text: str) -> str:
    """Prose that may hold formulas (``fused[h,g,f](x)``, ``x * y``) as plain Markdown text."""
    for char in "\\[]*_|":
        text = text.replace(char, "\\" + char)
    return text


def _distinct(rules):
    """One rule per name (``operand-broadcast`` is one rule per elementwise op)."""
    return list({rule.name: rule for rule in rules}.values())


def _rule_table(rules) -> str:
    rows = ["| rule | algebra | rewrites | when |", "|---|---|---|---|"]
    for rule in _distinct(rules):
        ops = sorted(
            set().union(*(r.pattern.ops or {"any op"} for r in rules if r.name == rule.name))
        )
        shown = ", ".join(f"`{op}`" for op in ops[:6]) + (
            f" and {len(ops) - 6} more" if len(ops) > 6 else ""
        )
        algebra = rule.algebra.replace("|", "\\|")
        rows.append(
            f"| [`{rule.name}`](#{rule.name}) | `{algebra}` | {shown} | {_condition(rule)} |"
        )
    return "\n".join(rows) + "\n"


def _condition(rule) -> str:
    """The side condition in words: its docstring's first line, else its name."""
    when = rule.when
    if when is always:
        return "always"
    doc = inspect.getdoc(when)
    if doc:
        return _escaped(doc.splitlines()[0])
    outer = when.__qualname__.split(".<locals>")[0]
    if outer == "<lambda>":
        return "a side condition on the match"
    settings = [
        repr(v)
        for v in inspect.getclosurevars(when).nonlocals.values()
        if isinstance(v, (str, int))
    ]
    return " ".join([outer.strip("_").replace("_", " "), *settings])


def _example(rule, pass_name: str, cases: dict) -> str:
    heading = f"### {rule.name}\n\n`{rule.algebra}`\n"
    case = cases.get(rule.name)
    if case is None:
        return heading + "\nOne rule per elementwise op; its tests run it on each.\n"
    before = Graph.parse(case.text)
    after = run_pass("dce", run_pass(pass_name, before).graph).graph
    return (
        f"{heading}\nWhere it fires:\n\n```\n{before}\n```\n\n"
        f"After `{pass_name}` and `dce`:\n\n```\n{after}\n```\n"
    )


def _rule_cases() -> dict:
    """The ``CASES`` of the rule tests (a source checkout always has them)."""
    spec = importlib.util.spec_from_file_location("_rule_cases", RULE_CASES)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module.CASES
