"""Symbolic tracing: tensors whose data is a ``Symbol`` flow through the same op registry, and
every op on them becomes a graph node.

While a ``Tracer`` is active (``with tracing(tracer):``), ``tensor.apply`` hands it every op
that touches a traced tensor. Tensors that existed before tracing began (parameters, buffers,
optimizer state, ``.grad``) are lifted to graph inputs when first read — never baked in — and
in-place updates of them become new SSA values recorded as ``updates``. Tensors made during
tracing from constants stay concrete and enter the graph as ``constant`` nodes: a copy of
their value when read, made again after an in-place change, so a later write never reaches an
earlier reader.

Mutation is functionalized. Every view made while tracing (a slice, a transpose, ``.data``,
``.detach()``) is recorded as an ``Alias``: the tensor it views (its root) and the view ops
leading there. An in-place op on a view writes the root (``view_update`` at the view's element
positions) and bumps the root's write count; any alias of that root is derived again from the
root's new value when next read. Readers before a write keep the value they read, as SSA
values do.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from tracegrad import dtypes, scopes, tape
from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation, TraceError, at_user_line
from tracegrad.ir.core import CONSTANT, CUSTOM, Namespace, Node, Phase, Value
from tracegrad.ir.graph import Graph
from tracegrad.ops import OPS, Op
from tracegrad.ops.registry import RANDOM, VIEW
from tracegrad.tensor import Tensor, is_symbolic, next_serial, set_tracer, wrap
from tracegrad.tracer.hyperparameters import TracedGroup, group_settings


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


@dataclass
class Alias:
    """A tensor viewing another's memory while tracing: writes to one are seen by the other."""

    root: Tensor  # the tensor owning the memory (never itself an alias)
    chain: tuple  # ((op name, attrs, index tensors, out type), ...) from the root to the view
    version: int  # the root's write count when this alias's value was last derived


