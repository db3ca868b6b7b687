"""``tg.compile`` and its siblings: the public entry points (``compile``, ``trace``,
``grad``, ``value_and_grad``) onto the compiled callables of ``tracegrad.compiled``."""

from __future__ import annotations

import numpy as np

from tracegrad import pytree
from tracegrad.autograd import grad as autograd_grad
from tracegrad.compiled.function import CompiledFunction
from tracegrad.compiled.module import CompiledModule
from tracegrad.compiled.state import ReachedState, is_module
from tracegrad.compiled.traced import (
    argument_names,
    trace_call,
)
from tracegrad.creation import zeros_like
from tracegrad.ir.graph import Graph
from tracegrad.tensor import Tensor, wrap

# --- entry points ---------------------------------------------------------------------------------


def compile(model_or_fn, *, passes="default", backend="numpy", dynamic=False, check=False,
            debug_nans=False, max_recompiles=None):  # fmt: skip
    """Compile an ``nn.Module`` (forward and backward) or a function (a whole training step)."""
    if backend != "numpy":
        raise ValueError(f"unknown backend {backend!r}: tracegrad generates NumPy code ('numpy')")
    if dynamic:
        raise NotImplementedError("dynamic shapes are not supported yet: each shape compiles")
    if is_module(model_or_fn):
        return CompiledModule(model_or_fn, passes=passes, debug_nans=debug_nans,
                              max_recompiles=max_recompiles, check=check)  # fmt: skip
    if callable(model_or_fn):
        return CompiledFunction(model_or_fn, passes=passes, debug_nans=debug_nans,
                                max_recompiles=max_recompiles, check=check)  # fmt: skip
    raise TypeError(
        f"tg.compile expects an nn.Module or a function, got {type(model_or_fn).__name__}"
    )


def trace(fn_or_module, *example_inputs) -> Graph:
    """The unoptimized forward graph of ``fn_or_module`` on inputs like ``example_inputs``
    (like ``jax.make_jaxpr``). Parameters and captured tensors become named inputs; custom
    Functions stay whole as ``custom`` nodes."""
    args = [_as_example(a) for a in example_inputs]
    target = fn_or_module.forward if is_module(fn_or_module) else fn_or_module
    names = {}
    if is_module(fn_or_module):
        names = {id(t): n for n, t in fn_or_module.named_parameters()}
        names.update({id(t): n for n, t in fn_or_module.named_buffers()})
    return trace_call(fn_or_module, args, names, argument_names(target, len(args))).graph


def _as_example(value):
    return wrap(value) if isinstance(value, np.ndarray) else value


def value_and_grad(fn, argnums=0, has_aux=False):
    """``fn``'s value and its gradient with respect to the argument(s) ``argnums``, compiled.

    An argument may be a container of tensors (its gradient is a container alike); an
    argument the value does not depend on gets zeros, as in JAX. With ``has_aux``, ``fn``
    returns ``(value, aux)`` and this returns ``((value, aux), gradient)``. Called inside
    another trace (``tg.grad(tg.grad(f))``) it traces through, so higher-order gradients
    compile into one program."""
    positions = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def value_and_gradient(*args):
        out = fn(*args)
        value = out[0] if has_aux else out
        wrt = [pytree.flatten(args[i]) for i in positions]
        leaves = [t for found, _ in wrt for t in found]
        grads = [None] * len(leaves)
        if isinstance(value, Tensor) and value.requires_grad and leaves:
            grads = autograd_grad(value, leaves, create_graph=True, allow_unused=True)
        grads = iter(
            [zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
        )
        trees = [
            pytree.unflatten(structure, [next(grads) for _ in found]) for found, structure in wrt
        ]
        return out, trees[0] if isinstance(argnums, int) else tuple(trees)

    value_and_gradient.__name__ = f"value_and_grad_{getattr(fn, '__name__', 'fn')}"
    compiled = CompiledFunction(value_and_gradient, grad_argnums=positions)
    compiled.reached = ReachedState(fn)
    compiled.wrapped = fn
    return compiled


def grad(fn, argnums=0, has_aux=False):
    """The gradient of scalar-valued ``fn`` with respect to argument(s) ``argnums``, compiled
    (with ``has_aux``: ``(gradient, aux)``)."""
    inner = value_and_grad(fn, argnums, has_aux)

    def gradient(*args, **kwargs):
        out, grads = inner(*args, **kwargs)
        return (grads, out[1]) if has_aux else grads

    gradient.__name__ = f"grad_{getattr(fn, '__name__', 'fn')}"
    gradient.compiled = inner
    return gradient
