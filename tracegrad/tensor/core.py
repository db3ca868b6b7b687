"""The Tensor class: an array, its autograd attributes and its version counter.

This is the small surface every layer reads; the ops on tensors are installed as methods by
``tracegrad.tensor.methods`` (which ``tracegrad.tensor`` imports with this module).

The internal protocol between tensors and the rest of tracegrad is a few names:

- ``t.array``: the tensor's storage (a NumPy array; while tracing, a symbolic value). A plain
  attribute, not a property: a compiled call reads it for every tensor it passes, and a
  property would cost a Python call each time. ``t.array = storage`` rebinds it as it is (the
  tracer's symbols, a compiled step's buffers): no checks and no version count, unlike the
  public ``.data =``;
- ``t.version`` and ``t.bump_version()``: the count of in-place writes, shared with the views
  of the same memory (``t.count_writes_with(base)`` for a view made outside the ops), which
  the tape checks saved values against. The count lives in ``t.version_counter``, a
  one-element list a view shares; generated code bumps it inline;
- ``wrap(array, grad_fn=None, requires_grad=False)``: a tensor over ``array`` without a copy.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tracegrad import devices, dtypes, tape
from tracegrad.dtypes import DType, TensorType
from tracegrad.errors import DTypeError, ShapeError, TraceError, at_user_line
from tracegrad.ops import registry
from tracegrad.ops.rules import normalize_dim
from tracegrad.tensor.tracing import active_tracer, next_serial

Number = numbers.Number


class Size(tuple):
    """A shape; a tuple that prints like PyTorch's.

    Examples:
        >>> shape = tg.zeros(2, 3).shape
        >>> shape, shape == (2, 3), shape.numel()
        (tracegrad.Size([2, 3]), True, 6)
    """

    def __repr__(self) -> str:
        return f"tracegrad.Size({list(self)})"

    def numel(self) -> int:
        return int(np.prod(self, dtype=np.int64))


class MaxResult(NamedTuple):
    values: Tensor
    indices: Tensor


class SortResult(NamedTuple):
    """What ``sort`` and ``topk`` return, as PyTorch's named tuples: values, then indices."""

    values: Tensor
    indices: Tensor


def is_symbolic(t: Tensor) -> bool:
    """Whether ``t`` holds a traced value (known only when compiled code runs)."""
    return not isinstance(t.array, np.ndarray)


def wrap(array, grad_fn=None, requires_grad=False) -> Tensor:
    """A tensor over ``array`` itself (no copy, no dtype conversion)."""
    t = object.__new__(Tensor)
    t.array = array
    t._init_autograd(requires_grad)
    t.grad_fn = grad_fn
    if grad_fn is not None:
        t.requires_grad = True
    return t


if TYPE_CHECKING:  # the methods ``tensor.methods`` and ``tensor.numeric`` install, as type
    # checkers see them (NumericMethods derives from TensorMethods, which derives from the
    # one-op declarations of ``tensor.signatures``)
    from tracegrad.tensor.numeric import NumericMethods as _InstalledMethods
else:
    _InstalledMethods = object


