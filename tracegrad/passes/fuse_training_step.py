"""``fuse_training_step``: rules for an op whose gradient is in the same graph.

Each rule (the language is in patterns.py) applies only when the forward op and its gradient
are both present (the joint graph of a compiled module, a whole training step): the forward
keeps an intermediate (log-probabilities, a layer norm's std, gelu's tanh) that the gradient
then reads instead of computing it again. The two halves emit the same intermediate, which
``cse`` merges into one node. Or two gradients in a row cancel into one op: a sigmoid's after
its binary cross entropy's is g (p - t).
"""

from __future__ import annotations

from tracegrad.ir.core import Node, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import kernels
from tracegrad.passes.patterns import Const, Match, Pat, Rule, V, by_op, rewrite
from tracegrad.passes.pipeline import register_pass


def _beside(partner_op: str, shared: int = 2):
    """A side condition: a ``partner_op`` node reads the same first ``shared`` inputs as the
    matched node, with the same attributes (a cross entropy's logits and targets, a layer
    norm's input)."""

    def holds(m: Match) -> bool:
        mine = m.root.inputs[:shared]
        return any(
            other.op == partner_op
            and all(a is b for a, b in zip(other.inputs[:shared], mine, strict=True))
            and other.attrs == m.root.attrs
            for other in m.readers(mine[0])
        )

    return holds


def _log_probs(m: Match) -> Value:
    logits = m.root.inputs[0]
    return m.emit("log_softmax", [logits], dim=kernels.class_dim(logits.type.ndim))


def _loss_from_log_probs(m: Match) -> Value:
    return m.emit("nll_loss", [_log_probs(m), m.root.inputs[1]], **m.root.attrs)


def _gradient_from_log_probs(m: Match) -> Value:
    inputs = [_log_probs(m), *m.root.inputs[1:]]
    return m.emit("log_softmax_nll_grad", inputs, **m.root.attrs)


def _layer_norm_stats(m: Match, x: Value) -> tuple[Value, Value]:
    """x - mean and its std (one pair for the layer norm and its gradient once cse merges)."""
    centered = m.emit("layer_norm_center", [x], ndims=m.root.attrs["ndims"])
    return centered, m.emit("layer_norm_std", [centered], **m.root.attrs)


def _normalized_by_std(m: Match) -> Value:
    """The forward's std = sqrt(var + eps) is kept, y = (x - mean) / std, and the gradient
    reads y and std instead of centering x and reducing it again (a third of its work: W4's
    five layer norms, 0.2 ms a step)."""
    return m.emit("div", list(_layer_norm_stats(m, m["x"])))


def _layer_norm_gradient_from_std(m: Match) -> Value:
    std = _layer_norm_stats(m, m["x"])[1]
    attrs = {"ndims": m.root.attrs["ndims"]}
    return m.emit("layer_norm_grad_from_std", [m["y"], m["g"], std], **attrs)


def _untransposed(m: Match, value: Value) -> tuple[Value, tuple | None]:
    """(x, dims) for ``value`` = permute(x, dims), else (value, None): a gelu moved onto a
    product's own layout (elementwise-before-transpose) reads x, its gradient x^T."""
    view = m.producer(value, "permute")
    return (view.inputs[0], tuple(view.attrs["dims"])) if view else (value, None)


def _tanh_form_beside(partner_op: str):
    """A side condition: a ``partner_op`` node (the gelu's gradient, or the gelu itself)
    reads the matched node's input in gelu's tanh form too (or a transpose of it)."""

    def holds(m: Match) -> bool:
        source = _untransposed(m, m.root.inputs[0])[0]
        readers = list(m.readers(source))
        for view in readers if m.producer(m.root.inputs[0], "permute") is None else ():
            if view.op == "permute":  # the partner may read a transpose of the gelu's input
                readers += m.readers(view.outputs[0])
        return any(_reads_in_tanh_form(m, other, partner_op, source) for other in readers)

    return holds


def _reads_in_tanh_form(m: Match, other: Node, partner_op: str, source: Value) -> bool:
    return (
        other.op == partner_op
        and _untransposed(m, other.inputs[0])[0] is source
        and other.attrs == m.root.attrs
    )


def _kept_tanh(m: Match) -> Value:
    """gelu_tanh of x's source (one node for the gelu and its gradient once cse merges them),
    seen through x's transpose if x is one."""
    source, dims = _untransposed(m, m["x"])
    t = m.emit("gelu_tanh", [source])
    return t if dims is None else m.emit("permute", [t], dims=dims)


