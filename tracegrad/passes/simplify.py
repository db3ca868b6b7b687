"""``simplify``: the algebraic identities and the numerically stable forms, run together.

The pass DESIGN.md names: the rules of ``canonicalize`` and ``stabilize`` in one rewrite, so a
stable form found after an identity (or the other way round) is found in the same run.
"""

from __future__ import annotations

from tracegrad.ir.graph import Graph
from tracegrad.passes import canonicalize, stabilize
from tracegrad.passes.patterns import by_op, rewrite
from tracegrad.passes.pipeline import register_pass

RULES = [*canonicalize.RULES, *stabilize.RULES]
_BY_OP = by_op(RULES)


@register_pass("simplify")
def simplify(graph: Graph) -> Graph:
    """Apply the algebraic identities and numerically stable forms until none fires."""
    return rewrite(graph, _BY_OP)
