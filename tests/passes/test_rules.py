"""The rewrite rules of the rewrite passes, one test each, and unit tests of fold, cse and dce.

Each rule has a case: a minimal IR graph (in the text form) where it fires. The test runs the
pass the rule belongs to (canonicalize, stabilize, specialize_numpy or fuse_training_step) and
checks that it notes the rule, that the result (after ``dce``) has the expected ops and is
smaller (or, for rules that trade size for stability or contiguous results, free of the ops
they replace), that it computes the same values in float64, and that a second run finds nothing
left to do. A rule without a case fails ``test_every_rule_has_a_case`` and its own
parametrized test. Near misses (patterns no rule of any rewrite pass may touch), the stable
forms on extreme inputs, and unit tests of fold, cse, dce (and horizontal's one trap) follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.dtypes import TensorType, from_name
from tracegrad.errors import DTypeError, ShapeError
from tracegrad.ir.core import CONSTANT, Node, Value
from tracegrad.ir.graph import Graph
from tracegrad.ir.interpreter import interpret
from tracegrad.passes import (
    PassResult,
    canonicalize,
    fuse_training_step,
    run_pass,
    simplify,
    specialize_numpy,
    stabilize,
)
from tracegrad.passes.fold import MAX_FOLDED_ELEMENTS

# The rewrite passes, in pipeline order, and the rules each owns
PHASES = {
    "canonicalize": canonicalize.RULES,
    "stabilize": stabilize.RULES,
    "fuse_training_step": fuse_training_step.RULES,
    "specialize_numpy": specialize_numpy.RULES,
}
RULES = [rule for rules in PHASES.values() for rule in rules]
PASS_OF = {rule.name: name for name, rules in PHASES.items() for rule in rules}
ALGEBRA = {rule.name: rule.algebra for rule in RULES}
BROADCAST_RULE = "operand-broadcast"  # one rule for every elementwise binary op; tested per op


@dataclass
class Case:
    """A graph where a rule fires, and the ops its simplified (and DCE'd) form has."""

    text: str
    after: dict[str, int]
    positive: bool = False  # inputs drawn from [0.5, 2] instead of [-2, 2]
    smaller: bool = True  # False for stability rules, which trade one op for several
    gone: set[str] = field(default_factory=set)  # ops the result must not contain


# A 3x3 window, stride 1 (the text form of unfold's attributes, less its padding)
WINDOWS = "kernel=(3, 3), stride=(1, 1), dilation=(1, 1)"


def graph_of(body: str, inputs: str = "%x:f64[2,3]") -> str:
    return f"graph({inputs}) {{\n{body}\n}}"


def column_scatter(out: str, source: str, start: int, stop: int, width: int, step=None) -> str:
    """``%out = scatter_add(%source)`` into zeros of shape (2, width) at columns start:stop."""
    key = f"(('slice', None, None, None), ('slice', {start}, {stop}, {step}))"
    return f"  %{out}:f64[2,{width}] = scatter_add[key={key}, shape=(2, {width})] %{source}"


def cross_entropy_pair(loss_attrs: str, grad_attrs: str | None) -> str:
    """A cross entropy of %x (4, 3) against %t, and its gradient when ``grad_attrs`` is set."""
    lines = [f"  %1:f64[] = cross_entropy[{loss_attrs}] %x, %t"]
    if grad_attrs is not None:
        lines += [
            "  %2:f64[] = constant[value=1.0]",
            f"  %3:f64[4,3] = cross_entropy_grad[{grad_attrs}] %x, %t, %2",
            "  return %1, %3",
        ]
    else:
        lines.append("  return %1")
    return graph_of("\n".join(lines), "%x:f64[4,3], %t:i64[4]")


LOSS_ATTRS = "ignore_index=-100, label_smoothing=0.1, reduction='mean'"
CROSS_ENTROPY_AND_GRADIENT = cross_entropy_pair(LOSS_ATTRS, LOSS_ATTRS)
LOG_PROBS_SHARED = {"constant": 1, "log_softmax": 2, "log_softmax_nll_grad": 1, "nll_loss": 1}
# gelu's tanh form and its gradient on one input: both read one t (two gelu_tanh until cse)
GELU_AND_GRADIENT = graph_of(
    """  %1:f64[2,3] = gelu[approximate='tanh'] %x
  %2:f64[2,3] = gelu_grad[approximate='tanh'] %x, %g
  return %1, %2""",
    "%x:f64[2,3], %g:f64[2,3]",
)
TANH_KEPT = {"gelu_grad_with_tanh": 1, "gelu_tanh": 2, "gelu_with_tanh": 1}
# a layer norm over the last dim and its gradient: both read one std (two of each until cse)
LAYER_NORM_AND_GRADIENT = graph_of(
    """  %1:f64[2,3] = layer_norm[ndims=1, eps=1e-05] %x
  %2:f64[2,3] = layer_norm_grad[ndims=1, eps=1e-05] %x, %1, %g
  return %1, %2""",
    "%x:f64[2,3], %g:f64[2,3]",
)
STD_KEPT = {"div": 1, "layer_norm_center": 2, "layer_norm_grad_from_std": 1, "layer_norm_std": 2}

CASES = {
    "mul-one": Case(
        graph_of(
            """  %1:f64[] = constant[value=1.0]
  %2:f64[2,3] = mul %x, %1
  %3:f64[2,3] = mul %1, %x
  return %2, %3"""
        ),
        after={},
    ),
    "add-zero": Case(
        graph_of(
            """  %1:f64[] = constant[value=0.0]
  %2:f64[2,3] = add %x, %1
  %3:f64[2,3] = add %1, %x
  return %2, %3"""
        ),
        after={},
    ),
    "sub-zero": Case(
        graph_of(
            """  %1:f64[3] = constant[value=[0.0, 0.0, 0.0]]
  %2:f64[2,3] = sub %x, %1
  return %2"""
        ),
        after={},
    ),
    "div-one": Case(
        graph_of(
            """  %1:f64[] = constant[value=1.0]
  %2:f64[2,3] = div %x, %1
  return %2"""
        ),
        after={},
    ),
    "neg-neg": Case(
        graph_of(
            """  %1:f64[2,3] = neg %x
  %2:f64[2,3] = neg %1
  %3:f64[2,3] = exp %2
  return %3"""
        ),
        after={"exp": 1},
    ),
    "pow-one": Case(
        graph_of(
            """  %1:f64[2,3] = pow_scalar[exponent=1.0] %x
  %2:f64[2,3] = exp %1
  return %2"""
        ),
        after={"exp": 1},
    ),
    "transpose-of-product": Case(
        graph_of(
            """  %1:f64[2,4] = matmul %a, %b
  %2:f64[4,2] = permute[dims=(1, 0)] %1
  %3:f64[4,2] = exp %2
  return %3""",
            "%a:f64[2,3], %b:f64[3,4]",
        ),
        # the product of two transposed views, so the product itself comes out contiguous
        after={"exp": 1, "matmul": 1, "permute": 2},
        smaller=False,
    ),
    # x (2, 5) @ w^T for w (4, 5): computed as (w @ x^T)^T, the exp moving onto the product
    # a linear layer after one computed transposed: logits (4, 2) from two transposed views;
    # the log-probabilities are made down the columns of the transposed logits
    "classes-major-log-softmax": Case(
        graph_of(
            """  %1:f64[4,3] = permute[dims=(1, 0)] %h
  %2:f64[3,2] = permute[dims=(1, 0)] %w
  %3:f64[4,2] = matmul %1, %2
  %4:f64[4,2] = add %3, %c
  %5:f64[4,2] = log_softmax[dim=1] %4
  return %5""",
            "%h:f64[3,4], %w:f64[2,3], %c:f64[2]",
        ),
        after={"add": 1, "log_softmax": 1, "matmul": 1, "permute": 1, "reshape": 1},
        smaller=False,  # the two transposes become one, and the bias a column
    ),
    "wide-product": Case(
        graph_of(
            """  %1:f64[5,4] = permute[dims=(1, 0)] %w
  %2:f64[2,4] = matmul %x, %1
  %3:f64[2,4] = exp %2
  return %3""",
            "%x:f64[2,5], %w:f64[4,5]",
        ),
        after={"exp": 1, "matmul": 1, "permute": 2},  # x^T and the result^T
        smaller=False,
    ),
    # a product read twice (so transpose-of-product leaves its transpose): the bias, as a
    # column, and the relu run on the product's own layout
    "elementwise-before-transpose": Case(
        graph_of(
            """  %1:f64[3,2] = matmul %a, %b
  %2:f64[2,3] = permute[dims=(1, 0)] %1
  %3:f64[2,3] = add %2, %c
  %4:f64[2,3] = relu %3
  return %4, %1""",
            "%a:f64[3,5], %b:f64[5,2], %c:f64[3]",
        ),
        after={"add": 1, "matmul": 1, "permute": 1, "relu": 1, "reshape": 1},
        smaller=False,
    ),
    "permute-chain": Case(
        graph_of(
            """  %1:f64[3,4,2] = permute[dims=(1, 2, 0)] %x
  %2:f64[2,3,4] = permute[dims=(2, 0, 1)] %1
  %3:f64[4,2,3] = permute[dims=(1, 2, 0)] %1
  return %2, %3""",
            "%x:f64[2,3,4]",
        ),
        after={"permute": 1},  # %2 is %x; %3 is one permute of %x
    ),
    "identity-permute": Case(
        graph_of(
            """  %1:f64[2,3] = permute[dims=(0, 1)] %x
  %2:f64[2,3] = exp %1
  return %2"""
        ),
        after={"exp": 1},
    ),
    "same-reshape": Case(
        graph_of(
            """  %1:f64[2,3] = reshape[shape=(2, 3)] %x
  %2:f64[2,3] = exp %1
  return %2"""
        ),
        after={"exp": 1},
    ),
    "reshape-chain": Case(
        graph_of(
            """  %1:f64[6] = reshape[shape=(6,)] %x
  %2:f64[2,3] = reshape[shape=(2, 3)] %1
  %3:f64[3,2] = reshape[shape=(3, 2)] %1
  return %2, %3"""
        ),
        after={"reshape": 1},  # %2 is %x; %3 is one reshape of %x
    ),
    "copying-reshape": Case(
        graph_of(
            """  %1:f64[3,2] = permute[dims=(1, 0)] %x
  %2:f64[6] = reshape[shape=(6,)] %1
  return %2"""
        ),
        # the copy a transposed reshape makes anyway, now an op the memory plan can place
        after={"permute": 1, "contiguous": 1, "reshape": 1},
        smaller=False,
    ),
    "same-cast": Case(
        graph_of(
            """  %1:f64[2,3] = cast[dtype='float64'] %x
  return %1"""
        ),
        after={},
    ),
    "clone": Case(
        graph_of(
            """  %1:f64[2,3] = clone %x
  return %1"""
        ),
        after={},
    ),
    "same-broadcast": Case(
        graph_of(
            """  %1:f64[2,3] = broadcast_to[shape=(2, 3)] %x
  return %1"""
        ),
        after={},
    ),
    "same-sum-to": Case(
        graph_of(
            """  %1:f64[2,3] = sum_to[shape=(2, 3)] %x
  return %1"""
        ),
        after={},
    ),
    "exp-log": Case(
        graph_of(
            """  %1:f64[2,3] = sqrt %x
  %2:f64[2,3] = log %1
  %3:f64[2,3] = exp %2
  return %3"""
        ),
        after={"sqrt": 1},  # exp(log(y)) is y for the non-negative y = sqrt(x)
        positive=True,
    ),
    "log-exp": Case(
        graph_of(
            """  %1:f64[2,3] = exp %x
  %2:f64[2,3] = log %1
  return %2"""
        ),
        after={},
    ),
    "scalar-chain": Case(
        graph_of(
            """  %1:f64[] = constant[value=2.0]
  %2:f64[2,3] = mul %x, %1
  %3:f64[] = constant[value=3.0]
  %4:f64[2,3] = mul %2, %3
  return %4"""
        ),
        after={"constant": 1, "mul": 1},
    ),
    "sum-of-broadcast": Case(
        graph_of(
            """  %1:f64[4,3] = broadcast_to[shape=(4, 3)] %x
  %2:f64[1,3] = sum_to[shape=(1, 3)] %1
  return %2""",
            "%x:f64[1,3]",
        ),
        after={"constant": 1, "mul": 1},
        smaller=False,  # as many nodes, but no [4,3] temporary and no reduction
        gone={"broadcast_to", "sum_to"},
    ),
    "log-softmax": Case(
        graph_of(
            """  %1:f64[2,3] = softmax[dim=1] %x
  %2:f64[2,3] = log %1
  return %2"""
        ),
        after={"log_softmax": 1},
    ),
    "log1p": Case(
        graph_of(
            """  %1:f64[] = constant[value=1.0]
  %2:f64[2,3] = add %1, %x
  %3:f64[2,3] = log %2
  %4:f64[2,3] = add %x, %1
  %5:f64[2,3] = log %4
  return %3, %5"""
        ),
        after={"log1p": 2},
        positive=True,
    ),
    "log-sigmoid": Case(
        graph_of(
            """  %1:f64[2,3] = sigmoid %x
  %2:f64[2,3] = log %1
  return %2"""
        ),
        after={"abs": 1, "constant": 1, "exp": 1, "log1p": 1, "minimum": 1, "neg": 1, "sub": 1},
        smaller=False,  # stable, not smaller: min(x, 0) - log1p(exp(-|x|))
        gone={"sigmoid", "log"},
    ),
    # Attention scores scaled by a scalar: the (2, 2) operand is scaled, not the (2, 3, 3)
    # product (a quarter of the elements here would be the same saving at T = 4d).
    "scale-into-product": Case(
        graph_of(
            """  %1:f64[2,3,3] = matmul %q, %k
  %2:f64[] = constant[value=0.5]
  %3:f64[2,3,3] = mul %1, %2
  return %3""",
            "%q:f64[2,3,1], %k:f64[2,1,3]",
        ),
        after={"constant": 1, "matmul": 1, "mul": 1},
        smaller=False,  # the same ops, the multiply on the smaller operand
    ),
    # A linear layer on a (batch, time, features) input: one product of all the rows.
    "rows-times-matrix": Case(
        graph_of(
            """  %1:f64[2,3,4] = matmul %a, %w
  return %1""",
            "%a:f64[2,3,5], %w:f64[5,4]",
        ),
        after={"matmul": 1, "reshape": 2},
        smaller=False,  # two reshapes (views) around one product
    ),
    # A linear layer on (2, 3, 5): its bias, the residual and the activation run on the
    # product's (6, 4) rows (then fuse joins them to the product), one reshape at the end.
    # The residual is itself computed (so a rule moving reshapes the other way would loop).
    "elementwise-before-reshape": Case(
        graph_of(
            """  %0:f64[2,3,4] = exp %r
  %1:f64[6,4] = matmul %a, %w
  %2:f64[2,3,4] = reshape[shape=(2, 3, 4)] %1
  %3:f64[2,3,4] = add %2, %b
  %4:f64[2,3,4] = add %0, %3
  %5:f64[2,3,4] = relu %4
  return %5""",
            "%a:f64[6,5], %w:f64[5,4], %b:f64[4], %r:f64[2,3,4]",
        ),
        after={"add": 2, "exp": 1, "matmul": 1, "relu": 1, "reshape": 2},  # one: the residual
        smaller=False,
    ),
    # The gradients of q, k and v sliced from one (2, 6) projection: three scatters into
    # zeros summed become one concatenation.
    "scatter-sum-assembled": Case(
        graph_of(
            "\n".join(
                [
                    column_scatter("1", "a", 0, 2, 6),
                    column_scatter("2", "b", 2, 4, 6),
                    "  %3:f64[2,6] = add %1, %2",
                    column_scatter("4", "c", 4, 6, 6),
                    "  %5:f64[2,6] = add %3, %4",
                    "  return %5",
                ]
            ),
            "%a:f64[2,2], %b:f64[2,2], %c:f64[2,2]",
        ),
        after={"cat": 1},
        gone={"scatter_add", "add"},
    ),
    # A bias gradient: the sum over the rows of a (2, 3, 4) product is ones(6) @ rows.
    # A padded unfold (a 3x3 convolution's windows): the padding into a buffer of its own,
    # the windows a view of it.
    "padded-windows": Case(
        graph_of(
            f"""  %1:f64[1,2,3,3,3,3] = unfold[{WINDOWS}, padding=(1, 1), pad_value=0.0] %x
  return %1""",
            "%x:f64[1,2,3,3]",
        ),
        after={"pad2d": 1, "unfold": 1},
        smaller=False,  # the padding np.pad did inside unfold, now an op the memory plan places
    ),
    "gathered-rows": Case(
        graph_of(
            """  %1:f64[2,3,4] = getitem[key=(('rows', 0, 5),)] %x, %i
  return %1""",
            "%x:f64[5,4], %i:i64[2,3]",
        ),
        after={"take_rows": 1},
        smaller=False,  # the copy fancy indexing made, now an op the memory plan places
        gone={"getitem"},
    ),
    "sum-of-rows": Case(
        graph_of(
            """  %1:f64[2,3,4] = matmul %a, %b
  %2:f64[4] = sum_to[shape=(4,)] %1
  return %2""",
            "%a:f64[2,3,5], %b:f64[2,5,4]",
        ),
        after={"constant": 1, "matmul": 2, "reshape": 1},
        smaller=False,  # a product with a constant of ones, over a reshaped view
        gone={"sum_to"},
    ),
    # The bias gradient of a product computed transposed: (4, 2, 3) summed to (4, 1, 1) is
    # rows (4, 6) @ ones(6).
    "sum-of-columns": Case(
        graph_of(
            """  %1:f64[4,2,3] = matmul %a, %b
  %2:f64[4,1,1] = sum_to[shape=(4, 1, 1)] %1
  return %2""",
            "%a:f64[4,2,5], %b:f64[4,5,3]",
        ),
        after={"constant": 1, "matmul": 2, "reshape": 2},
        smaller=False,  # a product with a constant of ones, between two reshapes
        gone={"sum_to"},
    ),
    # A linear layer's weight gradient on (2, 3, 4) inputs: the 2 products summed over the
    # stack are one product over all 6 rows.
    "batch-summed-product": Case(
        graph_of(
            """  %1:f64[2,5,4] = matmul %a, %b
  %2:f64[5,4] = sum_to[shape=(5, 4)] %1
  return %2""",
            "%a:f64[2,5,3], %b:f64[2,3,4]",
        ),
        after={"contiguous": 1, "matmul": 1, "permute": 1, "reshape": 2},
        smaller=False,  # one 2-D product (a copied to (5, 2, 3) here), instead of 2 and a sum
        gone={"sum_to"},
    ),
    # masked_fill(mask, -inf) then softmax: one op, in place over the scores.
    "masked-softmax": Case(
        graph_of(
            """  %1:f64[] = constant[value=-inf]
  %2:f64[2,3] = where %m, %1, %x
  %3:f64[2,3] = softmax[dim=1] %2
  return %3""",
            "%x:f64[2,3], %m:b8[2,3]",
        ),
        after={"masked_softmax": 1},
        gone={"where", "softmax"},
    ),
    # Its gradient in a whole step's graph: y is 0 where masked, so the where goes.
    "masked-softmax-gradient": Case(
        graph_of(
            """  %1:f64[2,3] = masked_softmax[dim=1] %x, %m
  %2:f64[2,3] = softmax_grad[dim=1] %1, %g
  %3:f64[] = constant[value=0.0]
  %4:f64[2,3] = where %m, %3, %2
  return %1, %4""",
            "%x:f64[2,3], %m:b8[2,3], %g:f64[2,3]",
        ),
        after={"masked_softmax": 1, "masked_softmax_grad": 1},
        gone={"where", "softmax_grad"},
    ),
    # Attention scores: the softmax runs down the columns of the transposed product.
    "keys-major-softmax": Case(
        graph_of(
            """  %1:f64[2,3,3] = matmul %a, %b
  %2:f64[2,3,3] = softmax[dim=2] %1
  return %2""",
            "%a:f64[2,3,4], %b:f64[2,4,3]",
        ),
        after={"matmul": 1, "permute": 3, "softmax": 1},
        smaller=False,  # the same product and softmax, plus transposed views
    ),
    "keys-major-softmax-gradient": Case(
        graph_of(
            """  %1:f64[2,3,3] = permute[dims=(0, 2, 1)] %y
  %2:f64[2,3,3] = softmax_grad[dim=2] %1, %g
  return %2""",
            "%y:f64[2,3,3], %g:f64[2,3,3]",
        ),
        after={"permute": 2, "softmax_grad": 1},
        smaller=False,  # the transposes move to the cotangent and the result
    ),
    # The attention gradient scaled by 1/sqrt(d): scale the (2, 3, 1) products, not (2, 3, 3).
    "scale-out-of-product": Case(
        graph_of(
            """  %1:f64[] = constant[value=0.5]
  %2:f64[2,3,3] = mul %x, %1
  %3:f64[2,3,1] = matmul %2, %b
  return %3""",
            "%x:f64[2,3,3], %b:f64[2,3,1]",
        ),
        after={"constant": 1, "matmul": 1, "mul": 1},
        smaller=False,  # the same ops, the multiply on the smaller product
    ),
    # The loss and its gradient (a whole training step's graph) share log-probabilities:
    # the gradient becomes exp(logp) - one-hot instead of a second softmax of the logits.
    "loss-keeps-log-probs": Case(
        CROSS_ENTROPY_AND_GRADIENT,
        after=LOG_PROBS_SHARED,
        smaller=False,  # one more node (two log_softmax until cse), each one cheaper
        gone={"cross_entropy", "cross_entropy_grad"},
    ),
    "layer-norm-keeps-std": Case(
        LAYER_NORM_AND_GRADIENT,
        after=STD_KEPT,
        smaller=False,
        gone={"layer_norm", "layer_norm_grad"},
    ),
    "layer-norm-gradient-from-std": Case(
        LAYER_NORM_AND_GRADIENT,
        after=STD_KEPT,
        smaller=False,
        gone={"layer_norm", "layer_norm_grad"},
    ),
    "gelu-keeps-tanh": Case(
        GELU_AND_GRADIENT, after=TANH_KEPT, smaller=False, gone={"gelu", "gelu_grad"}
    ),
    "gelu-gradient-from-tanh": Case(
        GELU_AND_GRADIENT, after=TANH_KEPT, smaller=False, gone={"gelu", "gelu_grad"}
    ),
    # A sigmoid's gradient after its binary cross entropy's: one op, g (p - t)
    "sigmoid-bce-gradient": Case(
        graph_of(
            """  %1:f64[2,3] = sigmoid %x
  %2:f64[2,3] = binary_cross_entropy_grad %1, %t, %g
  %3:f64[2,3] = sigmoid_grad %1, %2
  return %3""",
            "%x:f64[2,3], %t:f64[2,3], %g:f64[2,3]",
        ),
        after={"sigmoid": 1, "sigmoid_binary_cross_entropy_grad": 1},
    ),
    "gradient-from-log-probs": Case(
        CROSS_ENTROPY_AND_GRADIENT,
        after=LOG_PROBS_SHARED,
        smaller=False,
        gone={"cross_entropy", "cross_entropy_grad"},
    ),
}


def arrays_for(graph: Graph, positive: bool = False, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    low = 0.5 if positive else -2.0
    arrays = []
    for v in graph.inputs:
        if v.type.dtype.name == "bool":
            arrays.append(rng.random(v.type.shape) < 0.5)
        elif v.type.dtype.name == "int64":  # class indices
            arrays.append(rng.integers(0, 3, v.type.shape))
        else:
            arrays.append(rng.uniform(low, 2.0, v.type.shape).astype(v.type.dtype.np))
    return arrays


def assert_same_values(before: Graph, after: Graph, arrays, rtol=1e-12) -> None:
    want, got = interpret(before, *arrays), interpret(after, *arrays)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def rewritten(graph: Graph, passes=tuple(PHASES)) -> PassResult:
    """The rewrite passes run in order on ``graph``: the last graph, with every pass's notes."""
    report: list[PassResult] = []
    after = tg.passes.run(graph, passes, report)
    after.lint()
    notes = [note for result in report for note in result.notes]
    return PassResult("+".join(passes), len(graph.nodes), len(after.nodes), notes, after)


def simplified(graph: Graph, passes=tuple(PHASES)):
    """The rewrite passes' result, and its graph after dce (rewrites leave the old nodes dead)."""
    result = rewritten(graph, passes)
    return result, tg.passes.run(result.graph, ["dce"])


def rule_id(name: str) -> str:
    return f"{name}: {ALGEBRA[name]}"


def test_every_rule_has_a_case():
    assert set(CASES) | {BROADCAST_RULE} == set(ALGEBRA)


def test_rule_names_are_unique():
    assert len(ALGEBRA) == len(RULES)


def test_simplify_is_canonicalize_and_stabilize():
    """The pass DESIGN.md names runs the algebra and the stable forms, nothing else."""
    assert [*canonicalize.RULES, *stabilize.RULES] == simplify.RULES


@pytest.mark.parametrize("name", sorted(set(ALGEBRA) - {BROADCAST_RULE}), ids=rule_id)
def test_rule(name):
    """The rule (its algebra is in the test id) fires in its own pass, simplifies, and keeps
    the values."""
    case, phase = CASES[name], PASS_OF[name]
    graph = Graph.parse(case.text)
    graph.lint()
    result, after = simplified(graph, [phase])
    assert name in {n.kind for n in result.notes}, f"{name} did not fire: {result.notes}"
    assert after.op_counts() == case.after, f"{ALGEBRA[name]}:\n{after}"
    if case.smaller:
        assert len(after.nodes) < len(graph.nodes)
    assert not case.gone & set(after.op_counts())
    assert_same_values(graph, after, arrays_for(graph, case.positive))
    again = run_pass(phase, result.graph)
    assert not again.notes and str(again.graph) == str(result.graph), "not at a fixed point"


def test_weight_gradient_of_a_linear_layer_on_a_stack_is_one_product_of_views():
    """sum_b x_b^T g_b for x (2, 3, 5): x^T's rows are x's columns, so the one product reads
    x as a transposed (5, 6) view and g as a (6, 4) view; nothing is copied."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[2,5,3] = permute[dims=(0, 2, 1)] %x
  %2:f64[2,5,4] = matmul %1, %g
  %3:f64[5,4] = sum_to[shape=(5, 4)] %2
  return %3""",
            "%x:f64[2,3,5], %g:f64[2,3,4]",
        )
    )
    _, after = simplified(graph)
    assert after.op_counts() == {"matmul": 1, "permute": 1, "reshape": 2}
    assert_same_values(graph, after, arrays_for(graph))


