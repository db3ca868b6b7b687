"""The pass manager: named Graph -> Graph passes in one ordered pipeline.

A pass is a function ``fn(graph) -> graph``; it may reuse or modify the graph it is given,
because ``run`` hands each pass its own copy, so the caller's graph and the snapshots kept for
``explain()`` never change. Passes describe what they changed by calling ``note(kind, node)``;
``run`` collects the notes into a ``PassResult`` per pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tracegrad.ir.graph import Graph
from tracegrad.ir.lint import GraphLintError
from tracegrad.logs import log, timed


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable[..., Graph]
    doc: str
    # (graph, **options) -> whether the pass may change it; a pass that would leave it as it
    # is (a data-parallel pass on a step without collectives) is skipped, with no copy made
    needed: Callable[..., bool] | None = None


@dataclass(frozen=True)
class Note:
    kind: str  # "merged", "folded", "removed", a rewrite rule's name...
    op: str
    location: object
    scope: object = None  # the module call that made the node


@dataclass
class PassResult:
    """What one pass did: node counts before and after, its notes, the graph it produced,
    the graph it was given and the options it ran with (so that it can run again)."""

    name: str
    nodes_before: int
    nodes_after: int
    notes: list[Note] = field(default_factory=list)
    graph: Graph | None = None
    before: Graph | None = None
    options: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.notes) or self.nodes_before != self.nodes_after

    def summary(self) -> str:
        return (
            f"{self.name}: {self.nodes_before} -> {self.nodes_after} nodes, "
            f"{len(self.notes)} changes"
        )


PASSES: dict[str, Pass] = {}
_notes: list[Note] | None = None

# Lint the graph each pass returns (and the graph a pipeline starts from): the test suite
# switches this on (tests/conftest.py), a user with TRACEGRAD_LINT_PASSES=1.
LINT_AFTER_EACH_PASS = os.environ.get("TRACEGRAD_LINT_PASSES") == "1"


def register_pass(name: str, needed: Callable[..., bool] | None = None):
    """Register ``fn(graph) -> graph`` under ``name``; its docstring's first line is its doc.
    ``needed(graph, **options)``, when given, says cheaply whether it may change the graph."""

    def decorate(fn):
        PASSES[name] = Pass(name, fn, (fn.__doc__ or "").strip().splitlines()[0], needed)
        return fn

    return decorate


def note(kind: str, node) -> None:
    """Record that the running pass changed ``node`` (for explain() and the logs)."""
    if _notes is not None:
        _notes.append(Note(kind, node.op, node.location, node.scope))


# The default pipeline, in order: a table of contents of the optimizer. The reverse-mode pass
# runs inside tg.compile between the forward and the joint pipelines.
DEFAULT_PIPELINE = [
    "fold",  # evaluate nodes whose inputs are all constants
    "canonicalize",  # algebraic identities: x * 1 -> x, chains of views, copies
    "stabilize",  # numerically stable forms: log(softmax(x)) -> log_softmax(x)
    "fuse_training_step",  # an op beside its gradient keeps what the gradient reads
    "specialize_numpy",  # NumPy layout and BLAS choices: long side first, one product of rows
    "cse",  # compute each distinct expression once
    "horizontal",  # sibling matmuls on one input become one wider matmul
    "dce",  # drop nodes whose values nobody reads (what the rewrites above replaced)
    "bucket",  # gradient all_reduces of a data-parallel step grouped into buckets
    "fuse",  # chains of elementwise ops become one kernel each (before the memory plan)
    "schedule",  # kept results and update scalars early; runs on each generated function
    "recompute",  # under a memory budget: forward values the backward computes again
    "overlap",  # each bucket's all_reduce starts early, waited on late; on each function
    "threads",  # with tg.compile(threads=n): independent large products side by side
    "memory",  # in-place writes and pooled buffers; runs on each generated function
]
# Planning passes annotate the final graph of each generated function (after reverse mode and
# the split into forward and backward), so tg.compile runs them last, part by part.
PLANNING = ("schedule", "recompute", "overlap", "threads", "inplace", "memory")
# Passes whose rewrites are choices of the NumPy backend, not of the user's program: the
# generated code is made with them, the graphs users read (cm.graph) without them.
BACKEND_CHOICES = ("specialize_numpy",)


def transforms(passes, without=()) -> list[str]:
    """The graph-rewriting passes of a pipeline spec (planning passes left out), less those
    named in ``without`` (``transforms(spec, without=BACKEND_CHOICES)``: the readable ones)."""
    return [name for name in resolve(passes) if name not in PLANNING and name not in without]


def planning(passes) -> list[str]:
    return [name for name in resolve(passes) if name in PLANNING]


def resolve(passes) -> list[str]:
    """``"default"``, ``None`` (no optimization) or a list of pass names."""
    if passes is None:
        return []
    if passes == "default":
        return list(DEFAULT_PIPELINE)
    names = [passes] if isinstance(passes, str) else list(passes)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ValueError(f"unknown passes {unknown}; known passes: {sorted(PASSES)}")
    return names


@timed(lambda name, graph, **options: f"pass {name}")
def run_pass(name: str, graph: Graph, **options) -> PassResult:
    """Apply one pass to a copy of ``graph`` (``options``: the pass's keyword arguments)."""
    global _notes
    spec = PASSES[name]
    if spec.needed is not None and not spec.needed(graph, **options):
        return PassResult(name, len(graph.nodes), len(graph.nodes), [], graph, graph, options)
    outer, _notes = _notes, []
    try:
        result = spec.fn(graph.copy(), **options)
        notes = _notes
    finally:
        _notes = outer
    checked(result, f"after the {name} pass")
    return PassResult(name, len(graph.nodes), len(result.nodes), notes, result, graph, options)


def replayed(results: list[PassResult]) -> list[PassResult]:
    """``results`` with the graph each pass was given and made, run again from the graph the
    first was given where they were let go. Passes are deterministic (the same graph and
    options in, the same graph out, value names included), so these are the graphs the
    compile made."""
    if all(r.graph is not None for r in results):
        return results
    graph, again = results[0].before, []
    assert graph is not None  # (kept: the graph the stage began with)
    for result in results:
        made = run_pass(result.name, graph, **result.options).graph
        again.append(replace(result, before=graph, graph=made))
        graph = made
    return again


def checked(graph: Graph, when: str) -> Graph:
    """``graph``, linted first when LINT_AFTER_EACH_PASS is on; errors say ``when``."""
    if LINT_AFTER_EACH_PASS:
        try:
            graph.lint()
        except GraphLintError as exc:
            raise GraphLintError(f"{when}: {exc}") from None
    return graph


def run(graph: Graph, names, report: list[PassResult] | None = None) -> Graph:
    """Apply the named passes in order; ``graph`` is left unchanged. With ``report``, append
    one PassResult per pass."""
    result = checked(graph, "before the first pass").copy()
    for name in resolve(names):
        outcome = run_pass(name, result)
        result = outcome.graph
        if report is not None:
            report.append(outcome)
        if outcome.changed:
            log("passes", outcome.summary())
    return result
