"""The ``Specializer``: what every compiled callable shares, whatever it compiles.

A *specialization* is the program generated for one signature (see ``signature.py``).
A specializer keeps them in a cache by signature, decides whether a call of a new signature
may compile one more (its recompile policy: ``max_recompiles``, else at most
``CACHE_SIZE_LIMIT`` specializations, past which calls run eagerly), records why each
recompile happened, and shows its latest specialization: ``graph``, ``backward_graph``,
``code``, ``explain()``, ``views()``, ``passes_history()``, ``visualize()``, ``export()``.

Two targets build on it: ``CompiledModule`` (``module.py``), a module's forward and
backward, and ``CompiledFunction`` (``function.py``), a function, typically a whole
training step. A target computes signatures, traces a call into a specialization and runs it; every
specialization it makes has ``signature``, ``program`` (the generated one), ``readable`` (the
graphs ``graph`` and ``backward_graph`` show), ``report``, ``views()``, ``state()``
(the lifted tensors, exported beside the code), ``still_valid()`` and ``invalid_reason()``.
"""

from __future__ import annotations

import functools
import gc
import os
import threading
import warnings
import weakref
from typing import Generic, ParamSpec, Protocol, TypeVar, overload

from tracegrad import viz
from tracegrad.compiled.explain import Explanation, Report, Snapshot, history, render
from tracegrad.compiled.signature import NO_CHANGE, Signature, signature_diff
from tracegrad.compiled.users_line import at_users_line
from tracegrad.ir.graph import Graph
from tracegrad.logs import log
from tracegrad.tensor import active_tracer

# How many specializations a compiled module or function keeps: a call of a new signature
# past them runs eagerly (PyTorch's torch._dynamo.config.cache_size_limit). Read at each call.
CACHE_SIZE_LIMIT = 8


class RecompileError(RuntimeError):
    """A compiled module or function needed more recompiles than ``max_recompiles`` allows."""


def gc_paused(compile_fn):
    """Run ``compile_fn`` with the cyclic garbage collector off. Compiling makes several
    objects per graph node that live until it ends, and the collector's full passes, each
    over the whole heap, then come about once per so many new objects: together quadratic
    in the graph (half of a 20,000-node compile), for little garbage freed (a module's
    peak memory rose 8% without them). Reference counting still frees what it can."""

    @functools.wraps(compile_fn)
    def compile_without_collector(*args, **kwargs):
        if not gc.isenabled():
            return compile_fn(*args, **kwargs)
        gc.disable()
        try:
            return compile_fn(*args, **kwargs)
        finally:
            gc.enable()

    return compile_without_collector


P = ParamSpec("P")
R = TypeVar("R")


class Specialization(Protocol):
    """What the cache holds for one signature: a ModuleProgram or a StepProgram."""

    report: Report | None

    def still_valid(self) -> bool: ...