def test_products_with_a_broadcast_operand_are_no_batch_summed_product():
    """(5, 3) @ (2, 3, 4) summed over the stack is not one product of rows (the left operand
    is shared, not stacked); the sum stays a sum (of rows)."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[2,5,4] = matmul %a, %b
  %2:f64[5,4] = sum_to[shape=(5, 4)] %1
  return %2""",
            "%a:f64[5,3], %b:f64[2,3,4]",
        )
    )
    result, after = simplified(graph)
    assert {n.kind for n in result.notes} == {"sum-of-rows"}
    assert_same_values(graph, after, arrays_for(graph))


@pytest.mark.parametrize(
    "shape, to",
    [
        ("4,2,3", "1,2,3"),  # a leading dim summed: sum-of-rows' case, not this rule's
        ("4,2,3", "4,1,3"),  # a middle dim: no rows and columns
        ("4,2,3", "1,1,1"),  # everything: a total
    ],
)
def test_sum_of_columns_leaves_other_sums(shape, to):
    graph = Graph.parse(
        graph_of(
            f"""  %1:f64[{to}] = sum_to[shape=({to},)] %x
  return %1""".replace(",)]", ")]"),
            f"%x:f64[{shape}]",
        )
    )
    result, after = simplified(graph)
    assert "sum-of-columns" not in {n.kind for n in result.notes}
    assert_same_values(graph, after, arrays_for(graph))


