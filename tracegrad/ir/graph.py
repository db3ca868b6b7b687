"""The IR: a typed SSA graph.

A ``Graph`` has ``inputs`` (Values), ``nodes`` in topological order and ``outputs`` (Values).
Each ``Node`` applies one op to input Values and defines output Values (SSA: every Value is
defined once, by a graph input or a node). Node op kinds:

- a registry op (``tracegrad.ops.OPS``): ``add``, ``matmul``, ``softmax``...;
- ``constant``: no inputs, ``attrs["value"]`` holds a NumPy array;
- ``fused``: a chain of elementwise nodes computed by one generated kernel; ``attrs["body"]``
  is the chain's own Graph (inputs in the node's input order, one output; ``body_of(node)``),
  ``attrs["kind"]`` says what was fused (``"linear matmul add relu"``). The text form nests
  the body's text below the node's line, JSON writes it as a string of that text, and
  reading them builds the Graph;
- ``custom``: a user ``autograd.Function`` kept whole, ``attrs["fn"]`` the class and
  ``attrs["args"]`` its non-tensor arguments with tensor positions marked; it can have several
  outputs. The reverse-mode pass traces the user's forward and backward in.

``updates`` maps an input Value's name to the output Value that overwrites it after a run
(parameters, optimizer state and ``.grad`` updated in place by a compiled training step).
Every node keeps ``location``, the user's source line it came from, and ``scope``, the module
call that made it.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable

import networkx as nx
import numpy as np

from tracegrad.ir import lint as lint_module
from tracegrad.ir import serialize, text
from tracegrad.ir.core import CONSTANT, CUSTOM, FUSED, Namespace, Node, Value, users_of

__all__ = ["CONSTANT", "CUSTOM", "FUSED", "Graph", "Node", "Value", "body_of", "structure"]

# How a notebook draws a graph, by format ("html", "svg"): tracegrad.viz, a layer above the
# IR, fills this in when it is imported (as importing tracegrad does).
PICTURES: dict[str, Callable[[Graph], str]] = {}


class Graph:
    """A typed SSA graph of nodes in topological order (see the module docstring)."""

    def __init__(self, inputs=(), nodes=(), outputs=(), updates=None):
        self.inputs: list[Value] = list(inputs)
        self.nodes = nodes
        self.outputs: list[Value] = list(outputs)
        self.updates: dict[str, Value] = dict(updates or {})
        self._names: Namespace | None = None  # the names fresh() avoids, once it is called
        self._insert_at: list[int] = []  # the insertion points open (see inserting_after)

    @property
    def nodes(self) -> list[Node]:
        """The nodes in topological order. Read it freely; to change the graph, assign a new
        list or use the editing methods, which keep ``users()`` current (a node's
        ``inputs`` changed by hand leave it stale: ``lint`` notices)."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: Iterable[Node]) -> None:
        self._nodes: list[Node] = list(nodes)
        self._users: dict[Value, list[Node]] | None = None  # built at the first users()

    # --- queries ---------------------------------------------------------------------------------

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        for node in self.nodes:
            yield from node.outputs

    def producers(self) -> dict[Value, Node]:
        """Each value a node defines -> that node (graph inputs have none)."""
        return {v: node for node in self.nodes for v in node.outputs}

    def users(self) -> dict[Value, list[Node]]:
        """Each value read by a node -> the nodes reading it, in order (once per read).
        Built once, then maintained by the editing methods; do not change it."""
        if self._users is None:
            self._users = users_of(self._nodes)
        return self._users

    def kept(self) -> set[Value]:
        """The values the caller receives: graph outputs and the new values of updates."""
        return {*self.outputs, *self.updates.values()}

    def ancestors(self, values: Iterable[Value]) -> set[Value]:
        """``values`` and every value they are computed from (graph inputs included)."""
        producers = self.producers()
        found: set[Value] = set()
        todo = list(values)
        while todo:
            value = todo.pop()
            if value not in found:
                found.add(value)
                node = producers.get(value)
                todo += node.inputs if node is not None else ()
        return found

    def last_uses(self) -> dict[Value, int]:
        """Each value read -> the index of the last node reading it; outputs and new values
        of updates live to the end (``len(self.nodes)``). Values nothing reads are absent."""
        last = {v: index for index, node in enumerate(self.nodes) for v in node.inputs}
        last.update((v, len(self.nodes)) for v in self.kept())
        return last

    # --- editing -------------------------------------------------------------------------------

    def fresh(self, prefix: str = "") -> str:
        """A value name no value of the graph has, nor any name ``fresh`` gave before:
        ``prefix`` and a number (``h1``, ``h2``...). The names in use are read at the first
        call: name values added later with ``fresh`` too."""
        if self._names is None:
            self._names = Namespace(v.name for v in self.values())
        return self._names.fresh(prefix)

    def replace_all_uses(self, replacements: dict[Value, Value]) -> None:
        """Make every read of a replaced value (node inputs, outputs, updates) read its
        replacement instead, following chains: with ``a -> b`` and ``b -> c``, ``a`` reads
        ``c``."""
        if not replacements:
            return

        def final(value: Value) -> Value:
            while value in replacements:
                value = replacements[value]
            return value

        for node in self.nodes:
            node.inputs = [final(v) for v in node.inputs]
        self.outputs = [final(v) for v in self.outputs]
        self.updates = {key: final(v) for key, v in self.updates.items()}
        if self._users is not None:  # (every node was visited: rebuilding costs no more)
            self._users = users_of(self._nodes)

    @contextlib.contextmanager
    def inserting_after(self, node: Node | None):
        """Within this block ``insert`` places nodes right after ``node`` (None: before the
        first node), each after the one inserted before it, as torch.fx's insertion points."""
        self._insert_at.append(0 if node is None else self._nodes.index(node) + 1)
        try:
            yield self
        finally:
            self._insert_at.pop()

    def inserting_before(self, node: Node):
        """Within this block ``insert`` places nodes right before ``node``."""
        index = self._nodes.index(node)
        return self.inserting_after(self._nodes[index - 1] if index else None)

    def insert(self, node: Node) -> Node:
        """Add ``node`` at the open insertion point (at the end without one); its inputs
        must be defined before that point."""
        if self._insert_at:
            index = self._insert_at[-1]
            self._insert_at[-1] += 1
        else:
            index = len(self._nodes)
        self._nodes.insert(index, node)
        if self._users is not None:
            for v in dict.fromkeys(node.inputs):
                readers = self._users.setdefault(v, [])
                at = bisect.bisect(readers, index, key=self._nodes.index)
                readers[at:at] = [node] * node.inputs.count(v)
        return node

    def erase(self, node: Node) -> None:
        """Remove ``node``, which nothing may read any more."""
        users = self.users()
        read = [v for v in node.outputs if users.get(v) or v in self.kept()]
        if read:
            raise ValueError(f"cannot erase {node}: {read[0]} is still read")
        self._nodes.remove(node)
        for v in node.inputs:
            users[v].remove(node)
            if not users[v]:
                del users[v]

    def copy_where_made(self, values: list[Value], names: list[str]) -> list[Value]:
        """Insert a copy (a ``contiguous`` node) of each of ``values`` right after the node
        making it (first, for an input), before anything after can write the memory it is
        in; return the copies' values (named ``names``)."""
        producers = self.producers()
        copies = [Value(name, value.type) for value, name in zip(values, names, strict=True)]
        by_maker: dict[Node | None, list[Node]] = {}
        for value, copy in zip(values, copies, strict=True):
            by_maker.setdefault(producers.get(value), []).append(
                Node("contiguous", [value], [copy], {}, None)
            )
        for maker, made in by_maker.items():
            with self.inserting_after(maker):
                for node in made:
                    self.insert(node)
        return copies

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    def copy(self) -> Graph:
        """A deep copy with fresh Value and Node objects (constants' arrays and fused nodes'
        bodies are shared: passes never change them)."""
        mapping = {v: Value(v.name, v.type) for v in self.values()}
        nodes = [
            Node(
                n.op,
                [mapping[v] for v in n.inputs],
                [mapping[v] for v in n.outputs],
                dict(n.attrs),
                n.location,
                phase=n.phase,
                grad_of=n.grad_of,
                scope=n.scope,
            )
            for n in self.nodes
        ]
        copied = Graph(
            [mapping[v] for v in self.inputs],
            nodes,
            [mapping[v] for v in self.outputs],
            {k: mapping[v] for k, v in self.updates.items()},
        )
        return copied

    # --- comparison and text -------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return structure(self) == structure(other)

    # graphs are mutable (typeshed declares every object hashable, hence the ignore)
    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return text.print_graph(self)

    @classmethod
    def parse(cls, source: str) -> Graph:
        """Read the text form back: ``Graph.parse(str(g)) == g``."""
        return _read_bodies(cls(*text.parse_parts(source)))

    def constant(self, name: str) -> np.ndarray:
        """The values of the constant defining ``%name`` (the text form prints a constant of
        more than a few elements as ``value=...``, with its values last)."""
        return text.constant_value(self, name)

    def to_json(self) -> str:
        return serialize.to_json(self)

    @classmethod
    def from_json(cls, source: str) -> Graph:
        return _read_bodies(cls(*serialize.parts_from_json(source)))

    def to_networkx(self) -> nx.DiGraph:
        return serialize.to_networkx(self)

    def lint(self) -> None:
        """Check the invariants listed in ``tracegrad.ir.lint``; raise GraphLintError if broken."""
        lint_module.lint(self)

    def __repr__(self) -> str:
        sizes = f"{len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.outputs)} outputs"
        return f"<Graph: {sizes}>"

    # --- notebooks ---------------------------------------------------------------------------

    def _repr_html_(self) -> str | None:
        """The interactive picture (tracegrad.viz's page), inline."""
        draw = PICTURES.get("html")
        return draw(self) if draw is not None else None

    def _repr_svg_(self) -> str | None:
        """The static picture, for frontends without HTML."""
        draw = PICTURES.get("svg")
        return draw(self) if draw is not None else None