class Tracer:
    """Records ops on traced tensors into a graph.

    ``mode="capture"`` keeps custom autograd Functions whole as ``custom`` nodes (for the
    reverse-mode pass to expand); ``mode="inline"`` traces their forward in and leaves their
    backward to the tape, as a compiled training step needs.
    """

    def __init__(self, mode: str = "capture", names: dict[int, str] | None = None):
        self.mode = mode
        # The caller's grad mode (tracing turns gradients on to record; DDP's forward asks)
        self.grad_enabled_outside = tape.is_grad_enabled()
        self.names = dict(names or {})  # id(tensor) -> input name for lifted tensors
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.lifted: dict[int, tuple[Tensor, Value]] = {}
        self.constants: dict[int, tuple[Tensor, Value, int]] = {}  # id -> (t, value, version)
        self.mutated: dict[int, tuple[Tensor, np.ndarray]] = {}
        self.aliases: dict[int, Alias] = {}  # id(view) -> what it views
        self.writes: dict[int, int] = {}  # id(root) -> how often it was written
        # the aliases' and written roots' tensors (their ids stay theirs)
        self._kept: list[Tensor] = []
        self._not_own: set[Value] = set()  # values that are inputs or views of others
        self.optimizers: list = []
        self.groups_read: list = []  # each stepped optimizer's group settings, as first read
        self.modules_called: list = []  # each module called while tracing, once
        self._called_ids: set[int] = set()
        self.values_read: dict[int, tuple[Tensor, int]] = {}  # by Python: id -> (t, version)
        self.backward_calls = 0  # backward() and autograd.grad() calls on traced values
        self.updating = False  # inside an optimizer's step: its nodes are the update section
        self.optimizer_state: list[dict] = []  # each optimizer's state as tracing found it
        # id(optimizer) -> id(group) -> the group as the update reads it (numbers as inputs)
        self.hyperparameters: dict[int, dict[int, TracedGroup]] = {}
        self._namespace = Namespace()  # value names: "1", "2"... and the inputs' own
        self.replayed: Node | None = None  # while replaying a graph: its node being replayed
        self.start = next_serial()
        # While the traced function runs (``watching_grads``): the tensors made before it
        # whose .grad it looked at before writing one, and those whose .grad it wrote
        self.watching_grads = False
        self.grads_seen: set[int] = set()
        self.grads_written: dict[int, tuple[Tensor, Tensor | None]] = {}  # id -> (t, .grad before)

    # --- values ---------------------------------------------------------------------------------

    def _name(self, hint: str | None = None) -> str:
        return self._namespace.claim(hint) if hint else self._namespace.fresh()

    def add_input(self, type_: TensorType, name: str, requires_grad: bool = False) -> Tensor:
        value = Value(self._name(name), type_)
        self.inputs.append(value)
        self._not_own.add(value)
        t = wrap(Symbol(value))
        if requires_grad:
            t.requires_grad = True
        return t

    def grad_read(self, t: Tensor) -> None:
        """``t.grad`` was read: the traced function looked at the .grad its call started with,
        unless it wrote one first."""
        if self.watching_grads and id(t) not in self.grads_written and t._serial < self.start:
            self.grads_seen.add(id(t))

    def grad_written(self, t: Tensor) -> None:
        if self.watching_grads and id(t) not in self.grads_written:
            self.grads_written[id(t)] = (t, t._grad)

    @contextlib.contextmanager
    def watch_grads(self):
        """Note which tensors' .grad the code run inside looks at and writes."""
        self.watching_grads = True
        try:
            yield
        finally:
            self.watching_grads = False

    def preexisting(self, t: Tensor) -> bool:
        return not is_symbolic(t) and t._serial < self.start

    def traced(self, t: Tensor) -> bool:
        """Whether ``t``'s value is only known when the program runs: symbolic, lifted, or a
        view of such a tensor."""
        if is_symbolic(t) or self.preexisting(t):
            return True
        alias = self.aliases.get(id(t))
        return alias is not None and (is_symbolic(alias.root) or self.preexisting(alias.root))

    def takes(self, op: Op, inputs) -> bool:
        """Whether an op becomes a node: it reads a traced or lifted tensor, or draws randoms."""
        return RANDOM in op.props or any(self.traced(t) for t in inputs)

    def value_of(self, t: Tensor) -> Value:
        alias = self.aliases.get(id(t))
        if alias is not None and alias.version != self.writes.get(id(alias.root), 0):
            self._derive(t, alias)
        if is_symbolic(t):
            return t.array.value
        if self.preexisting(t):
            return self._lift(t)
        known = self.constants.get(id(t))
        if known is None or known[2] != t.version:  # (written in place since it was read)
            known = self.constants[id(t)] = (t, self._constant(t.array), t.version)
        return known[1]

    def note_read(self, t: Tensor) -> None:
        """Python read the value of ``t``, a tensor from outside (``if self.flag:``): the
        program is right while ``t`` keeps the version it has now."""
        self.values_read.setdefault(id(t), (t, t.version))

    def _constant(self, array: np.ndarray) -> Value:
        """A constant node holding a copy of ``array`` (the tensor may be written later); a big
        array holding one value (zeros for new optimizer state, say) becomes that scalar
        broadcast, instead of megabytes stored in the graph."""
        type_ = TensorType(array.shape, dtypes.from_numpy(array.dtype))
        flat = array.reshape(-1)
        if flat.size <= 1024 or not (flat == flat[0]).all():
            return self._emit(CONSTANT, [], type_, {"value": array.copy()})
        scalar = self._emit(CONSTANT, [], TensorType((), type_.dtype), {"value": np.array(flat[0])})
        return self._emit("broadcast_to", [scalar], type_, {"shape": array.shape})

    def _lift(self, t: Tensor) -> Value:
        if id(t) not in self.lifted:
            value = Value(
                self._name(self.names.get(id(t), f"state{len(self.lifted)}")), t.tensor_type
            )
            self.inputs.append(value)
            self._not_own.add(value)
            self.lifted[id(t)] = (t, value)
        return self.lifted[id(t)][1]

    # --- recording ------------------------------------------------------------------------------

    def _emit(self, op: str, inputs, out_type, attrs) -> Value:
        out = Value(self._name(), out_type)
        if op in OPS and VIEW in OPS[op].props:
            self._not_own.add(out)
        node = Node(op, list(inputs), [out], attrs, self.location(), scope=self.scope())
        differentiated = tape.current_backward()
        if differentiated is not None:
            node.phase = Phase.BACKWARD
            node.grad_of = differentiated.name  # names it in NaN reports and pictures
        elif self.updating:
            node.phase = Phase.UPDATE
        self.nodes.append(node)
        return out

    def location(self) -> SourceLocation | None:
        node = tape.current_backward()
        if node is not None and node.location is not None:
            return node.location  # a gradient op belongs to the line of the op it differentiates
        if self.replayed is not None:
            return self.replayed.location
        return scopes.op_location()

    def scope(self) -> scopes.Scope | None:
        """The module call making the op being recorded (a gradient op: the one that made the
        op it differentiates)."""
        node = tape.current_backward()
        if node is not None:
            return node.scope
        if self.replayed is not None:
            return self.replayed.scope
        return scopes.current()

    def stamp(self, record) -> None:
        """Note on a tape record where its op is made: its gradient's nodes will say so."""
        record.location, record.scope = self.location(), self.scope()

    def record(self, op: Op, inputs, attrs, out_type: TensorType) -> Tensor:
        values = [self.value_of(t) for t in inputs]
        out = self._emit(op.name, values, out_type, dict(attrs))
        if self.mode == "capture" and not tape.is_grad_enabled() and op.differentiable:
            # computed under no_grad: the replaying reverse-mode pass must not differentiate it
            out = self._emit("stop_gradient", [out], out_type, {})
        return wrap(Symbol(out))

    def record_custom(self, cls, ctx, args, kwargs) -> Tensor | tuple[Tensor, ...]:
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
        self.nodes.append(Node(CUSTOM, inputs, values, attrs, self.location(), scope=self.scope()))
        wrapped = tuple(wrap(Symbol(v)) for v in values)
        return wrapped if isinstance(result, tuple) else wrapped[0]

    # --- in-place updates -----------------------------------------------------------------------

    def rebinds(self, target: Tensor, result: Tensor) -> bool:
        return self.traced(result) or self.traced(target)

    def rebind(self, target: Tensor, result: Tensor) -> None:
        """``target`` now holds ``result``'s value: a new SSA value, restored after tracing.
        Written through a view, the new value goes into the memory the view shows."""
        value = self._cast(self.value_of(result), target.tensor_type)
        alias = self.aliases.get(id(target))
        positions = None if alias is None else self._positions(alias.root, alias.chain)
        detached = self.mode == "capture" and (
            not tape.is_grad_enabled()
            or (alias is not None and any(step[0] == "stop_gradient" for step in alias.chain))
        )
        if alias is None or positions is None:  # (not a view after all: the write stays in it)
            self.aliases.pop(id(target), None)
            self._write(target, value, detached)
            return
        root = alias.root
        if positions is not _WHOLE:
            index = self.value_of(wrap(positions))
            value = self._emit(
                "view_update", [self.value_of(root), value, index], root.tensor_type, {}
            )
        self._write(root, value, detached)
        self.value_of(target)  # (derived again from the root's new value)

    def assign(self, target: Tensor, key, index_tensors, value: Tensor) -> None:
        """``target[key] = value`` as a new value of the memory ``target`` shows."""
        alias = self.aliases.get(id(target))
        root, chain = (target, ()) if alias is None else (alias.root, alias.chain)
        if any(self.traced(t) for t in index_tensors):
            index = self._traced_positions(root, chain, key, index_tensors)
        else:
            step = ("getitem", {"key": key}, tuple(index_tensors), None)
            index = self.value_of(wrap(self._positions(root, (*chain, step), True)))
        values = self._cast(self.value_of(value), target.tensor_type)
        new = self._emit("view_update", [self.value_of(root), values, index], root.tensor_type, {})
        self._write(root, new, detached=self.mode == "capture")  # (as eagerly: never recorded)

    def _traced_positions(self, root: Tensor, chain, key, index_tensors) -> Value:
        """The positions ``target[key]`` writes when the index is computed by the program:
        the indexing itself, in the program, of the positions the target shows."""
        shown = self._positions(root, chain, copy_ok=True)
        if shown is _WHOLE:
            shown = np.arange(int(np.prod(root.shape)), dtype=np.int64).reshape(root.shape)
        base = self.value_of(wrap(shown))
        indices = [self.value_of(t) for t in index_tensors]
        out_type = OPS["getitem"].infer(base.type, *(v.type for v in indices), key=key)
        return self._emit("getitem", [base, *indices], out_type, {"key": key})

    def _cast(self, value: Value, type_: TensorType) -> Value:
        if value.type.dtype != type_.dtype:
            cast_type = TensorType(value.type.shape, type_.dtype)
            value = self._emit("cast", [value], cast_type, {"dtype": type_.dtype.name})
        return value

    def _write(self, root: Tensor, value: Value, detached: bool = False) -> None:
        """``root`` now holds ``value``. Written ``detached`` (while a captured forward records
        no gradient, or through .data), it keeps the gradient path of the value it had: the
        replaying reverse-mode pass then differentiates it as eager autograd does."""
        if value.type.shape != root.tensor_type.shape:
            value = self._emit("broadcast_to", [value], root.tensor_type, {"shape": root.shape})
        if value in self._not_own:  # (copy_ of an input, fill_ of a broadcast scalar, or
            # of a value another tensor holds: the written tensor's memory is its own)
            value = self._emit("contiguous", [value], value.type, {})
        self._not_own.add(value)  # (now this tensor's memory)
        if detached:
            old = self.value_of(root)
            value = self._emit("stop_gradient", [value], value.type, {})
            value = self._emit("keep_gradient", [value, old], value.type, {})
        if self.preexisting(root):
            self._lift(root)
            self.mutated.setdefault(id(root), (root, root.array))
        root.array = Symbol(value)
        self.writes[id(root)] = self.writes.get(id(root), 0) + 1
        self._kept.append(root)

    # --- views ----------------------------------------------------------------------------------

    def note_view(self, op: Op, inputs, attrs, out: Tensor) -> None:
        """``out = op(*inputs)`` may view its first input's memory: remember how."""
        if op.name == "getitem" and len(inputs) > 1:
            return  # indexed by tensors: a copy, as in NumPy
        source = inputs[0]
        if not (is_symbolic(out) or out._base is not None):
            return  # run eagerly into memory of its own
        step = (op.name, dict(attrs), tuple(inputs[1:]), out.tensor_type)
        outer = self.aliases.get(id(source))
        # NumPy reshapes a view (a transpose, a broadcast) by copying when it must; a root's
        # memory is taken to be row-major, as fresh results are
        reshaped = op.name == "reshape" and is_symbolic(out)
        chain = () if outer is None else (*outer.chain, step)
        if outer is not None and reshaped and self._copies(outer.root, chain):
            return
        self._alias(source, out, (step,))

    def note_alias(self, source: Tensor, out: Tensor) -> None:
        """``out`` shows all of ``source``'s memory as it is (``.data``, ``detach()``)."""
        self._alias(source, out, ())
        if self.traced(out):
            self._derive(out, self.aliases[id(out)])

    def _alias(self, source: Tensor, out: Tensor, steps: tuple) -> None:
        outer = self.aliases.get(id(source))
        root, chain = (source, ()) if outer is None else (outer.root, outer.chain)
        self.aliases[id(out)] = Alias(root, chain + steps, self.writes.get(id(root), 0))
        self._kept += [out, root]
        out._base = root  # (as eager views say: in-place on them is checked)

    def _derive(self, t: Tensor, alias: Alias) -> None:
        """Give an alias its value from its root's current one, replaying the view ops."""
        value = self.value_of(alias.root)
        for op, attrs, index_tensors, out_type in alias.chain:
            inputs = [value, *(self.value_of(i) for i in index_tensors)]
            value = self._emit(op, inputs, out_type, dict(attrs))
        alias.version = self.writes.get(id(alias.root), 0)
        t.array = Symbol(value)

    def _positions(self, root: Tensor, chain, copy_ok=False):
        """Where the elements ``chain`` shows sit in ``root``: flat indices shaped like the
        view, _WHOLE for all of it as it is, or None when the chain copies (a reshape that
        NumPy cannot make a view of): a write then stays in the copy, as it does eagerly."""
        if not chain:
            return _WHOLE
        probe = np.arange(int(np.prod(root.shape)), dtype=np.int64).reshape(root.shape)
        shown = self._replayed(probe, chain)
        same = shown.shape == probe.shape and shown.strides == probe.strides
        if same and _start(shown) == _start(probe):
            return _WHOLE  # (a detach, or a reshape to the same shape)
        if not copy_ok and not np.may_share_memory(shown, probe):
            return None
        if not copy_ok and not shown.flags.writeable:
            raise RuntimeError(
                at_user_line(
                    "in-place write: the target shares memory between elements (an expanded "
                    "or window view); use the out-of-place op"
                )
            )
        return np.ascontiguousarray(shown)

    def _copies(self, root: Tensor, chain) -> bool:
        """Whether ``chain`` on ``root``'s memory makes a copy. Asked of every view of a view
        while tracing, so it replays the chain on memory never written (views of it cost
        nothing, however large the tensor), not on the positions ``_positions`` computes."""
        probe = np.empty(root.shape, np.int64)  # (as _positions's, so the ops behave alike)
        return not np.may_share_memory(self._replayed(probe, chain), probe)

    def _replayed(self, probe: np.ndarray, chain) -> np.ndarray:
        """``probe`` through the view ops of ``chain``, as they showed ``root``'s memory."""
        shown = probe
        for op, attrs, index_tensors, _ in chain:
            if any(self.traced(i) for i in index_tensors):
                raise TraceError(
                    at_user_line(
                        "writing through an index computed by the traced program cannot be "
                        "compiled; build the result with tracegrad.where or scatter_add"
                    )
                )
            shown = OPS[op].impl(shown, *(i.array for i in index_tensors), **attrs)
        return np.asarray(shown)

    def module_called(self, module) -> None:
        """A module's forward runs inside the trace: what it read of its own settings (its
        training flag, say) the program's guards must check."""
        if id(module) not in self._called_ids:
            self._called_ids.add(id(module))
            self.modules_called.append(module)

    @contextlib.contextmanager
    def optimizer_step(self, optimizer):
        """An optimizer steps inside the trace: its new state is traced, its old kept, and the
        nodes it records are marked as the update. Yields its parameter groups as the update
        reads them: their numbers are inputs of the step (see tracer/hyperparameters.py), such
        as ``opt.lr0`` for group 0 of the optimizer ``names`` calls ``opt``."""
        if all(o is not optimizer for o in self.optimizers):
            self.groups_read += group_settings([optimizer])  # (what a scheduler may change)
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
        return wrap(Symbol(self._lift(t)))

    def restore(self) -> None:
        """Give every tensor mutated during tracing its real data and its .grad back, and
        every optimizer the state entries it had (the dicts themselves are kept: results are
        stored in them)."""
        for t, original in self.mutated.values():
            t.array = original
        for t, grad in self.grads_written.values():
            t._grad = grad
        for optimizer, before in zip(self.optimizers, self.optimizer_state, strict=True):
            for p, state in optimizer.state.items():
                state.clear()
                state.update(before.get(p, {}))

    def graph(self, outputs, updates=None) -> Graph:
        return Graph(self.inputs, self.nodes, outputs, updates or {})


_WHOLE = object()  # a view of all of its root's memory, as it is


def _start(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


@contextlib.contextmanager
def tracing(tracer: Tracer):
    """Make ``tracer`` record ops; restores mutated tensors and the previous tracer on exit."""
    previous = set_tracer(tracer)
    try:
        with scopes.record_scopes(tracer.names):
            yield tracer
    finally:
        set_tracer(previous)
        tracer.restore()