def test_a_constant_beside_the_rows_of_a_product_moves_with_them():
    """elementwise-before-reshape with a full-size constant operand (a node of no op in the
    registry): the constant is reshaped to the rows too, and the values stay."""
    value = repr(np.arange(24.0).reshape(2, 3, 4).tolist())
    graph = Graph.parse(
        graph_of(
            f"""  %c:f64[2,3,4] = constant[value={value}]
  %1:f64[6,4] = matmul %a, %w
  %2:f64[2,3,4] = reshape[shape=(2, 3, 4)] %1
  %3:f64[2,3,4] = add %2, %c
  return %3""",
            "%a:f64[6,5], %w:f64[5,4]",
        )
    )
    result, after = simplified(graph)
    assert "elementwise-before-reshape" in {n.kind for n in result.notes}
    assert_same_values(graph, after, arrays_for(graph))


@pytest.mark.parametrize(
    "rows, columns",
    [
        (4, 2),  # taller than wide: already the fast way round
        (300, 400),  # 120000 elements: a large result keeps its layout
    ],
)
def test_wide_product_leaves_tall_and_large_products(rows, columns):
    graph = Graph.parse(
        graph_of(
            f"""  %1:f64[5,{columns}] = permute[dims=(1, 0)] %w
  %2:f64[{rows},{columns}] = matmul %x, %1
  return %2""",
            f"%x:f64[{rows},5], %w:f64[{columns},5]",
        )
    )
    result, _ = simplified(graph)
    assert "wide-product" not in {n.kind for n in result.notes}


