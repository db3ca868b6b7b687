"""``explain()``: a readable report of what compiling one specialization did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tracegrad.codegen.emit import FunctionSource
from tracegrad.ir.graph import Graph
from tracegrad.passes.buckets import buckets
from tracegrad.passes.cost import graph_cost
from tracegrad.passes.memory import InBuffer, InPlace, peak_bytes
from tracegrad.passes.pipeline import BACKEND_CHOICES, PassResult, replayed
from tracegrad.passes.recompute import Recomputation, is_view, saved_by_backward
from tracegrad.viz.notebook import report_html
from tracegrad.viz.scene import saved_roles


@dataclass
class Report:
    """Collected while compiling: passes per stage, the generated parts before and after the
    planning passes, what was emitted for each (its memory plan, buffers and row loops), and
    the values saved for the backward."""

    title: str
    signature: tuple
    stages: list[tuple[str, list[PassResult]]] = field(default_factory=list)
    unplanned: list[tuple[str, Graph]] = field(default_factory=list)
    planned: list[tuple[str, Graph]] = field(default_factory=list)
    saved: list = field(default_factory=list)
    emitted: dict[str, FunctionSource] = field(default_factory=dict)  # by function name
    planning: dict[str, list[PassResult]] = field(default_factory=dict)  # by function name
    recomputed: list[str] = field(default_factory=list)  # forward values the backward remakes
    unplanned_traced: Graph | None = None  # a whole step's graph as traced
    # What a memory budget made each generated function recompute, by function name
    recomputations: dict[str, Recomputation] = field(default_factory=dict)

    def drop_pass_graphs(self) -> None:
        """Let go of the graph each pass made, keeping the one each stage began with: a
        compiled callable would otherwise hold a dozen copies of its program's graph (and
        the collector walk them all, again and again), for a history few look at.
        ``history`` runs the passes again from the kept graph when asked."""
        for _, results in self._all_stages():
            for result in results:
                result.graph = None
                if result is not results[0]:
                    result.before = None

    def _all_stages(self) -> list[tuple[str, list[PassResult]]]:
        return [*self.stages, *((f"planning {n}", r) for n, r in self.planning.items())]


@dataclass
class Snapshot:
    """One graph of the pipeline, for ``passes_history()``: as traced (or as a stage began),
    after a pass that changed it (``pass_name``; ``rules``: how often each rule or kind of
    change fired; the nodes ``added``, ``removed`` and ``rewritten``, by the value name of
    their first output: same name, other op or inputs), or as planned for code generation."""

    title: str
    graph: Graph
    pass_name: str | None = None
    rules: dict[str, int] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        changes = f" +{len(self.added)} -{len(self.removed)} ~{len(self.rewritten)}"
        return f"<Snapshot {self.title!r}: {len(self.graph.nodes)} nodes" + (
            changes + ">" if self.pass_name else ">"
        )


def history(report: Report) -> list[Snapshot]:
    """Each stage's graph as it began, then after each pass that changed it (the planning
    passes of each generated function too), then each generated function's planned graph."""
    snapshots = []
    for stage, results in report._all_stages():
        if not results:
            continue
        results[:] = replayed(results)
        snapshots.append(Snapshot(stage, _graphs(results[0])[0]))
        snapshots += [_after(stage, r) for r in results if r.changed]
    return snapshots + [Snapshot(f"planned {name}", graph) for name, graph in report.planned]


def _graphs(result: PassResult) -> tuple[Graph, Graph]:
    """The graph a pipeline pass was given and the one it made (run_pass records both)."""
    assert result.before is not None and result.graph is not None
    return result.before, result.graph


def _after(stage: str, result: PassResult) -> Snapshot:
    given, made = _graphs(result)
    before, after = _node_keys(given), _node_keys(made)
    return Snapshot(
        f"{stage}: after {result.name}",
        made,
        result.name,
        dict(Counter(note.kind for note in result.notes).most_common()),
        [name for name in after if name not in before],
        [name for name in before if name not in after],
        [name for name, key in after.items() if name in before and before[name] != key],
    )


def _node_keys(graph: Graph) -> dict[str, tuple]:
    """First output name -> what the node computes from what (op and input names)."""
    return {
        node.outputs[0].name: (node.op, tuple(v.name for v in node.inputs))
        for node in graph.nodes
        if node.outputs
    }


