"""``tg.compile``: compiled modules (generated forward and backward) and the entry points.

A *specialization* is the generated program for one signature (input shapes, dtypes and
requires_grad, parameter metadata, train/eval, grad mode). Calls look their signature up in a
cache; a new signature compiles again and logs why, as a diff of the guard that changed.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np

from tracegrad import captures, pytree, tape, viz
from tracegrad.autograd import grad as autograd_grad
from tracegrad.codegen.guards import module_guard, plain_attributes
from tracegrad.creation import zeros_like
from tracegrad.explain import Report, render
from tracegrad.ir.graph import Graph
from tracegrad.module_program import ModuleProgram, build_module_program, run_module_program
from tracegrad.specialize import (
    NO_CHANGE,
    Signature,
    argument_names,
    at_users_line,
    check_recompiles,
    gc_paused,
    identity,
    input_label,
    signature_diff,
    tensor_guards,
    tensor_meta,
    trace_call,
)
from tracegrad.step import STRUCTURED, CompiledFunction, calling_with, is_module, leaf_names
from tracegrad.tensor import Tensor, active_tracer


class CompiledModule:
    """A compiled ``nn.Module``: shares the module's parameters; its outputs carry gradients
    back through the generated backward."""

    def __init__(self, module, *, passes="default", debug_nans=False, max_recompiles=None,
                 check=False):  # fmt: skip
        self.module = module
        self.passes = passes
        self.debug_nans = debug_nans or os.environ.get("TRACEGRAD_DEBUG_NANS") == "1"
        self.max_recompiles = max_recompiles
        self.check = check
        self._cache: dict[tuple, ModuleProgram] = {}
        self._signatures: list[Signature] = []
        self.latest: ModuleProgram | None = None
        self.recompile_reasons: list[str] = []
        self._lock = threading.RLock()
        self.ran_eagerly = False  # whether a call past the cache's bound ran the module

    # --- delegation: a compiled module still is the module for parameters, modes and state ---

    def __getattr__(self, name):
        return getattr(self.__dict__["module"], name)

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # --- the public views of the latest specialization ----------------------------------------

    def _latest(self) -> ModuleProgram:
        if self.latest is None:
            raise RuntimeError("call the compiled module once first: nothing is compiled yet")
        return self.latest

    @property
    def graph(self) -> Graph:
        return self._latest().program.graph

    @property
    def backward_graph(self) -> Graph | None:
        return self._latest().program.backward_graph

    @property
    def code(self) -> str:
        return self._latest().program.source

    def explain(self) -> str:
        """What compiling the latest specialization did: guards, passes and their changes,
        generated functions with their memory plan, saved activations, recompiles."""
        return render(self._latest().report, self.recompile_reasons)

    def views(self) -> list[tuple[str, Graph]]:
        """The graphs pictures show: optimized forward and backward, and the traced forward."""
        return self._latest().views()

    def visualize(self, path):
        """Write a picture of the latest specialization; the suffix picks the format: .html
        (forward and backward, before and after passes, with the code), .svg or .dot."""
        parts = self._latest().program.parts
        return viz.render(self.views(), path, code=self.code, generated=parts)

    def export(self, path):
        """Write the latest specialization's forward and backward as a standalone NumPy module
        at ``path``, with the parameters in a .npz beside it."""
        spec = self._latest()
        return spec.program.export(path, spec.traced.lifted)

    # --- calling ------------------------------------------------------------------------------

    def signature(self, args) -> Signature:
        guards = [("grad mode", tape.is_grad_enabled())]
        for i, a in enumerate(args):
            guards += tensor_guards(input_label(i), a)
        # One walk over the modules (their parameters, buffers and modes), read from the
        # arrays: guards are checked on every call.
        params, buffers, training, seen = [], [], [], set()
        for prefix, module in self.module.named_modules():
            training.append(module.training)
            for key, value in plain_attributes(module):
                guards.append((_member_label("attribute", prefix, key), value))
            # (by identity: the program is the forward this submodule traced)
            guards.append((f"module {prefix or type(module).__name__}", identity(module)))
            for table, found in ((module._parameters, params), (module._buffers, buffers)):
                for name, t in table.items():
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        found.append((prefix, name, t))
        for prefix, name, p in params:
            guards.append((_member_label("parameter", prefix, name), tensor_meta(p)))
        for prefix, name, b in buffers:
            guards.append((_member_label("buffer", prefix, name), tensor_meta(b)))
        guards.append(("training", tuple(training)))
        return tuple(guards)

    is_compiled_module = True  # (a Module holds it as a submodule: net.enc = tg.compile(net.enc))

    def __call__(self, *args, **kwargs):
        if active_tracer() is not None:  # a piece of a program being traced: traced in
            return self.module(*args, **kwargs)
        # One call at a time: a specialization's planned memory serves every call, and the
        # cache and the latest specialization are shared
        with self._lock:
            try:
                return self._call(args, kwargs)
            except Exception as exc:
                at_users_line(exc)

    def _call(self, args, kwargs):
        original_args = args
        structure = None  # of containers, NumPy arrays and keywords: their tensors are inputs
        if kwargs or any(type(a) in STRUCTURED for a in args):
            leaves, structure = pytree.flatten((args, kwargs))
            args = tuple(leaves)
        spec = self.latest
        if (
            spec is not None
            and spec.structure == structure
            and spec.guard(args)
            and (not (spec.traced.values_read or spec.captured) or spec.still_valid())
        ):
            return self._run(spec, args)  # the usual call: the same as the last
        signature = self.signature(args)
        if structure is not None:
            signature += (("argument structure", structure),)
        key = tuple(value for _, value in signature)
        spec = self._cache.get(key)
        if spec is None or not spec.still_valid():
            guard = self._guard(args)  # of the state the signature read, before tracing
            spec = self._compile(args, signature, structure)
            if spec is None:
                return self.module(*original_args, **kwargs)
            spec.guard = guard
            self._cache[key] = spec
        self.latest = spec
        return self._run(spec, args)

    def _guard(self, args):
        """The generated guard function of the current call state (see ``signature``)."""
        title = type(self.module).__name__
        return module_guard(tape.is_grad_enabled(), args, self.module, title)

    @gc_paused
    def _compile(self, args, signature: Signature, structure) -> ModuleProgram | None:
        """A new specialization for the call, or None when the cache is full (see
        check_recompiles)."""
        if self._signatures:
            reason = signature_diff(self._signatures[-1], signature)
            if reason == NO_CHANGE:
                reason = "a captured tensor, or the value of one Python read, changed"
            title = type(self.module).__name__
            if not check_recompiles(self, reason, len(self._cache), title):
                return None
        self._signatures.append(signature)
        names = {id(t): n for n, t in self.module.named_parameters()}
        names.update({id(t): n for n, t in self.module.named_buffers()})
        if structure is None:
            target, arg_names = self.module, argument_names(self.module.forward, len(args))
        else:
            target, arg_names = (
                calling_with(self.module, structure),
                leaf_names(self.module.forward, structure),
            )
        traced = trace_call(target, args, names, arg_names)
        report = Report(f"compiled {type(self.module).__name__}", signature)
        spec = build_module_program(traced, args, self.passes, self.debug_nans, report, self.check)
        spec.lock = self._lock
        spec.report, spec.structure = report, structure
        owned = {id(t) for t in [*self.module.parameters(), *self.module.buffers()]}
        spec.captured = tuple(captures.find(self.module.forward, traced.lifted, owned))
        return spec

    def _run(self, spec: ModuleProgram, args):
        return run_module_program(spec, args)


@functools.cache
def _member_label(kind: str, prefix: str, name: str) -> str:
    return f"{kind} {prefix}.{name}" if prefix else f"{kind} {name}"


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
    return Tensor._wrap(value) if isinstance(value, np.ndarray) else value


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
    compiled.state_fn = fn
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