class Tensor(_InstalledMethods):
    """An n-dimensional array that can record the operations applied to it for autograd.

    Make tensors with ``tg.tensor`` and the factories (``tg.zeros``, ``tg.randn``...). The
    methods, operators and indexing follow PyTorch's; every method is listed on the Tensor
    methods page of the API reference.

    Examples:
        >>> x = tg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
        >>> y = (x @ x.T)[0, 1]
        >>> y.backward()
        >>> y, x.grad
        (tensor(11., grad_fn=<...>), tensor([[3., 4.],
                [1., 2.]]))
    """

    __array_priority__ = 1000  # NumPy defers binary operators to us

    if TYPE_CHECKING:  # installed by ``tensor.dispatch``: how the ops reach the dispatcher
        apply_op: Callable[..., Tensor]

    def __init__(self, *args, requires_grad=False):
        """PyTorch's legacy constructor: ``Tensor(2, 3)`` (or a Size) is an uninitialized
        default-float tensor of that shape (zeros here), ``Tensor([1, 2])`` a copy of the
        data as the default float dtype, ``Tensor()`` an empty one."""
        self.array = _legacy_array(args)
        self._init_autograd(requires_grad)

    def _init_autograd(self, requires_grad) -> None:
        self._serial = next_serial()  # creation order: tracing lifts tensors older than itself
        self._grad: Tensor | None = None
        self.grad_fn: tape.Node | None = None
        self._out_index = 0
        self.version_counter = [0]  # shared with views of the same memory
        self._base: Tensor | None = None
        self._requires_grad = False
        if requires_grad:  # the checks of the setter; a new tensor not requiring grad needs none
            self.requires_grad = True

    # --- version ---------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The number of in-place writes to this tensor's memory (views share the count).

        Autograd compares it at backward time: a tensor saved for backward and modified in place
        since raises RuntimeError.

        Examples:
            >>> x = tg.zeros(3)
            >>> x.add_(1).version
            1
        """
        return self.version_counter[0]

    def bump_version(self) -> None:
        """Count one in-place write (views of the same memory see it too)."""
        self.version_counter[0] += 1

    def count_writes_with(self, base: Tensor) -> None:
        """Share ``base``'s version counter: this tensor's storage is a view of ``base``'s,
        so a write to either is a write to both (as views made by ops share it)."""
        self.version_counter = base.version_counter

    # --- metadata --------------------------------------------------------------------------------

    @property
    def shape(self) -> Size:
        """The size of each dimension, as a ``tg.Size`` (a tuple).

        Examples:
            >>> tg.zeros(2, 3).shape
            tracegrad.Size([2, 3])
        """
        return Size(self.array.shape)

    def size(self, dim: int | None = None):
        """The shape, or the size of one dimension, as ``torch.Tensor.size``.

        Args:
            dim: a dimension (negative counts from the end), or None for the whole shape.

        Returns:
            A ``tg.Size`` when ``dim`` is None, else an int.

        Raises:
            ShapeError: if ``dim`` is out of range.

        Examples:
            >>> tg.zeros(2, 3).size(-1)
            3
        """
        return self.shape if dim is None else self.shape[normalize_dim("size", dim, self.ndim)]

    @property
    def dtype(self) -> DType:
        """The element type: ``tg.float32``, ``tg.float64``, ``tg.int64`` or ``tg.bool``.

        Examples:
            >>> tg.tensor([1, 2]).dtype
            tracegrad.int64
        """
        return dtypes.from_numpy(self.array.dtype)

    @property
    def tensor_type(self) -> TensorType:
        """The shape and dtype together (the type a graph value has when traced)."""
        return TensorType(self.array.shape, self.dtype)

    @property
    def ndim(self) -> int:
        """The number of dimensions.

        Examples:
            >>> tg.zeros(2, 3).ndim
            2
        """
        return self.array.ndim

    def dim(self) -> int:
        """The number of dimensions (``ndim``), as ``torch.Tensor.dim``."""
        return self.ndim

    def numel(self) -> int:
        """The number of elements.

        Examples:
            >>> tg.zeros(2, 3).numel()
            6
        """
        return int(self.array.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def device(self) -> devices.device:
        """Where the tensor lives: always ``tg.device("cpu")``."""
        return devices.CPU

    @property
    def is_cuda(self) -> bool:
        """Always False: tracegrad runs on the CPU only."""
        return False

    def is_floating_point(self) -> bool:
        """Whether the dtype is ``float32`` or ``float64``.

        Examples:
            >>> tg.tensor([1.0]).is_floating_point(), tg.tensor([1]).is_floating_point()
            (True, False)
        """
        return self.dtype.is_floating_point

    # --- autograd attributes ---------------------------------------------------------------------

    @property
    def grad(self) -> Tensor | None:
        """The gradient ``backward()`` accumulated into this leaf (None before any).

        While a step is traced, reading and writing it are noted (``Tracer.grad_read``): a
        compiled step is specialized on the ``.grad`` a call starts with only when its trace
        looked at it before replacing it."""
        tracer = active_tracer()
        if tracer is not None:
            tracer.grad_read(self)
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        tracer = active_tracer()
        if tracer is not None:
            tracer.grad_written(self)
        self._grad = value

    @property
    def requires_grad(self) -> bool:
        """Whether autograd records operations on this tensor.

        Setting it on a leaf turns recording on or off, as in PyTorch.

        Raises:
            DTypeError: when set to True on a tensor that is not floating point.
            RuntimeError: when set to False on a tensor made by a recorded operation (not a leaf).
        """
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
        """Whether no recorded operation made this tensor (its ``grad_fn`` is None).

        Leaves that require grad get their gradient in ``.grad`` from ``backward()``.
        """
        return self.grad_fn is None

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set ``requires_grad`` in place and return this tensor.

        Args:
            requires_grad: whether autograd should record operations on it.

        Returns:
            This tensor.

        Raises:
            DTypeError: if asked on a tensor that is not floating point.

        Examples:
            >>> tg.zeros(2).requires_grad_().requires_grad
            True
        """
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        """Keep this non-leaf tensor's gradient in ``.grad`` at the next backward.

        Examples:
            >>> x = tg.ones(2, requires_grad=True)
            >>> y = x * 2
            >>> y.retain_grad()
            >>> y.sum().backward()
            >>> y.grad
            tensor([1., 1.])
        """
        if self.grad_fn is not None:
            self.grad_fn.retained[self._out_index] = weakref.ref(self)

    def detach(self) -> Tensor:
        """A tensor sharing this one's memory, cut from autograd.

        Returns:
            A new tensor that does not require grad; in-place writes to either show in both.

        Examples:
            >>> x = tg.ones(2, requires_grad=True)
            >>> (x * 2).detach().requires_grad
            False
        """
        tracer = active_tracer()
        if tracer is not None and tracer.mode == "capture" and tracer.traced(self):
            # a captured forward is differentiated later by replay: record where it stops
            with tape.no_grad():
                return registry.call("stop_gradient", self)
        out = wrap(self.array)
        out.version_counter, out._base = self.version_counter, self._base
        if tracer is not None:
            tracer.note_alias(self, out)  # the same memory: a write to one shows in the other
        return out

    def detach_(self) -> Tensor:
        """Cut this tensor from autograd in place (it becomes a leaf not requiring grad).

        Returns:
            This tensor.
        """
        self.grad_fn, self._requires_grad = None, False
        return self

    @property
    def data(self) -> Tensor:
        """The tensor's values as a tensor outside autograd, sharing its memory.

        Assigning ``t.data = other`` replaces the values without recording anything, as in PyTorch.

        Raises:
            TraceError: when assigned, in compiled code, a tensor of another shape or dtype.
        """
        if active_tracer() is not None:
            return self.detach()  # (which the tracer sees as a view of all of this tensor)
        return wrap(self.array)

    @data.setter
    def data(self, value: Tensor) -> None:
        value = as_tensor(value)
        tracer = active_tracer()
        if tracer is not None and (tracer.traced(self) or tracer.traced(value)):
            if tuple(value.shape) != tuple(self.shape) or value.dtype != self.dtype:
                raise TraceError(
                    at_user_line(
                        f".data = a tensor of another type ({value.tensor_type} for "
                        f"{self.tensor_type}) cannot be compiled; copy_ values of the same shape"
                    )
                )
            tracer.rebind(self, value)
            self.bump_version()
            return
        self.array = value.array

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None) -> None:
        """Accumulate d(self)/d(leaf), times ``gradient``, into each leaf's ``.grad``.

        Args:
            gradient: the vector of the vector-Jacobian product, of this tensor's shape;
                may be omitted for a scalar (it is then 1).
            retain_graph: keep the recorded graph for another backward (default: as
                ``create_graph``).
            create_graph: record the backward itself, for gradients of gradients.
            inputs: only accumulate into these tensors' ``.grad``.

        Raises:
            RuntimeError: without ``gradient`` on a tensor of more than one element
                ("grad can be implicitly created only for scalar outputs"), when a tensor
                saved for backward was modified in place since, or on a second backward
                through a graph already freed.

        Examples:
            >>> w = tg.tensor([1.0, 2.0], requires_grad=True)
            >>> (w * w).sum().backward()
            >>> w.grad
            tensor([2., 4.])
        """
        backward([self], [gradient], retain_graph, create_graph, inputs)

    def register_post_accumulate_grad_hook(self, hook) -> tape.RemovableHandle:
        """Call ``hook(self)`` each time a backward pass has accumulated into this leaf's
        ``.grad``; returns a handle whose ``remove()`` unregisters it."""
        if self.grad_fn is not None:
            raise RuntimeError(
                "post accumulate grad hooks cannot be registered on non-leaf tensors"
            )
        hooks = self.__dict__.setdefault("_post_accumulate_grad_hooks", {})
        return tape.RemovableHandle(hooks, hook)

    # --- conversion -------------------------------------------------------------------------------

    def _concrete(self, what: str) -> np.ndarray:
        """The data, or a TraceError when it is only known when the compiled code runs."""
        tracer = active_tracer()
        if tracer is not None and tracer.traced(self):
            tracer.value_of(self)  # (a view of memory written since is made symbolic)
            if not is_symbolic(self):  # a parameter, buffer or captured tensor: the program
                tracer.note_read(self)  # holds for this value, and its guards check it
                return self.array
        if is_symbolic(self):
            raise TraceError(
                at_user_line(
                    f"{what} needs the value of a traced tensor, which is only known when the "
                    "compiled code runs: Python control flow on tensor values cannot be "
                    "compiled; use tracegrad.where(cond, a, b) to select values instead"
                )
            )
        return self.array

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array sharing this tensor's memory.

        Returns:
            A ``numpy.ndarray`` (writes to it show in the tensor).

        Raises:
            RuntimeError: if the tensor requires grad (use ``t.detach().numpy()``).
            TraceError: on a traced tensor, whose value is known only when compiled code runs.

        Examples:
            >>> tg.tensor([1.0, 2.0]).numpy()
            array([1., 2.], dtype=float32)
        """
        self._concrete("numpy()")
        if self.requires_grad:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. "
                "Use tensor.detach().numpy() instead."
            )
        return self.array

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        if dtype is not None and array.dtype != dtype:
            return array.astype(dtype)
        return array.copy() if copy else array

    def item(self):
        """The value of a one-element tensor as a Python number.

        Returns:
            A float, int or bool.

        Raises:
            ValueError: if the tensor has more than one element.
            TraceError: on a traced tensor (use ``tg.where`` for control flow on values).

        Examples:
            >>> tg.tensor([[2.5]]).item()
            2.5
        """
        self._concrete("item()")
        if self.numel() != 1:
            raise ValueError(
                f"a Tensor with {self.numel()} elements cannot be converted to a Python scalar"
            )
        return self.array.reshape(()).item()

    def tolist(self):
        """The values as (nested) Python lists of numbers.

        Raises:
            TraceError: on a traced tensor.

        Examples:
            >>> tg.tensor([[1, 2], [3, 4]]).tolist()
            [[1, 2], [3, 4]]
        """
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
        body = np.array2string(self.array, separator=", ", prefix="tensor(")
        extras = []
        if self.dtype not in (dtypes.float32, dtypes.int64, dtypes.bool_):
            extras.append(f"dtype={self.dtype!r}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn={self.grad_fn!r}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body, *extras]) + ")"

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


def as_array(data, dtype: DType | None) -> np.ndarray:
    """A new NumPy array of ``data`` (nested lists may hold tensors), of ``dtype`` or the
    dtype PyTorch gives such data."""
    if isinstance(data, Tensor):
        data = data.array
    elif isinstance(data, (list, tuple)) and any(isinstance(d, Tensor) for d in _flat(data)):
        data = [d.array if isinstance(d, Tensor) else d for d in data]
    dtype = dtypes.to_dtype(dtype) if dtype is not None else _array_dtype(data)
    return np.array(data, dtype=dtype.np)


def _legacy_array(args) -> np.ndarray:
    """The storage of ``Tensor(*args)``: sizes give zeros of that shape, else the data."""
    if len(args) == 1 and isinstance(args[0], Size):
        args = tuple(args[0])
    if not args:
        return np.zeros(0, dtypes.DEFAULT_FLOAT.np)
    if all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in args):
        return np.zeros(args, dtypes.DEFAULT_FLOAT.np)
    if len(args) > 1:
        raise TypeError(f"Tensor(): expected sizes (ints) or one sequence of data, got {args!r}")
    return as_array(args[0], dtypes.DEFAULT_FLOAT)


def _flat(data):
    for item in data:
        if isinstance(item, (list, tuple)):
            yield from _flat(item)
        else:
            yield item


def tensor(data, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A new tensor holding a copy of ``data`` (PyTorch's ``torch.tensor``).

    Args:
        data: a number, a (nested) list or tuple, a NumPy array or a tensor.
        dtype: the dtype; by default a NumPy array keeps its float32, float64, int64 or bool
            dtype, Python floats become float32, ints int64 and bools bool.
        requires_grad: whether autograd records operations on the result.
        device: None or "cpu" (the only device).

    Returns:
        A new leaf tensor with memory of its own.

    Raises:
        DTypeError: if ``requires_grad`` is asked for a tensor that is not floating point.
        RuntimeError: for a device other than the CPU.

    Examples:
        >>> tg.tensor([[1, 2], [3, 4]], dtype=tg.float64)
        tensor([[1., 2.],
                [3., 4.]], dtype=tracegrad.float64)
    """
    devices.check(device)
    if isinstance(data, Tensor):  # (as a copy in traced code too: data may be traced)
        copied = data.detach().to(dtype) if dtype is not None else data.detach()
        return copied.clone().requires_grad_(requires_grad)
    return wrap(as_array(data, dtype), requires_grad=requires_grad)


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """Tensors pass through; Python numbers become 0-d tensors (of ``like``'s dtype when given)."""
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, Number) and not isinstance(value, (np.ndarray,)):
        return wrap(np.asarray(value, like.dtype.np))
    return tensor(value)


# --- backward ------------------------------------------------------------------------------------


def backward(tensors, grad_tensors, retain_graph=None, create_graph=False, inputs=None) -> None:
    """Accumulate gradients of ``tensors`` into the ``.grad`` of the leaves (or of ``inputs``)."""
    tracer = active_tracer()
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
        return wrap(np.ones(output.array.shape, output.dtype.np))
    gradient = as_tensor(gradient).to(output.dtype)
    if tuple(gradient.shape) != tuple(output.shape):
        raise ShapeError(
            at_user_line(
                f"backward: gradient of shape {tuple(gradient.shape)} does not match the "
                f"output's shape {tuple(output.shape)}"
            )
        )
    return gradient