def _gelu_with_tanh(m: Match) -> Value:
    """t = tanh(c (x + k x^3)) is computed once, in the forward, and kept; the gradient reads
    it instead of computing it again (W4's two (1024, 256) GELUs: 2-4% of its step)."""
    return m.emit("gelu_with_tanh", [m["x"], _kept_tanh(m)])


def _gelu_gradient_with_tanh(m: Match) -> Value:
    return m.emit("gelu_grad_with_tanh", [m["x"], _kept_tanh(m), m["g"]])


def _gradient_of_its_own_sigmoid(m: Match) -> bool:
    """The loss's probabilities are the sigmoid's output, and nothing else reads the loss's
    gradient (else it would be computed twice)."""
    return m["p"] is m["y"] and m.only_use(m.root.inputs[1])


def _sigmoid_cross_entropy_gradient(m: Match) -> Value:
    return m.emit("sigmoid_binary_cross_entropy_grad", [m["p"], m["t"], m["g"]])


TANH = {"approximate": "tanh"}

RULES = [
    Rule(
        "masked-softmax-gradient",
        "where(mask, 0, softmax_grad(masked_softmax(x, mask), g)) -> masked_softmax_grad",
        Pat(
            "where",
            V("mask"),
            Const(0.0),
            Pat(
                "softmax_grad", Pat("masked_softmax", V(), V("mask"), name="y"), V("g"), name="grad"
            ),
        ),
        lambda m: m.emit(
            "masked_softmax_grad", [m["y"], m["g"], m["mask"]], **m.node("grad").attrs
        ),
    ),
    Rule(
        "loss-keeps-log-probs",
        "cross_entropy(x) -> nll_loss(log_softmax(x)) when its gradient is in the graph too",
        Pat("cross_entropy"),
        _loss_from_log_probs,
        when=_beside("cross_entropy_grad"),
        extra_passes=1,  # the log-probabilities are written once, for loss and gradient both
    ),
    Rule(
        "gradient-from-log-probs",
        "cross_entropy_grad(x) -> exp(log_softmax(x)) - one-hot, beside the loss's log_softmax",
        Pat("cross_entropy_grad"),
        _gradient_from_log_probs,
        when=_beside("cross_entropy"),
        extra_passes=1,  # reads the loss's log-probabilities instead of recomputing a softmax
    ),
    Rule(
        "layer-norm-keeps-std",
        "layer_norm(x) -> (x - mean) / std, std = sqrt(mean((x - mean)^2) + eps), when its "
        "gradient is in the graph too",
        Pat("layer_norm", V("x")),
        _normalized_by_std,
        when=_beside("layer_norm_grad", shared=1),
        extra_passes=2,  # the centred input and its std are kept for the gradient
    ),
    Rule(
        "layer-norm-gradient-from-std",
        "layer_norm_grad(x, y, g) -> layer_norm_grad_from_std(y, g, std), beside the forward's std",
        Pat("layer_norm_grad", V("x"), V("y"), V("g")),
        _layer_norm_gradient_from_std,
        when=_beside("layer_norm", shared=1),
        extra_passes=2,  # reads the forward's kept std instead of normalizing again
    ),
    Rule(
        "gelu-keeps-tanh",
        "gelu(x, tanh) -> gelu_with_tanh(x, t), t = gelu_tanh(x), when its gradient is in the "
        "graph too",
        Pat("gelu", V("x"), attrs=TANH),
        _gelu_with_tanh,
        when=_tanh_form_beside("gelu_grad"),
        extra_passes=2,  # t is written once and read twice; the gradient skips its own tanh
    ),
    Rule(
        "gelu-gradient-from-tanh",
        "gelu_grad(x, g, tanh) -> gelu_grad_with_tanh(x, t, g), beside the gelu's t",
        Pat("gelu_grad", V("x"), V("g"), attrs=TANH),
        _gelu_gradient_with_tanh,
        when=_tanh_form_beside("gelu"),
        extra_passes=2,  # reads the forward's t (written once, read twice)
    ),
    Rule(
        "sigmoid-bce-gradient",
        "sigmoid_grad(p, binary_cross_entropy_grad(p, t, g)) -> g (p - t) where no log is "
        "clamped (eager's formula where one is)",
        Pat("sigmoid_grad", V("y"), Pat("binary_cross_entropy_grad", V("p"), V("t"), V("g"))),
        _sigmoid_cross_entropy_gradient,
        when=_gradient_of_its_own_sigmoid,
    ),
]

_BY_OP = by_op(RULES)


@register_pass("fuse_training_step")
def fuse_training_step(graph: Graph) -> Graph:
    """Apply the rules for an op beside its gradient (shared intermediates) until none fires."""
    return rewrite(graph, _BY_OP)
