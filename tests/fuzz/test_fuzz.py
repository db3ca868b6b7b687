"""Random programs over every construct not in KNOWN_BROKEN: compiled must match eager.

Each test runs a range of seeds, so a failure names the seeds to replay with
``python -m tests.fuzz --programs 1 --seed S --constructs <the list in the message>``.
"""

from __future__ import annotations

import pytest

import tracegrad as tg

from . import KNOWN_BROKEN
from .campaign import run_seeds
from .constructs import CONSTRUCTS
from .generate import generate
from .runner import observe, observe_budgeted, observe_threaded

ENABLED = [name for name in CONSTRUCTS if name not in KNOWN_BROKEN]
BATCH, BATCHES = 25, 12


def test_known_broken_names_constructs():
    assert set(KNOWN_BROKEN) <= set(CONSTRUCTS)


def test_a_seed_names_one_program():
    assert generate(7).source == generate(7).source
    assert generate(7).source != generate(8).source


@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_every_construct_writes_programs_that_run_eagerly(name):
    """Known-broken constructs included: their programs are valid, only compiling fails."""
    for seed in range(8):
        program = generate(seed, [name])
        assert program.constructs == (name,)
        observe(program, "eager")


@pytest.mark.parametrize("start", range(0, BATCH * BATCHES, BATCH))
def test_programs_match_eager(start):
    report = run_seeds(range(start, start + BATCH), ENABLED)
    details = [
        f"seed {seed}: {outcome.kind}: {outcome.detail}" for seed, _, outcome in report.failures
    ]
    assert not details, f"constructs {','.join(ENABLED)}\n" + "\n".join(details)
    assert report.counts["matched"] > 0


@pytest.fixture
def made(monkeypatch) -> list:
    """Every object tg.compile makes while the test runs, in order."""
    made: list = []
    compile_ = tg.compile

    def recording(f, **options):
        made.append(compile_(f, **options))
        return made[-1]

    monkeypatch.setattr(tg, "compile", recording)
    return made


def test_the_budget_variant_recomputes_activations(made):
    """The memory_budget construct's programs, compiled under the budget the runner picks,
    recompute forward values in their backward (else the variant would test nothing new)."""
    recomputing = 0
    for seed in range(8):
        made.clear()
        observe_budgeted(generate(seed, ["memory_budget"]))
        compiled = [c for c in made if c.latest is not None]  # (not the probes that failed)
        choices = [r for c in compiled for r in c.latest.report.recomputations.values()]
        assert choices and all(r.peak_after <= r.budget for r in choices)
        recomputing += any(r.recomputed for r in choices)
    assert recomputing >= 5


def test_the_threads_variant_runs_on_the_pool(made):
    """Compiled with threads=2 under the runner's cost model, most programs run products or
    row splits on the pool (else the variant would test nothing new)."""
    using = 0
    for seed in range(10):
        made.clear()
        observe_threaded(generate(seed))
        plans = [
            emitted.threads
            for compiled in made
            if compiled.latest is not None
            for emitted in compiled.latest.report.emitted.values()
        ]
        assert plans and all(p.threads == 2 for p in plans if p is not None)
        using += any(plans)
    assert using >= 6
