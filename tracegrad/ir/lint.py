"""The IR verifier: ``lint(graph)`` checks the invariants every pass must keep.

Run it after every pass in tests. Each error names the node that broke an invariant (index,
op, first output, source location) and says how to fix the graph.
"""

from __future__ import annotations

import difflib
from typing import NoReturn

import numpy as np

from tracegrad.dtypes import ALL as DTYPES
from tracegrad.dtypes import TensorType
from tracegrad.ir import text
from tracegrad.ir.core import CONSTANT, CUSTOM, FUSED, Node, Phase, Value, users_of
from tracegrad.ops import OPS


class GraphLintError(ValueError):
    """A graph breaks one of the invariants listed in ``lint``."""


def lint(graph) -> None:
    """Raise GraphLintError at the first broken invariant of ``graph``. It checks that:

    1. every node's op is known: a registry op (``tracegrad.ops.OPS``), ``constant``,
       ``fused`` or ``custom``; a custom node's ``attrs["fn"]`` is a class (a
       ``'module:qualname'`` string there means the parser could not import it);
    2. value names are strings, unique across graph inputs and node outputs (any characters:
       the text form quotes a name that is not ``[A-Za-z0-9_.]+``); each value's type is a
       TensorType of a tracegrad dtype with non-negative int dims;
    3. each node's inputs are defined before use, by a graph input or an earlier node's
       output (the very Value object, not a namesake); this also makes the graph acyclic;
    4. a registry op node has one output, an input count that fits ``op.inputs`` (a ``*name``
       takes any number) and an output type equal to ``op.infer(*input types, **attrs)``;
       a constant has no inputs, one output and a NumPy array ``attrs["value"]`` with the
       output's shape and dtype; a fused node's ``attrs["body"]`` is a Graph that passes
       lint itself, whose inputs and outputs are typed as the node's;
    5. graph outputs are defined values;
    6. each ``updates`` key names a graph input, and its value is a defined value of the
       same type as that input;
    7. each node's ``phase`` is a ``Phase``; a backward node names the op it is the
       gradient of in ``grad_of`` (a non-empty string), and no other node sets it;
    8. the graph's maintained ``users()`` table, once built, says who reads each value (a
       node's inputs changed by hand, not through the Graph's editing methods, leave it
       stale).
    """
    defined: dict[Value, str] = {}  # value -> who defines it, for "defined before use"
    names: dict[str, str] = {}  # name -> who defines it, for uniqueness
    for position, value in enumerate(graph.inputs):
        _define(value, f"graph input {position}", defined, names)
    for index, node in enumerate(graph.nodes):
        where = describe(index, node)
        _check_op(node, where)
        _check_inputs_defined(index, node, where, defined, graph)
        _check_types(node, where)
        _check_phase(node, where)
        for value in node.outputs:
            _define(value, where, defined, names)
    _check_outputs(graph, defined)
    _check_updates(graph, defined)
    _check_users(graph)


def describe(index: int, node: Node) -> str:
    """How errors name a node: ``node 7 (matmul -> %2, at model.py:12)``."""
    outputs = ", ".join(f"%{v.name}" for v in node.outputs) or "no outputs"
    where = f", at {node.location.filename}:{node.location.lineno}" if node.location else ""
    return f"node {index} ({node.op} -> {outputs}{where})"


def _fail(message: str) -> NoReturn:
    raise GraphLintError(message)


# --- (1) known ops ---------------------------------------------------------------------------


