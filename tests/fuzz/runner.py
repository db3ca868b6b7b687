"""Runs a program eagerly and compiled, three calls each, and compares what each call shows.

Variants: ``eager``; ``fn`` (``tg.compile(fn)``, a whole step when fn calls backward);
``budget`` with the ``memory_budget`` construct (``fn`` with a memory budget, which makes the
backward recompute activations: see ``observe_budgeted``);
``module`` (fn as the forward of an ``nn.Module`` holding the program's parameters, compiled
as a module; not for steps, nor for programs that mix compiled and eager code themselves);
``nopasses`` (``tg.compile(fn, passes=None)``); ``threads`` (``tg.compile(fn, threads=2)`` under
a cost model by which everything the threads pass may run on the pool pays, so that small
programs use it: see ``observe_threaded``; its results must also be ``fn``'s to the bit).
Each variant builds its own state from the
program's seed and runs under the same ``tg.manual_seed`` per call, so random draws agree.
With the ``caller_backward`` construct, the runner backpropagates a fixed weighting of the
results after each call.
What is compared after every call: the results (values, shapes, dtypes, requires_grad), and
every parameter, buffer, argument, closure tensor, array and optimizer state, with ``.grad``,
and whether each parameter's ``.grad`` is the tensor it held before the call; with the
``keep_results`` construct, after the last call the results of every call again; last, the
values of the ``.grad`` tensors the caller kept as each call began (eagerly a kept ``.grad``
keeps its values unless the step accumulated into it in place).
"""

from __future__ import annotations

import linecache
from dataclasses import dataclass

import numpy as np

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.passes import threads as threads_pass

from .generate import Program
from .harness import NAMESPACE, Case, Wrapped

CALLS = 3
VARIANTS = ("fn", "module", "nopasses", "threads")
THREADS = 2  # the threads variant's tg.compile(threads=...)
# The budget variant (the memory_budget construct): this fraction of the estimated peak
BUDGET_FRACTION = 0.6
# (rtol, atol) per variant: the optimized program reassociates sums and fuses kernels; without
# passes it runs eager's own kernels in eager's order, so it agrees to about the last bit (a
# product of another memory layout may round its last bit otherwise: BLAS kernels differ).
TOLERANCE = {"fn": (1e-9, 1e-11), "module": (1e-9, 1e-11), "nopasses": (1e-12, 1e-14)}
TOLERANCE["budget"] = TOLERANCE["threads"] = TOLERANCE["fn"]
# Mixed programs add a compiled piece's gradient to an eager one's: the compiled backward sums
# its own contributions before the tape adds them up, so the last bit may differ even unoptimized.
MIXED_TOLERANCE = TOLERANCE["fn"]


@dataclass
class Outcome:
    """``matched``, ``refused`` (a compiled variant raised tg.TraceError), ``mismatched``
    (numbers differ), ``crashed`` (a compiled variant raised anything else) or ``invalid``
    (the eager run itself raised: a generator bug). ``detail`` says where and what;
    ``refusals`` are the first lines of the TraceErrors raised."""

    kind: str
    detail: str = ""
    refusals: tuple[str, ...] = ()


def build(program: Program, compile_) -> Case:
    """Execute the program's source and call its setup."""
    filename = f"<fuzz seed {program.seed}>"
    linecache.cache[filename] = (
        len(program.source),
        None,
        program.source.splitlines(True),
        filename,
    )
    namespace = {**NAMESPACE, "F": F, "np": np, "optim": optim, "nn": nn, "tg": tg}
    exec(compile(program.source, filename, "exec"), namespace)
    return namespace["setup"](compile_)


def compiler(variant: str, budget: int | None = None):
    """What ``compile_`` means inside a program, and how the runner wraps ``fn``; ``budget``
    the memory budget (bytes) of the ``budget`` variant."""
    if variant == "eager":
        return lambda f: f
    passes = None if variant == "nopasses" else "default"
    threads = THREADS if variant == "threads" else 1
    return lambda f: tg.compile(f, passes=passes, memory_budget=budget, threads=threads)


def target(case: Case, variant: str, budget: int | None = None):
    if variant == "eager" or case.mixed or case.composed:
        return case.fn
    if variant == "module":
        return tg.compile(Wrapped(case.fn, case.holder))
    return compiler(variant, budget)(case.fn)


def applies(case: Case, variant: str) -> bool:
    return variant != "module" or not (case.step or case.mixed or case.composed)


def observe(program: Program, variant: str, budget: int | None = None):
    """The list of per-call observations of ``program`` run as ``variant`` (None if the
    variant does not apply)."""
    case = build(program, compiler(variant, budget))
    if not applies(case, variant):
        return None
    run = target(case, variant, budget)
    seen, kept, grads = [], [], []
    for i in range(CALLS):
        tg.manual_seed(1000 + i)
        held = [p.grad for p in case.holder.parameters()]  # as a user logging them would
        result = run(*case.args)
        if case.backward:
            backprop(result)
        else:  # nothing reads the results' gradients: requires_grad is not compared
            result = [t.detach() if isinstance(t, tg.Tensor) else t for t in flatten(result)]
        now = [p.grad for p in case.holder.parameters()]
        seen.append({
            "result": snapshot(result),
            "state": snapshot(case.state()),
            "same .grad tensor as before the call": [a is b for a, b in zip(held, now)],
        })  # fmt: skip
        kept.append(result)
        grads.append(held)
        case.between(i)
    if case.keep:  # kept results change only where eager's do (views of what changed)
        seen.append({"kept results": [snapshot(r) for r in kept]})
    # a .grad kept from before a call keeps the values eager's keeps
    seen.append({"kept .grad tensors": [snapshot(g) for g in grads]})
    return seen


