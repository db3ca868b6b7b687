"""Symbolic tracing: tensors whose data is a ``Symbol`` flow through the same op registry, and
every op on them becomes a graph node.

While a ``Tracer`` is active (``with tracing(tracer):``), ``tensor.apply`` hands it every op
that touches a traced tensor. Tensors that existed before tracing began (parameters, buffers,
optimizer state, ``.grad``) are lifted to graph inputs when first read — never baked in — and
in-place updates of them become new SSA values recorded as ``updates``. Tensors made during
tracing from constants stay concrete and enter the graph as ``constant`` nodes.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np

from tracegrad import dtypes, tape
from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation, TraceError, at_user_line, user_frame
from tracegrad.ir.core import CONSTANT, CUSTOM, Node, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import Op
from tracegrad.ops.registry import RANDOM
from tracegrad.tensor import Tensor, is_symbolic, next_serial, set_tracer
from tracegrad.tracer.hyperparameters import TracedGroup


class Symbol:
    """A traced tensor's stand-in for its data: the IR value it will be at run time."""

    __slots__ = ("value",)

    def __init__(self, value: Value):
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.type.shape

    @property
    def dtype(self) -> np.dtype:
        return self.value.type.dtype.np

    @property
    def ndim(self) -> int:
        return len(self.value.type.shape)

    @property
    def size(self) -> int:
        return self.value.type.numel


