"""``tg.compile(fn)``: the function target of the Specializer.

A ``CompiledFunction`` finds the state the function reaches (``state.py``), computes each
call's signature from it, traces a call into a ``StepProgram`` (``step_program.py``) and runs
it through a generated runner (tracegrad.codegen.runner) that checks the call's guards and
calls the program in one function. ``tg.grad`` and ``tg.value_and_grad`` are compiled
functions too.
"""

from __future__ import annotations

from collections.abc import Callable

from tracegrad import pytree, tape
from tracegrad.codegen.guards import step_guard
from tracegrad.codegen.runner import MISS, RunnerBindings, build_runner
from tracegrad.compiled.module_program import run_module_program
from tracegrad.compiled.signature import Signature, input_label, tensor_guards
from tracegrad.compiled.specializer import P, R, Specializer
from tracegrad.compiled.state import (
    ReachedState,
    optimizer_groups,
    prime_optimizer_state,
    unprime,
)
from tracegrad.compiled.step_program import StepProgram, trace_step
from tracegrad.compiled.traced import STRUCTURED, calling_with, leaf_names
from tracegrad.compiled.views import show_views
from tracegrad.tensor import Tensor


class CompiledFunction(Specializer[P, R]):
    """``tg.compile(fn)`` for a plain function, typically a whole training step.

    A function calling ``loss.backward()`` and ``opt.step()`` compiles into one generated
    function; parameters, ``.grad`` and optimizer state (captured or passed in) are updated
    in place, and the result is what the eager function returns. A function without
    ``backward()`` compiles like a module: its outputs carry gradients back.

    Examples:
        >>> model = nn.Linear(3, 1)
        >>> opt = optim.SGD(model.parameters(), lr=0.1)
        >>> def train_step(x, y):
        ...     opt.zero_grad()
        ...     loss = F.mse_loss(model(x), y)
        ...     loss.backward()
        ...     opt.step()
        ...     return loss
        >>> step = tg.compile(train_step)
        >>> x, y = tg.randn(8, 3), tg.randn(8, 1)
        >>> losses = [step(x, y).item() for _ in range(5)]
        >>> losses[-1] < losses[0]
        True
    """

    def __init__(self, fn, *, passes="default", debug_nans=False, max_recompiles=None,
                 check=False, grad_argnums=(), memory_budget=None, threads=1):  # fmt: skip
        super().__init__(
            passes=passes, debug_nans=debug_nans, max_recompiles=max_recompiles, check=check,
            memory_budget=memory_budget, threads=threads,
        )  # fmt: skip
        self.fn = fn
        self.grad_argnums = tuple(grad_argnums)
        self.reached = ReachedState(fn)
        # One compiled function per structure of containers and keywords it was called with
        self._by_structure: dict[object, CompiledFunction] = {}
        self.arg_names: list[str] | None = None  # the inputs' names, when not fn's parameters

    @property
    def title(self) -> str:
        return getattr(self.fn, "__name__", "function")

    def signature(self, args) -> Signature:
        """What a call with ``args`` is specialized on: the guards its program relies on."""
        guards: list[tuple[str, object]] = [("grad mode", tape.is_grad_enabled())]
        for i, a in enumerate(args):
            guards += tensor_guards(input_label(i), a)
            if isinstance(a, Tensor) and a._requires_grad:  # (backward accumulates into it)
                grad = None if a.grad is None else a.grad.array.shape
                guards.append((f"{input_label(i)} .grad", grad))
        return tuple(guards + self.reached.signature(bool(self._cache)))

    # --- calling --------------------------------------------------------------------------------

    def _call(self, args, kwargs):
        if kwargs or any(type(a) in STRUCTURED for a in args):
            return self._call_structured(args, kwargs)
        spec = self.latest
        if spec is not None:  # the usual call: the same as the last (a symbolic argument is not)
            result = spec.runner(args)
            if result is not MISS:
                return result
        self.reached.watch(args)
        signature = self.signature(args)
        spec = self.cached(signature)
        if spec is None:
            spec = self._specialize_primed(signature, args)
            if spec is None:
                return self.fn(*args)
        elif spec is not self.latest and (result := spec.runner(args)) is not MISS:
            self.latest = spec
            return result
        else:
            # Its runner refuses a call of its signature: the guards name objects since
            # replaced by equal ones (a parameter group dict, say). They are made again, or
            # every call would come this slow way.
            self._use_guards(spec, self._guards(args))
        self.latest = spec
        return spec.runner(args, True)

    def _specialize_primed(self, signature: Signature, args) -> StepProgram | None:
        """A new specialization for a call of ``signature`` (None past the recompile policy).

        The optimizer state this call's update will make is made first, as the update would
        (``prime_optimizer_state``; taken back for the parameters it turns out not to step),
        and the specialization is kept under the signature it has after tracing (less the
        .grad no trace read): so the next call of a training loop, which has that state and
        a .grad, finds it, and the loop compiles once."""
        primed = prime_optimizer_state(self.reached.optimizers().values())
        if primed:
            primed_signature = self.signature(args)
            if self.cached(primed_signature) is None:
                signature = primed_signature
            else:  # (one is compiled for the primed state already: this call makes its own)
                unprime(primed, set())
                primed = []
        guarded = self.reached.guarded()
        spec = None
        try:
            spec = self.specialize(signature, args)
        finally:  # (all of it when nothing was compiled: a failed trace, or past the policy)
            unprime(primed, set() if spec is None else {id(t) for t in spec.lifted})
        if spec is None:
            return None
        self._use_guards(spec, self._guards(args))
        if not self.reached.guarded() <= guarded:
            # Its guards cannot tell when the state tracing found changes (the optimizer
            # state this call created, say): it runs this call only, and stays under a
            # signature no later call has (theirs include that state).
            spec.runner = _this_call_only(spec.runner)
            return spec
        settled = self.signature(args)
        if settled != signature:
            del self._cache[signature]
            self._cache[settled] = spec
            spec.signature = spec.report.signature = settled
        return spec

    def _compile(self, signature: Signature, args) -> StepProgram:
        return trace_step(self, args, signature)

    def _trace_through(self, args, kwargs):
        """Called inside another trace (tg.grad(tg.grad(f)), a compiled piece of a compiled
        step): trace ``fn`` in, so the outer program computes it, reading the outer values it
        closes over. The arguments to differentiate must require grad, as they do when this
        function is traced on its own; one that does not has no history to keep, so a
        differentiable alias of it will do."""
        leaves, structure = pytree.flatten((args, kwargs))
        owners = [i for i, s in enumerate(structure[1][0][1]) for _ in range(pytree.count(s))]
        leaves = [
            t.detach().requires_grad_() if owner in self.grad_argnums and not t.requires_grad else t
            for t, owner in zip(leaves, owners + [None] * (len(leaves) - len(owners)), strict=True)
        ]
        args, kwargs = pytree.unflatten(structure, leaves)
        return self.fn(*args, **kwargs)

    def _call_structured(self, args, kwargs):
        """A call with containers, NumPy arrays or keyword arguments: one compiled function of
        the tensors in them per structure, which rebuilds the arguments and calls ``fn``."""
        leaves, structure = pytree.flatten((args, kwargs))
        inner = self._by_structure.get(structure)
        if inner is None:
            inner = self._by_structure[structure] = self._for_structure(structure)
        try:
            return inner(*leaves)
        finally:
            self.latest, self.recompile_reasons = inner.latest, inner.recompile_reasons

    def _for_structure(self, structure) -> CompiledFunction:
        fn = self.fn
        rebuilt = calling_with(fn, structure)
        # the leaves of the arguments to differentiate are differentiated
        owners = [i for i, s in enumerate(structure[1][0][1]) for _ in range(pytree.count(s))]
        grads = tuple(k for k, i in enumerate(owners) if i in self.grad_argnums)
        inner: CompiledFunction = CompiledFunction(
            rebuilt, passes=self.passes, debug_nans=self.debug_nans,
            max_recompiles=self.max_recompiles, check=self.check, grad_argnums=grads,
            memory_budget=self.memory_budget, threads=self.threads,
        )  # fmt: skip
        inner.reached = ReachedState(self.reached.fn)
        inner.arg_names = leaf_names(fn, structure)
        return inner

    # --- guards and runners ---------------------------------------------------------------------

    def _guards(self, args):
        """The guards of the current call state (see ``signature``), for a runner."""
        state = self.reached
        return step_guard(
            tape.is_grad_enabled(),
            args,
            [t for _, t in state.state_tensors().values()],
            list(state.optimizers().values()),
            list(state.all_modules().values()),
            optimizer_groups,
            list(state.bindings.values()),
            state.stepped_optimizers(bool(self._cache)),
            state.grads_unread,
        )

    def _use_guards(self, spec: StepProgram, guards) -> None:
        spec.guards = guards
        spec.__dict__.pop("guard", None)  # (a cached function of the guards replaced)
        if spec.module is not None:
            spec.runner = _function_runner(spec)
        else:
            spec.runner = build_runner(_bindings(spec, guards), self.title)
        if spec.values_read or spec.captured:
            spec.runner = _checking(spec.runner, spec.still_valid)
        if spec.returned_views and spec.module is None:
            spec.runner = _showing_views(spec.runner, spec)