def test_wide_product_needs_a_transposed_matrix():
    """x @ w with w contiguous (OpenBLAS gains nothing turning it round), and x @ v^T where v
    is itself a strided view (the turned product would not read a contiguous matrix)."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[2,4] = matmul %x, %w
  %2:f64[4,5] = getitem[key=(('slice', None, None, None), ('slice', None, 5, None))] %v
  %3:f64[5,4] = permute[dims=(1, 0)] %2
  %4:f64[2,4] = matmul %x, %3
  return %1, %4""",
            "%x:f64[2,5], %w:f64[5,4], %v:f64[4,6]",
        )
    )
    result, _ = simplified(graph)
    assert "wide-product" not in {n.kind for n in result.notes}


def test_elementwise_before_transpose_leaves_full_operands_and_views_of_inputs():
    """f(x^T, y) with y a full matrix stays (moving y could undo another such rewrite), and
    so does f(v^T, b) with v a graph input (no product to join)."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[3,2] = matmul %a, %b
  %2:f64[2,3] = permute[dims=(1, 0)] %1
  %3:f64[2,3] = add %2, %y
  %4:f64[2,3] = permute[dims=(1, 0)] %v
  %5:f64[2,3] = mul %4, %c
  return %3, %5, %1""",
            "%a:f64[3,5], %b:f64[5,2], %y:f64[2,3], %v:f64[3,2], %c:f64[3]",
        )
    )
    result, _ = simplified(graph)
    assert "elementwise-before-transpose" not in {n.kind for n in result.notes}