class Tracer:
    """Records ops on traced tensors into a graph.

    ``mode="capture"`` keeps custom autograd Functions whole as ``custom`` nodes (for the
    reverse-mode pass to expand); ``mode="inline"`` traces their forward in and leaves their
    backward to the tape, as a compiled training step needs.
    """

    def __init__(self, mode: str = "capture", names: dict[int, str] | None = None):
        self.mode = mode
        self.names = dict(names or {})  # id(tensor) -> input name for lifted tensors
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.lifted: dict[int, tuple[Tensor, Value]] = {}
        self.constants: dict[int, tuple[Tensor, Value]] = {}
        self.mutated: dict[int, tuple[Tensor, np.ndarray]] = {}
        self.optimizers: list = []
        self.updating = False  # inside an optimizer's step: its nodes are the update section
        self.optimizer_state: list[dict] = []  # each optimizer's state as tracing found it
        # id(optimizer) -> id(group) -> the group as the update reads it (numbers as inputs)
        self.hyperparameters: dict[int, dict[int, TracedGroup]] = {}
        self._taken_names: set[str] = set()
        self._counter = itertools.count(1)
        self.location_override: SourceLocation | None = None  # set while replaying a graph
        self.start = next_serial()

    # --- values ---------------------------------------------------------------------------------

    def _name(self, hint: str | None = None) -> str:
        name = hint or str(next(self._counter))
        while name in self._taken_names:
            name = f"{hint}_{next(self._counter)}" if hint else str(next(self._counter))
        self._taken_names.add(name)
        return name

    def add_input(self, type_: TensorType, name: str, requires_grad: bool = False) -> Tensor:
        value = Value(self._name(name), type_)
        self.inputs.append(value)
        t = Tensor._wrap(Symbol(value))
        if requires_grad:
            t.requires_grad = True
        return t

    def preexisting(self, t: Tensor) -> bool:
        return not is_symbolic(t) and t._serial < self.start

    def takes(self, op: Op, inputs) -> bool:
        """Whether an op becomes a node: it reads a traced or lifted tensor, or draws randoms."""
        return RANDOM in op.props or any(is_symbolic(t) or self.preexisting(t) for t in inputs)

    def value_of(self, t: Tensor) -> Value:
        if is_symbolic(t):
            return t._data.value
        if self.preexisting(t):
            return self._lift(t)
        if id(t) not in self.constants:
            self.constants[id(t)] = (t, self._constant(t._data))
        return self.constants[id(t)][1]

    def _constant(self, array: np.ndarray) -> Value:
        """A constant node; a big array holding one value (zeros for new optimizer state, say)
        becomes that scalar broadcast, instead of megabytes stored in the graph."""
        type_ = TensorType(array.shape, dtypes.from_numpy(array.dtype))
        flat = array.reshape(-1)
        if flat.size <= 1024 or not (flat == flat[0]).all():
            return self._emit(CONSTANT, [], type_, {"value": array})
        scalar = self._emit(CONSTANT, [], TensorType((), type_.dtype), {"value": np.array(flat[0])})
        return self._emit("broadcast_to", [scalar], type_, {"shape": array.shape})

    def _lift(self, t: Tensor) -> Value:
        if id(t) not in self.lifted:
            value = Value(
                self._name(self.names.get(id(t), f"state{len(self.lifted)}")), t.tensor_type
            )
            self.inputs.append(value)
            self.lifted[id(t)] = (t, value)
        return self.lifted[id(t)][1]

    # --- recording ------------------------------------------------------------------------------

    def _emit(self, op: str, inputs, out_type, attrs) -> Value:
        out = Value(self._name(), out_type)
        node = Node(op, list(inputs), [out], attrs, self.location())
        origin = tape.current_backward()
        if origin is not None:
            node.origin = f"grad of {origin.name}"  # names it in NaN reports and pictures
        elif self.updating:
            node.origin = "update"
        self.nodes.append(node)
        return out

    def location(self) -> SourceLocation | None:
        node = tape.current_backward()
        if node is not None and node.location is not None:
            return node.location  # a gradient op belongs to the line of the op it differentiates
        return self.location_override or user_frame()

    def record(self, op: Op, inputs, attrs, out_type: TensorType) -> Tensor:
        values = [self.value_of(t) for t in inputs]
        out = self._emit(op.name, values, out_type, dict(attrs))
        if self.mode == "capture" and not tape.is_grad_enabled() and op.differentiable:
            # computed under no_grad: the replaying reverse-mode pass must not differentiate it
            out = self._emit("stop_gradient", [out], out_type, {})
        return Tensor._wrap(Symbol(out))

    def record_custom(self, cls, ctx, args, kwargs) -> tuple[Tensor, ...]:
        """A custom Function kept whole: its forward is traced only to learn output types."""
        if kwargs:
            raise TraceError(
                at_user_line(f"{cls.__name__}.apply: keyword arguments cannot be traced")
            )
        mark = (len(self.nodes), set(self.constants))
        with tape.no_grad():
            result = cls.forward(ctx, *args)
        del self.nodes[mark[0] :]
        for key in set(self.constants) - mark[1]:
            del self.constants[key]
        outs = result if isinstance(result, tuple) else (result,)
        slots = tuple(("t",) if isinstance(a, Tensor) else ("v", a) for a in args)
        inputs = [self.value_of(a) for a in args if isinstance(a, Tensor)]
        values = [Value(self._name(), o.tensor_type) for o in outs]
        attrs = {"fn": cls, "args": slots}
        self.nodes.append(Node(CUSTOM, inputs, values, attrs, self.location()))
        wrapped = tuple(Tensor._wrap(Symbol(v)) for v in values)
        return wrapped if isinstance(result, tuple) else wrapped[0]

    # --- in-place updates -----------------------------------------------------------------------

    def rebinds(self, target: Tensor, result: Tensor) -> bool:
        return is_symbolic(result) or is_symbolic(target) or self.preexisting(target)

    def rebind(self, target: Tensor, result: Tensor) -> None:
        """``target`` now holds ``result``'s value: a new SSA value, restored after tracing."""
        if self.preexisting(target):
            self._lift(target)
            self.mutated.setdefault(id(target), (target, target._data))
        value = self.value_of(result)
        if value.type != target.tensor_type:
            value = self._emit("cast", [value], target.tensor_type, {"dtype": target.dtype.name})
        target._data = Symbol(value)

    @contextlib.contextmanager
    def optimizer_step(self, optimizer):
        """An optimizer steps inside the trace: its new state is traced, its old kept, and the
        nodes it records are marked as the update. Yields its parameter groups as the update
        reads them: their numbers are inputs of the step (see tracer/hyperparameters.py), such
        as ``opt.lr0`` for group 0 of the optimizer ``names`` calls ``opt``."""
        if all(o is not optimizer for o in self.optimizers):
            self.optimizers.append(optimizer)
            self.optimizer_state.append({p: dict(s) for p, s in optimizer.state.items()})
        name = self.names.get(id(optimizer), f"optimizer{len(self.optimizers) - 1}")
        numbers = getattr(optimizer, "numbers", ())
        groups = self.hyperparameters.setdefault(id(optimizer), {})
        for i, group in enumerate(optimizer.param_groups):
            if id(group) not in groups:  # (one view per group: a second step reads the same)
                names = f"{name}.{{}}{i}"
                groups[id(group)] = TracedGroup(optimizer, i, numbers, names, self._lift_as)
        outer, self.updating = self.updating, True
        try:
            yield [groups[id(group)] for group in optimizer.param_groups]
        finally:
            self.updating = outer

    def _lift_as(self, t: Tensor, name: str) -> Tensor:
        """The symbolic tensor standing for ``t``, lifted as an input named ``name``."""
        self.names[id(t)] = name
        return Tensor._wrap(Symbol(self._lift(t)))

    def restore(self) -> None:
        """Give every tensor mutated during tracing its real data back, and every optimizer
        the state entries it had (the dicts themselves are kept: results are stored in them)."""
        for t, original in self.mutated.values():
            t._data = original
        for optimizer, before in zip(self.optimizers, self.optimizer_state, strict=True):
            for p, state in optimizer.state.items():
                state.clear()
                state.update(before.get(p, {}))

    def graph(self, outputs, updates=None) -> Graph:
        return Graph(self.inputs, self.nodes, outputs, updates or {})


@contextlib.contextmanager
def tracing(tracer: Tracer):
    """Make ``tracer`` record ops; restores mutated tensors and the previous tracer on exit."""
    previous = set_tracer(tracer)
    try:
        yield tracer
    finally:
        set_tracer(previous)
        tracer.restore()
