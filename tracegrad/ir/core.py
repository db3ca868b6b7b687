"""IR values and nodes (see ``tracegrad.ir.graph`` for the graph and its invariants)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation

CONSTANT = "constant"
CUSTOM = "custom"
FUSED = "fused"  # a chain of elementwise nodes as one kernel: attrs["body"] is its graph's text


@dataclass(eq=False)
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


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict = field(default_factory=dict)
    location: SourceLocation | None = None
    origin: str | None = None  # for backward nodes: "grad of <forward op>"
    # Annotations from planning passes, not part of the op's meaning (not printed):
    # "inplace" (index of the input whose buffer the output reuses), "buffer" (buffer id from
    # the memory plan), "fused" (kind of a fused kernel; its members are attrs["body"]).
    meta: dict = field(default_factory=dict)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.op} has {len(self.outputs)} outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        outs = ", ".join(map(repr, self.outputs))
        return f"<Node {outs} = {self.op} {', '.join('%' + v.name for v in self.inputs)}>"