def test_elementwise_before_transpose_untransposes_a_transposed_operand():
    """f(x^T, y^T) with x a product: y^T is read as y (a gelu's kept tanh beside its input)."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[3,2] = matmul %a, %b
  %2:f64[2,3] = permute[dims=(1, 0)] %1
  %3:f64[2,3] = permute[dims=(1, 0)] %y
  %4:f64[2,3] = mul %2, %3
  return %4""",
            "%a:f64[3,5], %b:f64[5,2], %y:f64[3,2]",
        )
    )
    result, after = simplified(graph, ["specialize_numpy"])
    assert "elementwise-before-transpose" in {n.kind for n in result.notes}
    assert after.op_counts() == {"matmul": 1, "mul": 1, "permute": 1}
    assert_same_values(graph, after, arrays_for(graph))


def test_gelu_and_its_gradient_share_t_through_a_transpose():
    """The gelu moved onto a product's own layout reads x, its gradient x^T: they still
    share one t, which the gradient reads transposed."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[3,2] = permute[dims=(1, 0)] %x
  %2:f64[2,3] = gelu[approximate='tanh'] %x
  %3:f64[3,2] = gelu_grad[approximate='tanh'] %1, %g
  return %2, %3""",
            "%x:f64[2,3], %g:f64[3,2]",
        )
    )
    result, after = simplified(graph)
    assert {"gelu-keeps-tanh", "gelu-gradient-from-tanh"} <= {n.kind for n in result.notes}
    merged = tg.passes.run(after, ["cse", "dce"])
    assert merged.op_counts()["gelu_tanh"] == 1
    assert_same_values(graph, merged, arrays_for(graph))


def test_transpose_of_product_ends_in_a_product():
    graph = Graph.parse(CASES["transpose-of-product"].text)
    _, after = simplified(graph)
    producer = after.producers()[after.nodes[-1].inputs[0]]
    assert producer.op == "matmul"  # exp reads a fresh product, not a strided view of one


# --- operand-broadcast: one Rule per elementwise op with two operands ----------------------

# Attributes the ops need to build a node; an op joining the rule without an entry here
# fails operand_dtype() with a message saying so.
ATTRS = {"gelu_grad": {"approximate": "tanh"}, "add_scaled": {"alpha": -0.5}}
# The optimizer update ops' last inputs are hyperparameters: 0-d float64, never broadcast
HYPERPARAMETERS = {"lerp": 1, "ema_square": 1, "adam_step": 1}
POSITIVE = {"pow", "adam_step"}  # x ** y needs x > 0; adam_step takes sqrt(v)


def broadcast_ops() -> list[str]:
    (rule,) = [rule for rule in RULES if rule.name == BROADCAST_RULE]
    return sorted(rule.pattern.ops)


def arity(op: str) -> int:
    """The number of the op's array operands (its hyperparameters left out)."""
    return len(tg.ops.OPS[op].inputs) - HYPERPARAMETERS.get(op, 0)


def hyperparameters(op: str) -> list[Value]:
    return [
        Value(f"h{i}", TensorType((), from_name("float64")))
        for i in range(HYPERPARAMETERS.get(op, 0))
    ]


def operand_dtype(op: str):
    """float64 where the op takes it, else bool (the logical ops)."""
    attrs = ATTRS.get(op, {})
    for name in ("float64", "bool"):
        t = TensorType((2, 3), from_name(name))
        try:
            tg.ops.OPS[op].infer(*[t] * arity(op), *(h.type for h in hyperparameters(op)), **attrs)
        except (DTypeError, ShapeError, TypeError):
            continue
        return from_name(name)
    raise AssertionError(f"no operand dtype for {op}: add its attributes to ATTRS")


def broadcast_graph(op: str, position: int) -> Graph:
    """op(x0, ..., broadcast_to(y), ...) with the broadcast operand at ``position``; the x's
    are [2,3], y is [3]."""
    dtype = operand_dtype(op)
    xs = [Value(f"x{i}", TensorType((2, 3), dtype)) for i in range(arity(op) - 1)]
    y, wide = Value("y", TensorType((3,), dtype)), Value("1", TensorType((2, 3), dtype))
    hypers = hyperparameters(op)
    operands = [*xs[:position], wide, *xs[position:], *hypers]
    attrs = ATTRS.get(op, {})
    out = Value("2", tg.ops.OPS[op].infer(*(v.type for v in operands), **attrs))
    nodes = [
        Node("broadcast_to", [y], [wide], {"shape": (2, 3)}),
        Node(op, operands, [out], dict(attrs)),
    ]
    return Graph([*xs, y, *hypers], nodes, [out])


def takes_broadcast_operands(graph: Graph) -> bool:
    """Whether the op's type rule gives the same result type for the unbroadcast operand (the
    *_grad ops take the cotangent's type, so only a broadcast cotangent can go)."""
    broadcast, node = graph.nodes
    operands = [broadcast.inputs[0] if v is broadcast.outputs[0] else v for v in node.inputs]
    try:
        return tg.ops.OPS[node.op].infer(*(v.type for v in operands), **node.attrs) == (
            node.outputs[0].type
        )
    except (DTypeError, ShapeError):
        return False


BROADCAST_CASES = [(op, p) for op in broadcast_ops() for p in range(arity(op))]


@pytest.mark.parametrize(("op", "position"), BROADCAST_CASES)
def test_operand_broadcast(op, position):
    """f(x, broadcast_to(y)) -> f(x, y) for binary ops that broadcast by themselves; where
    the rule does not fire, the graph is left as it was."""
    graph = broadcast_graph(op, position)
    graph.lint()
    result, after = simplified(graph)
    fired = BROADCAST_RULE in {n.kind for n in result.notes}
    if len(tg.ops.OPS[op].inputs) == 2 and takes_broadcast_operands(graph):
        assert fired, f"{op} with a broadcast operand {position}"
    if not fired:
        assert not result.notes and str(result.graph) == str(graph)
        return
    after.lint()
    assert after.op_counts() == {op: 1}
    assert_same_values(graph, after, arrays_for(graph, positive=op in POSITIVE))


@pytest.mark.parametrize("op", [op for op in broadcast_ops() if arity(op) == 2])
def test_operand_broadcast_applies_to_each_binary_op(op):
    assert any(takes_broadcast_operands(broadcast_graph(op, p)) for p in (0, 1))


def test_operand_broadcast_keeps_a_broadcast_that_sets_the_shape():
    """Both operands smaller than the result: dropping the broadcast would change the shape."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[2,3] = broadcast_to[shape=(2, 3)] %y
  %2:f64[2,3] = add %1, %x
  return %2""",
            "%x:f64[1,3], %y:f64[3]",
        )
    )
    result, _ = simplified(graph)
    assert not result.notes and str(result.graph) == str(graph)


# --- near misses: patterns a rule must leave alone ------------------------------------------

