"""The rewrite-rule language: patterns over the value graph, templates, and the one engine.

A ``Rule`` is data: a name, its algebra (``log(softmax(x)) -> log_softmax(x)``), a left side
``Pat``, an optional side condition ``when(m)`` and a right side. The engine runs exactly that:
it matches the pattern at each node, checks the condition on the captures and builds the
right side; a replacement must have the type of the value it replaces.

Patterns (models: tinygrad's ``UPat``, PyTensor's ``PatternNodeRewriter``)::

    Pat("mul", V("x"), Const(1.0), commutative=True)   # x * 1 or 1 * x, x captured
    Pat("log", Pat("softmax", V("x"), name="s"))       # the softmax node captured as "s"
    Pat(ELEMENTWISE_OPS, some=Pat("reshape"))          # one operand at any position
    V("x", where=is_scalar)                            # any value passing a predicate

- ``Pat(op, *inputs)``: a value made by a node whose op is ``op`` (a name or a set of names;
  None for any op). ``inputs`` match the node's inputs in order and fix their number; with
  none given the inputs are not looked at. ``rest="masks"`` captures the inputs after those
  as a tuple. ``some=p``: one input, at any position, matches ``p`` (``m.position``).
- ``attrs={"dims": (1, 0)}`` constrains attributes (a value, or a predicate on it).
- ``name`` captures the value (``m["x"]``) and its producer (``m.node("x")``); a name used
  twice must capture the same value. ``V(name)`` matches any value, graph inputs included.
- ``AnyOf(p, q)``: what ``p`` matches, or else ``q``.
- ``Const(number)``: a constant whose elements all equal ``number``; ``Const(name=...)`` any
  constant (its array is ``m.const(name)``).

Alternatives (operand orders, positions) are tried in order; the first whose side condition
holds and whose right side builds wins. A right side is a capture name (the value itself), an
``Emit`` template of new nodes, or a function ``build(m) -> Value | None`` for choices that need
code (None: the rule declines after all, and the nodes it emitted are dropped).

The engine (``rewrite``) walks the nodes in order, trying the rules of each node's op in
their list order; the first that fires replaces the node's output (later readers read the
replacement, the node is left dead for ``dce``) and is noted under its name for
``explain()``. Rounds repeat until none fires (at most ``MAX_ROUNDS``). Side conditions see
the graph as the round began: ``m.readers(v)`` and ``m.only_use(v)`` count live readers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.ir.core import CONSTANT, Node, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS
from tracegrad.passes.dce import live_nodes
from tracegrad.passes.pipeline import note, substitute

ROOT = "root"  # the capture name of the value being rewritten (and its node)


class Pat:
    """The left side of a rule, or a part of it (see the module docstring)."""

    def __init__(
        self,
        ops: str | frozenset[str] | None = None,
        *inputs: Pat,
        name: str | None = None,
        attrs: dict | None = None,
        commutative: bool = False,
        some: Pat | None = None,
        rest: str | None = None,
        where: Callable[[Value], bool] | None = None,
        constant=None,
    ):
        self.ops = frozenset([ops]) if isinstance(ops, str) else ops and frozenset(ops)
        self.inputs = inputs or None
        self.name, self.attrs, self.commutative = name, attrs or {}, commutative
        self.some, self.rest, self.where = some, rest, where
        self.constant = constant  # for Const: the number every element equals (None: any)

    def match(self, value: Value, m: Match) -> Iterator[None]:
        """Yield once per way ``value`` matches, with the captures recorded in ``m``."""
        node = m.producer(value)
        if self.where is not None and not self.where(value):
            return
        if self.ops is not None and (node is None or node.op not in self.ops):
            return
        if self.ops is not None and not self._attrs_hold(node):
            return
        if CONSTANT in (self.ops or ()) and not _elements_equal(node, self.constant):
            return
        with m.capturing(self.name, value, node) as bound:
            if bound:
                yield from self._match_inputs(node, m)

    def _attrs_hold(self, node: Node) -> bool:
        return all(_holds(want, node.attrs.get(key)) for key, want in self.attrs.items())

    def _match_inputs(self, node: Node | None, m: Match) -> Iterator[None]:
        if self.some is not None:
            for position, value in enumerate(node.inputs):
                m.position = position
                yield from self.some.match(value, m)
            return
        if self.inputs is None:
            yield
            return
        count = len(self.inputs)
        if len(node.inputs) < count or (self.rest is None and len(node.inputs) != count):
            return
        orders = [node.inputs[:count]]
        if self.commutative:
            orders.append(node.inputs[:count][::-1])
        with m.capturing(self.rest, tuple(node.inputs[count:]), None) as bound:
            for values in orders if bound else ():
                yield from _match_all(self.inputs, values, m)


class AnyOf(Pat):
    """Matches what any of its alternatives matches, trying them in order."""

    def __init__(self, *alternatives: Pat):
        super().__init__(frozenset().union(*(p.ops for p in alternatives)))
        self.alternatives = alternatives

    def match(self, value: Value, m: Match) -> Iterator[None]:
        for alternative in self.alternatives:
            yield from alternative.match(value, m)


def _holds(want, value) -> bool:
    return want(value) if callable(want) else value == want


def _match_all(patterns, values, m: Match) -> Iterator[None]:
    if not patterns:
        yield
        return
    for _ in patterns[0].match(values[0], m):
        yield from _match_all(patterns[1:], values[1:], m)


def _elements_equal(node: Node, number) -> bool:
    return number is None or bool(np.all(node.attrs["value"] == number))


def V(name: str | None = None, where: Callable[[Value], bool] | None = None) -> Pat:  # noqa: N802
    """Any value (a graph input too), captured as ``name``."""
    return Pat(None, name=name, where=where)


def Const(number=None, name: str | None = None, where=None) -> Pat:  # noqa: N802
    """A constant whose elements all equal ``number`` (any constant when None)."""
    return Pat(CONSTANT, name=name, constant=number, where=where)


class Emit:
    """A right side written as a template: ``op`` applied to captures (by name) or nested
    templates; ``attrs_of`` copies a captured node's attributes, ``attrs`` adds fixed ones."""

    def __init__(self, op: str, *args, attrs_of: str | None = None, **attrs):
        self.op, self.args, self.attrs_of, self.attrs = op, args, attrs_of, attrs

    def __call__(self, m: Match) -> Value:
        inputs = [build(arg, m) for arg in self.args]
        copied = m.node(self.attrs_of).attrs if self.attrs_of else {}
        return m.emit(self.op, inputs, **copied, **self.attrs)


