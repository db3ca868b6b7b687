"""Many programs in a row, their outcomes counted and the failures kept."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .generate import Program, generate
from .runner import Outcome, run_program

FAILURES = ("mismatched", "crashed", "invalid")


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[int, Program, Outcome]] = field(default_factory=list)
    refusals: Counter = field(default_factory=Counter)  # TraceError messages, by program

    def summary(self) -> str:
        kinds = ["matched", "refused", *FAILURES]
        seeds = [seed for seed, _, _ in self.failures]
        parts = [f"{sum(self.counts.values())} programs run"]
        parts += [f"{self.counts[k]} {k}" for k in kinds]
        return ", ".join(parts) + (f"; failing seeds: {seeds}" if seeds else "")


def run_seeds(seeds, enabled=None) -> Report:
    """Generate and run the program of each seed over the ``enabled`` constructs."""
    report = Report()
    for seed in seeds:
        program = generate(seed, enabled)
        outcome = run_program(program)
        report.counts[outcome.kind] += 1
        if outcome.kind in FAILURES:
            report.failures.append((seed, program, outcome))
        report.refusals.update(set(outcome.refusals))  # (each message once per program)
    return report
