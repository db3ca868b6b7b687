"""Tensor: an n-d array with PyTorch's API, run eagerly through the op registry.

Every op goes through ``apply``: check the op's shape/dtype rule on the operand types (so
errors name the op, the shapes and the user's line), run its NumPy implementation, and, when
gradients are wanted, record a ``tape.Node`` whose backward applies the op's VJP rule.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import numbers
import threading
import weakref
from typing import NamedTuple

import numpy as np

from tracegrad import devices, dtypes, tape
from tracegrad.dtypes import DType, TensorType
from tracegrad.errors import DTypeError, ShapeError, TraceError, at_user_line
from tracegrad.ops import OPS, VIEW, Op, VJPContext, registry, vjp
from tracegrad.ops.index import resolve
from tracegrad.ops.reduce import std_of_var
from tracegrad.ops.rules import normalize_dim, normalize_dims

Number = numbers.Number


class Size(tuple):
    """A shape; a tuple that prints like PyTorch's."""

    def __repr__(self) -> str:
        return f"tracegrad.Size({list(self)})"

    def numel(self) -> int:
        return int(np.prod(self, dtype=np.int64))


class MaxResult(NamedTuple):
    values: Tensor
    indices: Tensor


class _Tracing(threading.local):
    """The active tracer of each thread (set by tracegrad.tracer while a function is traced):
    ops on traced tensors become graph nodes instead of running. Another thread's eager code
    meanwhile runs eagerly."""

    tracer = None  # (a class attribute: every thread starts with none)


_TRACING = _Tracing()
_serials = itertools.count()


def set_tracer(tracer):
    """Install ``tracer`` (or None) for this thread; returns the previous one."""
    previous, _TRACING.tracer = _TRACING.tracer, tracer
    return previous


def next_serial() -> int:
    return next(_serials)


def active_tracer():
    return _TRACING.tracer


def is_symbolic(t: Tensor) -> bool:
    return not isinstance(t._data, np.ndarray)


def apply(op: Op, inputs, attrs) -> Tensor:
    """Run one registry op (or trace it) and record it on the tape when gradients are wanted."""
    try:
        out_type = result_type(op, inputs, attrs)
    except (ShapeError, DTypeError) as exc:
        raise type(exc)(at_user_line(str(exc))) from None
    tracer = _TRACING.tracer
    if tracer is not None and tracer.takes(op, inputs):
        out = tracer.record(op, inputs, attrs, out_type)
    else:
        out = _run(op, inputs, attrs, out_type)
    if tracer is not None and VIEW in op.props:
        tracer.note_view(op, inputs, attrs, out)
    if op.differentiable and tape.is_grad_enabled() and any(t.requires_grad for t in inputs):
        _record(op, inputs, attrs, out)
    return out


def _run(op: Op, inputs, attrs, out_type: TensorType) -> Tensor:
    with np.errstate(all="ignore"):
        data = op.impl(*(t._data for t in inputs), **attrs)
    data = np.asarray(data)
    if data.dtype != out_type.dtype.np:
        data = data.astype(out_type.dtype.np)
    if VIEW in op.props:  # only view ops may return memory of an input (the op tests check)
        out = Tensor._wrap(data)
        for t in inputs:
            if np.may_share_memory(data, t._data):
                out._version, out._base = t._version, t._base if t._base is not None else t
                break
        return out
    # A result of its own is row-major (NumPy keeps a transposed operand's layout): whether a
    # later reshape views it or copies it then does not depend on that, as traced code assumes
    return Tensor._wrap(data if data.flags.c_contiguous else np.ascontiguousarray(data))


def _record(op: Op, inputs, attrs, out: Tensor) -> None:
    inputs = tuple(inputs)
    node = tape.Node(op.name, inputs, None)
    tracer = _TRACING.tracer
    if tracer is not None:
        node.location = tracer.location()
    # Which inputs get a gradient is fixed now, as in PyTorch; only what their rules read is
    # saved (and so guarded against in-place changes).
    needs = tuple(t.requires_grad for t in inputs)
    saves = op.saved_for(needs)
    saved_out = out._data if "out" in saves else None

    def backward(grads):
        out_tensor = Tensor._wrap(saved_out, grad_fn=node) if saved_out is not None else None
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


registry.set_dispatcher(apply)


def call(name: str, *inputs, **attrs) -> Tensor:
    return apply(OPS[name], inputs, attrs)


# --- turning Python values into tensors -----------------------------------------------------------


def _array_dtype(data) -> DType:
    if isinstance(data, (np.ndarray, np.generic)):
        return dtypes.from_numpy(data.dtype)
    array = np.asarray(data)
    if array.dtype == object:
        raise TypeError(f"cannot make a tensor from {type(data).__name__} holding mixed objects")
    if array.dtype.kind == "f":
        return dtypes.DEFAULT_FLOAT  # Python floats become float32, as in PyTorch
    return dtypes.from_numpy(array.dtype)