def _bindings(spec: StepProgram, guards) -> RunnerBindings:
    """What the runner of a whole step checks, reads and writes."""
    program = spec.program
    one_tensor = spec.rebuild.args == (pytree.TENSOR,)  # (the function returned one tensor)
    return RunnerBindings(
        guards=guards,
        step=program.functions["step"],
        planned=program.buffer_ids,
        tensor_args=spec.tensor_args,
        arg_grads=spec.arg_grads,
        state=[spec.grad_of.get(j, t) for j, t in enumerate(spec.lifted)],
        grad_of=frozenset(spec.grad_of),
        n_results=spec.n_results,
        updated=spec.update_targets,
        updated_grads={
            i: j
            for i, t in enumerate(spec.update_targets)
            for j in spec.grad_of
            if spec.lifted[j] is t
        },
        updated_args=spec.updated_args,
        written_in_place=spec.updated_in_place,
        sinks=spec.sinks,
        grads_replaced=spec.grads_replaced,
        arg_grads_replaced=spec.arg_grads_replaced,
        uses_rng=program.uses_rng["step"],
        rebuild=None if one_tensor else spec.rebuild,
    )


def _checking(runner: Callable, still_valid: Callable[[], bool]) -> Callable:
    """``runner``, refusing calls once its specialization is no longer valid."""

    def run(args, trusted=False):
        return runner(args, trusted) if still_valid() else MISS

    return run