def _check_op(node: Node, where: str) -> None:
    if node.op == CUSTOM and not isinstance(node.attrs.get("fn"), type):
        _fail(
            f"{where}: custom node's attrs['fn'] is {node.attrs.get('fn')!r}, not a class; "
            "set it to the autograd.Function subclass (check that its module imports)"
        )
    if node.op in OPS or node.op in (CONSTANT, CUSTOM, FUSED):
        return
    guess = difflib.get_close_matches(node.op, [*OPS, CONSTANT, CUSTOM], n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    _fail(
        f"{where}: unknown op {node.op!r}{hint}; use an op of tracegrad.ops.OPS, 'constant' or "
        "'custom', or declare a new primitive with tracegrad.ops.register"
    )


# --- (2) names and types ---------------------------------------------------------------------


def _define(value: Value, where: str, defined: dict, names: dict) -> None:
    _check_value(value, where)
    if value.name in names:
        _fail(
            f"{where}: defines %{value.name}, already defined by {names[value.name]}; "
            "rename one of them (value names are unique in a graph)"
        )
    names[value.name] = where
    defined[value] = where


def _check_value(value: Value, where: str) -> None:
    if not isinstance(value.name, str):
        _fail(f"{where}: value name {value.name!r} is not a string; name the value with a str")
    type_ = value.type
    good = (
        isinstance(type_, TensorType)
        and any(type_.dtype is d for d in DTYPES)
        and isinstance(type_.shape, tuple)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in type_.shape)
    )
    if not good:
        _fail(
            f"{where}: %{value.name} has type {type_!r}; give it a TensorType(shape, dtype) "
            "with a tuple of non-negative ints and a tracegrad dtype"
        )


# --- (3) definition before use ---------------------------------------------------------------


def _check_inputs_defined(index: int, node: Node, where: str, defined: dict, graph) -> None:
    for value in node.inputs:
        if not isinstance(value, Value):
            _fail(f"{where}: input {value!r} is not a Value; pass the Value that holds it")
        if value not in defined:
            fix = _undefined_fix(value, index, graph)
            _fail(f"{where}: uses %{value.name} before it is defined; {fix}")


def _undefined_fix(value: Value, index: int, graph) -> str:
    later = [i for i, n in enumerate(graph.nodes) if any(v is value for v in n.outputs)]
    if later:
        return (
            f"node {later[0]} defines it later: define %{value.name} before node {index} uses "
            "it, or reorder graph.nodes topologically"
        )
    if any(v.name == value.name for v in _all_values(graph)):
        return (
            f"it is a different Value object from the defined %{value.name}; "
            "use the defining Value object itself"
        )
    return f"add %{value.name} to graph.inputs or add the node that computes it before node {index}"


def _all_values(graph):
    yield from graph.inputs
    for node in graph.nodes:
        yield from node.outputs


# --- (4) types agree -------------------------------------------------------------------------


def _check_types(node: Node, where: str) -> None:
    if node.op == CONSTANT:
        _check_constant(node, where)
    elif node.op in OPS:
        _check_registry_op(node, where)
    elif node.op == FUSED:
        _check_fused(node, where)


def _check_fused(node: Node, where: str) -> None:
    body = node.attrs.get("body")
    if not text.is_graph(body):
        _fail(
            f"{where}: a fused node's attrs['body'] is {type(body).__name__}, not a Graph; "
            "set it to the Graph of the chain it computes (Graph.parse reads its text)"
        )
    lint(body)
    typed = [v.type for v in body.inputs], [v.type for v in body.outputs]
    if typed != ([v.type for v in node.inputs], [v.type for v in node.outputs]):
        _fail(
            f"{where}: the fused body's inputs and outputs are typed {typed}, which does not "
            "match the node's; rebuild the body from the node's members"
        )


