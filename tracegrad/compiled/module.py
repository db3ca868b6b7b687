"""``CompiledModule``: the module target of the Specializer (generated forward and backward).

A module's signature lists its inputs, its parameters' and buffers' metadata, its submodules
by identity, their plain attributes and train/eval, and grad mode (see
``tracegrad.compiled.specializer`` for the cache and recompile policy shared with compiled
functions).
"""

from __future__ import annotations

import functools

from tracegrad import pytree, tape
from tracegrad.codegen.guards import module_guard, plain_attributes
from tracegrad.compiled import captures
from tracegrad.compiled.explain import Report
from tracegrad.compiled.module_program import (
    ModuleProgram,
    build_module_program,
    run_module_program,
)
from tracegrad.compiled.side_effects import refuse_escaped_tensors
from tracegrad.compiled.signature import (
    Signature,
    identity,
    input_label,
    tensor_guards,
    tensor_meta,
    training_modes,
)
from tracegrad.compiled.specializer import P, R, Specializer
from tracegrad.compiled.traced import (
    STRUCTURED,
    argument_names,
    calling_with,
    leaf_names,
    trace_call,
)
from tracegrad.tensor import Tensor


class CompiledModule(Specializer[P, R]):
    """The module target of the Specializer: a compiled ``nn.Module``, sharing the module's
    parameters; its outputs carry gradients back through the generated backward.

    Made by ``tg.compile(module)``. Each call signature (input shapes, dtypes and
    ``requires_grad``, train/eval, grad mode, parameter metadata) compiles once; the
    specializations are cached. ``graph``, ``backward_graph``, ``code``, ``explain()``,
    ``visualize(path)`` and ``export(path)`` show the latest one; ``recompile_reasons``
    says why each recompile happened.

    Examples:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> cm = tg.compile(model)
        >>> cm(tg.randn(2, 3)).sum().backward()
        >>> model[0].weight.grad.shape, len(cm.specializations)
        (tracegrad.Size([4, 3]), 1)
    """

    kind = "module"

    def __init__(self, module, *, passes="default", debug_nans=False, max_recompiles=None,
                 check=False, memory_budget=None, threads=1):  # fmt: skip
        self.module = module
        super().__init__(
            passes=passes, debug_nans=debug_nans, max_recompiles=max_recompiles, check=check,
            memory_budget=memory_budget, threads=threads,
        )  # fmt: skip

    @property
    def title(self) -> str:
        return type(self.module).__name__

    # --- delegation: a compiled module still is the module for parameters, modes and state ---

    def __getattr__(self, name):
        return getattr(self.__dict__["module"], name)

    def train(self, mode: bool = True):
        """Set the wrapped module's training mode (a new mode is a new specialization)."""
        self.module.train(mode)
        return self

    def eval(self):
        """``train(False)``; returns this compiled module."""
        return self.train(False)

    # --- calling ------------------------------------------------------------------------------

    def signature(self, args) -> Signature:
        """What a call with ``args`` is specialized on: the guards its program relies on."""
        guards: list[tuple[str, object]] = [("grad mode", tape.is_grad_enabled())]
        for i, a in enumerate(args):
            guards += tensor_guards(input_label(i), a)
        # One walk over the modules (their parameters, buffers and modes), read from the
        # arrays: guards are checked on every call.
        params: list[tuple[str, str, Tensor]] = []
        buffers: list[tuple[str, str, Tensor]] = []
        training, seen = [], set()
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
        guards.append(("training", training_modes(tuple(training))))
        return tuple(guards)

    is_compiled_module = True  # (a Module holds it as a submodule: net.enc = tg.compile(net.enc))

    def _trace_through(self, args, kwargs):
        return self.module(*args, **kwargs)

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
            return run_module_program(spec, args)  # the usual call: the same as the last
        signature = self.signature(args)
        if structure is not None:
            signature += (("argument structure", structure),)
        spec = self.cached(signature)
        if spec is None:
            guard = self._guard(args)  # of the state the signature read, before tracing
            spec = self.specialize(signature, args, structure)
            if spec is None:
                return self.module(*original_args, **kwargs)
            spec.guard = guard
        self.latest = spec
        return run_module_program(spec, args)

    def _guard(self, args):
        """The generated guard function of the current call state (see ``signature``)."""
        return module_guard(tape.is_grad_enabled(), args, self.module, self.title)

    def _compile(self, signature: Signature, args, structure) -> ModuleProgram:
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
        refuse_escaped_tensors(self.module.forward, args)
        report = Report(f"compiled {self.title}", signature)
        spec = build_module_program(
            traced, args, self.passes, self.debug_nans, report, self.check, self.memory_budget,
            self.threads,
        )  # fmt: skip
        spec.lock, spec.signature = self._lock, signature
        spec.report, spec.structure = report, structure
        owned = {id(t) for t in [*self.module.parameters(), *self.module.buffers()]}
        spec.captured = tuple(captures.find(self.module.forward, traced.lifted, owned))
        return spec


@functools.cache
def _member_label(kind: str, prefix: str, name: str) -> str:
    return f"{kind} {prefix}.{name}" if prefix else f"{kind} {name}"