@dataclass(frozen=True)
class Zero:
    """A right-side template for the constant 0 in the dtype of the capture ``like``."""

    like: str

    def __call__(self, m: Match) -> Value:
        return m.constant(0.0, m[self.like].type.dtype)


def build(right, m: Match) -> Value | None:
    """The value a right side stands for: a capture, or what a template or builder makes."""
    return m[right] if isinstance(right, str) else right(m)


def always(m: Match) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """A rewrite rule: where it matches, when it applies and what replaces the match."""

    name: str
    algebra: str
    pattern: Pat
    right: object  # a capture name, an Emit template or build(m) -> Value | None
    when: Callable[[Match], bool] = always

    def apply(self, m: Match) -> Value | None:
        """The replacement of ``m.root``'s output, or None; a declined attempt leaves no nodes."""
        out_type = m.root.outputs[0].type
        for _ in self.pattern.match(m.root.outputs[0], m):
            mark = len(m.nodes)
            if self.when(m):
                out = build(self.right, m)
                if out is not None and out.type == out_type:
                    return out
            m.drop_from(mark)
        return None


# --- the engine -------------------------------------------------------------------------------


class Match:
    """What a rule sees while it matches and builds at one node: the captures, producers and
    readers of earlier values, and a way to add nodes (before the node, at its source line)."""

    def __init__(self, rewrite: _Rewrite, root: Node):
        self.rewrite, self.root, self.nodes = rewrite, root, rewrite.nodes
        self.captures: dict[str, tuple[Value, Node | None]] = {ROOT: (root.outputs[0], root)}
        self.position = 0  # of the input a ``some`` pattern matched

    def __getitem__(self, name: str) -> Value:
        return self.captures[name][0]

    def node(self, name: str) -> Node:
        return self.captures[name][1]

    def const(self, name: str) -> np.ndarray:
        return self.node(name).attrs["value"]

    def capturing(self, name, value, node) -> _Capture:
        return _Capture(self, name, value, node)

    def producer(self, value: Value, op: str | None = None) -> Node | None:
        """The node making ``value`` (the node being rewritten for its own output)."""
        root = self.root if value is self.root.outputs[0] else None
        node = root or self.rewrite.producers.get(id(value))
        return node if node is not None and (op is None or node.op == op) else None

    def readers(self, value: Value) -> list[Node]:
        """The live nodes reading ``value`` as this round began."""
        return self.rewrite.readers.get(id(value), [])

    def only_use(self, value: Value) -> bool:
        """Whether the node being rewritten is the only reader of ``value``."""
        return self.rewrite.uses.get(id(value), 0) == 1

    def emit(self, op: str, inputs, type_: TensorType | None = None, **attrs) -> Value:
        if type_ is None:
            type_ = OPS[op].infer(*(v.type for v in inputs), **attrs)
        out = Value(f"s{next(self.rewrite.fresh)}", type_)
        node = Node(op, list(inputs), [out], attrs, self.root.location, self.root.origin)
        self.nodes.append(node)
        self.rewrite.producers[id(out)] = node
        return out

    def constant(self, array, dtype) -> Value:
        array = np.asarray(array, dtype.np)
        return self.emit(CONSTANT, [], TensorType(array.shape, dtype), value=array)

    def drop_from(self, mark: int) -> None:
        """Forget the nodes emitted since ``mark`` (an attempt that declined)."""
        for node in self.nodes[mark:]:
            for v in node.outputs:
                self.rewrite.producers.pop(id(v), None)
        del self.nodes[mark:]