def _check_registry_op(node: Node, where: str) -> None:
    op = OPS[node.op]
    if len(node.outputs) != 1:
        _fail(
            f"{where}: a {node.op} node defines exactly one output, not {len(node.outputs)}; "
            "give it one (only custom nodes define several)"
        )
    fixed = [name for name in op.inputs if not name.startswith("*")]
    count = len(node.inputs)
    if count != len(fixed) and not (op.variadic and count >= len(fixed)):
        wanted = f"at least {len(fixed)}" if op.variadic else str(len(fixed))
        _fail(
            f"{where}: {node.op} takes {wanted} inputs ({', '.join(op.inputs)}), got {count}; "
            f"pass {wanted} values"
        )
    try:
        expected = op.infer(*(v.type for v in node.inputs), **node.attrs)
    except Exception as exc:  # the rule's own message says what is wrong with types or attrs
        _fail(f"{where}: {node.op}'s type rule rejects the node: {exc}; fix its inputs or attrs")
    got = node.outputs[0].type
    if got != expected:
        _fail(
            f"{where}: output %{node.outputs[0].name} is typed {got} but {node.op} of these "
            f"inputs gives {expected}; set the output's type to {expected}"
        )


def _check_constant(node: Node, where: str) -> None:
    if node.inputs or len(node.outputs) != 1:
        _fail(
            f"{where}: a constant takes no inputs and defines one output, got "
            f"{len(node.inputs)} inputs and {len(node.outputs)} outputs; fix it to match"
        )
    value, type_ = node.attrs.get("value"), node.outputs[0].type
    if not isinstance(value, np.ndarray):
        _fail(
            f"{where}: attrs['value'] is a {type(value).__name__}, not a NumPy array; "
            f"store np.asarray(value, dtype=np.{type_.dtype.np})"
        )
    if value.shape != type_.shape or value.dtype != type_.dtype.np:
        _fail(
            f"{where}: attrs['value'] is a {value.dtype}{list(value.shape)} array but the "
            f"output is typed {type_}; make the array and the output's type agree"
        )


# --- (7) phases ------------------------------------------------------------------------------


def _check_phase(node: Node, where: str) -> None:
    if not isinstance(node.phase, Phase):
        _fail(f"{where}: phase is {node.phase!r}; set it to a tracegrad.ir.core.Phase member")
    backward = node.phase is Phase.BACKWARD
    if backward and not (isinstance(node.grad_of, str) and node.grad_of):
        _fail(
            f"{where}: a backward node has grad_of={node.grad_of!r}; set it to the name of "
            "the forward op it is the gradient of"
        )
    if not backward and node.grad_of is not None:
        _fail(
            f"{where}: a {node.phase.value} node has grad_of={node.grad_of!r}; only backward "
            "nodes are gradients of an op: set phase=Phase.BACKWARD or grad_of=None"
        )


# --- (5) outputs and (6) updates -------------------------------------------------------------


def _is_defined(value, defined: dict) -> bool:
    return isinstance(value, Value) and value in defined


def _check_outputs(graph, defined: dict) -> None:
    for position, value in enumerate(graph.outputs):
        if not _is_defined(value, defined):
            _fail(
                f"graph output {position} (%{value.name}) is not defined by a graph input or a "
                "node; add the node that computes it, or remove it from graph.outputs"
            )


def _check_updates(graph, defined: dict) -> None:
    inputs = {v.name: v for v in graph.inputs}
    for key, value in graph.updates.items():
        where = f"update %{key} <- %{getattr(value, 'name', value)}"
        if key not in inputs:
            _fail(f"{where}: %{key} is not a graph input; updates may only overwrite inputs")
        if not _is_defined(value, defined):
            _fail(f"{where}: the new value is not defined in the graph; add the node computing it")
        if value.type != inputs[key].type:
            _fail(
                f"{where}: the new value is typed {value.type} but the input is "
                f"{inputs[key].type}; an update must keep the input's type"
            )


def _check_users(graph) -> None:
    maintained = getattr(graph, "_users", None)
    if maintained is None:
        return
    actual = users_of(graph.nodes)
    for value in {*maintained, *actual}:
        if maintained.get(value, []) != actual.get(value, []):
            _fail(
                f"users() of %{value.name} is stale: it lists {maintained.get(value, [])}, "
                f"the nodes read it as {actual.get(value, [])}; change a graph's nodes "
                "through its editing methods (insert, erase, replace_all_uses) or assign "
                "graph.nodes"
            )