class Specializer(Generic[P, R]):
    """The cache of specializations of one compiled callable, its recompile policy and the
    public views of its latest specialization. For type checkers it takes the arguments and
    returns the result of what it compiles (``P``, ``R``: a module's forward, a function)."""

    kind = "function"  # what the error of a view asked for before any call names

    def __init__(self, *, passes="default", debug_nans=False, max_recompiles=None,
                 check=False, memory_budget=None, threads=1):  # fmt: skip
        self.passes = passes
        self.memory_budget = memory_budget  # bytes, or None (see tg.compile)
        self.threads = threads  # threads the generated code may run on (see tg.compile)
        self.debug_nans = debug_nans or os.environ.get("TRACEGRAD_DEBUG_NANS") == "1"
        self.max_recompiles = max_recompiles
        self.check = check
        self._cache: dict[Signature, Specialization] = {}
        self._last_compiled = None  # (recompile reasons are diffs against its signature)
        self.latest = None  # the specialization the last call ran
        self.recompile_reasons: list[str] = []
        self.ran_eagerly = False  # whether a call past the cache's bound ran eagerly
        # One call at a time: a specialization's planned memory serves every call, and the
        # cache and the latest specialization are shared
        self._lock = threading.RLock()

    @property
    def title(self) -> str:
        """What recompile logs and warnings call this callable."""
        raise NotImplementedError

    @property
    def specializations(self) -> list:
        return list(self._cache.values())

    # --- the public views of the latest specialization ----------------------------------------

    def _latest(self):
        if self.latest is None:
            raise RuntimeError(f"call the compiled {self.kind} once first: nothing is compiled yet")
        return self.latest

    @property
    def graph(self) -> Graph:
        """The optimized forward as the user wrote it: the NumPy layout choices (passes in
        BACKEND_CHOICES) show only in ``code`` and the "generated" ``views()``, whose graphs
        are ``program.graph`` and ``program.backward_graph`` of a specialization. Derived
        when first read."""
        return self._shown(self._latest().readable[0])

    @property
    def backward_graph(self) -> Graph | None:
        # (a whole step is one graph: forward, backward and update sections; it has none)
        return self._shown(self._latest().readable[1])

    @overload
    def _shown(self, graph: Graph) -> Graph: ...
    @overload
    def _shown(self, graph: None) -> None: ...
    def _shown(self, graph):
        """``graph``, which notebooks then draw as this callable's pictures draw it."""
        if graph is not None:
            viz.notebook.remember(graph, weakref.WeakMethod(self._graph_picture))
        return graph

    @property
    def code(self) -> str:
        return self._latest().program.source

    def explain(self) -> Explanation:
        """What compiling the latest specialization did: guards, passes and their changes,
        generated functions with their memory plan, saved activations, recompiles."""
        return render(self._latest().report, self.recompile_reasons)

    def views(self) -> list[tuple[str, Graph]]:
        """The graphs pictures show: optimized, generated and traced, forward and backward."""
        return self._latest().views()

    def passes_history(self) -> list[Snapshot]:
        """The latest specialization's graph through the pipeline: as traced, after each
        pass that changed it (with the rules that fired and the nodes added, removed and
        rewritten) and as planned (see ``explain.Snapshot``)."""
        return history(self._latest().report)

    def visualize(self, path):
        """Write a picture of the latest specialization; the suffix picks the format: .html
        (its graphs, before and after passes, with the code and a time line over
        ``passes_history()``), .svg or .dot."""
        return viz.render(path=path, **self.picture())

    def picture(self, views=None) -> dict:
        """What every picture of the latest specialization draws, as keyword arguments of
        ``viz.render`` and ``viz.to_html``: ``views`` (by default ``views()``), the code and
        its generated functions, the time line over ``passes_history()`` and the backward
        graphs' values labelled. ``visualize``, ``tracegrad viz`` and notebooks draw this."""
        return {
            "views": self.views() if views is None else views,
            "code": self.code,
            "generated": self._latest().program.parts,
            "history": self.passes_history(),
            "roles": self._roles(),
        }

    def _graph_picture(self, graph: Graph) -> dict | None:
        """The picture of ``graph`` alone, when it is a view of the latest specialization."""
        titles = [title for title, shown in self.views() if shown is graph]
        return self.picture(views=[(titles[0], graph)]) if titles else None

    def _roles(self) -> dict:
        """What the backward graphs' values are (``viz.backward_roles``), by id of graph."""
        spec = self._latest()
        spec = getattr(spec, "module", None) or spec  # (a function calling no backward())
        forward, backward = spec.readable
        if backward is None:  # (a whole step: one graph)
            return {}
        wrt = [spec.traced.graph.inputs[i].name for i in spec.wrt]
        program = spec.program
        return {
            id(backward): viz.backward_roles(forward, backward, wrt),
            id(program.backward_graph): viz.backward_roles(
                program.graph, program.backward_graph, wrt
            ),
        }

    def export(self, path):
        """Write the latest specialization as a standalone NumPy module at ``path``, with the
        state it reads (parameters, optimizer state) in a .npz beside it."""
        spec = self._latest()
        return spec.program.export(path, spec.state())

    # --- what it is, in a shell and in a notebook -----------------------------------------------

    def __repr__(self) -> str:
        n = len(self._cache)
        return f"{type(self).__name__}({self.title}, {n} specialization{'s' * (n != 1)})"

    def _repr_html_(self) -> str:
        """A summary card (specializations, the generated functions' node counts, the last
        recompile and why), then the latest specialization's picture."""
        card = viz.notebook.summary_card(repr(self), self._summary())
        if self.latest is None:
            return card
        return card + viz.notebook.page_frame(viz.to_html(**self.picture()), self.title)

    def _summary(self) -> list[tuple[str, str]]:
        rows = [("specializations", str(len(self._cache)))]
        if self.latest is None:
            return [*rows, ("latest", "nothing compiled yet: call it once")]
        rows += [
            (f"generated {fn.name}", f"{len(graph.nodes)} nodes")
            for fn, graph in self.latest.program.parts
        ]
        rows.append(("recompiles", str(len(self.recompile_reasons))))
        if self.recompile_reasons:
            rows.append(("last recompile", self.recompile_reasons[-1]))
        if self.ran_eagerly:
            rows.append(("past the cache", "calls of new signatures run eagerly"))
        return rows

    # --- calling --------------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if active_tracer() is not None:  # a piece of a program being traced: traced in
            return self._trace_through(args, kwargs)
        with self._lock:  # one call at a time (see __init__)
            try:
                return self._call(args, kwargs)
            except Exception as exc:
                at_users_line(exc)

    def _trace_through(self, args, kwargs):
        raise NotImplementedError

    def _call(self, args, kwargs):
        """Run the call: the latest specialization when its guards accept it, else the one
        cached for the call's signature, else a new one (or eagerly, past the policy)."""
        raise NotImplementedError

    # --- the cache ------------------------------------------------------------------------------

    def cached(self, signature: Signature):
        """The specialization for ``signature``, if one is cached and still valid."""
        spec = self._cache.get(signature)
        return spec if spec is not None and spec.still_valid() else None

    @gc_paused
    def specialize(self, signature: Signature, *call):
        """A new specialization for a call of ``signature`` (``self._compile(signature,
        *call)``), cached; None when the policy refuses one more (the call then runs
        eagerly)."""
        last = self._last_compiled
        if last is not None:
            reason = signature_diff(last.signature, signature)
            if reason == NO_CHANGE:
                reason = last.invalid_reason()
            if not self._admits(reason):
                return None
        spec = self._compile(signature, *call)
        if spec.report is not None:
            spec.report.drop_pass_graphs()
        self._cache[signature] = self._last_compiled = spec
        return spec

    def _compile(self, signature: Signature, *call):
        raise NotImplementedError

    def _admits(self, reason: str) -> bool:
        """Whether to compile one more specialization for a call whose guards failed because
        ``reason``; recorded in ``recompile_reasons`` when it does. With ``max_recompiles``
        set, that is the bound: a recompile past it raises. Without, past CACHE_SIZE_LIMIT
        specializations the call runs eagerly, as in PyTorch: False, with a warning the first
        time."""
        limit, cached = self.max_recompiles, len(self._cache)
        if limit is None and cached >= CACHE_SIZE_LIMIT:
            if not self.ran_eagerly:
                warnings.warn(
                    f"tracegrad: {self.title} has {cached} specializations (CACHE_SIZE_LIMIT in "
                    "tracegrad.compiled.specializer); calls of new signatures run eagerly. Last "
                    f"recompile would have been because {reason}",
                    stacklevel=6,  # (the caller of the compiled callable)
                )
            self.ran_eagerly = True
            return False
        self.recompile_reasons.append(reason)
        log("recompiles", f"recompiling {self.title}: {reason}")
        if limit is not None and len(self.recompile_reasons) > limit:
            raise RecompileError(
                f"recompile {len(self.recompile_reasons)} exceeds max_recompiles={limit}; "
                f"guard that failed: {reason}"
            )
        return True