ONES = repr(np.ones((4, 2, 3)).tolist())
NEAR_MISSES = {
    "a power other than one": """  %1:f64[2,3] = pow_scalar[exponent=2.0] %x
  return %1""",
    "0 - x is not x": """  %1:f64[] = constant[value=0.0]
  %2:f64[2,3] = sub %1, %x
  return %2""",
    "1 / x is not x": """  %1:f64[] = constant[value=1.0]
  %2:f64[2,3] = div %1, %x
  return %2""",
    "x * 2 is not x": """  %1:f64[] = constant[value=2.0]
  %2:f64[2,3] = mul %x, %1
  return %2""",
    "x * ones([4,2,3]) is not x (it broadcasts)": f"""  %1:f64[4,2,3] = constant[value={ONES}]
  %2:f64[4,2,3] = mul %x, %1
  return %2""",
    "log(2 + x) is not log1p(x)": """  %1:f64[] = constant[value=2.0]
  %2:f64[2,3] = add %1, %x
  %3:f64[2,3] = log %2
  return %3""",
    "(x * c) * 3 with c: [1,1,1] changes the shape": """  %1:f64[1,1,1] = constant[value=[[[2.0]]]]
  %2:f64[1,2,3] = mul %x, %1
  %3:f64[] = constant[value=3.0]
  %4:f64[1,2,3] = mul %2, %3
  return %4""",
    "log(1 + x) with 1: [4,2,3] changes the shape": f"""  %1:f64[4,2,3] = constant[value={ONES}]
  %2:f64[4,2,3] = add %1, %x
  %3:f64[4,2,3] = log %2
  return %3""",
    "a transposed product read twice stays": """  %1:f64[2,2] = matmul %x, %y
  %2:f64[2,2] = permute[dims=(1, 0)] %1
  %3:f64[2,2] = add %1, %2
  return %3""",
    "overlapping scattered slices add where they meet": "\n".join(
        [
            column_scatter("1", "x", 0, 3, 5),
            column_scatter("2", "x", 2, 5, 5),
            "  %3:f64[2,5] = add %1, %2",
            "  return %3",
        ]
    ),
    "strided scattered slices are no concatenation": "\n".join(
        [
            column_scatter("1", "x", 0, 6, 6, step=2),
            column_scatter("2", "x", 1, 6, 6, step=2),
            "  %3:f64[2,6] = add %1, %2",
            "  return %3",
        ]
    ),
}


@pytest.mark.parametrize("text", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_near_miss_is_left_alone(text):
    """No rule fires, and none leaves nodes behind (the graph prints the same)."""
    graph = Graph.parse(graph_of(text, "%x:f64[2,3], %y:f64[3,2]"))
    graph.lint()
    result = rewritten(graph)
    assert not result.notes
    assert str(result.graph) == str(graph)


@pytest.mark.parametrize(
    "text",
    [
        cross_entropy_pair(LOSS_ATTRS, None),
        cross_entropy_pair(LOSS_ATTRS, LOSS_ATTRS.replace("'mean'", "'sum'")),
    ],
    ids=["a loss without its gradient", "a gradient of another reduction"],
)
def test_cross_entropy_keeps_its_logits_unless_its_gradient_is_beside_it(text):
    graph = Graph.parse(text)
    result = rewritten(graph)
    assert not result.notes
    assert str(result.graph) == str(graph)


NEAR_MISSES_WITH_INPUTS = {
    "gelu without its gradient (inference) computes t inside its kernel": (
        """  %1:f64[2,3] = gelu[approximate='tanh'] %x
  return %1""",
        "%x:f64[2,3]",
    ),
    "log-probabilities of a product of contiguous operands stay row-major": (
        """  %1:f64[3,2] = permute[dims=(1, 0)] %w
  %2:f64[4,2] = matmul %h, %1
  %3:f64[4,2] = log_softmax[dim=1] %2
  return %3""",
        "%h:f64[4,3], %w:f64[2,3]",
    ),
    "log-probabilities over many classes stay row-major": (
        """  %1:f64[400,3] = permute[dims=(1, 0)] %h
  %2:f64[3,300] = permute[dims=(1, 0)] %w
  %3:f64[400,300] = matmul %1, %2
  %4:f64[400,300] = log_softmax[dim=1] %3
  return %4""",
        "%h:f64[3,400], %w:f64[300,3]",
    ),
    "logits read by something else too": (
        """  %1:f64[4,3] = permute[dims=(1, 0)] %h
  %2:f64[3,2] = permute[dims=(1, 0)] %w
  %3:f64[4,2] = matmul %1, %2
  %4:f64[4,2] = log_softmax[dim=1] %3
  %5:f64[4,2] = exp %3
  return %4, %5""",
        "%h:f64[3,4], %w:f64[2,3]",
    ),
    "a layer norm without its gradient (inference) stays one kernel": (
        """  %1:f64[2,3] = layer_norm[ndims=1, eps=1e-05] %x
  return %1""",
        "%x:f64[2,3]",
    ),
    "the gradient of a layer norm with another eps": (
        """  %1:f64[2,3] = layer_norm[ndims=1, eps=1e-05] %x
  %2:f64[2,3] = layer_norm_grad[ndims=1, eps=0.001] %x, %1, %g
  return %1, %2""",
        "%x:f64[2,3], %g:f64[2,3]",
    ),
    "gelu's exact form has no tanh to keep": (
        """  %1:f64[2,3] = gelu[approximate='none'] %x
  %2:f64[2,3] = gelu_grad[approximate='none'] %x, %g
  return %1, %2""",
        "%x:f64[2,3], %g:f64[2,3]",
    ),
    "the gradient of another input's gelu": (
        """  %1:f64[2,3] = gelu[approximate='tanh'] %x
  %2:f64[2,3] = gelu_grad[approximate='tanh'] %g, %x
  return %1, %2""",
        "%x:f64[2,3], %g:f64[2,3]",
    ),
    "a sum over a kept size-1 dim is no sum of rows": (
        """  %1:f64[1,3] = sum_to[shape=(1, 3)] %x
  return %1""",
        "%x:f64[2,3]",
    ),
    "a sum of a strided view's rows would copy the view": (
        """  %1:f64[3,2,2] = permute[dims=(2, 1, 0)] %x
  %2:f64[2] = sum_to[shape=(2,)] %1
  return %2""",
        "%x:f64[2,2,3]",
    ),
    "an integer sum stays a sum": (
        """  %1:i64[3] = sum_to[shape=(3,)] %t
  return %1""",
        "%t:i64[2,3]",
    ),
    "scores read twice stay row-major": (
        """  %1:f64[2,3,3] = matmul %a, %b
  %2:f64[2,3,3] = softmax[dim=2] %1
  %3:f64[2,3,3] = add %1, %2
  return %3""",
        "%a:f64[2,3,4], %b:f64[2,4,3]",
    ),
    "a softmax over a dim other than the last": (
        """  %1:f64[2,3,3] = matmul %a, %b
  %2:f64[2,3,3] = softmax[dim=1] %1
  return %2""",
        "%a:f64[2,3,4], %b:f64[2,4,3]",
    ),
    "rows longer than 256 are not short": (
        """  %1:f64[1,2,300] = matmul %a, %b
  %2:f64[1,2,300] = softmax[dim=2] %1
  return %2""",
        "%a:f64[1,2,4], %b:f64[1,4,300]",
    ),
    "one matrix (2-D) is left alone": (
        """  %1:f64[3,3] = matmul %a, %b
  %2:f64[3,3] = softmax[dim=1] %1
  return %2""",
        "%a:f64[3,4], %b:f64[4,3]",
    ),
    "a finite fill is no masked softmax": (
        """  %1:f64[] = constant[value=-1000000000.0]
  %2:f64[2,3] = where %m, %1, %x
  %3:f64[2,3] = softmax[dim=1] %2
  return %3""",
        "%x:f64[2,3], %m:b8[2,3]",
    ),
    "a bias along a dim the reshape made stays on the stack": (
        """  %1:f64[6,4] = matmul %a, %w
  %2:f64[2,12] = reshape[shape=(2, 12)] %1
  %3:f64[2,12] = add %2, %b
  return %3""",
        "%a:f64[6,5], %w:f64[5,4], %b:f64[12]",
    ),
    "an operand of another shape stays on the stack": (
        """  %1:f64[6,4] = matmul %a, %w
  %2:f64[2,3,4] = reshape[shape=(2, 3, 4)] %1
  %3:f64[2,3,4] = add %2, %b
  return %3""",
        "%a:f64[6,5], %w:f64[5,4], %b:f64[3,1]",
    ),
    "a strided operand is not copied to meet the rows": (
        """  %1:f64[6,4] = matmul %a, %w
  %2:f64[2,3,4] = reshape[shape=(2, 3, 4)] %1
  %3:f64[2,3,4] = permute[dims=(0, 2, 1)] %r
  %4:f64[2,3,4] = add %2, %3
  return %4""",
        "%a:f64[6,5], %w:f64[5,4], %r:f64[2,4,3]",
    ),
    "a reshape of an input is left where it is": (
        """  %1:f64[2,3,4] = reshape[shape=(2, 3, 4)] %a
  %2:f64[2,3,4] = exp %1
  return %2""",
        "%a:f64[6,4]",
    ),
    "an unchecked index array (negative rows wrap) stays a getitem": (
        """  %1:f64[2,4] = getitem[key=(('tensor', 0),)] %x, %i
  return %1""",
        "%x:f64[5,4], %i:i64[2]",
    ),
    "rows checked against another size than the table's stay a getitem": (
        """  %1:f64[2,4] = getitem[key=(('rows', 0, 3),)] %x, %i
  return %1""",
        "%x:f64[5,4], %i:i64[2]",
    ),
    "a scaled operand also read elsewhere keeps its scale": (
        """  %1:f64[] = constant[value=0.5]
  %2:f64[2,3,3] = mul %x, %1
  %3:f64[2,3,1] = matmul %2, %b
  %4:f64[2,3,3] = exp %2
  return %3, %4""",
        "%x:f64[2,3,3], %b:f64[2,3,1]",
    ),
}


@pytest.mark.parametrize(
    ("body", "inputs"), NEAR_MISSES_WITH_INPUTS.values(), ids=NEAR_MISSES_WITH_INPUTS.keys()
)
def test_near_miss_with_its_inputs_is_left_alone(body, inputs):
    graph = Graph.parse(graph_of(body, inputs))
    result = rewritten(graph)
    assert not result.notes
    assert str(result.graph) == str(graph)


# --- numerical stability on extreme inputs ----------------------------------------------------


def stable_pair(fn, *examples):
    """The traced graph of ``fn`` and its simplified form."""
    graph = tg.trace(fn, *examples)
    return graph, tg.passes.run(graph, ["simplify", "dce"])


def test_log_of_softmax_is_finite_for_large_logits():
    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 999.0, 1000.0]])
    graph, stable = stable_pair(lambda t: t.softmax(1).log(), x)
    (naive,) = interpret(graph, x)
    (result,) = interpret(stable, x)
    assert np.isneginf(naive).any()  # log(0) where exp underflows
    assert np.all(np.isfinite(result))
    shifted = x - x.max(1, keepdims=True)
    want = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    np.testing.assert_allclose(result, want, rtol=1e-12)