def _this_call_only(runner: Callable) -> Callable:
    """``runner``, refusing every call but the one that compiled it (which is trusted)."""

    def run(args, trusted=False):
        return runner(args, trusted) if trusted else MISS

    return run


def _showing_views(runner: Callable, spec: StepProgram) -> Callable:
    """``runner``, whose results that are eagerly views of an argument's or state's memory
    are those views (see tracegrad.compiled.views.eager_views)."""

    def run(args, trusted=False):
        # (as the run finds them: it may drop a .grad it reads)
        inputs = [args[i].array for i in spec.tensor_args]
        # (None where a guard will refuse the call: a .grad it reads is missing)
        inputs += [_array_of(args[i].grad) for i in spec.arg_grads]
        inputs += [_array_of(t) for t in spec.state()]
        result = runner(args, trusted)
        if result is MISS:
            return result
        leaves = pytree.flatten(result)[0]
        arrays = [t.array for t in leaves]
        show_views(arrays, inputs, spec.returned_views)
        for leaf, array in zip(leaves, arrays, strict=True):
            leaf.array = array
        return result

    return run


def _array_of(t: Tensor | None):
    return None if t is None else t.array


def _function_runner(spec: StepProgram) -> Callable:
    """The runner of a function calling no backward(): its guards, then its program."""
    guard, module = spec.guard, spec.module

    def run(args, trusted=False):
        if not trusted and not guard(args):
            return MISS
        return run_module_program(module, args)

    return run