def _read_bodies(graph: Graph) -> Graph:
    """Build the Graph of each fused node's body from its text (as the text form and JSON
    hold it)."""
    for node in graph.nodes:
        body = node.attrs.get("body")
        if node.op == FUSED and isinstance(body, str):
            try:
                node.attrs["body"] = Graph.parse(body)
            except ValueError as exc:
                exc.add_note(f"in the body of the fused node defining {node.outputs}")
                raise
    return graph


def _attr_key(value):
    if isinstance(value, Graph):  # a fused node's body
        return ("graph", structure(value))
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, (tuple, list)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, type):
        return ("class", value.__module__, value.__qualname__)
    if isinstance(value, float):
        return ("float", repr(value))  # so nan equals nan
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), _attr_key(v)) for k, v in sorted(value.items(), key=repr)))
    return value


def structure(graph: Graph) -> tuple:
    """Everything that makes two graphs equal: names, types, ops, attributes, locations,
    scopes, phases."""

    def loc(node):
        return (node.location.filename, node.location.lineno) if node.location else None

    return (
        tuple((v.name, v.type) for v in graph.inputs),
        tuple(
            (
                n.op,
                tuple(v.name for v in n.inputs),
                tuple((v.name, v.type) for v in n.outputs),
                tuple(sorted((k, _attr_key(v)) for k, v in n.attrs.items())),
                loc(n),
                n.scope,
                n.phase,
                n.grad_of,
            )
            for n in graph.nodes
        ),
        tuple(v.name for v in graph.outputs),
        tuple(sorted((k, v.name) for k, v in graph.updates.items())),
    )


def body_of(node: Node) -> Graph:
    """The graph of a fused node's members."""
    return node.attrs["body"]
