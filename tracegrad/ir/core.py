"""IR values and nodes (see ``tracegrad.ir.graph`` for the graph and its invariants).

A node records which part of a compiled step it belongs to as a ``Phase``; a backward node
also names the forward op it is the gradient of (``grad_of``). The text form writes the two
as the node's ORIGIN note: nothing for the forward, ``(grad of log)``, ``(update)``,
``(recomputed)`` for a forward op the backward runs again (under a memory budget). A node
also records the module call that made it (its ``scope``, see ``tracegrad.scopes``) beside
the user's source line (its ``location``).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation
from tracegrad.scopes import Scope

CONSTANT = "constant"
CUSTOM = "custom"
FUSED = "fused"  # a chain of elementwise nodes as one kernel: attrs["body"] is its Graph


class Phase(enum.Enum):
    """The part of a compiled step a node computes (its value names codegen's section)."""

    FORWARD = "forward"
    BACKWARD = "backward"  # a gradient: emitted by a VJP rule while the backward runs
    UPDATE = "update"  # the optimizer's step: parameters and optimizer state
    RECOMPUTE = "recompute"  # a forward op run again by the backward (a memory budget's choice)


GRAD_OF = "grad of "
RECOMPUTED = "recomputed"


@dataclass(eq=False, slots=True)
class Value:
    """A typed SSA value; ``name`` is unique in its graph."""

    name: str
    type: TensorType

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}:{self.type}"


@dataclass(eq=False, slots=True)
class Node:
    """One op applied to input Values, defining output Values (op kinds: see ir.graph).

    ``grad_of`` is set on backward nodes only: the forward op they differentiate (a fused
    node of several gradients names each, joined by ", ": ``"matmul, gelu"``). ``scope`` is
    the module call that made the node (a backward node: the one of the node it
    differentiates), None outside modules.
    """

    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict = field(default_factory=dict)
    location: SourceLocation | None = None
    phase: Phase = field(default=Phase.FORWARD, kw_only=True)
    grad_of: str | None = field(default=None, kw_only=True)
    scope: Scope | None = field(default=None, kw_only=True)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.op} has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def origin(self) -> str | None:
        """The phase as the text form notes it: None (forward), "grad of log", "update",
        "recomputed"."""
        if self.phase is Phase.UPDATE:
            return "update"
        if self.phase is Phase.RECOMPUTE:
            return RECOMPUTED
        if self.phase is Phase.BACKWARD:
            names = (self.grad_of or "?").split(", ")
            return ", ".join(GRAD_OF + name for name in names)
        return None

    def derive(self, op: str, inputs, outputs, attrs: dict | None = None) -> Node:
        """A new node computing (part of) what this one did: same location, scope, phase and
        grad_of."""
        return Node(
            op,
            list(inputs),
            list(outputs),
            {} if attrs is None else attrs,
            self.location,
            phase=self.phase,
            grad_of=self.grad_of,
            scope=self.scope,
        )

    def __repr__(self) -> str:
        outs = ", ".join(map(repr, self.outputs))
        return f"<Node {outs} = {self.op} {', '.join('%' + v.name for v in self.inputs)}>"


class Namespace:
    """Fresh value names: a prefix and the next number of one counter (shared by every
    prefix), skipping names already taken."""

    def __init__(self, taken: Iterable[str] = ()):
        self.taken = set(taken)
        self._numbers = itertools.count(1)

    def fresh(self, prefix: str = "") -> str:
        """``prefix`` and the next number giving a name not taken: ``h1``, ``7``."""
        name = f"{prefix}{next(self._numbers)}"
        while name in self.taken:
            name = f"{prefix}{next(self._numbers)}"
        self.taken.add(name)
        return name

    def claim(self, name: str) -> str:
        """``name`` itself when it is free, else a fresh ``name_<number>``."""
        if name in self.taken:
            return self.fresh(f"{name}_")
        self.taken.add(name)
        return name


def phase_of_origin(origin: str | None) -> tuple[Phase, str | None]:
    """Read an ORIGIN note back: ``(phase, grad_of)``; raises ValueError on other text."""
    if origin is None:
        return Phase.FORWARD, None
    if origin == "update":
        return Phase.UPDATE, None
    if origin == RECOMPUTED:
        return Phase.RECOMPUTE, None
    parts = origin.split(", ")
    if all(part.startswith(GRAD_OF) and len(part) > len(GRAD_OF) for part in parts):
        return Phase.BACKWARD, ", ".join(part.removeprefix(GRAD_OF) for part in parts)
    raise ValueError(f"unknown origin {origin!r}: write 'grad of <op>' or 'update'")


def users_of(nodes: Iterable[Node]) -> dict[Value, list[Node]]:
    """Each value read by one of ``nodes`` -> the nodes reading it, in order."""
    table: dict[Value, list[Node]] = {}
    for node in nodes:
        for v in node.inputs:
            table.setdefault(v, []).append(node)
    return table
