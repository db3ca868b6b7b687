"""``autograd.grad`` and ``autograd.backward``: gradients of outputs with respect to inputs."""

from __future__ import annotations

from tracegrad import tape
from tracegrad.tensor import Tensor, active_tracer, seed_gradient
from tracegrad.tensor import backward as tensor_backward


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, Tensor) else list(value)


def grad(
    outputs,
    inputs,
    grad_outputs=None,
    retain_graph=None,
    create_graph=False,
    allow_unused=None,
    materialize_grads=False,
):
    """The gradients of ``outputs`` with respect to ``inputs``, without touching ``.grad``.

    Args:
        outputs: a tensor or a sequence of them.
        inputs: a tensor or a sequence of tensors that require grad.
        grad_outputs: the vectors of the vector-Jacobian product, one per output (None for
            scalar outputs).
        retain_graph: keep the recorded graph for another backward (default: as
            ``create_graph``).
        create_graph: record the computation, for gradients of gradients.
        allow_unused: return None (instead of raising) for an input the outputs do not
            depend on.
        materialize_grads: return zeros instead of None for such inputs.

    Returns:
        A tuple with one gradient per input.

    Raises:
        RuntimeError: for an unused input without ``allow_unused``, or a non-scalar output
            without ``grad_outputs``.

    Examples:
        >>> x = tg.tensor([1.0, 2.0], requires_grad=True)
        >>> tg.autograd.grad((x**2).sum(), x)
        (tensor([2., 4.]),)
    """
    outputs, inputs = _as_list(outputs), _as_list(inputs)
    tracer = active_tracer()
    if tracer is not None:
        tracer.backward_calls += 1
    grad_outputs = _as_list(grad_outputs) or [None] * len(outputs)
    for t in inputs:
        if not t.requires_grad:
            raise RuntimeError("One of the differentiated Tensors does not require grad")
    seeds = [seed_gradient(o, g) for o, g in zip(outputs, grad_outputs, strict=True)]
    retain = create_graph if retain_graph is None else retain_graph
    grads = tape.run_backward(
        outputs, seeds, retain_graph=retain, create_graph=create_graph, capture=inputs
    )
    results = []
    for t, g in zip(inputs, grads, strict=True):
        if g is None and materialize_grads:
            g = t.detach() * 0.0
        elif g is None and not allow_unused:
            raise RuntimeError(
                "One of the differentiated Tensors appears to not have been used in the graph. "
                "Set allow_unused=True if this is the desired behavior."
            )
        elif g is not None and tuple(g.shape) != tuple(t.shape):
            g = g.sum_to(t.shape)
        results.append(g)
    return tuple(results)


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """Accumulate gradients of ``tensors`` into the leaves' ``.grad`` (or ``inputs``' only)."""
    tensors = _as_list(tensors)
    grad_tensors = _as_list(grad_tensors) or [None] * len(tensors)
    tensor_backward(tensors, grad_tensors, retain_graph, create_graph, inputs)
