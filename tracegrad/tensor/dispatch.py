"""Applying an op: the one place that decides whether it runs eagerly or is traced.

``apply(op, inputs, attrs)`` checks the op's shape/dtype rule on the operand types (so errors
name the op, the shapes and the user's line), then either hands the op to the active tracer or
runs its NumPy implementation, and, when gradients are wanted, records a ``tape.Node`` whose
backward applies the op's VJP rule.

``apply(op, inputs, attrs, out=target)`` writes the result into ``target`` (the in-place
methods ``add_``, ``copy_``... and the optimizers' updates): eagerly and with nothing to
record, straight into its memory through the op's NumPy ``out=`` form; otherwise the result
is computed and becomes the target's new value and history (traced: a new SSA value, the
functionalized write). Either way the target's version counter counts the write.

Eager ops give inf and nan results without warnings, each under its own ``np.errstate``;
code running many small ops in a row (an optimizer's update) enters ``float_errors_ignored()``
once instead, which saves that cost on every op inside.

The op registry reaches this module through ``Tensor.apply_op`` (installed below), so the ops
layer never imports tensors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading

import numpy as np

from tracegrad import tape
from tracegrad.dtypes import TensorType
from tracegrad.errors import DTypeError, ShapeError, at_user_line
from tracegrad.ops import LAYOUT_VIEW, OPS, VIEW, Op, VJPContext, vjp
from tracegrad.tensor.core import Tensor, is_symbolic, wrap
from tracegrad.tensor.promotion import promote_operands
from tracegrad.tensor.tracing import active_tracer


def apply(op: Op, inputs, attrs, *, out: Tensor | None = None, method: str | None = None):
    """Run one registry op (or trace it) and record it on the tape when gradients are wanted;
    with ``out``, write the result into that tensor (``method`` names the write in errors)."""
    if out is not None:
        return _write(out, op, inputs, attrs, method or f"{op.name}_")
    try:
        out_type = result_type(op, inputs, attrs)
    except (ShapeError, DTypeError) as exc:
        raise type(exc)(at_user_line(str(exc))) from None
    tracer = active_tracer()
    if tracer is not None and tracer.takes(op, inputs):
        result = tracer.record(op, inputs, attrs, out_type)
    else:
        result = _run(op, inputs, attrs, out_type)
    if tracer is not None and VIEW in op.props:
        tracer.note_view(op, inputs, attrs, result)
    if op.differentiable and tape.is_grad_enabled() and any(t.requires_grad for t in inputs):
        _record(op, inputs, attrs, result)
    return result


def call(name: str, *inputs, out: Tensor | None = None, **attrs) -> Tensor:
    """Op ``name`` by name (``out``: the tensor to write the result into)."""
    return apply(OPS[name], inputs, attrs, out=out)


Tensor.apply_op = staticmethod(apply)


class _FloatErrors(threading.local):
    ignored = False  # (a class attribute: every thread starts outside)


_FLOAT_ERRORS = _FloatErrors()


@contextlib.contextmanager
def float_errors_ignored():
    """Run the eager ops inside under one ``np.errstate(all="ignore")`` instead of one each
    (entering it costs more than a small op's NumPy call)."""
    previous = _FLOAT_ERRORS.ignored
    with np.errstate(all="ignore"):
        _FLOAT_ERRORS.ignored = True
        try:
            yield
        finally:
            _FLOAT_ERRORS.ignored = previous


def _impl(op: Op, arrays, attrs):
    """The op's NumPy implementation on ``arrays``: inf and nan results, no warnings."""
    if _FLOAT_ERRORS.ignored:
        return op.impl(*arrays, **attrs)
    with np.errstate(all="ignore"):
        return op.impl(*arrays, **attrs)


def _run(op: Op, inputs, attrs, out_type: TensorType) -> Tensor:
    data = np.asarray(_impl(op, [t.array for t in inputs], attrs))
    if data.dtype != out_type.dtype.np:
        data = data.astype(out_type.dtype.np)
    if VIEW in op.props:  # only view ops may return memory of an input (the op tests check)
        out = wrap(data)
        for t in inputs:
            if np.may_share_memory(data, t.array):
                out.version_counter = t.version_counter
                out._base = t._base if t._base is not None else t
                break
        return out
    # A result of its own is row-major (NumPy keeps a transposed operand's layout): whether a
    # later reshape views it or copies it then does not depend on that, as traced code assumes
    return wrap(data if data.flags.c_contiguous else np.ascontiguousarray(data))


def _record(op: Op, inputs, attrs, out: Tensor) -> None:
    inputs = tuple(inputs)
    node = tape.Node(op.name, inputs, None)
    tracer = active_tracer()
    if tracer is not None:
        tracer.stamp(node)
    # Which inputs get a gradient is fixed now, as in PyTorch; only what their rules read is
    # saved (and so guarded against in-place changes).
    needs = tuple(t.requires_grad for t in inputs)
    saves = op.saved_for(needs)
    saved_out = out.array if "out" in saves else None

    def backward(grads):
        out_tensor = wrap(saved_out, grad_fn=node) if saved_out is not None else None
        return vjp(op, VJPContext(op, inputs, out_tensor, attrs, needs), grads[0])

    node.backward_fn = backward
    for name in saves:
        if name == "out":
            node.save("output", out)
        elif name in op.inputs:
            node.save(f"input '{name}'", inputs[op.inputs.index(name)])
        else:  # a variadic input name: every input is read
            for i, t in enumerate(inputs):
                node.save(f"input {i}", t)
    out.grad_fn, out.requires_grad = node, True


_KNOWN_TYPES: dict = {}


def result_type(op: Op, inputs, attrs) -> TensorType:
    """The op's type rule on its operands, remembered per operand shapes, dtypes and
    attributes: a rule reads nothing else (traced data, a symbol, has a shape and a dtype
    too), and eager code asks the same question on every step of a training loop."""
    operands = tuple([(t.array.shape, t.array.dtype) for t in inputs])
    key = (op.name, operands, *sorted(attrs.items())) if attrs else (op.name, operands)
    try:
        out_type = _KNOWN_TYPES.get(key)
    except TypeError:  # an attribute that cannot be a key (an array, a list)
        return op.infer(*(t.tensor_type for t in inputs), **attrs)
    if out_type is None:
        out_type = op.infer(*(t.tensor_type for t in inputs), **attrs)
        if len(_KNOWN_TYPES) > 4096:  # many shapes come and go: start afresh
            _KNOWN_TYPES.clear()
        _KNOWN_TYPES[key] = out_type
    return out_type


# --- writing into a tensor -----------------------------------------------------------------------


def _write(target: Tensor, op: Op, inputs, attrs, method: str) -> Tensor:
    """``target = op(*inputs)`` in place (``inputs`` may include ``target`` itself)."""
    if _writes_directly(target, inputs) and _takes_out(op) and _fits(target, op, inputs, attrs):
        _impl(op, [t.array for t in inputs], {**attrs, "out": target.array})
        target.bump_version()
        return target
    return _overwrite(target, method, lambda old: _with_old(op, inputs, attrs, target, old))


def _with_old(op: Op, inputs, attrs, target: Tensor, old: Tensor) -> Tensor:
    """op(*inputs) where ``old`` stands for the target's value before the write."""
    inputs = [old if t is target else t for t in inputs]
    if LAYOUT_VIEW in op.props and result_type(op, inputs, attrs) == inputs[0].tensor_type:
        return inputs[0]  # (a view as it is: no op, as Tensor.expand gives it; copy_ writes it)
    return apply(op, inputs, attrs)


def _writes_directly(target: Tensor, inputs) -> bool:
    """Whether a write may go straight into the target's memory: eager code that records
    nothing (an optimizer's update under no_grad, say). Traced code gets a new SSA value
    instead, and recorded code keeps the old value for backward."""
    if active_tracer() is not None or not target.array.flags.writeable:
        return False  # (without a tracer, no tensor is symbolic)
    return not tape.is_grad_enabled() or not (
        target.requires_grad or any(t.requires_grad for t in inputs)
    )


def _takes_out(op: Op) -> bool:
    """Whether the op's NumPy implementation takes ``out=`` (it can write in place)."""
    return _impl_takes_out(op.name)


@functools.cache  # (by name: hashing an Op hashes all its fields)
def _impl_takes_out(name: str) -> bool:
    try:
        return "out" in inspect.signature(OPS[name].impl).parameters
    except (TypeError, ValueError):
        return False


def _fits(target: Tensor, op: Op, inputs, attrs) -> bool:
    """Whether op(*inputs) has the target's type."""
    out = result_type(op, inputs, attrs)
    return out.shape == target.array.shape and out.dtype.np == target.array.dtype


def _overwrite(target: Tensor, method: str, compute) -> Tensor:
    """Overwrite ``target`` with ``compute(old)``, where ``old`` stands for its current
    value, and make that computation the target's history."""
    tracking = tape.is_grad_enabled()
    if tracking and target.is_leaf and target.requires_grad:
        raise RuntimeError(
            at_user_line(
                f"{method}: a leaf tensor that requires grad is being used in an in-place "
                "operation; wrap the update in tracegrad.no_grad()"
            )
        )
    old = target
    if tracking and target.requires_grad:
        # The old value may be read by the new node's backward: keep it as its own tensor.
        data = target.array if is_symbolic(target) else target.array.copy()
        old = wrap(data, grad_fn=target.grad_fn)
        old._out_index = target._out_index
    result = compute(old)
    if tracking and target.requires_grad and not result.requires_grad:
        # A value without history written over one with it: the tensor still requires
        # grad, as in PyTorch, and its old value gets zero gradient (where's exact zeros)
        result = call("where", wrap(np.array(True)), *promote_operands(result, old))
    _check_writable(target, method, result, tracking and result.requires_grad)
    tracer = active_tracer()
    if tracer is not None and tracer.rebinds(target, result):
        tracer.rebind(target, result)  # a traced program gets a new SSA value instead
    else:
        np.copyto(target.array, result.array, casting="unsafe")
    target.bump_version()
    if tracking and result.requires_grad:
        target.grad_fn, target._out_index = result.grad_fn, result._out_index
        target._requires_grad = True
    return target


def _check_writable(target: Tensor, method: str, result: Tensor, recording: bool) -> None:
    problem = None
    if recording and target._base is not None:
        problem = "in-place modification of a view is not supported while recording gradients"
    elif tuple(result.shape) != tuple(target.shape):
        problem = (
            f"result of shape {tuple(result.shape)} does not fit the in-place target of "
            f"shape {tuple(target.shape)}"
        )
    elif not is_symbolic(target) and not target.array.flags.writeable:
        problem = "the target shares memory between elements (an expanded or window view)"
    if problem:
        raise RuntimeError(at_user_line(f"{method}: {problem}; use the out-of-place op"))