def observe_budgeted(program: Program):
    """``observe`` compiled with a memory budget of BUDGET_FRACTION of the estimated peak, or
    the smallest feasible budget when that is higher. A budget of one byte fails naming both
    (MemoryBudgetError) for the first generated function; one found later (another function,
    or a call that compiles again) may need a higher one, which it names in turn."""
    budget = 1
    for _ in range(4):
        try:
            return observe(program, "budget", budget)
        except tg.MemoryBudgetError as error:
            fraction = int(error.unbudgeted * BUDGET_FRACTION) if budget == 1 else 0
            budget = max(error.smallest, fraction)
    return observe(program, "budget", budget)


def observe_threaded(program: Program):
    """``observe`` compiled with ``threads=THREADS`` while everything the threads pass may
    run on the pool pays (no hand-off, no GIL waits) and BLAS runs one thread (else no
    product goes to the pool): the fuzzer's programs are far too small to use it otherwise.
    (Products this small run on one thread at any BLAS setting: the bits stay ``fn``'s.)"""
    free = {"HANDOFF_US": 0.0, "GIL_US": 0.0, "MIN_SAVING_US": -1.0}
    before = {name: getattr(threads_pass, name) for name in free}
    blas = tg.get_num_threads()
    for name, value in free.items():
        setattr(threads_pass, name, value)
    tg.set_num_threads(1)
    try:
        return observe(program, "threads")
    finally:
        tg.set_num_threads(blas)
        for name, value in before.items():
            setattr(threads_pass, name, value)


def backprop(result) -> None:
    """Backward from a fixed weighting of the results that require grad."""
    leaves = [t for t in flatten(result) if isinstance(t, tg.Tensor) and t.requires_grad]
    if leaves:
        sum((t * (0.5 + k)).sum() for k, t in enumerate(leaves)).backward()


def flatten(tree):
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in flatten(v)]
    if isinstance(tree, list | tuple):
        return [leaf for v in tree for leaf in flatten(v)]
    return [tree]


def snapshot(obj):
    """Plain, copied data: tensors as (array, dtype, requires_grad, grad), modules as their
    named parameters and buffers, optimizers as their state."""
    if isinstance(obj, tg.Tensor):
        grad = None if obj.grad is None else obj.grad.detach().numpy().copy()
        return ("tensor", obj.detach().numpy().copy(), str(obj.dtype), obj.requires_grad, grad)
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, nn.Module):
        named = [*obj.named_parameters(), *obj.named_buffers()]
        return {name: snapshot(t) for name, t in named}
    if isinstance(obj, optim.Optimizer):
        return snapshot(obj.state_dict()["state"])
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def difference(a, b, path: str = "", tol=(0.0, 0.0)) -> str | None:
    """Where two snapshots differ first (arrays beyond ``tol``, (rtol, atol)), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        found = (difference(a[k], b[k], f"{path}.{k}", tol) for k in a)
        return next((d for d in found if d), None)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{path}: {type(a).__name__}[{len(a)}] != {type(b).__name__}[{len(b)}]"
        found = (difference(x, y, f"{path}[{i}]", tol) for i, (x, y) in enumerate(zip(a, b)))
        return next((d for d in found if d), None)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return _array_difference(a, b, path, tol)
    return None if a == b else f"{path}: {a!r} != {b!r}"


def _array_difference(a, b, path: str, tol) -> str | None:
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{path}: {a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}"
    # (relative to the array's largest value too: an element that a sum cancels to near zero
    # keeps the rounding error of the large terms it summed, not one relative to itself)
    finite = np.abs(a[np.isfinite(a)]) if a.dtype.kind in "fc" else np.abs(a)
    scale = float(finite.max()) if finite.size else 0.0
    if np.allclose(a, b, rtol=tol[0], atol=tol[1] + tol[0] * scale, equal_nan=True):
        return None
    worst = np.nanmax(np.abs(a.astype(float) - b.astype(float)))
    return (
        f"{path}: values differ (max abs {worst:.3g})\n"
        f"  eager    {a.ravel()[:6]}\n  compiled {b.ravel()[:6]}"
    )


def _observe_variant(program: Program, variant: str):
    if variant == "budget":
        return observe_budgeted(program)
    if variant == "threads":
        return observe_threaded(program)
    return observe(program, variant)


def run_program(program: Program) -> Outcome:
    """Run ``program`` in every variant and compare each with the eager run."""
    try:
        expected = observe(program, "eager")
    except Exception as error:  # any eager failure: the generator wrote a bad program
        return Outcome("invalid", f"eager: {type(error).__name__}: {error}")
    refused, messages, observed = [], [], {}
    variants = VARIANTS + (("budget",) if "memory_budget" in program.constructs else ())
    for variant in variants:
        try:
            got = observed[variant] = _observe_variant(program, variant)
        except tg.TraceError as error:
            messages.append(str(error).splitlines()[0])
            refused.append(f"{variant}: {messages[-1]}")
            continue
        except Exception as error:  # the contract allows tg.TraceError only
            return Outcome("crashed", f"{variant}: {type(error).__name__}: {error}")
        for call, (want, have) in enumerate(zip(expected, got or expected)):
            tolerance = MIXED_TOLERANCE if "mixed" in program.constructs else TOLERANCE[variant]
            where = difference(want, have, f"call {call}", tolerance)
            if where is not None:
                return Outcome("mismatched", f"{variant}: {where}")
    if observed.get("fn") is not None and observed.get("threads") is not None:
        where = difference(observed["fn"], observed["threads"], "threads against fn")
        if where is not None:  # (the pool runs the same operations on each element)
            return Outcome("mismatched", f"threads: not fn's bits: {where}")
    if refused:
        return Outcome("refused", "; ".join(refused), tuple(messages))
    return Outcome("matched")
