"""``tg.compile`` and its siblings: the public entry points (``compile``, ``trace``,
``grad``, ``value_and_grad``) onto the compiled callables of ``tracegrad.compiled``."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar, overload

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
from tracegrad.nn.module import HasForward
from tracegrad.passes.pipeline import planning
from tracegrad.tensor import Tensor, wrap

P = ParamSpec("P")
R = TypeVar("R")
Passes = str | list[str] | None  # "default", None (no optimization) or pass names

# --- entry points ---------------------------------------------------------------------------------


@overload
def compile(
    model_or_fn: HasForward[P, R],
    *,
    passes: Passes = ...,
    backend: str = ...,
    dynamic: bool = ...,
    check: bool = ...,
    debug_nans: bool = ...,
    max_recompiles: int | None = ...,
    memory_budget: int | None = ...,
    threads: int = ...,
) -> CompiledModule[P, R]: ...


@overload
def compile(
    model_or_fn: Callable[P, R],
    *,
    passes: Passes = ...,
    backend: str = ...,
    dynamic: bool = ...,
    check: bool = ...,
    debug_nans: bool = ...,
    max_recompiles: int | None = ...,
    memory_budget: int | None = ...,
    threads: int = ...,
) -> CompiledFunction[P, R]: ...


def compile(model_or_fn, *, passes="default", backend="numpy", dynamic=False, check=False,
            debug_nans=False, max_recompiles=None, memory_budget=None, threads=1):  # fmt: skip
    """Compile an ``nn.Module`` (forward and backward) or a function (a whole training step).

    A module compiles to a ``CompiledModule`` sharing its parameters: calling it runs the
    generated forward, and its outputs carry gradients back through the generated backward,
    so ``loss.backward(); opt.step()`` work as on the module. A function that calls
    ``backward()`` and ``opt.step()`` compiles to a ``CompiledFunction`` whose forward,
    backward and update are one generated function; parameters, ``.grad`` and optimizer
    state are updated in place as eagerly. Each call signature (shapes, dtypes, modes...)
    compiles once and is cached.

    Args:
        model_or_fn: an ``nn.Module`` or a callable.
        passes: ``"default"`` (the whole pipeline), None (no optimization: the reference
            for optimized == unoptimized) or a list of pass names.
        backend: the code generator; ``"numpy"`` is the only one.
        dynamic: shapes as symbols; not supported (each shape compiles), only False.
        check: on each specialization's first call, run every pass's output against the
            unoptimized program and raise naming the first pass that diverged.
        debug_nans: the first NaN or infinity raises ``FloatingPointError`` naming the op,
            forward or backward, and the user's line.
        max_recompiles: past this many recompiles, a recompile raises ``RecompileError``
            (None: past 8 specializations, calls run eagerly with a warning).
        memory_budget: ``None | bytes``: the bytes the program's estimated peak (its pooled
            buffers plus the values in fresh memory at the worst moment, graph inputs not
            counted) must fit. The backward then recomputes forward values it would keep,
            the fewest operations per byte first, and values of some shapes get fresh
            memory instead of pooled buffers, until it fits; the same results. ``explain()``
            shows the choice, the peak before and after, the extra operations. A module's
            choice is made on its joint forward and backward. Needs the ``recompute`` and
            ``memory`` passes (the default pipeline).
        threads: how many threads the generated code may run on (default 1). With 2 or more,
            the ``threads`` pass chooses, by its cost model, large elementwise work bound by
            arithmetic to split by rows across a thread pool and, while BLAS runs one thread
            (``tg.set_num_threads(1)`` when the call compiles), independent large products to
            run at the same time; the same results, bit for bit. Where it would not pay
            (small programs; work bound by memory), nothing changes. ``explain()`` and the
            generated code show each choice. The pool is the process's, shared by all
            programs; BLAS's own threads stay ``tg.set_num_threads``'s. Every
            specialization of a compiled object has its ``threads``; BLAS's thread count is
            read when one compiles and is no guard (see docs/how-to/threads.md).

    Returns:
        A ``CompiledModule`` for a module, a ``CompiledFunction`` for a function.

    Raises:
        TypeError: if ``model_or_fn`` is neither a module nor callable, or for a
            ``memory_budget`` or ``threads`` that is not an int.
        ValueError: for a backend other than ``"numpy"``, an unknown pass name, a
            ``memory_budget`` that is not positive or whose passes are left out, or
            ``threads`` below 1.
        NotImplementedError: for ``dynamic=True``.
        MemoryBudgetError: (on the first call) when even recomputing every forward value
            that helps leaves the estimated peak above ``memory_budget``; it names the
            smallest feasible budget.

    Examples:
        >>> model = nn.Linear(3, 2)
        >>> cm = tg.compile(model)
        >>> x = tg.randn(4, 3)
        >>> tg.allclose(cm(x), model(x))
        True
    """
    if backend != "numpy":
        raise ValueError(f"unknown backend {backend!r}: tracegrad generates NumPy code ('numpy')")
    if dynamic:
        raise NotImplementedError("dynamic shapes are not supported yet: each shape compiles")
    _check_budget(memory_budget, passes)
    threads = _checked_threads(threads)
    options = dict(passes=passes, debug_nans=debug_nans, max_recompiles=max_recompiles,
                   check=check, memory_budget=memory_budget, threads=threads)  # fmt: skip
    if is_module(model_or_fn):
        return CompiledModule(model_or_fn, **options)
    if callable(model_or_fn):
        return CompiledFunction(model_or_fn, **options)
    raise TypeError(
        f"tg.compile expects an nn.Module or a function, got {type(model_or_fn).__name__}"
    )


def _check_budget(memory_budget, passes) -> None:
    if memory_budget is None:
        return
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int | np.integer):
        raise TypeError(f"memory_budget must be a number of bytes (int), got {memory_budget!r}")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    missing = {"recompute", "memory"} - set(planning(passes))
    if missing:
        raise ValueError(
            f"memory_budget needs the passes {sorted(missing)} (the default pipeline has them), "
            f"which passes={passes!r} leaves out"
        )


def _checked_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer):
        raise TypeError(f"threads must be a number of threads (int), got {threads!r}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return int(threads)


def trace(fn_or_module, *example_inputs) -> Graph:
    """The unoptimized forward graph of ``fn_or_module`` on inputs like ``example_inputs``
    (like ``jax.make_jaxpr``). Parameters and captured tensors become named inputs; custom
    Functions stay whole as ``custom`` nodes.

    Args:
        fn_or_module: an ``nn.Module`` or a function of tensors.
        *example_inputs: tensors or NumPy arrays of the shapes and dtypes to trace with.

    Returns:
        A ``tg.ir.Graph``; ``print(graph)`` shows one line per node.

    Raises:
        TraceError: on Python control flow that depends on a traced value.

    Examples:
        >>> graph = tg.trace(lambda x: (x * 2).sum(), tg.zeros(3))
        >>> [node.op for node in graph.nodes]
        ['constant', 'mul', 'sum']
    """
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
    compile into one program.

    Returns:
        A compiled function of ``fn``'s arguments returning ``(value, gradient)``.

    Examples:
        >>> value, gradient = tg.value_and_grad(lambda w: (w * w).sum())(tg.tensor([3.0]))
        >>> value, gradient
        (tensor(9.), tensor([6.]))
    """
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
    (with ``has_aux``: ``(gradient, aux)``).

    Args:
        fn: a function returning a scalar tensor (and an auxiliary value with ``has_aux``).
        argnums: the position, or a tuple of positions, of the arguments to differentiate.
        has_aux: ``fn`` returns ``(value, aux)``.

    Returns:
        A function of ``fn``'s arguments returning the gradient (a tuple for a tuple of
        ``argnums``); it composes, ``tg.grad(tg.grad(f))`` included.

    Examples:
        >>> df = tg.grad(lambda w: (w**3).sum())
        >>> df(tg.tensor([1.0, 2.0]))
        tensor([ 3., 12.])
    """
    inner = value_and_grad(fn, argnums, has_aux)

    def gradient(*args, **kwargs):
        out, grads = inner(*args, **kwargs)
        return (grads, out[1]) if has_aux else grads

    gradient.__name__ = f"grad_{getattr(fn, '__name__', 'fn')}"
    gradient.compiled = inner
    return gradient