def format_bytes(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _where(note) -> str:
    """The module call and the line a pass changed: ``fc1 (Linear) model.py:12``."""
    loc = note.location
    line = f"{loc.filename.rsplit('/', 1)[-1]}:{loc.lineno}" if loc is not None else "?"
    return f"{note.scope} {line}" if note.scope is not None else line


def _pass_lines(result: PassResult) -> list[str]:
    head = f"  {result.name:<10} {result.nodes_before:>5} -> {result.nodes_after:<5} nodes"
    if not result.changed:
        return [head + "  (no change)"]
    kinds = Counter(n.kind for n in result.notes)
    lines = [head + "  " + ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())]
    places: dict[str, Counter] = {}
    for note in result.notes:
        places.setdefault(note.kind, Counter())[_where(note)] += 1
    for kind, counter in places.items():
        spots = ", ".join(
            f"{where}" + (f" (x{n})" if n > 1 else "") for where, n in counter.items()
        )
        lines.append(f"      {kind}: {spots}")
    return lines


def _emitted_lines(fn: FunctionSource, before: Graph, after: Graph) -> list[str]:
    """The memory plan of one generated function, and the buffers its code allocates (the
    plan's, less whole buffers that row loops replaced by buffers of one piece)."""
    plan = fn.plan
    assert plan is not None  # (a generated function has one; only its kernels have none)
    allocated = [(shape, dtype) for _, shape, dtype in fn.buffers]
    return [
        f"    memory plan: {plan.count(InPlace)} in-place writes, {plan.count(InBuffer)} values "
        f"in {len(allocated)} reused buffers; estimated peak "
        f"{format_bytes(peak_bytes(before))} before, "
        f"{format_bytes(peak_bytes(after, plan, allocated))} after"
    ]


def _row_loop_lines(fn: FunctionSource) -> list[str]:
    if not fn.row_loops:
        return []
    members = sum(loop.stop - loop.start for loop in fn.row_loops)
    inside = sum(len(loop.inside) for loop in fn.row_loops)
    return [
        f"    row loops: {len(fn.row_loops)} loops run {members} elementwise nodes piece by "
        f"piece of rows, each piece in cache ({inside} values need only a piece)"
    ]


def _thread_lines(fn: FunctionSource) -> list[str]:
    """What the ``threads`` pass chose to run on the thread pool, and why."""
    plan = fn.threads
    if not plan:
        return []
    return [
        f"    threads ({plan.threads}): {len(plan.concurrent)} products run in the pool beside "
        f"the statements after them, {len(plan.splits)} elementwise runs split by rows",
        *(f"      {window.reason}" for window in plan.concurrent),
        *(f"      {split.reason}" for split in plan.splits),
    ]


def _backend_choice_lines(report: Report) -> list[str]:
    """Where the rewrites of backend passes (layout choices) show, when any ran: not in the
    graph users read."""
    ran = {r.name for _, results in report.stages for r in results if r.changed}
    chosen = [name for name in BACKEND_CHOICES if name in ran]
    if not chosen:
        return []
    return [
        f"  ({', '.join(chosen)} chose NumPy layouts for the code below: they show in cm.code "
        "and the 'generated' views, not in cm.graph)"
    ]


SCHEDULE_NOTES = {
    "moved": "nodes of results kept for the caller run as soon as their inputs exist",
    "hoisted": "scalar update nodes run first",
    "started early": "gradient buckets start their all_reduce as soon as their gradients exist",
    "waited late": "gradient buckets are waited on just before the first node reading them",
    "moved beside a product": "products moved beside an independent product, to run at once",
}


def _schedule_lines(planning: list[PassResult]) -> list[str]:
    counts = Counter(note.kind for result in planning for note in result.notes)
    return [
        f"    schedule: {counts[kind]} {what}"
        for kind, what in SCHEDULE_NOTES.items()
        if counts[kind]
    ]


def _budget_lines(report: Report) -> list[str]:
    """What a memory budget chose for each program it was estimated on (a whole step, or a
    module's joint forward and backward): the peak before and after, the operations it added,
    the forward values recomputed, and (for a step) those still saved."""
    planned = dict(report.planned)
    lines = []
    for name, choice in report.recomputations.items():
        graph = planned[name] if name in planned else planned["forward"]
        total = graph_cost(graph).operations + (
            graph_cost(planned["backward"]).operations if "backward" in planned else 0
        )
        extra = choice.extra_operations
        lines += [
            "",
            f"memory budget ({name}): {format_bytes(choice.budget)}; estimated peak "
            f"{format_bytes(choice.peak_before)} before, {format_bytes(choice.peak_after)} "
            f"after; {extra:,} extra operations ({100 * extra / max(total - extra, 1):.1f}% more)",
        ]
        if choice.unpooled:
            pools = ", ".join(f"{dtype}{list(shape)}" for shape, dtype in sorted(choice.unpooled))
            lines.append(f"  in fresh memory instead of reused buffers: {pools}")
        producers = {v.name: n for n in graph.nodes for v in n.outputs}
        recomputed = [producers[n] for n in choice.recomputed if n in producers]
        values = [n.outputs[0] for n in recomputed if not is_view(n)]
        lines += _value_list("recomputed in the backward", values, producers)
        if name in planned:  # (a module's saved values are listed below)
            lines += _value_list("saved for the backward", saved_by_backward(graph), producers)
    return lines


