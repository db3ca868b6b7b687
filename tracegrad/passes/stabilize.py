"""``stabilize``: numerically stable forms, as rewrite rules (the language is in patterns.py).

Each rule replaces a formula that loses precision or overflows (a log of a softmax, of 1 + a
tiny x, of a sigmoid of a very negative x; a softmax of scores filled with -inf) by a form that
computes the same values without doing so.
"""

from __future__ import annotations

import numpy as np

from tracegrad.ir.graph import Graph
from tracegrad.passes.patterns import ROOT, Const, Emit, Match, Pat, Rule, V, Zero, by_op, rewrite
from tracegrad.passes.pipeline import register_pass


def _scores_keep_their_shape(m: Match) -> bool:
    """(a mask broadcasting the scores to a larger shape is not one masked softmax)"""
    return m["scores"].type.shape == m.root.outputs[0].type.shape


RULES = [
    Rule(
        "log-softmax",
        "log(softmax(x)) -> log_softmax(x)",
        Pat("log", Pat("softmax", V("x"), name="s")),
        Emit("log_softmax", "x", attrs_of="s"),
    ),
    Rule(
        "log1p",
        "log(1 + x) -> log1p(x)",
        Pat("log", Pat("add", Const(1.0), V("x"), commutative=True)),
        Emit("log1p", "x"),
    ),
    Rule(
        "log-sigmoid",
        "log(sigmoid(x)) -> min(x, 0) - log1p(exp(-|x|))",
        Pat("log", Pat("sigmoid", V("x"))),
        Emit(
            "sub",
            Emit("minimum", "x", Zero("x")),
            Emit("log1p", Emit("exp", Emit("neg", Emit("abs", "x")))),
        ),
        extra_passes=5,  # finite for very negative x, at five more elementwise passes
    ),
    # One op, in place over the scores; masked entries get probability exactly 0, so the
    # gradient needs no pass for the mask.
    Rule(
        "masked-softmax",
        "softmax(where(mask, -inf, x)) -> masked_softmax(x, mask)",
        Pat("softmax", Pat("where", V("mask"), Const(-np.inf), V("scores"))),
        Emit("masked_softmax", "scores", "mask", attrs_of=ROOT),
        when=_scores_keep_their_shape,
        extra_passes=1,  # reads the mask again when the masked scores are needed elsewhere
    ),
]

_BY_OP = by_op(RULES)


@register_pass("stabilize")
def stabilize(graph: Graph) -> Graph:
    """Apply the numerically stable forms until none fires."""
    return rewrite(graph, _BY_OP)