def test_loss_and_gradient_through_log_probs_stay_finite_for_huge_logits():
    graph = Graph.parse(CROSS_ENTROPY_AND_GRADIENT)
    _, after = simplified(graph)
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 9999.0, 1e4], [0.0, 0.0, 0.0], [1e4, 1e4, -1e4]])
    t = np.array([1, 2, 0, 0])
    results = interpret(after, x, t)
    assert all(np.all(np.isfinite(r)) for r in results)
    for got, want in zip(results, interpret(graph, x, t), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_log_of_one_plus_tiny_keeps_precision():
    x = np.array([1e-20, -3e-17, 1e-10, 0.5])
    graph, stable = stable_pair(lambda t: (1.0 + t).log(), x)
    (naive,) = interpret(graph, x)
    (result,) = interpret(stable, x)
    assert naive[0] == 0.0 and naive[1] != x[1]  # 1 + 1e-20 rounds to 1
    np.testing.assert_allclose(result, np.log1p(x), rtol=1e-15)
    assert result[0] == 1e-20


def test_log_of_sigmoid_is_finite_for_very_negative_inputs():
    x = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    graph, stable = stable_pair(lambda t: t.sigmoid().log(), x)
    (naive,) = interpret(graph, x)
    (result,) = interpret(stable, x)
    assert np.isneginf(naive[0])
    assert np.all(np.isfinite(result))
    want = np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))
    np.testing.assert_allclose(result, want, rtol=1e-15)
    assert result[0] == -1000.0


def test_log_of_sigmoid_keeps_its_gradient_at_zero():
    """The stable form has kinks (min, abs) at 0; its gradient there must stay 1/2."""
    x = np.array([0.0, -1000.0, 3.0])
    graph, stable = stable_pair(lambda t: t.sigmoid().log(), x)
    grads = []
    for g in (graph, stable):
        joint = tg.passes.autodiff.differentiate(g, [g.inputs[0].name])[0]
        grads.append(interpret(joint, x, np.ones(3))[1])
    naive, grad = grads
    np.testing.assert_allclose(grad, [0.5, 1.0, 1.0 - 1.0 / (1.0 + np.exp(-3.0))], rtol=1e-12)
    np.testing.assert_allclose(grad[[0, 2]], naive[[0, 2]], rtol=1e-12)


def test_exp_of_log_keeps_nan_for_negative_inputs():
    x = np.array([-1.0, 2.0])
    graph, simple = stable_pair(lambda t: t.log().exp(), x)
    (want,) = interpret(graph, x)
    (got,) = interpret(simple, x)
    assert np.isnan(want[0])
    np.testing.assert_array_equal(got, want)


# --- fold -----------------------------------------------------------------------------------


def test_fold_turns_a_constant_subgraph_into_a_constant():
    graph = Graph.parse(
        graph_of(
            """  %1:f64[3] = constant[value=[1.0, 2.0, 3.0]]
  %2:f64[] = constant[value=2.0]
  %3:f64[3] = mul %1, %2
  %4:f64[3] = exp %3
  %5:f64[2,3] = add %x, %4
  return %5"""
        )
    )
    result = run_pass("fold", graph)
    result.graph.lint()
    assert [n.kind for n in result.notes] == ["folded", "folded"]
    folded = {n.outputs[0].name: n for n in result.graph.nodes}
    assert folded["4"].op == CONSTANT
    np.testing.assert_allclose(folded["4"].attrs["value"], np.exp([2.0, 4.0, 6.0]), rtol=1e-15)
    assert folded["5"].op == "add"  # reads the input: stays
    after = tg.passes.run(result.graph, ["dce"])
    assert after.op_counts() == {"add": 1, "constant": 1}
    x = arrays_for(graph)
    assert_same_values(graph, after, x, rtol=0)


def test_fold_keeps_integer_dtypes():
    graph = Graph.parse(
        """graph() {
  %1:i64[2] = constant[value=[7, -7]]
  %2:i64[] = constant[value=2]
  %3:i64[2] = mul %1, %2
  %4:i64[2] = add %3, %2
  return %4
}"""
    )
    graph.lint()
    after = tg.passes.run(graph, ["fold", "dce"])
    (node,) = after.nodes
    assert node.op == CONSTANT and node.attrs["value"].dtype == np.int64
    np.testing.assert_array_equal(node.attrs["value"], [16, -12])


def broadcast_of_constant(shape) -> Graph:
    dims = ", ".join(map(str, shape))
    return Graph.parse(
        f"""graph(%x:f64[{dims}]) {{
  %1:f64[] = constant[value=0.5]
  %2:f64[{dims}] = broadcast_to[shape=({dims},)] %1
  %3:f64[{dims}] = mul %x, %2
  return %3
}}"""
    )


def test_fold_does_not_materialize_a_big_broadcast():
    big = (1, MAX_FOLDED_ELEMENTS + 1)
    graph = broadcast_of_constant(big)
    result = run_pass("fold", graph)
    assert not result.notes
    assert [n.op for n in result.graph.nodes] == [CONSTANT, "broadcast_to", "mul"]
    assert result.graph.nodes[0].attrs["value"].size == 1


def test_fold_does_materialize_a_small_broadcast():
    graph = broadcast_of_constant((4, 4))
    result = run_pass("fold", graph)
    assert [n.kind for n in result.notes] == ["folded"]
    assert result.graph.nodes[1].op == CONSTANT
    assert result.graph.nodes[1].attrs["value"].shape == (4, 4)
    assert_same_values(graph, result.graph, arrays_for(graph), rtol=0)