def _value_list(title: str, values, producers) -> list[str]:
    """``title`` with the count and size of ``values``, then each with its op and scope."""
    size = format_bytes(sum(v.type.nbytes for v in values))
    lines = [f"  {title} ({len(values)} values, {size}):"]
    for v in values:
        maker = producers[v.name]
        scope = f" in {maker.scope}" if maker.scope is not None else ""
        lines.append(f"    %{v.name}: {v.type} = {maker.op}{scope}")
    return lines


def _communication_lines(graph: Graph) -> list[str]:
    """A data-parallel step's gradient buckets: the bytes reduced per step, and where each
    bucket's non-blocking all_reduce starts and is waited on."""
    found = buckets(graph)
    if not found:
        return []
    total = format_bytes(sum(b.nbytes for b in found))
    lines = [
        f"    gradient all_reduce: {_counted(len(found), 'bucket')}, {total} per step (with p "
        "processes, each sends and receives about 2 (p - 1) / p times that)"
    ]
    lines += [
        f"      bucket {b.number}: {_counted(b.gradients, 'gradient')}, "
        f"{format_bytes(b.nbytes)}; started after {_node_words(b.started_after)}, "
        f"waited on before {_node_words(b.waited_before)}"
        for b in found
    ]
    return lines


def _counted(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _node_words(node) -> str:
    if node is None:
        return "nothing (the end)"
    origin = f"grad of {node.grad_of}" if node.grad_of else node.phase.value
    scope = f" in {node.scope}" if node.scope is not None else ""
    return f"%{node.outputs[0].name} = {node.op} ({origin}{scope})"


def _saved_lines(report: Report) -> list[str]:
    """The values the forward keeps for the backward: each with what it is (the op and the
    module call that made it, or the input it is), the gradient ops reading it and its name
    in the generated code."""
    if not report.saved:
        return []
    total = sum(v.type.nbytes for v, _ in report.saved)
    heading = f"saved for the backward ({len(report.saved)} values, {format_bytes(total)}):"
    forward = dict(report.unplanned)["forward"]  # (the graph whose outputs they are)
    roles = saved_roles(forward, [v.name for v, _ in report.saved])
    emitted = report.emitted.get("forward")
    in_code = {v.name: name for v, name in emitted.names.items()} if emitted else {}
    return ["", heading] + [
        f"  %{v.name}: {v.type} ({format_bytes(v.type.nbytes)}), {roles[v.name].text}, "
        f"read by {', '.join(why)}" + (f" (code: {in_code[v.name]})" if v.name in in_code else "")
        for v, why in report.saved
    ]


class Explanation(str):
    """``explain()``'s report: a str (print it, search it) that shows as its lines, not as
    an escaped one-line string, when a notebook cell ends with it, and as HTML where it can."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return report_html(str(self))


def render(report: Report, recompile_reasons: list[str]) -> Explanation:
    lines = [f"tracegrad explain: {report.title}", "", "guards (the signature this code is for):"]
    lines += [f"  {label} = {value}" for label, value in report.signature]
    for stage, results in report.stages:
        lines += ["", f"passes on the {stage}:"]
        for result in results:
            lines += _pass_lines(result)
    lines += ["", "generated functions:", *_backend_choice_lines(report)]
    for (name, before), (_, after) in zip(report.unplanned, report.planned, strict=True):
        counts = ", ".join(f"{op} {n}" for op, n in after.op_counts().items())
        lines.append(f"  {name}: {len(after.nodes)} nodes ({counts})")
        lines += _emitted_lines(report.emitted[name], before, after)
        lines += _schedule_lines(report.planning.get(name, []))
        lines += _communication_lines(after)
        lines += _row_loop_lines(report.emitted[name])
        lines += _thread_lines(report.emitted[name])
    lines += _saved_lines(report)
    if report.recomputed:
        lines.append(
            "recomputed in the backward instead of saved (cheap ops on saved values): "
            + ", ".join(f"%{name}" for name in report.recomputed)
        )
    lines += _budget_lines(report)
    lines += ["", f"recompiles: {len(recompile_reasons)}"]
    lines += [f"  {i + 1}. {reason}" for i, reason in enumerate(recompile_reasons)]
    return Explanation("\n".join(lines))
