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
replacement) and is noted under its name for ``explain()``. A rule marked ``on_build`` is
also tried on each node a firing builds, as it is built (a view of a view collapses at
once). Rounds repeat until none fires (at most ``MAX_ROUNDS``), each on the graph less the
nodes the last left dead. Side conditions see the graph as the round began:
``m.readers(v)`` and ``m.only_use(v)`` count live readers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.ir.core import CONSTANT, Node, Value
from tracegrad.ir.graph import Graph, _attr_key
from tracegrad.ops import OPS
from tracegrad.passes.cost import reduction_operations
from tracegrad.passes.dce import has_effect, live
from tracegrad.passes.pipeline import note

ROOT = "root"  # the capture name of the value being rewritten (and its node)


class Pat:
    """The left side of a rule, or a part of it (see the module docstring)."""

    def __init__(
        self,
        ops: str | Iterable[str] | None = None,
        *inputs: Pat,
        name: str | None = None,
        attrs: dict | None = None,
        commutative: bool = False,
        some: Pat | None = None,
        rest: str | None = None,
        where: Callable[[Value], bool] | None = None,
        constant=None,
    ):
        self.ops = (
            frozenset([ops]) if isinstance(ops, str) else None if ops is None else frozenset(ops)
        )
        self.inputs = inputs or None
        self.name, self.attrs, self.commutative = name, attrs or {}, commutative
        self.some, self.rest, self.where = some, rest, where
        self.constant = constant  # for Const: the number every element equals (None: any)

    def match(self, value: Value, m: Match) -> Iterator[None]:
        """Yield once per way ``value`` matches, with the captures recorded in ``m``."""
        node = m.producer(value)
        if self._fits(value, node):
            yield from _bound(m, self.name, (value, node), lambda: self._match_inputs(node, m))

    def _fits(self, value: Value, node: Node | None) -> bool:
        """Whether the value itself (not its inputs) fits: predicate, op, attributes."""
        if self.where is not None and not self.where(value):
            return False
        if self.ops is None:
            return True
        if node is None or node.op not in self.ops:
            return False
        if self.attrs and not all(_holds(w, node.attrs.get(k)) for k, w in self.attrs.items()):
            return False
        return node.op != CONSTANT or _elements_equal(node, self.constant)

    def may_match(self, value: Value, m: Match) -> bool:
        """Whether ``value`` fits the pattern's ops, attributes and predicates at every level,
        captures aside: a quick test, without the search, that most nodes fail."""
        node = m.producer(value)
        if not self._fits(value, node):
            return False
        inputs = _inputs_of(node)
        if self.some is not None:
            return any(self.some.may_match(v, m) for v in inputs)
        if self.inputs is None:
            return True
        if not self._arity_fits(self.inputs, inputs):
            return False
        values = inputs[: len(self.inputs)]
        if _all_may_match(self.inputs, values, m):
            return True
        return self.commutative and _all_may_match(self.inputs, values[::-1], m)

    def _match_inputs(self, node: Node | None, m: Match) -> Iterator[None]:
        inputs = _inputs_of(node)
        if self.some is not None:
            for position, value in enumerate(inputs):
                m.position = position
                yield from self.some.match(value, m)
            return
        if self.inputs is None:
            yield
            return
        if not self._arity_fits(self.inputs, inputs):
            return
        count = len(self.inputs)
        rest = (tuple(inputs[count:]), None)
        yield from _bound(m, self.rest, rest, lambda: self._in_orders(inputs[:count], m))

    def _arity_fits(self, patterns: tuple[Pat, ...], inputs: list[Value]) -> bool:
        """As many inputs as patterns for them, or more with ``rest`` to take the others."""
        count = len(patterns)
        return len(inputs) == count or (self.rest is not None and len(inputs) > count)

    def _in_orders(self, values, m: Match) -> Iterator[None]:
        yield from _match_all(self.inputs, values, m)
        if self.commutative:
            yield from _match_all(self.inputs, values[::-1], m)


def _inputs_of(node: Node | None) -> list[Value]:
    """The inputs of a value's producer (a graph input has no producer, so none)."""
    return [] if node is None else node.inputs


def _union(op_sets: list[frozenset[str] | None]) -> frozenset[str] | None:
    """The ops of any of the sets (None, any op, when one of them is None)."""
    known = [ops for ops in op_sets if ops is not None]
    return frozenset().union(*known) if len(known) == len(op_sets) else None