def test_fold_may_keep_a_big_result_no_bigger_than_its_input():
    """A big constant folded through an elementwise op costs no more memory than it had."""
    n = MAX_FOLDED_ELEMENTS * 2
    big = Value("1", TensorType((n,), from_name("float64")))
    neg = Value("2", big.type)
    nodes = [
        Node(CONSTANT, [], [big], {"value": np.arange(n, dtype=np.float64)}),
        Node("neg", [big], [neg]),
    ]
    after = tg.passes.run(Graph([], nodes, [neg]), ["fold", "dce"])
    (node,) = after.nodes
    assert node.op == CONSTANT
    np.testing.assert_array_equal(node.attrs["value"], -np.arange(n))


# --- horizontal (a default pass without rules of its own) -----------------------------------


def test_horizontal_leaves_a_product_of_a_product_alone():
    """x @ a and x @ (x @ a) share their left operand, but the second needs the first."""
    x, a = np.random.default_rng(0).standard_normal((2, 3, 3))
    graph = tg.trace(lambda x, a: x @ (x @ a), x, a)
    result = run_pass("horizontal", graph)
    result.graph.lint()
    assert not result.notes and str(result.graph) == str(graph)
    assert_same_values(graph, result.graph, [x, a], rtol=0)


# --- cse ------------------------------------------------------------------------------------


def test_cse_merges_duplicates_only():
    graph = Graph.parse(
        graph_of(
            """  %1:f64[2,3] = exp %x
  %2:f64[2,3] = exp %x
  %3:f64[3] = sum[dims=(0,), keepdim=False] %1
  %4:f64[3] = sum[dims=(0,), keepdim=False] %2
  %5:f64[2] = sum[dims=(1,), keepdim=False] %2
  %6:f64[] = constant[value=2.0]
  %7:f64[] = constant[value=2.0]
  %8:f32[] = constant[value=2.0]
  %9:f64[3] = mul %3, %6
  %10:f64[3] = mul %4, %7
  %11:f32[2,3] = cast[dtype='float32'] %x
  %12:f32[2,3] = mul %11, %8
  return %9, %10, %5, %12"""
        )
    )
    result = run_pass("cse", graph)
    result.graph.lint()
    assert [n.kind for n in result.notes] == ["merged"] * 4  # %2, %4, %7, %10
    counts = result.graph.op_counts()
    assert counts == {"cast": 1, "constant": 2, "exp": 1, "mul": 2, "sum": 2}
    out = result.graph.outputs
    assert out[0] is out[1]  # the same value now
    assert_same_values(graph, result.graph, arrays_for(graph), rtol=0)


def dropout_twice(x):
    return F.dropout(x, 0.5, training=True) + F.dropout(x, 0.5, training=True)


def run_seeded(graph, *arrays):
    tg.manual_seed(7)
    return interpret(graph, *arrays)


def test_cse_keeps_each_random_draw():
    x = np.ones((64,))
    graph = tg.trace(dropout_twice, x)
    draws = graph.op_counts().get("dropout_mask", 0)
    assert draws == 2
    merged = tg.passes.run(graph, ["cse"])
    assert merged.op_counts()["dropout_mask"] == 2
    (want,) = run_seeded(graph, x)
    (got,) = run_seeded(merged, x)
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) == {0.0, 2.0, 4.0}  # two different masks: some 2s


# --- dce ------------------------------------------------------------------------------------


def test_dce_removes_unused_nodes():
    graph = Graph.parse(
        graph_of(
            """  %1:f64[2,3] = exp %x
  %2:f64[2,3] = tanh %1
  %3:f64[2,3] = neg %x
  return %3"""
        )
    )
    result = run_pass("dce", graph)
    assert [n.kind for n in result.notes] == ["removed", "removed"]
    assert result.graph.op_counts() == {"neg": 1}


def unused_dropout_then_dropout(x):
    F.dropout(x, 0.5, training=True)  # result unused, but it advances the generator
    return F.dropout(x, 0.5, training=True)


def test_dce_keeps_random_draws():
    """An unused draw still advances the generator: the later draw must match eager."""
    x = np.ones((64,))
    graph = tg.trace(unused_dropout_then_dropout, x)
    assert graph.op_counts()["dropout_mask"] == 2
    after = tg.passes.run(graph, ["dce"])
    assert after.op_counts()["dropout_mask"] == 2
    tg.manual_seed(7)
    eager = unused_dropout_then_dropout(tg.tensor(x)).numpy()
    (got,) = run_seeded(after, x)
    np.testing.assert_array_equal(got, eager)
    tg.manual_seed(7)
    first_draw = F.dropout(tg.tensor(x), 0.5, training=True).numpy()
    assert not np.array_equal(got, first_draw)  # so dropping the unused draw would show


def test_dce_keeps_updates_that_are_not_outputs():
    graph = Graph.parse(
        """graph(%x:f64[3], %w:f64[3]) {
  %1:f64[3] = mul %x, %w
  %2:f64[3] = sub %w, %1
  %3:f64[3] = exp %x
  return %x
  update %w <- %2
}"""
    )
    after = tg.passes.run(graph, ["dce"])
    after.lint()
    assert after.op_counts() == {"mul": 1, "sub": 1}
    assert after.updates["w"].name == "2"
    x, w = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 2.0])
    _, updates = interpret(after, x, w, updates=True)
    np.testing.assert_array_equal(updates["w"], w - x * w)


def test_sgd_step_compiled_whole_keeps_its_parameter_updates():
    """DCE must keep the optimizer's in-place updates: nothing returns them."""

    def build():
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
        return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    x = tg.tensor(np.random.default_rng(0).standard_normal((8, 4)))
    y = tg.tensor(np.random.default_rng(1).integers(0, 2, 8))
    results = []
    for compiled in (False, True):
        model, opt = build()

        def train_step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step) if compiled else train_step
        before = [p.detach().numpy().copy() for p in model.parameters()]
        for _ in range(3):
            step(x, y)
        after = [p.detach().numpy() for p in model.parameters()]
        assert all(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
        results.append(after)
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    graph = step.graph
    assert graph.updates, "the step's graph lost its parameter updates"
    live = {id(v) for n in graph.nodes for v in n.outputs}
    assert all(id(v) in live for v in graph.updates.values())


def test_reshape_that_is_a_view_of_a_transpose_gets_no_copy():
    """Splitting a dim of a transposed view needs no copy, so the rule leaves it alone."""
    graph = tg.ir.Graph.parse(
        graph_of(
            """  %1:f64[3,2] = permute[dims=(1, 0)] %x
  %2:f64[3,2,1] = reshape[shape=(3, 2, 1)] %1
  return %2"""
        )
    )
    assert "copying-reshape" not in {n.kind for n in rewritten(graph).notes}


def test_scale_into_product_leaves_a_product_read_elsewhere():
    """A weight gradient kept as .grad and scaled by the learning rate for the update (x @ W + b
    with SGD): scaling an operand instead would compute the product twice."""
    graph = Graph.parse(
        graph_of(
            """  %1:f64[2,3,3] = matmul %q, %k
  %2:f64[] = constant[value=0.5]
  %3:f64[2,3,3] = mul %1, %2
  return %3, %1""",
            "%q:f64[2,3,1], %k:f64[2,1,3]",
        )
    )
    result, after = simplified(graph)
    assert "scale-into-product" not in {n.kind for n in result.notes}
    assert after.op_counts()["matmul"] == 1


def test_scale_into_product_scales_the_smaller_operand():
    graph = Graph.parse(CASES["scale-into-product"].text)
    _, after = simplified(graph)
    (mul,) = [n for n in after.nodes if n.op == "mul"]
    assert mul.outputs[0].type.shape == (2, 3, 1)  # q, not the (2, 3, 3) scores
