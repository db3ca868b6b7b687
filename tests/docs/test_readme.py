"""README.md's code runs as written, and the graph it shows is the one tracegrad prints."""

from __future__ import annotations

import re

from markdown_code import REPOSITORY, blocks, run_page

import tracegrad as tg

README = REPOSITORY / "README.md"


def test_the_readme_python_blocks_run_in_order(tmp_path):
    namespace, printed = run_page(README, tmp_path)
    assert len(blocks(README)) >= 2
    assert "loss after 20 steps" in printed
    assert namespace["loss"].item() < 1.0  # 20 Adam steps on one batch learn it
    assert "def forward(" in printed  # cm.code was printed
    assert (tmp_path / "graphs.html").stat().st_size > 1000


def test_the_graph_the_readme_shows_is_what_trace_prints(tmp_path):
    (shown,) = [b for b in blocks(README, "") if b.startswith("graph(")]
    namespace, _ = run_page(README, tmp_path)
    printed = str(tg.trace(namespace["model"], namespace["x"]))
    assert re.sub(r"\S*/(tracegrad/nn/)", r"\1", printed) == shown.rstrip("\n")


def test_the_readme_set_up_commands_are_the_documented_ones():
    commands = blocks(README, "bash")
    assert "pip install -e . && tracegrad demo\n" in commands
    dev = "pip install -e '.[dev]' && ruff check . && ruff format --check . && python -m pytest\n"
    assert dev in commands