def _all_may_match(patterns: tuple[Pat, ...], values: list[Value], m: Match) -> bool:
    return all(p.may_match(v, m) for p, v in zip(patterns, values, strict=True))


def _bound(m: Match, name: str | None, capture: tuple, then) -> Iterator[None]:
    """The matches of ``then()`` with ``name`` bound to ``capture`` (value, node) meanwhile;
    a name bound already must hold the same value."""
    if name is None:
        yield from then()
    elif name in m.captures:
        if m.captures[name][0] is capture[0]:
            yield from then()
    else:
        m.captures[name] = capture
        try:
            yield from then()
        finally:
            del m.captures[name]


class AnyOf(Pat):
    """Matches what any of its alternatives matches, trying them in order."""

    def __init__(self, *alternatives: Pat):
        super().__init__(_union([p.ops for p in alternatives]))
        self.alternatives = alternatives

    def match(self, value: Value, m: Match) -> Iterator[None]:
        for alternative in self.alternatives:
            yield from alternative.match(value, m)

    def may_match(self, value: Value, m: Match) -> bool:
        return any(alternative.may_match(value, m) for alternative in self.alternatives)


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
    # Elementwise passes over the rewritten value a firing may add (a stable form computing
    # more than the form it replaces, a copy NumPy would make anyway); the rule's entry says
    # why. Products and reductions no firing may add.
    extra_passes: int = 0
    # Tried on each node a firing builds, as it is built, not a round later: for rules whose
    # left side and condition read only the node and its producers (a view of a view), so
    # a chain a firing makes collapses in the round that made it.
    on_build: bool = False

    @functools.cached_property
    def needs(self) -> frozenset[str] | None:
        """Ops of which the rewritten node must read at least one value (None: no such
        need): a test on the node's inputs alone that skips most rules at most nodes."""
        return _needs(self.pattern)

    @functools.cached_property
    def passes_through(self) -> int | None:
        """The input position whose value is the replacement, when the right side names a
        capture that is one input of the pattern as it is (``x * 1 -> x``): the rule can only
        fire where that input has the root's type, a test on the node alone."""
        pattern, right = self.pattern, self.right
        if not isinstance(right, str) or pattern.inputs is None or pattern.commutative:
            return None
        positions = [i for i, p in enumerate(pattern.inputs) if p.name == right]
        return positions[0] if len(positions) == 1 else None

    def apply(self, m: Match) -> Value | None:
        """The replacement of ``m.root``'s output, or None; a declined attempt leaves no nodes."""
        out_type = m.root.outputs[0].type
        if not self.pattern.may_match(m.root.outputs[0], m):
            return None
        for _ in self.pattern.match(m.root.outputs[0], m):
            mark = len(m.nodes)
            if self.when(m):
                out = build(self.right, m)
                if out is not None and out.type == out_type and not self._adds_work(m, mark):
                    return out
            m.drop_from(mark)
        return None

    def _adds_work(self, m: Match, mark: int) -> bool:
        """Whether the nodes a firing emitted (from ``mark``) compute more in products and
        reductions than the nodes it leaves dead: a product another reader still needs,
        computed again in a new form. Such a firing is declined (the rule tests check the
        rest of the cost: tests/passes/test_rule_costs.py)."""
        added = sum(reduction_operations(node) for node in m.nodes[mark:])
        return added > 0 and added > sum(reduction_operations(n) for n in _dying(m))


_DYING_DEPTH = 6  # producers looked through for nodes a firing leaves dead (patterns are shallow)


def _dying(m: Match) -> set[Node]:
    """The rewritten node, its twins (nodes computing the same from the same inputs: the rule
    rewrites them alike and cse merges the results) and the producers (a few steps up) whose
    values only dying nodes read: as many reads by dying nodes as the round began with (the
    rewritten node may be new this round, standing in for the reader it replaced)."""
    uses, kept = m.rewrite.uses, m.rewrite.kept
    root = m.root
    twins = {r for v in root.inputs[:1] for r in m.readers(v) if _same_computation(r, root)}
    dying = {root, *twins}
    frontier = list(dying)
    reads: dict[Value, int] = {}
    for _ in range(_DYING_DEPTH):
        found = []
        for node in frontier:
            for value in node.inputs:
                reads[value] = reads.get(value, 0) + 1
        for node in frontier:
            for value in node.inputs:
                producer = m.producer(value)
                if producer is None or producer in dying or value in kept:
                    continue
                if reads[value] >= uses.get(value, 0):
                    dying.add(producer)
                    found.append(producer)
        frontier = found
    return dying


