"""Compile work grows linearly with the graph: counted, not timed.

Each test compiles a chain of ``x = tanh(x * w_i) + x`` links (every node live, distinct and
not constant, so no pass shrinks the graph) at n and 4n links and counts calls. Work linear in
the graph is about 4 times larger on the longer chain; quadratic work 16 times, which the
bound of 5 catches.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
from pathlib import Path

import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.passes import autodiff

SHORT, LONG = 20, 80
LINEAR = 5  # the largest LONG/SHORT work ratio taken as linear (quadratic would be 16)
PACKAGE = str(Path(tg.__file__).parent)


class Link(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tg.randn(3))

    def forward(self, x):
        return (x * self.w).tanh() + x


def chain(n_links: int) -> nn.Module:
    return nn.Sequential(*[Link() for _ in range(n_links)])


def compile_module(n_links: int) -> None:
    """A compiled module with its backward (reverse mode, split, rematerialize)."""
    model = tg.compile(chain(n_links))
    model(tg.randn(2, 3)).sum().backward()


def compile_step(n_links: int) -> None:
    """A whole Adam step, compiled twice: without and with the optimizer's state."""
    model = chain(n_links)
    opt = optim.Adam(model.parameters(), lr=0.01)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step)
    x, y = tg.randn(2, 3), tg.randn(2, 3)
    step(x, y)
    step(x, y)


def calls_of(monkeypatch, module, name: str, n_links: int) -> int:
    """How many times ``module.name`` runs while a module chain of ``n_links`` compiles."""
    count = 0
    inner = getattr(module, name)

    def counted(*args, **kwargs):
        nonlocal count
        count += 1
        return inner(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(module, name, counted)
        compile_module(n_links)
    return count


def test_rematerialize_looks_at_each_saved_value_a_bounded_number_of_times(monkeypatch):
    short = calls_of(monkeypatch, autodiff, "_recompute_plan", SHORT)
    long = calls_of(monkeypatch, autodiff, "_recompute_plan", LONG)
    assert short > 0
    assert long / short <= LINEAR, f"{short} plans at {SHORT} links, {long} at {LONG}"


def calls_per_function(compile_chain, n_links: int) -> dict[tuple, int]:
    """(file, line, name) -> calls, for every tracegrad function run while compiling."""
    profile = cProfile.Profile()
    profile.runcall(compile_chain, n_links)
    stats = pstats.Stats(profile).stats
    return {key: row[1] for key, row in stats.items() if key[0].startswith(PACKAGE)}


@pytest.mark.parametrize("compile_chain", [compile_module, compile_step], ids=["module", "step"])
def test_no_compiler_function_runs_superlinearly_often(compile_chain):
    # (a pass that rescans the graph per node shows up as an inner function called n^2 times)
    short = calls_per_function(compile_chain, SHORT)
    long = calls_per_function(compile_chain, LONG)
    superlinear = {
        f"{Path(file).name}:{line} {name}: {short.get((file, line, name), 0)} -> {calls}"
        for (file, line, name), calls in long.items()
        if calls > LINEAR * max(short.get((file, line, name), 0), LONG)
    }
    assert not superlinear, f"calls at {SHORT} links -> at {LONG} links: {sorted(superlinear)}"


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_compiling_pauses_the_garbage_collector_and_restores_it():
    seen = []

    class Watching(nn.Module):
        def forward(self, x):
            seen.append(gc.isenabled())
            return x * 2

    tg.compile(Watching())(tg.randn(3))
    assert seen == [False]
    assert gc.isenabled()
    with pytest.raises(tg.TraceError):
        tg.compile(Branchy())(tg.randn(3))
    assert gc.isenabled()
    gc.disable()  # as the user left it
    try:
        tg.compile(Watching())(tg.randn(4))
        assert not gc.isenabled()
    finally:
        gc.enable()
