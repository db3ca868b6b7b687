"""The pass manager: named Graph -> Graph passes in one ordered pipeline.

A pass is a pure function: it returns a new graph and leaves its input unchanged. ``run``
copies the graph once, then applies the named passes in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracegrad.ir.graph import Graph


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable[[Graph], Graph]
    doc: str


PASSES: dict[str, Pass] = {}


def register_pass(name: str):
    """Register ``fn(graph) -> graph`` under ``name``; its docstring's first line is its doc."""

    def decorate(fn):
        PASSES[name] = Pass(name, fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return decorate


# The default pipeline, in order. The reverse-mode pass ("autodiff") runs between the forward
# and joint pipelines inside tg.compile, since it needs to know what to differentiate.
DEFAULT_PIPELINE = [
    "dce",  # drop nodes whose values nobody reads
]


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


def run(graph: Graph, names) -> Graph:
    """Apply the named passes in order to a copy of ``graph``; ``graph`` is left unchanged."""
    result = graph.copy()
    for name in resolve(names):
        result = PASSES[name].fn(result)
    return result