class _Capture:
    """Binds a name while the patterns under it match; a name bound already must agree."""

    def __init__(self, m: Match, name, value, node):
        self.m, self.name, self.value, self.node = m, name, value, node
        self.fresh = name is not None and name not in m.captures

    def __enter__(self) -> bool:
        if self.fresh:
            self.m.captures[self.name] = (self.value, self.node)
            return True
        return self.name is None or self.m.captures[self.name][0] is self.value

    def __exit__(self, *exc) -> None:
        if self.fresh:
            del self.m.captures[self.name]


class _Rewrite:
    """One round over a graph: the nodes kept or emitted so far, and use counts as it began."""

    def __init__(self, graph: Graph, fresh):
        self.producers: dict[int, Node] = {}
        self.nodes: list[Node] = []
        self.fresh = fresh
        # Reads by live nodes only: an earlier rewrite leaves the nodes it replaced dead, and
        # they must not keep a value from counting as read once.
        live = live_nodes(graph)
        self.readers: dict[int, list[Node]] = {}
        for n in graph.nodes:
            for v in n.inputs if id(n) in live else ():
                self.readers.setdefault(id(v), []).append(n)
        self.uses = {key: len(nodes) for key, nodes in self.readers.items()}
        for v in [*graph.outputs, *graph.updates.values()]:
            self.uses[id(v)] = self.uses.get(id(v), 0) + 1


def by_op(rules: list[Rule]) -> dict[str, list[Rule]]:
    """The rules to try at a node of each op, in the order of ``rules``."""
    index: dict[str, list[Rule]] = {}
    for rule in rules:
        for op in sorted(rule.pattern.ops):
            index.setdefault(op, []).append(rule)
    return index


MAX_ROUNDS = 6


def rewrite(graph: Graph, rules: dict[str, list[Rule]]) -> Graph:
    """Apply ``rules`` (from ``by_op``) until none fires, noting each rule that fires."""
    counter = iter(range(1, 1 << 62))
    for _ in range(MAX_ROUNDS):
        graph, fired = _rewrite_once(graph, rules, counter)
        if not fired:
            break
    return graph


def _rewrite_once(graph: Graph, rules, counter) -> tuple[Graph, bool]:
    taken = {v.name for v in graph.values()}
    state = _Rewrite(graph, (n for n in counter if f"s{n}" not in taken))
    replaced: dict[int, Value] = {}
    for node in graph.nodes:
        node.inputs = [_final(replaced, v) for v in node.inputs]
        for rule in rules.get(node.op, ()):
            out = rule.apply(Match(state, node))
            if out is not None:
                replaced[id(node.outputs[0])] = out
                note(rule.name, node)
                break
        else:
            state.nodes.append(node)
            state.producers.update((id(v), node) for v in node.outputs)
    graph = Graph(graph.inputs, state.nodes, graph.outputs, graph.updates)
    return substitute(graph, replaced), bool(replaced)


def _final(replaced: dict[int, Value], value: Value) -> Value:
    while id(value) in replaced:
        value = replaced[id(value)]
    return value
