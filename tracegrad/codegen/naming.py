"""Python names of a generated function's values, after what made them.

The IR numbers its values (``%7``, ``%s29``: their identity, which the dump, explain and
tests key on); the generated code names them for a reader instead:

- a node's value after its module scope and op: ``model_0_matmul``, ``model_1_relu``, or the
  op alone outside modules (``nll_loss``); a fused kernel's after the member computing it;
- a gradient after the op it differentiates: ``model_2_matmul_grad``, ``cross_entropy_grad``;
- a constant after what it holds: ``model_2_ones``, ``model_blocks_0_attn_mask``;
- the new value of an updated tensor after the tensor: ``new_model_0_weight``; an update's
  other values after the one tensor they update, where there is one: ``model_0_bias_mul``;
- an output a note names (a stored ``.grad``) after the note: ``model_0_weight_grad``;
- a graph input keeps its name (``model_0_weight``), one the IR numbers reads ``v7``, and one
  an earlier function made (a value saved by the forward) the name it had there.

Names are made once, for every value in graph order (inputs first), each unique in its
function (``_1``, ``_2``... on clashes), at most ``MAX_LENGTH`` characters where made from
scopes (the outer module names go first), and never a keyword or a name the generated module
reads (NumPy, the kernels, buffers, a row loop's locals).
"""

from __future__ import annotations

import re

import numpy as np

from tracegrad.codegen import names as safe
from tracegrad.ir.core import CONSTANT, FUSED, Node, Phase, Value
from tracegrad.ir.graph import Graph, body_of

# Names of a function's module-level buffers, piece buffers, views and kernels (forward_b0,
# step_kernel1), and of its thread pool's jobs, row functions and piece buffers: a value named
# so would hide them inside the function.
GLOBALS = re.compile(r"\w+_(?:b|p|v|kernel|job|rows|pool)\d+")
# Names the statements of a threaded function use besides its values
THREAD_NAMES = ("POOL", "one_blas_thread", "first", "last")
# What generated functions read besides their values: NumPy, the kernels, the constants, the
# generator, a row loop's locals and builtins, a fused kernel's buffer, the thread pool's names.
RESERVED = frozenset(
    {"np", "rt", "C", "rng", "start", "piece", "range", "slice", "out", *THREAD_NAMES}
)
# Longest name made from a scope and op (inputs keep theirs, however long).
MAX_LENGTH = 40
# A note naming a value rather than saying what it is (``model.0.weight.grad``)
_DOTTED = re.compile(r"[\w.]+")


class Namer:
    """The Python name of every value of ``graph`` (``names``, in graph order). ``notes`` say
    what outputs are, by position (a dotted name names the value); ``known`` gives inputs the
    names an earlier function gave values of the same IR name."""

    def __init__(self, graph: Graph, notes=(), known: dict[str, str] | None = None):
        self.taken: set[str] = set(RESERVED)
        self.names: dict[Value, str] = {}
        self.suffixes: dict[str, int] = {}  # the next suffix to try for a name that clashes
        known = known or {}
        for value in graph.inputs:
            self._claim(value, known.get(value.name) or _input_base(value.name))
        given = _given_bases(graph, notes)
        for node in graph.nodes:
            for value in node.outputs:
                self._claim(value, given.get(value) or describe(node))

    def __call__(self, value: Value) -> str:
        return self.names[value]

    def _claim(self, value: Value, base: str) -> None:
        if value not in self.names:
            self.names[value] = safe.identifier(base, self.taken, GLOBALS, self.suffixes)


def _input_base(name: str) -> str:
    """An input's name: its own (``model.0.weight``), or ``v`` and the IR's number for one the
    IR numbers (``7``, ``s7``: the same value reads ``v7`` in every function)."""
    return "v" + name if re.fullmatch(r"[a-z]?\d+", name) else name


def _given_bases(graph: Graph, notes) -> dict[Value, str]:
    """Names outside the node's own: the new values of updated tensors, outputs their notes
    name, and an update's values that lead to one updated tensor only."""
    given = _update_roles(graph)
    given.update(
        (value, note)
        for value, note in zip(graph.outputs, notes, strict=False)
        if _DOTTED.fullmatch(note)
    )
    given.update((value, "new_" + name) for name, value in graph.updates.items())
    return {value: re.sub(r"\W", "_", base) for value, base in given.items()}


def _update_roles(graph: Graph) -> dict[Value, str]:
    """The update's values read on the way to one updated tensor only: ``<tensor>_<op>``."""
    target = {value: {name} for name, value in graph.updates.items()}
    users = graph.users()
    roles = {}
    for node in reversed(graph.nodes):
        if node.phase is not Phase.UPDATE or not node.outputs:
            continue
        value = node.outputs[0]
        reached = set(target.get(value, ()))
        for user in users.get(value, []):
            reached |= target.get(user.outputs[0], set()) if user.outputs else set()
        target[value] = reached
        if len(reached) == 1 and value not in graph.updates.values():
            roles[value] = f"{next(iter(reached))}_{_what(node)}"
    return roles


def describe(node: Node) -> str:
    """What the node computes, as a name: its scope's path and its op (``model_0_matmul``),
    shortened to ``MAX_LENGTH`` by dropping outer modules first."""
    if node.op == FUSED:
        body = body_of(node)
        return describe(next(m for m in body.nodes if body.outputs[0] in m.outputs))
    what = _what(node)
    path = [] if node.scope is None else [p for p in node.scope.path.split(".") if p]
    while len(path) > 1 and len("_".join([*path, what])) > MAX_LENGTH:
        path = path[1:]
    room = MAX_LENGTH - len(what) - 1
    if path and len(path[0]) > room:
        path = [path[0][:room]] if room > 0 else []
    return "_".join([*path, what])


def _what(node: Node) -> str:
    """The op part of a name: the op, the op a gradient differentiates and ``grad``, or what
    a constant holds."""
    if node.op == CONSTANT:
        return constant_kind(node.attrs["value"])
    if node.phase is Phase.BACKWARD and node.grad_of:
        return f"{node.grad_of.split(', ')[-1]}_grad"
    return node.op


def constant_kind(value: np.ndarray) -> str:
    """``ones``, ``zeros``, ``mask`` (booleans), ``arange`` (0, 1, 2...) or ``const``; a
    scalar ``one``, ``zero`` or ``const``."""
    if value.dtype == np.bool_ and value.ndim:
        return "mask"
    for number, word in ((1, "one"), (0, "zero")):
        if np.all(value == number):
            return word + ("s" if value.ndim else "")
    if value.ndim == 1 and np.array_equal(value, np.arange(value.size)):
        return "arange"
    return "const"
