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
    """The gradients of ``outputs`` with respect to ``inputs``, without touching ``.grad``."""
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