def _same_computation(node: Node, other: Node) -> bool:
    if (node.op, node.inputs) != (
        other.op,
        other.inputs,
    ) or node.attrs.keys() != other.attrs.keys():
        return False
    return all(_attr_key(node.attrs[k]) == _attr_key(other.attrs[k]) for k in node.attrs)


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
        node = self.captures[name][1]
        if node is None:
            raise ValueError(f"rule capture {name!r} is a graph input: it has no node")
        return node

    def values(self, name: str) -> tuple[Value, ...]:
        """The values a ``rest=name`` capture took (the inputs past the patterned ones)."""
        return cast(tuple[Value, ...], self.captures[name][0])  # (what ``rest`` captures)

    def const(self, name: str) -> np.ndarray:
        return self.node(name).attrs["value"]

    def producer(self, value: Value, op: str | None = None) -> Node | None:
        node = self.rewrite.producers.get(value)
        return node if node is not None and (op is None or node.op == op) else None

    def readers(self, value: Value) -> list[Node]:
        """The live nodes reading ``value`` as this round began."""
        return self.rewrite.readers.get(value, [])

    def returned(self, value: Value) -> bool:
        """Whether the caller receives ``value`` (a graph output or an update's new value)."""
        return value in self.rewrite.kept

    def only_use(self, value: Value) -> bool:
        """Whether the node being rewritten is the only reader of ``value``."""
        return self.rewrite.uses.get(value, 0) == 1

    def emit(self, op: str, inputs, type_: TensorType | None = None, **attrs) -> Value:
        if type_ is None:
            type_ = OPS[op].infer(*(v.type for v in inputs), **attrs)
        out = Value(f"s{next(self.rewrite.fresh)}", type_)
        node = self.root.derive(op, inputs, [out], attrs)
        self.nodes.append(node)
        self.rewrite.producers[out] = node
        return self._built(node)

    def _built(self, node: Node) -> Value:
        """The output of ``node``, or what an ``on_build`` rule replaces it with (the node
        is left dead, as a rewritten node is)."""
        for rule in self.rewrite.rules.get(node.op, ()):
            if rule.on_build:
                out = rule.apply(Match(self.rewrite, node))
                if out is not None:  # (noted once the firing that built the node is kept)
                    self.rewrite.built.append((len(self.nodes), rule.name, node))
                    return out
        return node.outputs[0]

    def constant(self, array, dtype) -> Value:
        array = np.asarray(array, dtype.np)
        return self.emit(CONSTANT, [], TensorType(array.shape, dtype), value=array)

    def drop_from(self, mark: int) -> None:
        """Forget the nodes emitted since ``mark`` (an attempt that declined)."""
        for node in self.nodes[mark:]:
            for v in node.outputs:
                self.rewrite.producers.pop(v, None)
        del self.nodes[mark:]
        self.rewrite.built = [b for b in self.rewrite.built if b[0] <= mark]


class _Rewrite:
    """One round over a graph: the nodes kept or emitted so far; readers and use counts of the
    values as the round began (found when a rule first asks: most rules never do)."""

    def __init__(self, graph: Graph, rules: dict[str, list[Rule]], counter):
        self.producers: dict[Value, Node] = {}
        self.nodes: list[Node] = []
        self.graph, self.rules, self.counter = graph, rules, counter
        # The on_build firings of the attempt under way: (nodes before, rule name, node)
        self.built: list[tuple[int, str, Node]] = []
        # (a rewrite gives a node new input lists; these are the ones the round began with)
        self.inputs = [(node, node.inputs) for node in graph.nodes]

    @functools.cached_property
    def fresh(self) -> Iterator[int]:
        """Numbers n for new value names s<n> that no value of the graph has."""
        taken = {v.name for v in self.graph.values()}
        return (n for n in self.counter if f"s{n}" not in taken)

    @functools.cached_property
    def readers(self) -> dict[Value, list[Node]]:
        """Each value -> the live nodes reading it. Reads by live nodes only (as dce finds
        them): an earlier rewrite leaves the nodes it replaced dead, and they must not keep a
        value from counting as read once."""
        live = set(self.roots)
        readers: dict[Value, list[Node]] = {}
        for node, inputs in reversed(self.inputs):
            if has_effect(node) or any(v in live for v in node.outputs):
                live.update(inputs)
                for v in inputs:
                    readers.setdefault(v, []).append(node)
        for nodes in readers.values():
            nodes.reverse()  # (in graph order)
        return readers

    @functools.cached_property
    def uses(self) -> dict[Value, int]:
        """Each value -> how many live nodes and outputs read it."""
        uses = {key: len(nodes) for key, nodes in self.readers.items()}
        for v in self.roots:
            uses[v] = uses.get(v, 0) + 1
        return uses

    @functools.cached_property
    def kept(self) -> frozenset[Value]:
        return frozenset(self.roots)

    @property
    def roots(self) -> list[Value]:
        return [*self.graph.outputs, *self.graph.updates.values()]


