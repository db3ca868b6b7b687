"""Custom differentiable functions, PyTorch style: ``forward(ctx, ...)``/``backward(ctx, ...)``."""

from __future__ import annotations

import numpy as np

from tracegrad import tape
from tracegrad.errors import ShapeError
from tracegrad.tensor import Tensor, active_tracer, is_symbolic, wrap


class FunctionCtx:
    """The ``ctx`` a custom Function's forward fills and its backward reads."""

    def __init__(self, name: str, needs_input_grad):
        self._name = name
        self.needs_input_grad = tuple(needs_input_grad)
        self._saved: list[tuple[Tensor, int]] = []
        self._node: tape.Node | None = None
        self.materialize_grads = True
        self.non_differentiable: set[int] = set()

    def save_for_backward(self, *tensors) -> None:
        self._saved = [(t, t.version if t is not None else 0) for t in tensors]

    @property
    def saved_tensors(self) -> tuple:
        if self._node is not None and self._node.freed:
            self._node.check_saved()  # raises the "backward twice" error
        for i, (t, version) in enumerate(self._saved):
            if t is not None and t.version != version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    f"an inplace operation: saved tensor {i} of '{self._name}' is at version "
                    f"{t.version}; expected version {version} instead."
                )
        return tuple(t for t, _ in self._saved)

    def mark_non_differentiable(self, *tensors) -> None:
        self.non_differentiable.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = value


class Function:
    """Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)``;
    call ``YourFunction.apply(*args)``. Your backward replaces the derived one, eagerly and
    in compiled graphs (where the function stays one ``custom`` node).

    ``ctx.save_for_backward(*tensors)`` keeps tensors for the backward
    (``ctx.saved_tensors``); ``ctx.needs_input_grad`` says which inputs need a gradient;
    ``backward`` returns one gradient (or None) per input of ``forward``.

    Examples:
        >>> class Square(tg.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x * x
        ...
        ...     @staticmethod
        ...     def backward(ctx, grad):
        ...         (x,) = ctx.saved_tensors
        ...         return 2 * x * grad
        >>> x = tg.tensor([3.0], requires_grad=True)
        >>> Square.apply(x).backward()
        >>> x.grad
        tensor([6.])"""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("a Function subclass must define forward(ctx, *args)")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("a Function subclass must define backward(ctx, *grads)")

    @classmethod
    def apply(cls, *args, **kwargs):
        needs = [isinstance(a, Tensor) and a.requires_grad for a in args]
        ctx = FunctionCtx(cls.__name__, needs)
        tracer = active_tracer()
        if tracer is not None and tracer.mode == "capture" and _traced(tracer, args):
            return tracer.record_custom(cls, ctx, args, kwargs)
        with tape.no_grad():
            result = cls.forward(ctx, *args, **kwargs)
        outputs = result if isinstance(result, tuple) else (result,)
        outputs = tuple(_own(o, args) for o in outputs)
        if tape.is_grad_enabled() and any(needs):
            _record(cls, ctx, args, outputs)
        return outputs if isinstance(result, tuple) else outputs[0]


def _traced(tracer, args) -> bool:
    return any(isinstance(a, Tensor) and (is_symbolic(a) or tracer.preexisting(a)) for a in args)


def _own(output, args):
    """An input returned unchanged gets a new tensor object, so its history stays its own."""
    if isinstance(output, Tensor) and any(output is a for a in args):
        return output.detach()
    return output


def _record(cls, ctx: FunctionCtx, args, outputs) -> None:
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    inputs = [args[i] for i in tensor_positions]
    node = tape.Node(cls.__name__, inputs, None, n_outputs=len(outputs))
    tracer = active_tracer()
    if tracer is not None:
        tracer.stamp(node)
    ctx._node = node

    def backward(grads):
        grads = [_materialize(g, o, ctx) for g, o in zip(grads, outputs, strict=True)]
        result = cls.backward(ctx, *grads)
        result = result if isinstance(result, tuple) else (result,)
        if len(result) > len(args) and all(g is None for g in result[len(args) :]):
            result = result[: len(args)]  # (trailing Nones beyond the inputs, as PyTorch allows)
        if len(result) != len(args):
            raise RuntimeError(
                f"function {cls.__name__}.backward returned an incorrect number of gradients "
                f"(expected {len(args)}, one per forward argument, got {len(result)})"
            )
        return [_checked(cls, i, result[i], args[i]) for i in tensor_positions]

    node.backward_fn = backward
    for i, out in enumerate(outputs):
        differentiable = out.dtype.is_floating_point and id(out) not in ctx.non_differentiable
        if isinstance(out, Tensor) and differentiable:
            out.grad_fn, out._out_index, out._requires_grad = node, i, True


def _materialize(grad, output, ctx):
    if grad is None and ctx.materialize_grads and isinstance(output, Tensor):
        return wrap(np.zeros(output.array.shape, output.dtype.np))
    return grad


def _checked(cls, index, grad, arg):
    if grad is None:
        return None
    if not isinstance(grad, Tensor):
        raise TypeError(
            f"{cls.__name__}.backward returned a {type(grad).__name__} at index {index}, "
            "expected a Tensor or None"
        )
    try:
        fits = np.broadcast_shapes(tuple(grad.shape), tuple(arg.shape)) == tuple(grad.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(
            f"function {cls.__name__}.backward returned an invalid gradient at index {index}: "
            f"got shape {tuple(grad.shape)} but expected shape compatible with {tuple(arg.shape)}"
        )
    return grad