def _as_array(data, dtype: DType | None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data._data
    elif isinstance(data, (list, tuple)) and any(isinstance(d, Tensor) for d in _flat(data)):
        data = [d._data if isinstance(d, Tensor) else d for d in data]
    dtype = dtypes.to_dtype(dtype) if dtype is not None else _array_dtype(data)
    return np.array(data, dtype=dtype.np)


def _flat(data):
    for item in data:
        if isinstance(item, (list, tuple)):
            yield from _flat(item)
        else:
            yield item


def tensor(data, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A new tensor holding a copy of ``data`` (PyTorch's ``torch.tensor``)."""
    devices.check(device)
    if isinstance(data, Tensor):  # (as a copy in traced code too: data may be traced)
        copied = data.detach().to(dtype) if dtype is not None else data.detach()
        return copied.clone().requires_grad_(requires_grad)
    return Tensor._wrap(_as_array(data, dtype), requires_grad=requires_grad)


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """Tensors pass through; Python numbers become 0-d tensors (of ``like``'s dtype when given)."""
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, Number) and not isinstance(value, (np.ndarray,)):
        return Tensor._wrap(np.asarray(value, like.dtype.np))
    return tensor(value)


def _priority(value) -> tuple[DType, int]:
    if isinstance(value, Tensor):
        return value.dtype, dtypes.DIMENSIONED if value.ndim else dtypes.ZERO_DIM
    if isinstance(value, np.ndarray):
        return dtypes.from_numpy(value.dtype), dtypes.DIMENSIONED
    return dtypes.of_scalar(value), dtypes.SCALAR


def promote_operands(*values, floating=False) -> list[Tensor]:
    """Apply PyTorch's type promotion: one dtype for all operands, scalars staying weak."""
    if all(type(v) is Tensor for v in values):  # the common case, on every op: one dtype
        dtype = values[0].dtype
        if all(v.dtype is dtype for v in values[1:]) and (dtype.is_floating_point or not floating):
            return list(values)
    dtype = dtypes.promote(*(_priority(v) for v in values))
    if floating and not dtype.is_floating_point:
        dtype = dtypes.DEFAULT_FLOAT
    return [_to_dtype(v, dtype) for v in values]


def _to_dtype(value, dtype: DType) -> Tensor:
    if isinstance(value, Tensor):
        return value if value.dtype == dtype else call("cast", value, dtype=dtype.name)
    return Tensor._wrap(np.asarray(value, dtype.np))


def binary(name: str, x, y, floating=False) -> Tensor:
    return call(name, *promote_operands(x, y, floating=floating))


def _float_unary(name: str, x: Tensor, **attrs) -> Tensor:
    if not x.dtype.is_floating_point:
        x = call("cast", x, dtype=dtypes.DEFAULT_FLOAT.name)
    return call(name, x, **attrs)


def _shape_args(shape) -> tuple[int, ...]:
    """Accept ``f(2, 3)`` and ``f((2, 3))`` alike."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, Size)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def infer_shape(shape, numel: int) -> tuple[int, ...]:
    """Fill a single -1 in ``shape`` so the element count is ``numel``."""
    if shape.count(-1) > 1:
        raise ShapeError(f"only one dimension can be -1, got {shape}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if known == 0 or numel % known:
            raise ShapeError(at_user_line(f"shape {shape} is invalid for input of size {numel}"))
        shape = tuple(numel // known if s == -1 else s for s in shape)
    return shape


def index_key(item, ndim: int) -> tuple[tuple, list[Tensor]]:
    """Encode a Python index as the registry's key plus its index tensors."""
    items = item if isinstance(item, tuple) else (item,)
    key, tensors = [], []
    for it in items:
        if isinstance(it, (list, np.ndarray)):
            it = tensor(it)
        if isinstance(it, Tensor) and it.dtype is dtypes.bool_:
            # A mask selects its True positions; how many is known only from its data.
            for nz in np.nonzero(it._concrete("indexing with a boolean mask")):
                key.append(("tensor", len(tensors)))
                tensors.append(Tensor._wrap(nz.astype(np.int64)))
        elif isinstance(it, Tensor):
            key.append(("tensor", len(tensors)))
            tensors.append(it)
        elif isinstance(it, slice):
            key.append(("slice", _index_int(it.start), _index_int(it.stop), _index_int(it.step)))
        elif it is None:
            key.append(("none",))
        elif it is Ellipsis:
            key.append(("ellipsis",))
        elif isinstance(it, (bool, np.bool_)):
            raise IndexError("indexing with a Python bool is not supported; use a bool tensor")
        else:
            key.append(("int", _index_int(it)))
    return tuple(key), tensors


def _index_int(value):
    if value is None:
        return None
    if isinstance(value, Tensor):
        return int(value.item())
    return int(value)


class Tensor:
    """An n-dimensional array that can record the operations applied to it for autograd."""

    __array_priority__ = 1000  # NumPy defers binary operators to us

    def __init__(self, data=None, *, requires_grad=False):
        self._data = _as_array(data if data is not None else [], None)
        self._init_autograd(requires_grad)

    @classmethod
    def _wrap(cls, array: np.ndarray, grad_fn=None, requires_grad=False) -> Tensor:
        t = object.__new__(cls)
        t._data = array
        t._init_autograd(requires_grad)
        t.grad_fn = grad_fn
        if grad_fn is not None:
            t.requires_grad = True
        return t

    def _init_autograd(self, requires_grad) -> None:
        self._serial = next(_serials)  # creation order: tracing lifts tensors older than itself
        self.grad = None
        self.grad_fn = None
        self._out_index = 0
        self._version = [0]  # shared with views of the same memory
        self._base = None
        self._requires_grad = False
        if requires_grad:  # the checks of the setter; a new tensor not requiring grad needs none
            self.requires_grad = True

    # --- metadata --------------------------------------------------------------------------------

    @property
    def shape(self) -> Size:
        return Size(self._data.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[normalize_dim("size", dim, self.ndim)]

    @property
    def dtype(self) -> DType:
        return dtypes.from_numpy(self._data.dtype)

    @property
    def tensor_type(self) -> TensorType:
        return TensorType(self._data.shape, self.dtype)

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return int(self._data.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def device(self) -> devices.device:
        return devices.CPU

    @property
    def is_cuda(self) -> bool:
        return False

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    # --- autograd attributes ---------------------------------------------------------------------

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if value and not self.dtype.is_floating_point:
            raise DTypeError(
                at_user_line(
                    f"only tensors of floating point dtype can require gradients, got {self.dtype}"
                )
            )
        if not value and self.grad_fn is not None:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables; use detach() "
                "to get a tensor that does not require grad"
            )
        self._requires_grad = bool(value)

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        if self.grad_fn is not None:
            self.grad_fn.retained[self._out_index] = weakref.ref(self)

    def detach(self) -> Tensor:
        tracer = _TRACING.tracer
        if tracer is not None and tracer.mode == "capture" and tracer.traced(self):
            # a captured forward is differentiated later by replay: record where it stops
            with tape.no_grad():
                return call("stop_gradient", self)
        out = Tensor._wrap(self._data)
        out._version, out._base = self._version, self._base
        if tracer is not None:
            tracer.note_alias(self, out)  # the same memory: a write to one shows in the other
        return out

    def detach_(self) -> Tensor:
        self.grad_fn, self._requires_grad = None, False
        return self

    @property
    def data(self) -> Tensor:
        if _TRACING.tracer is not None:
            return self.detach()  # (which the tracer sees as a view of all of this tensor)
        return Tensor._wrap(self._data)

    @data.setter
    def data(self, value: Tensor) -> None:
        value = as_tensor(value)
        tracer = _TRACING.tracer
        if tracer is not None and (tracer.traced(self) or tracer.traced(value)):
            if tuple(value.shape) != tuple(self.shape) or value.dtype != self.dtype:
                raise TraceError(
                    at_user_line(
                        f".data = a tensor of another type ({value.tensor_type} for "
                        f"{self.tensor_type}) cannot be compiled; copy_ values of the same shape"
                    )
                )
            tracer.rebind(self, value)
            self._version[0] += 1
            return
        self._data = value._data

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None) -> None:
        """Accumulate d(self)/d(leaf), times ``gradient``, into each leaf's ``.grad``."""
        backward([self], [gradient], retain_graph, create_graph, inputs)

    # --- conversion -------------------------------------------------------------------------------

    def _concrete(self, what: str) -> np.ndarray:
        """The data, or a TraceError when it is only known when the compiled code runs."""
        tracer = _TRACING.tracer
        if tracer is not None and tracer.traced(self):
            tracer.value_of(self)  # (a view of memory written since is made symbolic)
            if not is_symbolic(self):  # a parameter, buffer or captured tensor: the program
                tracer.note_read(self)  # holds for this value, and its guards check it
                return self._data
        if is_symbolic(self):
            raise TraceError(
                at_user_line(
                    f"{what} needs the value of a traced tensor, which is only known when the "
                    "compiled code runs: Python control flow on tensor values cannot be "
                    "compiled; use tracegrad.where(cond, a, b) to select values instead"
                )
            )
        return self._data

    def numpy(self) -> np.ndarray:
        self._concrete("numpy()")
        if self.requires_grad:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. "
                "Use tensor.detach().numpy() instead."
            )
        return self._data

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        if dtype is not None and array.dtype != dtype:
            return array.astype(dtype)
        return array.copy() if copy else array

    def item(self):
        self._concrete("item()")
        if self.numel() != 1:
            raise ValueError(
                f"a Tensor with {self.numel()} elements cannot be converted to a Python scalar"
            )
        return self._data.reshape(()).item()

    def tolist(self):
        return self._concrete("tolist()").tolist()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype is not dtypes.int64 or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.item())

    def __bool__(self) -> bool:
        self._concrete("bool(tensor) (an if or while on a tensor)")
        if self.numel() != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self.numel()} elements is ambiguous")
        return bool(self.item())

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        if is_symbolic(self):
            return f"tensor(<traced {self.tensor_type}>)"
        body = np.array2string(self._data, separator=", ", prefix="tensor(")
        extras = []
        if self.dtype not in (dtypes.float32, dtypes.int64, dtypes.bool_):
            extras.append(f"dtype={self.dtype!r}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn={self.grad_fn!r}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body, *extras]) + ")"

    def to(self, *args, **kwargs) -> Tensor:
        """``to(dtype)``, ``to("cpu")``, ``to(device, dtype)``: the CPU is the only device."""
        dtype = dtypes.requested(*devices.without_devices(args, kwargs))
        return self if dtype is None else _to_dtype(self, dtype)

    def float(self) -> Tensor:
        return self.to(dtypes.float32)

    def double(self) -> Tensor:
        return self.to(dtypes.float64)

    def long(self) -> Tensor:
        return self.to(dtypes.int64)

    def bool(self) -> Tensor:
        return self.to(dtypes.bool_)

    def type_as(self, other: Tensor) -> Tensor:
        return self.to(other.dtype)

    def cpu(self) -> Tensor:
        return self

    def cuda(self, device=None) -> Tensor:
        raise devices.unavailable("cuda" if device is None else device)

    def contiguous(self) -> Tensor:
        return self

    def clone(self) -> Tensor:
        return call("clone", self)

    # --- arithmetic ------------------------------------------------------------------------------

    def __add__(self, other):
        return binary("add", self, other)

    def __radd__(self, other):
        return binary("add", other, self)

    def __sub__(self, other):
        return binary("sub", self, other)

    def __rsub__(self, other):
        return binary("sub", other, self)

    def __mul__(self, other):
        return binary("mul", self, other)

    def __rmul__(self, other):
        return binary("mul", other, self)

    def __truediv__(self, other):
        return binary("div", self, other, floating=True)

    def __rtruediv__(self, other):
        return binary("div", other, self, floating=True)

    def __pow__(self, exponent):
        if isinstance(exponent, Number) and not isinstance(exponent, bool):
            base = (
                self if self.dtype.is_floating_point or isinstance(exponent, int) else self.float()
            )
            if not base.dtype.is_floating_point:
                return binary("pow", base, exponent)
            return call("pow_scalar", base, exponent=float(exponent))
        return binary("pow", self, exponent)

    def __rpow__(self, base):
        return binary("pow", base, self)

    def __matmul__(self, other):
        return call("matmul", *promote_operands(self, other))

    def __rmatmul__(self, other):
        return call("matmul", *promote_operands(other, self))

    def __neg__(self):
        return call("neg", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return self.abs()

    def __eq__(self, other):
        return binary("eq", self, other)

    def __ne__(self, other):
        return binary("ne", self, other)

    def __lt__(self, other):
        return binary("lt", self, other)

    def __le__(self, other):
        return binary("le", self, other)

    def __gt__(self, other):
        return binary("gt", self, other)

    def __ge__(self, other):
        return binary("ge", self, other)

    def _logical(self, name, other):
        if self.dtype is not dtypes.bool_ or as_tensor(other).dtype is not dtypes.bool_:
            raise DTypeError(at_user_line(f"{name} needs bool tensors, got {self.dtype}"))
        return call(name, self, as_tensor(other))

    def __and__(self, other):
        return self._logical("logical_and", other)

    __rand__ = __and__

    def __or__(self, other):
        return self._logical("logical_or", other)

    __ror__ = __or__

    def __xor__(self, other):
        return self._logical("logical_xor", other)

    def __invert__(self):
        if self.dtype is not dtypes.bool_:
            raise DTypeError(at_user_line(f"~ is defined for bool tensors, got {self.dtype}"))
        return call("logical_not", self)

    def logical_not(self):
        return call("logical_not", self.bool())

    # --- elementwise math ------------------------------------------------------------------------

    def exp(self):
        return _float_unary("exp", self)

    def log(self):
        return _float_unary("log", self)

    def log1p(self):
        return _float_unary("log1p", self)

    def sqrt(self):
        return _float_unary("sqrt", self)

    def rsqrt(self):
        return 1.0 / self.sqrt()

    def tanh(self):
        return _float_unary("tanh", self)

    def sigmoid(self):
        return _float_unary("sigmoid", self)

    def sin(self):
        return _float_unary("sin", self)

    def cos(self):
        return _float_unary("cos", self)

    def erf(self):
        return _float_unary("erf", self)

    def relu(self):
        return call("relu", self)

    def abs(self):
        return call("abs", self)

    def sign(self):
        return call("sign", self)

    def square(self):
        return self * self

    def pow(self, exponent):
        return self**exponent

    def clamp(self, min=None, max=None):
        if min is None and max is None:
            raise ValueError("clamp needs at least one of min and max")
        return call("clamp", self, min=min, max=max)

    clip = clamp

    def maximum(self, other):
        return binary("maximum", self, other)

    def minimum(self, other):
        return binary("minimum", self, other)

    def where(self, condition, other):
        return where(condition, self, other)

    def masked_fill(self, mask, value):
        return where(mask, value, self)

    def softmax(self, dim):
        return call("softmax", self, dim=normalize_dim("softmax", dim, self.ndim))

    def log_softmax(self, dim):
        return call("log_softmax", self, dim=normalize_dim("log_softmax", dim, self.ndim))

    # --- reductions ------------------------------------------------------------------------------

    def sum(self, dim=None, keepdim=False, dtype=None):
        x = self.to(dtype) if dtype is not None else self
        if not x.dtype.is_floating_point and x.dtype is not dtypes.int64:
            x = x.long()
        return call("sum", x, dims=normalize_dims("sum", dim, x.ndim), keepdim=keepdim)

    def sum_to(self, shape):
        """Sum broadcast dims away so the result has ``shape`` (the inverse of expand)."""
        shape = tuple(shape)
        return self if shape == tuple(self.shape) else call("sum_to", self, shape=shape)

    def mean(self, dim=None, keepdim=False, dtype=None):
        x = self.to(dtype) if dtype is not None else self
        if not x.dtype.is_floating_point:
            raise DTypeError(
                at_user_line(f"mean(): input dtype must be floating point, got {x.dtype}")
            )
        dims = normalize_dims("mean", dim, x.ndim)
        count = int(np.prod([x.shape[d] for d in dims], dtype=np.int64))
        return x.sum(dims, keepdim) * (1.0 / count if count else float("nan"))

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        if correction is None:
            correction = 1 if unbiased is None or unbiased else 0
        dims = normalize_dims("var", dim, self.ndim)
        count = int(np.prod([self.shape[d] for d in dims], dtype=np.int64))
        centered = self - self.mean(dims, keepdim=True)
        # no degrees of freedom left: nan, as in PyTorch and NumPy
        scale = 1.0 / (count - correction) if count > correction else float("nan")
        return (centered * centered).sum(dims, keepdim) * scale

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        return std_of_var(self.var(dim, unbiased, keepdim, correction=correction))

    def _extreme(self, name, arg_name, dim, keepdim):
        if isinstance(dim, Tensor):
            return binary("maximum" if name == "amax" else "minimum", self, dim)
        if dim is None:
            return call(name, self, dims=tuple(range(self.ndim)), keepdim=False)
        dim = normalize_dim(name, dim, self.ndim)
        values = call(name, self, dims=(dim,), keepdim=keepdim)
        return MaxResult(values, call(arg_name, self, dim=dim, keepdim=keepdim))

    def max(self, dim=None, keepdim=False):
        return self._extreme("amax", "argmax", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        return self._extreme("amin", "argmin", dim, keepdim)

    def amax(self, dim=None, keepdim=False):
        return call("amax", self, dims=normalize_dims("amax", dim, self.ndim), keepdim=keepdim)

    def amin(self, dim=None, keepdim=False):
        return call("amin", self, dims=normalize_dims("amin", dim, self.ndim), keepdim=keepdim)

    def argmax(self, dim=None, keepdim=False):
        if dim is not None:
            dim = normalize_dim("argmax", dim, self.ndim)
        return call("argmax", self, dim=dim, keepdim=keepdim)

    def argmin(self, dim=None, keepdim=False):
        if dim is not None:
            dim = normalize_dim("argmin", dim, self.ndim)
        return call("argmin", self, dim=dim, keepdim=keepdim)

    def logsumexp(self, dim, keepdim=False):
        peak = self.amax(dim, keepdim=True).detach()
        out = (self - peak).exp().sum(dim, keepdim=True).log() + peak
        return out if keepdim else out.squeeze(dim)

    # --- shapes ----------------------------------------------------------------------------------

    def reshape(self, *shape):
        shape = infer_shape(_shape_args(shape), self.numel())
        return self if shape == self.shape else call("reshape", self, shape=shape)

    view = reshape

    def view_as(self, other):
        return self.reshape(other.shape)

    def reshape_as(self, other):
        return self.reshape(other.shape)

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        start = normalize_dim("flatten", start_dim, self.ndim)
        end = normalize_dim("flatten", end_dim, self.ndim)
        return self.reshape(*self.shape[:start], -1, *self.shape[end + 1 :])

    def unflatten(self, dim, sizes):
        dim = normalize_dim("unflatten", dim, self.ndim)
        return self.reshape(*self.shape[:dim], *sizes, *self.shape[dim + 1 :])

    def permute(self, *dims):
        dims = tuple(normalize_dim("permute", d, self.ndim) for d in _shape_args(dims))
        return call("permute", self, dims=dims)

    def transpose(self, dim0, dim1):
        order = list(range(self.ndim))
        d0, d1 = (
            normalize_dim("transpose", dim0, self.ndim),
            normalize_dim("transpose", dim1, self.ndim),
        )
        order[d0], order[d1] = order[d1], order[d0]
        return call("permute", self, dims=tuple(order))

    def t(self):
        if self.ndim > 2:
            raise ShapeError(at_user_line(f"t() expects a tensor with <= 2 dims, got {self.shape}"))
        return self.transpose(0, 1) if self.ndim == 2 else self

    @property
    def T(self):  # noqa: N802  (PyTorch's name)
        return call("permute", self, dims=tuple(reversed(range(self.ndim))))

    @property
    def mT(self):  # noqa: N802
        return self.transpose(-2, -1)

    def unsqueeze(self, dim):
        dim = normalize_dim("unsqueeze", dim, self.ndim + 1)
        return self.reshape(*self.shape[:dim], 1, *self.shape[dim:])

    def squeeze(self, dim=None):
        if dim is None:
            dims = [i for i, s in enumerate(self.shape) if s == 1]
        else:
            dims = normalize_dims("squeeze", dim, self.ndim)
        return self.reshape(*(s for i, s in enumerate(self.shape) if not (i in dims and s == 1)))

    def expand(self, *sizes):
        sizes = _shape_args(sizes)
        lead = len(sizes) - self.ndim
        shape = tuple(self.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
        return self if shape == self.shape else call("broadcast_to", self, shape=shape)

    def expand_as(self, other):
        return self.expand(other.shape)

    def broadcast_to(self, shape):
        return self.expand(shape)

    def repeat(self, *sizes):
        """Tile: each dim d of size s becomes sizes[d] * s, via broadcast then reshape."""
        sizes = _shape_args(sizes)
        shape = (1,) * (len(sizes) - self.ndim) + tuple(self.shape)
        spread = [n for pair in zip((1,) * len(sizes), shape, strict=True) for n in pair]
        tiled = [n for pair in zip(sizes, shape, strict=True) for n in pair]
        out = self.reshape(spread).expand(tiled)
        return out.reshape([r * s for r, s in zip(sizes, shape, strict=True)])

    def split(self, split_size, dim=0):
        dim = normalize_dim("split", dim, self.ndim)
        size = self.shape[dim]
        if isinstance(split_size, int):
            sizes = [split_size] * (size // split_size) + [size % split_size] * bool(
                size % split_size
            )
        else:
            sizes = list(split_size)
        pieces, start = [], 0
        for n in sizes:
            pieces.append(self[(slice(None),) * dim + (slice(start, start + n),)])
            start += n
        return tuple(pieces)

    def chunk(self, chunks, dim=0):
        size = self.shape[normalize_dim("chunk", dim, self.ndim)]
        return self.split(-(-size // chunks), dim)

    def __getitem__(self, item):
        key, index_tensors = index_key(item, self.ndim)
        return call("getitem", self, *index_tensors, key=key)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def tril(self, diagonal=0):
        return tril(self, diagonal)

    def triu(self, diagonal=0):
        return triu(self, diagonal)

    # --- in-place ops ---------------------------------------------------------------------------

    def _inplace(self, name: str, compute) -> Tensor:
        """Overwrite this tensor with ``compute(old)``, where ``old`` stands for its current
        value, and make that computation this tensor's history."""
        tracking = tape.is_grad_enabled()
        if tracking and self.is_leaf and self.requires_grad:
            raise RuntimeError(
                at_user_line(
                    f"{name}: a leaf tensor that requires grad is being used in an in-place "
                    "operation; wrap the update in tracegrad.no_grad()"
                )
            )
        old = self
        if tracking and self.requires_grad:
            # The old value may be read by the new node's backward: keep it as its own tensor.
            data = self._data if is_symbolic(self) else self._data.copy()
            old = Tensor._wrap(data, grad_fn=self.grad_fn)
            old._out_index = self._out_index
        result = compute(old)
        if tracking and self.requires_grad and not result.requires_grad:
            # A value without history written over one with it: the tensor still requires
            # grad, as in PyTorch, and its old value gets zero gradient (where's exact zeros)
            result = where(Tensor._wrap(np.array(True)), result, old)
        self._check_writable(name, result, tracking and result.requires_grad)
        tracer = _TRACING.tracer
        if tracer is not None and tracer.rebinds(self, result):
            tracer.rebind(self, result)  # a traced program gets a new SSA value instead
        else:
            np.copyto(self._data, result._data, casting="unsafe")
        self._version[0] += 1
        if tracking and result.requires_grad:
            self.grad_fn, self._out_index = result.grad_fn, result._out_index
            self._requires_grad = True
        return self

    def _check_writable(self, name: str, result: Tensor, recording: bool) -> None:
        problem = None
        if recording and self._base is not None:
            problem = "in-place modification of a view is not supported while recording gradients"
        elif tuple(result.shape) != tuple(self.shape):
            problem = (
                f"result of shape {tuple(result.shape)} does not fit the in-place target of "
                f"shape {tuple(self.shape)}"
            )
        elif not is_symbolic(self) and not self._data.flags.writeable:
            problem = "the target shares memory between elements (an expanded or window view)"
        if problem:
            raise RuntimeError(at_user_line(f"{name}: {problem}; use the out-of-place op"))

    def _writes_directly(self, *inputs) -> bool:
        """Whether an in-place op on this tensor may write straight into its memory: eager
        code that records nothing (an optimizer's update under no_grad, say). Traced code
        gets a new SSA value instead, and recorded code keeps the old value for backward."""
        if _TRACING.tracer is not None or not self._data.flags.writeable:
            return False  # (without a tracer, no tensor is symbolic)
        return not tape.is_grad_enabled() or not (
            self.requires_grad or any(isinstance(t, Tensor) and t.requires_grad for t in inputs)
        )

    def _ufunc_(self, name: str, ufunc, other, compute, alpha=1) -> Tensor:
        """``self = ufunc(self, other * alpha)`` in place, computed in the promoted dtype and
        cast back as ``_inplace(name, compute)`` does, which runs when this cannot."""
        data = other._data if isinstance(other, Tensor) else other
        shape = () if isinstance(data, (int, float)) else np.shape(data)
        fits = shape == self._data.shape or _broadcasts_to(shape, self._data.shape)
        if fits and self._writes_directly(other):
            with np.errstate(all="ignore"):
                if alpha != 1:  # a Python scalar stays weak, as in other * alpha
                    data = np.multiply(data, alpha)
                ufunc(self._data, data, out=self._data, casting="unsafe")
            self._version[0] += 1
            return self
        return self._inplace(name, compute)

    def _assign(self, name: str, *inputs, **attrs) -> Tensor:
        """``self = op(*inputs)`` in place, for an op whose kernel can write into an array:
        eagerly, straight into this tensor's memory (no new array, no copy); otherwise as
        copy_ of the op's result."""
        op = OPS[name]
        if self._writes_directly(*inputs) and _writes_out(name) and self._fits(op, inputs, attrs):
            # (the optimizers call this under np.errstate(all="ignore") for the whole step)
            op.impl(*(t._data for t in inputs), out=self._data, **attrs)
            self._version[0] += 1
            return self
        return self.copy_(apply(op, inputs, attrs))

    def _fits(self, op: Op, inputs, attrs) -> bool:
        """Whether op(*inputs) has this tensor's type."""
        out = result_type(op, inputs, attrs)
        return out.shape == self._data.shape and out.dtype.np == self._data.dtype

    def add_(self, other, alpha=1):
        return self._ufunc_("add_", np.add, other, lambda old: old + _scaled(other, alpha), alpha)

    def sub_(self, other, alpha=1):
        return self._ufunc_(
            "sub_", np.subtract, other, lambda old: old - _scaled(other, alpha), alpha
        )

    def mul_(self, other):
        return self._ufunc_("mul_", np.multiply, other, lambda old: old * other)

    def div_(self, other):
        return self._ufunc_("div_", np.true_divide, other, lambda old: old / other)

    def clamp_(self, min=None, max=None):
        return self._inplace("clamp_", lambda old: old.clamp(min, max))

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        filled = as_tensor(value, like=self).to(self.dtype)
        return self._inplace("fill_", lambda old: filled.expand(self.shape))

    def copy_(self, src):
        src = as_tensor(src).to(self.dtype)
        # (a copy of the same shape is a node of its own: the target is no leaf afterwards)
        return self._inplace("copy_", lambda old: _copied(src, self.shape))

    def __iadd__(self, other):
        return self.add_(other)

    def __isub__(self, other):
        return self.sub_(other)

    def __imul__(self, other):
        return self.mul_(other)

    def __itruediv__(self, other):
        return self.div_(other)

    def __setitem__(self, item, value):
        if tape.is_grad_enabled() and (
            self.requires_grad or getattr(value, "requires_grad", False)
        ):
            raise RuntimeError(
                at_user_line(
                    "assigning into a tensor that takes part in autograd is not supported; "
                    "build the result with tracegrad.where or tracegrad.cat"
                )
            )
        key, index_tensors = index_key(item, self.ndim)
        value = as_tensor(value)
        tracer = _TRACING.tracer
        if tracer is not None and (
            tracer.traced(self) or tracer.traced(value) or any(map(tracer.traced, index_tensors))
        ):
            tracer.assign(self, key, index_tensors, value)
        else:
            self._data[resolve(key, [t._data for t in index_tensors])] = np.asarray(
                value._data, self.dtype.np
            )
        self._version[0] += 1

    # --- NumPy protocol --------------------------------------------------------------------------

    # NumPy calls these for ufuncs and functions on tensors; tracegrad.numpy_interop installs
    # the tables that map them to tracegrad ops.
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _numpy_protocol["ufunc"](ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _numpy_protocol["function"](func, args, kwargs)


_numpy_protocol: dict = {}


def install_numpy_protocol(ufunc_handler, function_handler) -> None:
    _numpy_protocol.update(ufunc=ufunc_handler, function=function_handler)


def backward(tensors, grad_tensors, retain_graph=None, create_graph=False, inputs=None) -> None:
    """Accumulate gradients of ``tensors`` into the ``.grad`` of the leaves (or of ``inputs``)."""
    tracer = _TRACING.tracer
    if tracer is not None:
        tracer.backward_calls += 1  # (a traced function calling this is a training step)
    seeds = [seed_gradient(t, g) for t, g in zip(tensors, grad_tensors, strict=True)]
    retain = create_graph if retain_graph is None else retain_graph
    if inputs is None:
        tape.run_backward(tensors, seeds, retain_graph=retain, create_graph=create_graph)
        return
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    grads = tape.run_backward(
        tensors, seeds, retain_graph=retain, create_graph=create_graph, capture=inputs
    )
    for t, g in zip(inputs, grads, strict=True):
        if g is not None:
            tape.accumulate(t, g, create_graph)


def seed_gradient(output: Tensor, gradient) -> Tensor:
    """The cotangent backward() starts from: ones for a scalar, else the given ``gradient``."""
    if not output.requires_grad:
        raise RuntimeError(
            at_user_line("element 0 of tensors does not require grad and does not have a grad_fn")
        )
    if gradient is None:
        if output.numel() != 1:
            raise RuntimeError(
                at_user_line(
                    "grad can be implicitly created only for scalar outputs; this output has "
                    f"shape {tuple(output.shape)}, so pass gradient= (a tensor of that shape) "
                    "to backward() for a vector-Jacobian product"
                )
            )
        return Tensor._wrap(np.ones(output._data.shape, output.dtype.np))
    gradient = as_tensor(gradient).to(output.dtype)
    if tuple(gradient.shape) != tuple(output.shape):
        raise ShapeError(
            at_user_line(
                f"backward: gradient of shape {tuple(gradient.shape)} does not match the "
                f"output's shape {tuple(output.shape)}"
            )
        )
    return gradient


# --- module-level functions ---------------------------------------------------------------------


def _copied(src: Tensor, shape) -> Tensor:
    expanded = src.expand(shape)
    return expanded.clone() if expanded is src and src.requires_grad else expanded


def where(condition, x, y) -> Tensor:
    condition = as_tensor(condition)
    if condition.dtype is not dtypes.bool_:
        raise DTypeError(
            at_user_line(f"where: condition must be a bool tensor, got {condition.dtype}")
        )
    return call("where", condition, *promote_operands(x, y))


def cat(tensors, dim=0) -> Tensor:
    tensors = promote_operands(*tensors)
    dim = normalize_dim("cat", dim, tensors[0].ndim)
    return tensors[0] if len(tensors) == 1 else call("cat", *tensors, dim=dim)


def stack(tensors, dim=0) -> Tensor:
    tensors = list(tensors)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ShapeError(at_user_line(f"stack expects tensors of one shape, got {sorted(shapes)}"))
    dim = normalize_dim("stack", dim, tensors[0].ndim + 1)
    return cat([t.unsqueeze(dim) for t in tensors], dim)


def einsum(equation: str, *operands) -> Tensor:
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    return call("einsum", *promote_operands(*operands), equation=equation)


def _triangle(x: Tensor, diagonal: int, lower: bool) -> Tensor:
    rows, cols = x.shape[-2:]
    keep = (
        np.tri(rows, cols, diagonal, dtype=bool)
        if lower
        else ~np.tri(rows, cols, diagonal - 1, dtype=bool)
    )
    return where(Tensor._wrap(keep), x, Tensor._wrap(np.zeros((), x.dtype.np)))


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    return _triangle(x, diagonal, lower=True)


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    return _triangle(x, diagonal, lower=False)


_KNOWN_TYPES: dict = {}


def result_type(op: Op, inputs, attrs) -> TensorType:
    """The op's type rule on its operands, remembered per operand shapes, dtypes and
    attributes: a rule reads nothing else (traced data, a symbol, has a shape and a dtype
    too), and eager code asks the same question on every step of a training loop."""
    key = (op.name, tuple((t._data.shape, t._data.dtype) for t in inputs), *sorted(attrs.items()))
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


def _scaled(other, alpha):
    return other * alpha if alpha != 1 else other


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    if len(shape) > len(target):
        return False
    return all(n in (1, m) for n, m in zip(shape[::-1], target[::-1], strict=False))


@functools.cache
def _writes_out(name: str) -> bool:
    """Whether op ``name``'s NumPy implementation takes ``out=`` (it can write in place)."""
    try:
        return "out" in inspect.signature(OPS[name].impl).parameters
    except (TypeError, ValueError):
        return False
