"""A ``Program``: one specialization's graphs planned, emitted as one module of generated
functions, and loaded (``generate``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from tracegrad import codegen
from tracegrad.blas import get_num_threads
from tracegrad.codegen.emit import row_runs
from tracegrad.codegen.export import export_program
from tracegrad.ir.graph import Graph
from tracegrad.logs import log
from tracegrad.ops import OPS
from tracegrad.ops.registry import RANDOM
from tracegrad.passes import pipeline
from tracegrad.passes.memory import MemoryPlan, plan_memory
from tracegrad.passes.pipeline import PassResult
from tracegrad.passes.recompute import Recomputation, choose
from tracegrad.passes.threads import ThreadPlan, plan_threads
from tracegrad.random import generator

# The planning passes that make the memory plan (``memory`` pools buffers too).
MEMORY_PLANS = ("inplace", "memory")


@dataclass
class Program:
    """One specialization: the graphs, the generated source and its loaded functions."""

    graph: Graph
    backward_graph: Graph | None
    source: str
    functions: dict
    uses_rng: dict[str, bool]
    constants: dict = field(default_factory=dict)
    parts: list = field(default_factory=list)  # (FunctionSource, Graph) per function
    title: str = ""
    # id() of every planned buffer the loaded module allocated: memory only this program writes.
    buffer_ids: frozenset[int] = frozenset()

    @functools.cached_property
    def constant_ids(self) -> frozenset[int]:
        """id() of the program's constant arrays (results may be one of them, never fresh)."""
        return frozenset(id(a) for a in self.constants.values())

    def export(self, path, state: list):
        """Write this program as a standalone module; ``state`` are the lifted tensors, the
        last inputs of the first function (their values go into the .npz)."""
        fn = self.parts[0][0]
        params = [p for p in fn.params if p != "rng"]
        names = params[len(params) - len(state) :]
        arrays = {n: t.detach().numpy() for n, t in zip(names, state, strict=True)}
        return export_program(path, self, arrays)

    def call(self, name: str, arrays):
        fn = self.functions[name]
        with np.errstate(all="ignore"):  # as eager ops: inf and nan results, not warnings
            return fn(*arrays, generator()) if self.uses_rng[name] else fn(*arrays)


def _plan(
    graph: Graph,
    passes_spec,
    persistent: frozenset[str],
    memory_budget: int | None = None,
    threads: tuple[int, int] = (1, 1),
) -> tuple[Graph, MemoryPlan, list[PassResult], Recomputation | None]:
    """The planning passes of the pipeline on one function's graph: the graph they leave, its
    memory plan (every result in fresh memory when the pipeline plans none), what each
    graph-changing planning pass did, and what a ``memory_budget`` made recompute.
    ``threads``: the program's threads and BLAS's (``_threads``)."""
    names = pipeline.planning(passes_spec)
    results, recomputation = [], None
    for name in names:
        if name in MEMORY_PLANS:
            continue
        options: dict = {}
        if name == "threads":
            options = dict(zip(("threads", "blas_threads"), threads, strict=True))
        if name == "recompute" and memory_budget is not None:
            recomputation = choose(graph, memory_budget, persistent)
            options = {"names": recomputation.recomputed}
        results.append(pipeline.run_pass(name, graph, **options))
        graph = results[-1].graph
    if "memory" in names or "inplace" in names:
        unpooled = recomputation.unpooled if recomputation is not None else ()
        plan = plan_memory(graph, persistent, pooled="memory" in names, unpooled=unpooled)
        return graph, plan, results, recomputation
    return graph, MemoryPlan.fresh(graph), results, recomputation


def _threads(graph: Graph, memory: MemoryPlan, threads: tuple[int, int], passes_spec) -> ThreadPlan:
    """What runs on the thread pool, for (the program's threads, BLAS's threads): nothing
    unless the program has more than one and the pipeline has the ``threads`` pass."""
    count, blas = threads
    if count < 2 or "threads" not in pipeline.planning(passes_spec):
        return ThreadPlan(count)
    return plan_threads(graph, memory, count, row_runs(graph, memory), blas)


def generate(
    parts: list[tuple[str, Graph]],
    title: str,
    debug_nans: bool,
    passes_spec="default",
    persistent: frozenset[str] = frozenset(),
    report=None,
    memory_budget: int | None = None,
    notes: dict[str, list[str]] | None = None,
    threads: int = 1,
) -> Program:
    """Emit one module holding a function per (name, graph) part and load it. Planning passes
    (the memory plan) run on each part first; ``persistent`` outputs may use planned memory;
    with a ``memory_budget`` (bytes), each part recomputes forward values to fit it;
    ``notes`` say what a part's outputs are (``emit_function``'s), by part name; with
    ``threads`` > 1, each part runs what ``plan_threads`` chooses on a thread pool."""
    unplanned = parts
    # (read once: threadpoolctl takes milliseconds; what BLAS runs decides what goes to the pool)
    counts = (threads, get_num_threads() if threads > 1 else 1)
    planned = [
        (name, *_plan(graph, passes_spec, persistent, memory_budget, counts))
        for name, graph in parts
    ]
    parts = [(name, graph) for name, graph, *_ in planned]
    if report is not None:
        report.unplanned, report.planned = unplanned, parts
    sources, uses_rng, constants = [], {}, {}
    named: dict[str, str] = {}  # IR value name -> its Python name in the parts so far
    for name, graph, memory, planning, recomputation in planned:
        fn = codegen.emit_function(
            graph, name, memory, debug_nans=debug_nans, notes=(notes or {}).get(name),
            known=named, threads=_threads(graph, memory, counts, passes_spec),
        )  # fmt: skip
        # (a value the forward saves keeps its name in the backward)
        named.update((value.name, python) for value, python in fn.names.items())
        if report is not None:
            report.emitted[name] = fn
            report.planning[name] = planning
            if recomputation is not None:
                report.recomputations[name] = recomputation
        uses_rng[name] = any(RANDOM in OPS[n.op].props for n in graph.nodes if n.op in OPS)
        if uses_rng[name]:
            fn.params.append("rng")
        constants.update(fn.constants)
        sources.append(fn)
    source = codegen.render_module(
        sources, title, codegen.RUNTIME_IMPORT, [graph for _, graph in parts]
    )
    log("code", "\n" + source)
    namespace = codegen.load(source, constants, title)
    functions = {name: namespace[name] for name, _ in parts}
    forward = parts[0][1]
    backward = parts[1][1] if len(parts) > 1 else None
    pairs = list(zip(sources, [graph for _, graph in parts], strict=True))
    buffer_ids = frozenset(id(namespace[b]) for fn in sources for b, _, _ in fn.buffers)
    return Program(
        forward, backward, source, functions, uses_rng, constants, pairs, title, buffer_ids
    )
