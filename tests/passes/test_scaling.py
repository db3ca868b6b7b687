"""Compile work grows linearly with the graph: the passes are counted, not timed.

Each test compiles a chain of ``x = tanh(x * w_i) + x`` links (every node live, distinct and
not constant, so no pass shrinks the graph) at n and 4n links and counts the calls of a pass's
inner step. A linear pass does about 4 times the work on the longer chain; a quadratic one 16
times, which the bound of 5 catches.
"""

from __future__ import annotations

import pytest

import tracegrad as tg
from tracegrad import nn
from tracegrad.passes import autodiff

SHORT, LONG = 40, 160
LINEAR = 5  # the largest LONG/SHORT work ratio taken as linear (quadratic would be 16)


class Link(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tg.randn(3))

    def forward(self, x):
        return (x * self.w).tanh() + x


def compile_chain(n_links: int) -> None:
    model = tg.compile(nn.Sequential(*[Link() for _ in range(n_links)]))
    model(tg.randn(2, 3)).sum().backward()


def calls_while_compiling(monkeypatch, module, name: str, n_links: int) -> int:
    """How many times ``module.name`` runs while a chain of ``n_links`` compiles."""
    count = 0
    inner = getattr(module, name)

    def counted(*args, **kwargs):
        nonlocal count
        count += 1
        return inner(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(module, name, counted)
        compile_chain(n_links)
    return count


@pytest.mark.parametrize(
    ("module", "name"),
    [(autodiff, "_recompute_plan")],
    ids=["rematerialize"],
)
def test_pass_work_grows_linearly(monkeypatch, module, name):
    short = calls_while_compiling(monkeypatch, module, name, SHORT)
    long = calls_while_compiling(monkeypatch, module, name, LONG)
    assert short > 0
    assert long / short <= LINEAR, f"{name}: {short} calls at {SHORT} links, {long} at {LONG}"