def by_op(rules: list[Rule]) -> dict[str, list[Rule]]:
    """The rules to try at a node of each op, in the order of ``rules``."""
    index: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.pattern.ops is None:
            raise ValueError(f"rule {rule.name}: its pattern names no ops (rules are found by op)")
        for op in sorted(rule.pattern.ops):
            index.setdefault(op, []).append(rule)
    return index


MAX_ROUNDS = 6


def rewrite(graph: Graph, rules: dict[str, list[Rule]], rounds: int = MAX_ROUNDS) -> Graph:
    """Apply ``rules`` (from ``by_op``) until none fires (in at most ``rounds`` rounds),
    noting each rule that fires."""
    counter = iter(range(1, 1 << 62))
    graph = _without_dead_nodes(graph)
    for _ in range(rounds):
        graph, fired = _rewrite_once(graph, rules, counter)
        if not fired:
            break
        graph = _without_dead_nodes(graph)
    return graph


def _without_dead_nodes(graph: Graph) -> Graph:
    """``graph`` less the nodes nothing live reads (those a firing replaced, with what only
    they read): a round would otherwise try its rules on them again, and count their
    firings as changes."""
    kept = live(graph)
    if len(kept) == len(graph.nodes):
        return graph
    return Graph(graph.inputs, [n for n in graph.nodes if n in kept], graph.outputs, graph.updates)


def _rewrite_once(graph: Graph, rules, counter) -> tuple[Graph, bool]:
    state = _Rewrite(graph, rules, counter)
    replaced: dict[Value, Value] = {}
    for node in graph.nodes:
        if replaced:
            node.inputs = [_final(replaced, v) for v in node.inputs]
        for v in node.outputs:
            state.producers[v] = node
        here = rules.get(node.op)
        fired = _first_firing(here, Match(state, node)) if here else None
        if fired is None:
            state.nodes.append(node)
            continue
        rule, out = fired
        replaced[node.outputs[0]] = out
        for v in node.outputs:  # (replaced: nothing reads the node any more)
            del state.producers[v]
        note(rule.name, node)
        for _, name, built in state.built:
            note(name, built)
        state.built.clear()
    if not replaced:
        return graph, False
    graph = Graph(graph.inputs, state.nodes, graph.outputs, graph.updates)
    graph.replace_all_uses(replaced)
    return graph, True


def _first_firing(rules: list[Rule], m: Match) -> tuple[Rule, Value] | None:
    producers, root = m.rewrite.producers, m.root
    read = {node.op for node in map(producers.get, root.inputs) if node is not None}
    out_type = root.outputs[0].type
    for rule in rules:
        needs, through = rule.needs, rule.passes_through
        if needs is not None and needs.isdisjoint(read):
            continue
        if through is not None and root.inputs[through].type != out_type:
            continue
        out = rule.apply(m)
        if out is not None:
            return rule, out
    return None


def _needs(pattern: Pat) -> frozenset[str] | None:
    """The ops one input of a node matching ``pattern`` must be made by (see Rule.needs)."""
    if isinstance(pattern, AnyOf):
        return _union([_needs(p) for p in pattern.alternatives])
    if pattern.some is not None:
        return pattern.some.ops
    constrained = [p.ops for p in pattern.inputs or () if p.ops is not None]
    return constrained[0] if constrained else None


def _final(replaced: dict[Value, Value], value: Value) -> Value:
    while value in replaced:
        value = replaced[value]
    return value
