"""The Tensor methods: the ops on tensors, PyTorch's names and signatures.

A method that is one op on ``self`` (and, for a binary one, the other operand promoted with
it) is an entry of ``ONE_OP_METHODS``: adding such an op adds its method by one line. The
others, which read shapes, normalize arguments or compose several ops, are written out in
``TensorMethods``. ``install()`` puts both on ``Tensor`` (``tracegrad.tensor`` imports this
module, so every Tensor has them).

The in-place methods (``add_``, ``copy_``, ``clamp_``...) are ``apply(op, ..., out=self)``:
the dispatcher writes the op's result into this tensor (see ``tracegrad.tensor.dispatch``).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

import numpy as np

from tracegrad import devices, dtypes, tape
from tracegrad.errors import DTypeError, ShapeError, TraceError, at_user_line
from tracegrad.ops import OPS
from tracegrad.ops.index import resolve
from tracegrad.ops.reduce import std_of_var
from tracegrad.ops.rules import normalize_dim, normalize_dims
from tracegrad.tensor.core import (
    MaxResult,
    Number,
    SortResult,
    Tensor,
    as_tensor,
    is_symbolic,
    wrap,
)
from tracegrad.tensor.dispatch import apply, call
from tracegrad.tensor.einsum_forms import plain_einsum
from tracegrad.tensor.indexing import index_key, infer_shape, shape_args
from tracegrad.tensor.norms import matrix_norm, vector_norm
from tracegrad.tensor.promotion import binary, float_unary, promote_operands, to_dtype
from tracegrad.tensor.sampling import multinomial
from tracegrad.tensor.signatures import OneOpMethods, Operand, TensorSelf
from tracegrad.tensor.tracing import active_tracer


class TensorMethods(OneOpMethods):
    """The methods written out (installed on Tensor). The base declares the one-op methods for
    type checkers; ``install()`` copies only this class's own members."""

    def to(self: TensorSelf, *args, **kwargs) -> Tensor:
        """``to(dtype)``, ``to("cpu")``, ``to(device, dtype)``: the CPU is the only device."""
        dtype = dtypes.requested(*devices.without_devices(args, kwargs))
        return self if dtype is None else to_dtype(self, dtype)

    def float(self) -> Tensor:
        """This tensor as ``float32`` (itself when it already is).

        Examples:
            >>> tg.tensor([1, 2]).float()
            tensor([1., 2.])
        """
        return self.to(dtypes.float32)

    def double(self) -> Tensor:
        """This tensor as ``float64`` (itself when it already is).

        Examples:
            >>> tg.tensor([1, 2]).double().dtype
            tracegrad.float64
        """
        return self.to(dtypes.float64)

    def long(self) -> Tensor:
        """This tensor as ``int64``, truncating toward zero.

        Examples:
            >>> tg.tensor([1.7, -1.7]).long()
            tensor([ 1, -1])
        """
        return self.to(dtypes.int64)

    def bool(self) -> Tensor:
        """This tensor as ``bool``: nonzero elements become True.

        Examples:
            >>> tg.tensor([0.0, 2.0]).bool()
            tensor([False,  True])
        """
        return self.to(dtypes.bool_)

    def type_as(self, other: Tensor) -> Tensor:
        """This tensor converted to ``other``'s dtype.

        Args:
            other: the tensor whose dtype to take.

        Examples:
            >>> tg.tensor([1, 2]).type_as(tg.zeros(1, dtype=tg.float64)).dtype
            tracegrad.float64
        """
        return self.to(other.dtype)

    def cpu(self: TensorSelf) -> Tensor:
        """This tensor (the CPU is the only device)."""
        return self

    def cuda(self, device=None) -> Tensor:
        """Always raises: tracegrad runs on the CPU only.

        Raises:
            RuntimeError: naming the device asked for.
        """
        raise devices.unavailable("cuda" if device is None else device)

    def is_contiguous(self: TensorSelf) -> builtins.bool:
        """Whether the values lie in row-major memory without gaps (while tracing: True, the
        layout being the compiler's to choose)."""
        return is_symbolic(self) or bool(self.array.flags.c_contiguous)

    def contiguous(self: TensorSelf) -> Tensor:
        """A tensor with the same values in row-major memory: itself when it is already, else
        a copy (gradients flow back). While tracing, memory layout is the compiler's to choose.

        Examples:
            >>> tg.ones(2, 3).t().contiguous().is_contiguous()
            True
        """
        if is_symbolic(self) or self.array.flags.c_contiguous:
            return self
        return call("contiguous", self)

    def clone(self) -> Tensor:
        """A copy with memory of its own; gradients flow back to this tensor.

        Examples:
            >>> x = tg.zeros(2)
            >>> y = x.clone()
            >>> y.add_(1)
            tensor([1., 1.])
            >>> x
            tensor([0., 0.])
        """
        return call("clone", self)

    def new_full(self: TensorSelf, size, fill_value) -> Tensor:
        """A constant of this tensor's dtype (a constant in traced code too)."""
        return wrap(np.full(shape_args((size,)), fill_value, self.dtype.np))

    def new_empty(self, *size) -> Tensor:
        """Uninitialized in PyTorch; zeros here (any contents are allowed)."""
        return self.new_full(shape_args(size), 0)

    def new_tensor(self: TensorSelf, data, dtype=None) -> Tensor:
        """A copy of ``data`` (a tensor's values too) as a constant, of this tensor's dtype."""
        values = data.detach().numpy() if isinstance(data, Tensor) else data
        dtype = dtypes.to_dtype(dtype) if dtype is not None else self.dtype
        return wrap(np.array(values, dtype=dtype.np))

    def nelement(self: TensorSelf) -> int:
        """The number of elements (``numel``)."""
        return self.numel()

    def element_size(self: TensorSelf) -> int:
        """Bytes per element."""
        return np.dtype(self.dtype.np).itemsize

    @property
    def is_xpu(self) -> builtins.bool:
        """Always False: tracegrad runs on the CPU only."""
        return False

    def new_zeros(self, *size) -> Tensor:
        """Zeros of the given size with this tensor's dtype.

        Args:
            *size: the shape, as ints or one tuple.

        Examples:
            >>> tg.tensor([1, 2]).new_zeros(2, 2)
            tensor([[0, 0],
                    [0, 0]])
        """
        return self.new_full(shape_args(size), 0)

    def new_ones(self, *size) -> Tensor:
        """Ones of the given size with this tensor's dtype.

        Args:
            *size: the shape, as ints or one tuple.

        Examples:
            >>> tg.zeros(1).new_ones(3)
            tensor([1., 1., 1.])
        """
        return self.new_full(shape_args(size), 1)

    # --- arithmetic (the one-op operators are in ONE_OP_METHODS) ---------------------------------

    def __pow__(self: TensorSelf, exponent: Operand) -> Tensor:
        if isinstance(exponent, Number) and not isinstance(exponent, bool):
            base = (
                self if self.dtype.is_floating_point or isinstance(exponent, int) else self.float()
            )
            if not base.dtype.is_floating_point:
                return binary("pow", base, exponent)
            return call("pow_scalar", base, exponent=float(exponent))
        return binary("pow", self, exponent)

    def __matmul__(self: TensorSelf, other: Tensor | np.ndarray) -> Tensor:
        return call("matmul", *promote_operands(self, other))

    def __rmatmul__(self: TensorSelf, other: Tensor | np.ndarray) -> Tensor:
        return call("matmul", *promote_operands(other, self))

    def _checked_matmul(self, name, other, ndim):
        """``mm`` (ndim 2) and ``bmm`` (ndim 3): matmul without broadcasting."""
        a, b = tuple(self.shape), tuple(other.shape)
        batch_ok = ndim == 2 or a[0] == b[0]
        if self.ndim != ndim or other.ndim != ndim or not batch_ok or a[-1] != b[-2]:
            raise ShapeError(at_user_line(f"{name}: cannot multiply shapes {a} and {b}"))
        return self @ other

    def mm(self, mat2):
        """The matrix product of two 2-d tensors (no broadcasting).

        Args:
            mat2: a tensor of shape (m, p) for this tensor's (n, m).

        Returns:
            A tensor of shape (n, p).

        Raises:
            ShapeError: if either is not 2-d or the inner sizes differ.

        Examples:
            >>> tg.tensor([[1.0, 2.0]]).mm(tg.tensor([[3.0], [4.0]]))
            tensor([[11.]])
        """
        return self._checked_matmul("mm", mat2, 2)

    def bmm(self, mat2):
        """The batched matrix product of two 3-d tensors (no broadcasting).

        Args:
            mat2: a tensor of shape (b, m, p) for this tensor's (b, n, m).

        Returns:
            A tensor of shape (b, n, p).

        Raises:
            ShapeError: if either is not 3-d or the sizes do not agree.

        Examples:
            >>> tg.ones(2, 1, 3).bmm(tg.ones(2, 3, 1)).shape
            tracegrad.Size([2, 1, 1])
        """
        return self._checked_matmul("bmm", mat2, 3)

    def __pos__(self: TensorSelf) -> Tensor:
        return self

    def __abs__(self: TensorSelf) -> Tensor:
        return self.abs()

    def _logical(self, name, other):
        if self.dtype is not dtypes.bool_ or as_tensor(other).dtype is not dtypes.bool_:
            raise DTypeError(at_user_line(f"{name} needs bool tensors, got {self.dtype}"))
        return call(name, self, as_tensor(other))

    def __and__(self: TensorSelf, other: Operand) -> Tensor:
        return self._logical("logical_and", other)

    __rand__ = __and__

    def __or__(self: TensorSelf, other: Operand) -> Tensor:
        return self._logical("logical_or", other)

    __ror__ = __or__

    def __xor__(self: TensorSelf, other: Operand) -> Tensor:
        return self._logical("logical_xor", other)

    def __invert__(self: TensorSelf) -> Tensor:
        if self.dtype is not dtypes.bool_:
            raise DTypeError(at_user_line(f"~ is defined for bool tensors, got {self.dtype}"))
        return call("logical_not", self)

    def logical_not(self):
        """Elementwise NOT, as a bool tensor (``~`` on bool tensors).

        Examples:
            >>> tg.tensor([True, False]).logical_not()
            tensor([False,  True])
        """
        return call("logical_not", self.bool())

    # --- elementwise math ------------------------------------------------------------------------

    def rsqrt(self):
        """Elementwise ``1 / sqrt(x)``.

        Examples:
            >>> tg.tensor([4.0]).rsqrt()
            tensor([0.5])
        """
        return 1.0 / self.sqrt()

    def square(self):
        """Elementwise ``x * x``.

        Examples:
            >>> tg.tensor([3.0]).square()
            tensor([9.])
        """
        return self * self

    def pow(self, exponent):
        """Elementwise power, ``self ** exponent``.

        Args:
            exponent: a number or a tensor broadcasting with this one.

        Examples:
            >>> tg.tensor([2.0, 3.0]).pow(2)
            tensor([4., 9.])
        """
        return self**exponent

    def clamp(self, min=None, max=None):
        """Elementwise limit to ``[min, max]`` (either may be None).

        Args:
            min: the lower bound, or None.
            max: the upper bound, or None.

        Returns:
            A tensor of the same shape; the gradient is 1 inside the bounds and 0 outside.

        Examples:
            >>> tg.tensor([-2.0, 0.5, 2.0]).clamp(-1, 1)
            tensor([-1. ,  0.5,  1. ])
        """
        return call("clamp", self, **_clamp_bounds(min, max))

    clip = clamp

    def where(self, condition, other):
        """``condition ? self : other`` elementwise, as ``tg.where(condition, self, other)``.

        Args:
            condition: a bool tensor broadcasting with both.
            other: the values where ``condition`` is False.

        Examples:
            >>> x = tg.tensor([1.0, -1.0])
            >>> x.where(x > 0, tg.zeros(2))
            tensor([1., 0.])
        """
        return where(condition, self, other)

    def masked_fill(self, mask, value):
        """A copy with ``value`` wherever ``mask`` is True.

        Args:
            mask: a bool tensor broadcasting with this one.
            value: a number (or a 0-d tensor).

        Raises:
            DTypeError: if ``mask`` is not a bool tensor.

        Examples:
            >>> tg.zeros(3).masked_fill(tg.tensor([True, False, True]), 5.0)
            tensor([5., 0., 5.])
        """
        return where(mask, value, self)

    def softmax(self, dim):
        """Softmax along ``dim``: ``exp(x) / exp(x).sum(dim)``, computed stably.

        Args:
            dim: the dimension whose entries sum to 1.

        Examples:
            >>> tg.tensor([0.0, 0.0]).softmax(0)
            tensor([0.5, 0.5])
        """
        return call("softmax", self, dim=normalize_dim("softmax", dim, self.ndim))

    def log_softmax(self, dim):
        """``log(softmax(x))`` along ``dim``, computed stably.

        Args:
            dim: the dimension to normalize over.

        Examples:
            >>> tg.tensor([0.0, 0.0]).log_softmax(0).exp()
            tensor([0.5, 0.5])
        """
        return call("log_softmax", self, dim=normalize_dim("log_softmax", dim, self.ndim))

    # --- reductions ------------------------------------------------------------------------------

    def sum(self, dim=None, keepdim=False, dtype=None):
        """The sum of all elements, or along ``dim``.

        Args:
            dim: a dimension or tuple of them; None sums everything.
            keepdim: keep the summed dimensions with size 1.
            dtype: the result's dtype (bool and integer tensors sum to int64 by default).

        Returns:
            A tensor; 0-d when everything is summed.

        Raises:
            ShapeError: if a dimension is out of range.

        Examples:
            >>> tg.tensor([[1.0, 2.0], [3.0, 4.0]]).sum(dim=0)
            tensor([4., 6.])
        """
        x = self.to(dtype) if dtype is not None else self
        if not x.dtype.is_floating_point and x.dtype is not dtypes.int64:
            x = x.long()
        return call("sum", x, dims=normalize_dims("sum", dim, x.ndim), keepdim=keepdim)

    def sum_to(self, shape):
        """Sum broadcast dims away so the result has ``shape`` (the inverse of expand)."""
        shape = tuple(shape)
        return self if shape == tuple(self.shape) else call("sum_to", self, shape=shape)

    def mean(self, dim=None, keepdim=False, dtype=None):
        """The mean of all elements, or along ``dim``.

        Args:
            dim: a dimension or tuple of them; None averages everything.
            keepdim: keep the reduced dimensions with size 1.
            dtype: the result's dtype.

        Raises:
            ShapeError: if a dimension is out of range.

        Examples:
            >>> tg.tensor([[1.0, 2.0], [3.0, 4.0]]).mean(dim=1)
            tensor([1.5, 3.5])
        """
        x = self.to(dtype) if dtype is not None else self
        if not x.dtype.is_floating_point:
            raise DTypeError(
                at_user_line(f"mean(): input dtype must be floating point, got {x.dtype}")
            )
        dims = normalize_dims("mean", dim, x.ndim)
        count = int(np.prod([x.shape[d] for d in dims], dtype=np.int64))
        return x.sum(dims, keepdim) * (1.0 / count if count else float("nan"))

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """The variance of all elements, or along ``dim``.

        Args:
            dim: a dimension or tuple of them; None uses every element.
            unbiased: divide by ``n - 1`` (the default) rather than ``n``.
            keepdim: keep the reduced dimensions with size 1.
            correction: ``n - correction`` is the divisor (overrides ``unbiased``).

        Examples:
            >>> tg.tensor([1.0, 2.0, 3.0, 4.0]).var()
            tensor(1.6666667)
        """
        if correction is None:
            correction = 1 if unbiased is None or unbiased else 0
        dims = normalize_dims("var", dim, self.ndim)
        count = int(np.prod([self.shape[d] for d in dims], dtype=np.int64))
        centered = self - self.mean(dims, keepdim=True)
        # no degrees of freedom left: nan, as in PyTorch and NumPy
        scale = 1.0 / (count - correction) if count > correction else float("nan")
        return (centered * centered).sum(dims, keepdim) * scale

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """The standard deviation: the square root of ``var`` with the same arguments.

        Examples:
            >>> tg.tensor([1.0, 3.0]).std()
            tensor(1.4142135)
        """
        return std_of_var(self.var(dim, unbiased, keepdim, correction=correction))

    def norm(self, p="fro", dim=None, keepdim=False, dtype=None):
        """The vector p-norm over ``dim`` (all dims if None); "fro" is p=2, and "nuc" the
        nuclear norm (the sum of the singular values) of a 2-d tensor or over two dims."""
        if p == "nuc":
            dims = tuple(range(self.ndim)) if dim is None else dim
            return matrix_norm(self, "nuc", dims, keepdim, dtype=dtype)
        return vector_norm(self, 2 if p == "fro" else p, dim, keepdim, dtype=dtype)

    def _extreme(self, name, arg_name, dim, keepdim):
        if isinstance(dim, Tensor):
            return binary("maximum" if name == "amax" else "minimum", self, dim)
        if dim is None:
            return call(name, self, dims=tuple(range(self.ndim)), keepdim=False)
        dim = normalize_dim(name, dim, self.ndim)
        values = call(name, self, dims=(dim,), keepdim=keepdim)
        return MaxResult(values, call(arg_name, self, dim=dim, keepdim=keepdim))

    def max(self, dim=None, keepdim=False):
        """The maximum of all elements, or ``(values, indices)`` along ``dim``.

        Args:
            dim: None for the maximum of everything, else the dimension to reduce.
            keepdim: keep the reduced dimension with size 1.

        Returns:
            A 0-d tensor when ``dim`` is None; else a named pair ``(values, indices)``.
            Tied maxima share the gradient evenly.

        Examples:
            >>> values, indices = tg.tensor([[1.0, 5.0], [7.0, 2.0]]).max(dim=1)
            >>> values, indices
            (tensor([5., 7.]), tensor([1, 0]))
        """
        return self._extreme("amax", "argmax", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        """The minimum of all elements, or ``(values, indices)`` along ``dim`` (as ``max``).

        Examples:
            >>> tg.tensor([[1.0, 5.0], [7.0, 2.0]]).min()
            tensor(1.)
        """
        return self._extreme("amin", "argmin", dim, keepdim)

    def amax(self, dim=None, keepdim=False):
        """The maximum along ``dim`` (a dimension or tuple; None: all), values only.

        Examples:
            >>> tg.tensor([[1.0, 5.0], [7.0, 2.0]]).amax(dim=0)
            tensor([7., 5.])
        """
        return call("amax", self, dims=normalize_dims("amax", dim, self.ndim), keepdim=keepdim)

    def amin(self, dim=None, keepdim=False):
        """The minimum along ``dim`` (a dimension or tuple; None: all), values only.

        Examples:
            >>> tg.tensor([[1.0, 5.0], [7.0, 2.0]]).amin(dim=0)
            tensor([1., 2.])
        """
        return call("amin", self, dims=normalize_dims("amin", dim, self.ndim), keepdim=keepdim)

    def any(self, dim=None, keepdim=False):
        """Whether any element (along ``dim``; None: of all) is non-zero, as bools.

        Examples:
            >>> tg.tensor([[0.0, 2.0], [0.0, 0.0]]).any(dim=1)
            tensor([ True, False])
        """
        return self.ne(0).long().sum(dim, keepdim=keepdim) > 0

    def all(self, dim=None, keepdim=False):
        """Whether every element (along ``dim``; None: of all) is non-zero, as bools.

        Examples:
            >>> tg.tensor([[1.0, 2.0], [0.0, 3.0]]).all(dim=1)
            tensor([ True, False])
        """
        return self.eq(0).long().sum(dim, keepdim=keepdim) == 0

    def argmax(self, dim=None, keepdim=False):
        """The index of the maximum, in the flattened tensor or along ``dim``.

        Args:
            dim: None for an index into the flattened tensor, else the dimension to reduce.
            keepdim: keep the reduced dimension with size 1.

        Examples:
            >>> tg.tensor([[1.0, 5.0], [7.0, 2.0]]).argmax(dim=1)
            tensor([1, 0])
        """
        if dim is not None:
            dim = normalize_dim("argmax", dim, self.ndim)
        return call("argmax", self, dim=dim, keepdim=keepdim)

    def argmin(self, dim=None, keepdim=False):
        """The index of the minimum, in the flattened tensor or along ``dim``.

        Examples:
            >>> tg.tensor([[1.0, 5.0], [7.0, 2.0]]).argmin()
            tensor(0)
        """
        if dim is not None:
            dim = normalize_dim("argmin", dim, self.ndim)
        return call("argmin", self, dim=dim, keepdim=keepdim)

    def logsumexp(self, dim, keepdim=False):
        """``log(exp(x).sum(dim))``, computed stably.

        Args:
            dim: the dimension (or tuple) to reduce.
            keepdim: keep the reduced dimensions with size 1.

        Examples:
            >>> tg.tensor([0.0, 0.0]).logsumexp(0).exp()
            tensor(2.)
        """
        peak = self.amax(dim, keepdim=True).detach()
        out = (self - peak).exp().sum(dim, keepdim=True).log() + peak
        return out if keepdim else out.squeeze(dim)

    # --- shapes ----------------------------------------------------------------------------------

    def reshape(self, *shape):
        """The same elements in a new shape (a view when possible).

        Args:
            *shape: the new shape, as ints or one tuple; one entry may be -1 (inferred).

        Raises:
            ShapeError: if the number of elements differs.

        Examples:
            >>> tg.arange(6).reshape(2, -1)
            tensor([[0, 1, 2],
                    [3, 4, 5]])
        """
        shape = infer_shape(shape_args(shape), self.numel())
        return self if shape == self.shape else call("reshape", self, shape=shape)

    view = reshape

    def view_as(self, other):
        """``view`` to ``other``'s shape."""
        return self.reshape(other.shape)

    def reshape_as(self, other):
        """``reshape`` to ``other``'s shape."""
        return self.reshape(other.shape)

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge dimensions ``start_dim`` to ``end_dim`` into one.

        Args:
            start_dim: the first dimension to merge.
            end_dim: the last dimension to merge (inclusive).

        Examples:
            >>> tg.zeros(2, 3, 4).flatten(1).shape
            tracegrad.Size([2, 12])
        """
        if self.ndim == 0:
            return self.reshape(1)
        start = normalize_dim("flatten", start_dim, self.ndim)
        end = normalize_dim("flatten", end_dim, self.ndim)
        return self.reshape(*self.shape[:start], -1, *self.shape[end + 1 :])

    def unflatten(self, dim, sizes):
        """Split dimension ``dim`` into ``sizes`` (one may be -1).

        Examples:
            >>> tg.zeros(2, 12).unflatten(1, (3, 4)).shape
            tracegrad.Size([2, 3, 4])
        """
        dim = normalize_dim("unflatten", dim, self.ndim)
        return self.reshape(*self.shape[:dim], *sizes, *self.shape[dim + 1 :])

    def permute(self, *dims):
        """A view with the dimensions in the order ``dims``.

        Args:
            *dims: a permutation of the dimensions, as ints or one tuple.

        Raises:
            ShapeError: if ``dims`` is not a permutation of the dimensions.

        Examples:
            >>> tg.zeros(2, 3, 4).permute(2, 0, 1).shape
            tracegrad.Size([4, 2, 3])
        """
        dims = tuple(normalize_dim("permute", d, self.ndim) for d in shape_args(dims))
        return call("permute", self, dims=dims)

    def transpose(self, dim0, dim1):
        """A view with dimensions ``dim0`` and ``dim1`` swapped.

        Examples:
            >>> tg.zeros(2, 3).transpose(0, 1).shape
            tracegrad.Size([3, 2])
        """
        order = list(range(self.ndim))
        d0, d1 = (
            normalize_dim("transpose", dim0, self.ndim),
            normalize_dim("transpose", dim1, self.ndim),
        )
        order[d0], order[d1] = order[d1], order[d0]
        return call("permute", self, dims=tuple(order))

    def t(self):
        """The transpose of a tensor of at most 2 dimensions.

        Raises:
            ShapeError: for more than 2 dimensions.

        Examples:
            >>> tg.tensor([[1, 2]]).t()
            tensor([[1],
                    [2]])
        """
        if self.ndim > 2:
            raise ShapeError(at_user_line(f"t() expects a tensor with <= 2 dims, got {self.shape}"))
        return self.transpose(0, 1) if self.ndim == 2 else self

    @property
    def T(self: TensorSelf) -> Tensor:  # noqa: N802  (PyTorch's name)
        """The dimensions reversed (for a matrix, its transpose).

        Examples:
            >>> tg.zeros(2, 3, 4).T.shape
            tracegrad.Size([4, 3, 2])
        """
        return call("permute", self, dims=tuple(reversed(range(self.ndim))))

    @property
    def mT(self: TensorSelf) -> Tensor:  # noqa: N802
        """The last two dimensions swapped (a batch of transposed matrices).

        Examples:
            >>> tg.zeros(5, 2, 3).mT.shape
            tracegrad.Size([5, 3, 2])
        """
        return self.transpose(-2, -1)

    def unsqueeze(self, dim):
        """A view with a new dimension of size 1 at ``dim``.

        Raises:
            ShapeError: if ``dim`` is out of range for the result.

        Examples:
            >>> tg.zeros(3).unsqueeze(0).shape
            tracegrad.Size([1, 3])
        """
        dim = normalize_dim("unsqueeze", dim, self.ndim + 1)
        return self.reshape(*self.shape[:dim], 1, *self.shape[dim:])

    def squeeze(self, dim=None):
        """A view without dimensions of size 1 (only ``dim``'s, if given).

        Examples:
            >>> tg.zeros(1, 3, 1).squeeze().shape
            tracegrad.Size([3])
        """
        if dim is None:
            dims = [i for i, s in enumerate(self.shape) if s == 1]
        else:
            dims = normalize_dims("squeeze", dim, self.ndim)
        return self.reshape(*(s for i, s in enumerate(self.shape) if not (i in dims and s == 1)))

    def expand(self, *sizes):
        """A view broadcasting dimensions of size 1 to ``sizes`` (-1 keeps a size).

        Raises:
            ShapeError: if a size other than 1 would change.

        Examples:
            >>> tg.tensor([[1], [2]]).expand(2, 3)
            tensor([[1, 1, 1],
                    [2, 2, 2]])
        """
        sizes = shape_args(sizes)
        lead = len(sizes) - self.ndim
        shape = tuple(self.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
        return self if shape == self.shape else call("broadcast_to", self, shape=shape)

    def expand_as(self, other):
        """``expand`` to ``other``'s shape."""
        return self.expand(other.shape)

    def broadcast_to(self, shape):
        """A view broadcast to ``shape`` with NumPy's rules.

        Raises:
            ShapeError: if the shapes cannot be broadcast.
        """
        return self.expand(shape)

    def repeat(self, *sizes):
        """Tile: each dim d of size s becomes sizes[d] * s, via broadcast then reshape."""
        sizes = shape_args(sizes)
        shape = (1,) * (len(sizes) - self.ndim) + tuple(self.shape)
        spread = [n for pair in zip((1,) * len(sizes), shape, strict=True) for n in pair]
        tiled = [n for pair in zip(sizes, shape, strict=True) for n in pair]
        out = self.reshape(spread).expand(tiled)
        return out.reshape([r * s for r, s in zip(sizes, shape, strict=True)])

    def split(self, split_size, dim=0):
        """Pieces along ``dim``: of ``split_size`` each (the last may be smaller), or of the
        sizes listed.

        Args:
            split_size: an int, or a list of sizes adding up to the dimension's size.
            dim: the dimension to cut.

        Returns:
            A tuple of views.

        Examples:
            >>> [p.tolist() for p in tg.arange(5).split(2)]
            [[0, 1], [2, 3], [4]]
        """
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
        """``chunks`` pieces of (nearly) equal size along ``dim``.

        Examples:
            >>> len(tg.arange(6).chunk(3))
            3
        """
        size = self.shape[normalize_dim("chunk", dim, self.ndim)]
        return self.split(-(-size // chunks), dim)

    def unbind(self, dim=0):
        """The slices along ``dim``, as a tuple of tensors without that dimension.

        Examples:
            >>> tg.tensor([[1, 2], [3, 4]]).unbind(1)
            (tensor([1, 3]), tensor([2, 4]))
        """
        dim = normalize_dim("unbind", dim, self.ndim)
        return tuple(self.select(dim, i) for i in range(self.shape[dim]))

    def select(self, dim, index):
        """The slice at ``index`` along ``dim``, without that dimension (``x[:, index]`` for dim 1).

        Examples:
            >>> tg.tensor([[1, 2], [3, 4]]).select(1, 0)
            tensor([1, 3])
        """
        return self[(slice(None),) * normalize_dim("select", dim, self.ndim) + (index,)]

    def narrow(self, dim, start, length):
        """A view of ``length`` entries from ``start`` along ``dim``.

        Raises:
            ShapeError: if the range falls outside the dimension.

        Examples:
            >>> tg.arange(6).narrow(0, 2, 3)
            tensor([2, 3, 4])
        """
        dim = normalize_dim("narrow", dim, self.ndim)
        size = self.shape[dim]
        start = start + size if start < 0 else start
        if not 0 <= start <= start + length <= size:
            raise ShapeError(
                at_user_line(
                    f"narrow: start {start} + length {length} exceeds dim {dim} of shape "
                    f"{tuple(self.shape)}"
                )
            )
        return self[(slice(None),) * dim + (slice(start, start + length),)]

    def index_select(self, dim, index):
        """The entries at the integer positions ``index`` (a 1-d int64 tensor) along ``dim``.

        Examples:
            >>> tg.tensor([10, 20, 30]).index_select(0, tg.tensor([2, 0]))
            tensor([30, 10])
        """
        if index.ndim > 1 or index.dtype.is_floating_point:
            raise ShapeError(
                at_user_line(
                    f"index_select: index must be a 1-d integer tensor, got shape "
                    f"{tuple(index.shape)} of {index.dtype}"
                )
            )
        dim = normalize_dim("index_select", dim, self.ndim)
        return self[(slice(None),) * dim + (index.reshape(-1),)]

    def flip(self, *dims):
        """A copy with the order of the entries reversed along ``dims``.

        Examples:
            >>> tg.arange(3).flip(0)
            tensor([2, 1, 0])
        """
        dims = normalize_dims("flip", shape_args(dims), self.ndim)
        return self[
            tuple(slice(None, None, -1) if d in dims else slice(None) for d in range(self.ndim))
        ]

    def roll(self, shifts, dims=None):
        """Shift elements along ``dims`` cyclically; no dims: along the flattened tensor."""
        if dims is None:
            return self.flatten().roll(shifts, 0).reshape(self.shape)
        shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if len(shifts) != len(dims):
            raise ValueError(at_user_line(f"roll: {len(shifts)} shifts for {len(dims)} dims"))
        out = self
        for shift, dim in zip(shifts, dims, strict=True):
            dim = normalize_dim("roll", dim, self.ndim)
            cut = -shift % self.shape[dim] if self.shape[dim] else 0
            if cut:  # (a shift by a multiple of the length moves nothing)
                head, tail = out.narrow(dim, cut, self.shape[dim] - cut), out.narrow(dim, 0, cut)
                out = cat([head, tail], dim)
        return out

    def tile(self, *dims):
        """``repeat`` with fewer sizes than dims allowed (the missing leading ones are 1)."""
        dims = shape_args(dims)
        return self.repeat((1,) * (self.ndim - len(dims)) + tuple(dims))

    # --- scans, sorts, gathers and scatters along a dim ------------------------------------------

    def cumsum(self, dim, dtype=None):
        """Running sums along ``dim`` (integers and bools accumulate as int64), as
        ``torch.cumsum``."""
        return _scan("cumsum", self, dim, dtype)

    def cumprod(self, dim, dtype=None):
        """Running products along ``dim``; its gradient is right where the input has zeros."""
        return _scan("cumprod", self, dim, dtype)

    def argsort(self, dim=-1, descending=False, *, stable=False):
        """Indices that sort along ``dim``; always a stable sort (``stable`` is accepted)."""
        if self.ndim == 0:
            return self.reshape(1).argsort(dim, descending).reshape(())
        dim = normalize_dim("argsort", dim, self.ndim)
        return call("argsort", self, dim=dim, descending=bool(descending))

    def sort(self, dim=-1, descending=False, *, stable=False):
        """(values, indices) sorted along ``dim``, equal values kept in their order."""
        indices = self.argsort(dim, descending)
        return SortResult(self.gather(dim, indices) if self.ndim else self * 1, indices)

    def topk(self, k, dim=-1, largest=True, sorted=True):
        """The ``k`` largest (smallest) along ``dim``; ties go to the first. Sorted, or with
        ``sorted=False`` the same ``k`` elements in the order they stand in the input
        (PyTorch leaves that order unspecified)."""
        dim = normalize_dim("topk", dim, self.ndim)
        size = self.shape[dim] if self.ndim else 1
        if not 0 <= k <= size:
            raise ShapeError(
                at_user_line(f"topk: k={k} is out of range for dim {dim} of shape {self.shape}")
            )
        indices = self.argsort(dim, descending=largest)
        indices = indices.narrow(dim, 0, k) if self.ndim else indices
        if not sorted and self.ndim:
            indices = indices.sort(dim).values  # (positions: ascending is the input's order)
        return SortResult(self.gather(dim, indices) if self.ndim else self * 1, indices)

    def multinomial(self, num_samples, replacement=False, *, generator=None):
        """``num_samples`` category indices drawn from the weights along the last dim (a row
        each for a 2-d tensor), from tracegrad's generator: ``tg.multinomial``."""
        return multinomial(self, num_samples, replacement, generator=generator)

    def gather(self, dim, index):
        """``out[i][j][k] = self[i][index[i][j][k]][k]`` (dim 1): values picked along ``dim``."""
        dim = normalize_dim("gather", dim, self.ndim)
        key, tensors = _along_dim_index("gather", self, dim, index)
        return call("getitem", self, *tensors, key=key)

    def scatter(self, dim, index, src=None, *, value=None, reduce=None):
        """A copy with ``src`` (or ``value``) written along ``dim`` at ``index``, the
        inverse of gather; ``reduce="add"`` adds instead of writing."""
        values = _scatter_values(self, index, value if src is None else src)
        if reduce == "add":
            return self.scatter_add(dim, index, values)
        positions = _flat_positions(self, dim, index)
        if reduce == "multiply":
            return _scatter_multiply(self, values, positions)
        if reduce is not None:
            raise ValueError(
                at_user_line(
                    f"scatter: reduce={reduce!r} is not supported; use 'add' or 'multiply'"
                )
            )
        return call("view_update", self, values, positions)

    def scatter_add(self, dim, index, src):
        """A copy with ``src`` added along ``dim`` at ``index``; repeated indices add up."""
        values = _scatter_values(self, index, src)
        positions = _flat_positions(self, dim, index)
        added = call(
            "scatter_add",
            values.reshape(-1),
            positions.reshape(-1),
            key=(("tensor", 0),),
            shape=(self.numel(),),
        )
        return self + added.reshape(self.shape)

    def index_add(self, dim, index, source, *, alpha=1):
        """A copy with ``alpha * source``'s slices along ``dim`` added at the positions
        ``index`` names (a 1-d int64 tensor; repeats add up)."""
        dim = normalize_dim("index_add", dim, self.ndim)
        index = as_tensor(index)
        if index.ndim != 1 or source.ndim != self.ndim or source.shape[dim] != index.shape[0]:
            raise ShapeError(
                at_user_line(
                    f"index_add: index of shape {tuple(index.shape)} and source of shape "
                    f"{tuple(source.shape)} do not fit dim {dim} of shape {tuple(self.shape)}"
                )
            )
        spread = [-1 if d == dim else 1 for d in range(self.ndim)]
        along = index.reshape(spread).expand(source.shape)
        return self.scatter_add(dim, along, source * alpha if alpha != 1 else source)

    def masked_scatter(self, mask, source):
        """A copy with the positions where ``mask`` is True filled, in order, from the
        first elements of ``source``."""
        mask = as_tensor(mask)
        if mask.dtype is not dtypes.bool_:
            raise DTypeError(at_user_line(f"masked_scatter: mask must be bool, got {mask.dtype}"))
        where_true = np.broadcast_to(mask._concrete("masked_scatter's mask"), self.shape)
        positions = np.flatnonzero(where_true)
        if source.numel() < positions.size:
            raise ShapeError(
                at_user_line(
                    f"masked_scatter: the mask selects {positions.size} elements but source of "
                    f"shape {tuple(source.shape)} has {source.numel()}"
                )
            )
        values = source.to(self.dtype).reshape(-1)[: positions.size]
        return call("view_update", self, values, wrap(positions.astype(np.int64)))

    def __getitem__(self: TensorSelf, item: object) -> Tensor:
        key, index_tensors = index_key(item, self.ndim)
        return call("getitem", self, *index_tensors, key=key)

    def __iter__(self: TensorSelf) -> Iterator[Tensor]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def tril(self, diagonal=0):
        """The lower triangle of the last two dimensions; the rest is zero.

        Args:
            diagonal: 0 keeps the main diagonal, k > 0 also k diagonals above it, k < 0 fewer.

        Examples:
            >>> tg.ones(2, 2).tril()
            tensor([[1., 0.],
                    [1., 1.]])
        """
        return tril(self, diagonal)

    def triu(self, diagonal=0):
        """The upper triangle of the last two dimensions; the rest is zero (see ``tril``)."""
        return triu(self, diagonal)

    # --- in-place ops: the dispatcher writes the op's result into self --------------------------

    def add_(self, other, alpha=1):
        """In place: ``self += alpha * other``.

        Args:
            other: a tensor broadcasting to this one's shape, or a number.
            alpha: a scale of ``other``.

        Returns:
            This tensor.

        Raises:
            RuntimeError: on a leaf that requires grad while gradients are recorded.

        Examples:
            >>> tg.zeros(2).add_(tg.ones(2), alpha=3)
            tensor([3., 3.])
        """
        return _write_scaled(self, "add", other, alpha, "add_")

    def sub_(self, other, alpha=1):
        """In place: ``self -= alpha * other``; returns this tensor.

        Examples:
            >>> tg.ones(2).sub_(1)
            tensor([0., 0.])
        """
        return _write_scaled(self, "sub", other, alpha, "sub_")

    def mul_(self, other):
        """In place: ``self *= other``; returns this tensor.

        Examples:
            >>> tg.ones(2).mul_(4)
            tensor([4., 4.])
        """
        return _write_binary(self, "mul", other, "mul_")

    def div_(self, other):
        """In place: ``self /= other``; returns this tensor.

        Examples:
            >>> tg.ones(2).div_(4)
            tensor([0.25, 0.25])
        """
        return _write_binary(self, "div", other, "div_")

    def clamp_(self, min=None, max=None):
        """In place ``clamp``; returns this tensor."""
        return apply(OPS["clamp"], (self,), _clamp_bounds(min, max), out=self, method="clamp_")

    def zero_(self):
        """In place: every element becomes 0; returns this tensor.

        Examples:
            >>> tg.ones(2).zero_()
            tensor([0., 0.])
        """
        return self.fill_(0)

    def fill_(self, value):
        """In place: every element becomes ``value``; returns this tensor.

        Examples:
            >>> tg.zeros(2).fill_(7)
            tensor([7., 7.])
        """
        filled = as_tensor(value, like=self).to(self.dtype)
        return _write_value(self, filled, "fill_")

    def normal_(self, mean=0.0, std=1.0):
        """In place: draws from a normal distribution of ``mean`` and ``std`` (from
        tracegrad's generator, so ``tg.manual_seed`` decides them); returns this tensor."""
        draw = call("random_normal", shape=tuple(self.shape), dtype=self.dtype.name)
        return _write_value(self, draw * std + mean, "normal_")

    def uniform_(self, from_=0.0, to=1.0):
        """In place: draws uniformly from ``[from_, to)`` (tracegrad's generator)."""
        draw = call("random_uniform", shape=tuple(self.shape), dtype=self.dtype.name)
        return _write_value(self, draw * (to - from_) + from_, "uniform_")

    def fill_diagonal_(self, fill_value, wrap=False):
        """Fill the main diagonal; a tall 2-d matrix's restarts below it if ``wrap``."""
        if self.ndim < 2 or (self.ndim > 2 and len(set(self.shape)) > 1):
            raise ShapeError(
                at_user_line(
                    "fill_diagonal_: needs 2 dims, or all dims of one length, got shape "
                    f"{tuple(self.shape)}"
                )
            )
        strides = np.cumprod((1, *self.shape[:0:-1]))
        numel = self.numel()
        end = numel if wrap or self.ndim > 2 else self.shape[1] * min(self.shape)
        mask = np.zeros(numel, dtype=bool)
        mask[: end : int(strides.sum())] = True
        filled = self.masked_fill(as_tensor(mask.reshape(self.shape)), fill_value)
        return _write_value(self, filled, "fill_diagonal_")

    def squeeze_(self, dim=None):
        """In place: drop the dims of size 1 (or only ``dim``), as ``torch.Tensor.squeeze_``."""
        return _reshape_in_place(self, lambda old: old.squeeze(dim))

    def unsqueeze_(self, dim):
        """In place: insert a dim of size 1 at ``dim``, as ``torch.Tensor.unsqueeze_``."""
        return _reshape_in_place(self, lambda old: old.unsqueeze(dim))

    def index_add_(self, dim, index, source, *, alpha=1):
        """In place: ``source`` scaled by ``alpha`` added at ``index`` along ``dim``."""
        return _write_value(self, self.index_add(dim, index, source, alpha=alpha), "index_add_")

    def scatter_(self, dim, index, src=None, *, value=None, reduce=None):
        """In place: ``src`` (or ``value``) written at ``index`` along ``dim``, optionally
        reduced."""
        scattered = self.scatter(dim, index, src, value=value, reduce=reduce)
        return _write_value(self, scattered, "scatter_")

    def scatter_add_(self, dim, index, src):
        """In place: ``src`` added at ``index`` along ``dim``."""
        return _write_value(self, self.scatter_add(dim, index, src), "scatter_add_")

    def masked_scatter_(self, mask, source):
        """In place: the positions where ``mask`` is True take ``source``'s elements in order."""
        return _write_value(self, self.masked_scatter(mask, source), "masked_scatter_")

    def copy_(self, src):
        """In place: the values of ``src`` (broadcast and converted to this dtype).

        Returns:
            This tensor.

        Examples:
            >>> tg.zeros(2).copy_(tg.tensor([1, 2]))
            tensor([1., 2.])
        """
        src = as_tensor(src).to(self.dtype)
        if tuple(src.shape) == tuple(self.shape) and src.requires_grad:
            # (a copy of its own: the target gets a node of its own, it is no leaf afterwards)
            return apply(OPS["clone"], (src,), {}, out=self, method="copy_")
        return _write_value(self, src, "copy_")

    def __iadd__(self, other: Operand) -> Tensor:
        return self.add_(other)

    def __isub__(self, other: Operand) -> Tensor:
        return self.sub_(other)

    def __imul__(self, other: Operand) -> Tensor:
        return self.mul_(other)

    def __itruediv__(self, other: Operand) -> Tensor:
        return self.div_(other)

    def __setitem__(self: TensorSelf, item: object, value: Operand) -> None:
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
        tracer = active_tracer()
        if tracer is not None and (
            tracer.traced(self) or tracer.traced(value) or any(map(tracer.traced, index_tensors))
        ):
            tracer.assign(self, key, index_tensors, value)
        else:
            self.array[resolve(key, [t.array for t in index_tensors])] = np.asarray(
                value.array, self.dtype.np
            )
        self.bump_version()


def _clamp_bounds(min, max) -> dict:
    if min is None and max is None:
        raise ValueError("clamp needs at least one of min and max")
    return {"min": min, "max": max}


def _write_scaled(target: Tensor, name: str, other, alpha, method: str) -> Tensor:
    """``target = target <name> alpha * other`` (``name``: add or sub). A tensor of the
    target's float dtype scaled by a number is one op, ``add_scaled``, which writes without a
    temporary; otherwise ``other * alpha`` is formed first, in ``other``'s own precision."""
    if alpha == 1:
        return _write_binary(target, name, other, method)
    if _scales_in_one_op(target, other, alpha):
        signed = float(alpha) if name == "add" else -float(alpha)  # (exact: the same bits)
        return apply(OPS["add_scaled"], (target, other), {"alpha": signed}, out=target,
                     method=method)  # fmt: skip
    return _write_binary(target, name, other * alpha, method)


def _scales_in_one_op(target: Tensor, other, alpha) -> bool:
    if not isinstance(other, Tensor) or type(alpha) not in (int, float):
        return False
    dtype = target.array.dtype
    return other.array.dtype == dtype and dtype.kind == "f"


def _write_binary(target: Tensor, name: str, other, method: str) -> Tensor:
    """``target = target <op> other``, computed in the promoted dtype and cast back."""
    operands = promote_operands(target, other, floating=name == "div")
    return apply(OPS[name], operands, {}, out=target, method=method)


def _write_value(target: Tensor, value: Tensor, method: str) -> Tensor:
    """``target = value`` broadcast to the target's shape."""
    return apply(OPS["broadcast_to"], (value,), {"shape": tuple(target.shape)}, out=target,
                 method=method)  # fmt: skip


def _reshape_in_place(target: Tensor, reshape) -> Tensor:
    """``target`` becomes ``reshape(target)`` (a view of itself of another shape), as
    PyTorch's in-place view ops change a tensor's shape; a leaf stays a leaf."""
    if tape.is_grad_enabled() and target.is_leaf and target.requires_grad:
        raise RuntimeError(
            at_user_line(
                "a leaf tensor that requires grad is being used in an in-place operation; "
                "wrap the update in tracegrad.no_grad()"
            )
        )
    tracer = active_tracer()
    outside = tracer is not None and (
        tracer.preexisting(target) or (is_symbolic(target) and target.array.value in tracer.inputs)
    )
    if outside:
        raise TraceError(
            at_user_line(
                "squeeze_/unsqueeze_ of a tensor made outside the compiled function changes "
                "its shape, which cannot be compiled; use squeeze()/unsqueeze()"
            )
        )
    # The reshape reads the old value as its own tensor: its backward needs the old shape.
    old = wrap(target.array, grad_fn=target.grad_fn)
    old._out_index, old.version_counter = target._out_index, target.version_counter
    reshaped = reshape(old)
    target.array = reshaped.array
    if not target.is_leaf:
        target.grad_fn, target._out_index = reshaped.grad_fn, reshaped._out_index
    return target


def _scan(name: str, x: Tensor, dim, dtype) -> Tensor:
    """cumsum/cumprod: integers and bools accumulate as int64, as in PyTorch."""
    x = x.to(dtype) if dtype is not None else x
    if not x.dtype.is_floating_point and x.dtype is not dtypes.int64:
        x = x.long()
    dim = normalize_dim(name, dim, x.ndim)
    if x.ndim == 0:
        return call(name, x.reshape(1), dim=0).reshape(())
    return call(name, x, dim=dim)


def _along_dim_index(name: str, x: Tensor, dim: int, index: Tensor) -> tuple[tuple, list]:
    """The getitem key and index tensors picking ``x[..., index[i, j, k], ...]`` along
    ``dim``: ``index`` there, the positions themselves along the other dims (where index
    may be shorter). Its values are checked to lie in [0, size) like an embedding's rows."""
    index = as_tensor(index)
    fits = all(n <= m for d, (n, m) in enumerate(zip(index.shape, x.shape)) if d != dim)
    if index.ndim != x.ndim or not fits:
        raise ShapeError(
            at_user_line(
                f"{name}: index of shape {tuple(index.shape)} does not fit input of shape "
                f"{tuple(x.shape)} along dim {dim} (same number of dims, no larger elsewhere)"
            )
        )
    key: list[tuple] = []
    tensors: list[Tensor] = []
    for d, n in enumerate(index.shape):
        if d == dim:
            key.append(("rows", d, x.shape[d]))
            tensors.append(index)
        else:
            key.append(("tensor", d))
            spread = [n if e == d else 1 for e in range(index.ndim)]
            tensors.append(wrap(np.arange(n).reshape(spread)))
    return tuple(key), tensors


def _flat_positions(x: Tensor, dim, index) -> Tensor:
    """The flat positions in ``x`` that ``x.gather(dim, index)`` reads."""
    dim = normalize_dim("scatter", dim, x.ndim)
    table = wrap(np.arange(x.numel(), dtype=np.int64).reshape(x.shape))
    key, tensors = _along_dim_index("scatter", x, dim, index)
    return call("getitem", table, *tensors, key=key)


def _scatter_multiply(x: Tensor, values: Tensor, positions: Tensor) -> Tensor:
    """x with each position multiplied by every value scattered to it. NOTE: each value's
    group product is a product over all n values (an n x n mask), so memory grows as the
    square of index.numel(); it needs no sort and has gradients (zeros included)."""
    positions, values = positions.reshape(-1), values.reshape(-1)
    same = positions.unsqueeze(1) == positions.unsqueeze(0)
    products = x.reshape(-1)[positions] * where(same, values.unsqueeze(0), 1.0).prod(1)
    # Repeats of a position write the same product; only its first carries the gradient.
    earlier = wrap(np.tri(len(positions), k=-1, dtype=bool))
    first = (same & earlier).sum(1) == 0
    return call("view_update", x, where(first, products, products.detach()), positions)


def _scatter_values(x: Tensor, index, src) -> Tensor:
    """``src`` cut to ``index``'s shape (a number: broadcast to it), of ``x``'s dtype."""
    index = as_tensor(index)
    if not isinstance(src, Tensor):
        return as_tensor(src, like=x).expand(index.shape)
    if src.ndim != index.ndim or any(n > m for n, m in zip(index.shape, src.shape)):
        raise ShapeError(
            at_user_line(
                f"scatter: src of shape {tuple(src.shape)} is smaller than index of shape "
                f"{tuple(index.shape)}"
            )
        )
    return src.to(x.dtype)[tuple(slice(0, n) for n in index.shape)]


# --- module-level functions the methods share ---------------------------------------------


def where(condition, x, y) -> Tensor:
    """``x`` where ``condition`` is True, ``y`` elsewhere; the three broadcast together.

    Args:
        condition: a bool tensor.
        x: a tensor or a number.
        y: a tensor or a number.

    Raises:
        DTypeError: if ``condition`` is not a bool tensor.

    Examples:
        >>> x = tg.tensor([1.0, -2.0])
        >>> tg.where(x > 0, x, 0.0)
        tensor([1., 0.])
    """
    condition = as_tensor(condition)
    if condition.dtype is not dtypes.bool_:
        raise DTypeError(
            at_user_line(f"where: condition must be a bool tensor, got {condition.dtype}")
        )
    return call("where", condition, *promote_operands(x, y))


def cat(tensors, dim=0) -> Tensor:
    """The tensors joined along an existing dimension ``dim``, promoted to one dtype.

    Args:
        tensors: a sequence of tensors, equal in shape except along ``dim``.
        dim: the dimension to join along.

    Raises:
        ShapeError: if the other dimensions differ.

    Examples:
        >>> tg.cat([tg.zeros(1, 2), tg.ones(2, 2)]).shape
        tracegrad.Size([3, 2])
    """
    tensors = promote_operands(*tensors)
    dim = normalize_dim("cat", dim, tensors[0].ndim)
    return tensors[0] if len(tensors) == 1 else call("cat", *tensors, dim=dim)


def stack(tensors, dim=0) -> Tensor:
    """The tensors stacked along a new dimension ``dim``.

    Args:
        tensors: a sequence of tensors of one shape.
        dim: where the new dimension goes.

    Raises:
        ShapeError: if the shapes differ.

    Examples:
        >>> tg.stack([tg.zeros(2), tg.ones(2)], dim=1)
        tensor([[0., 1.],
                [0., 1.]])
    """
    tensors = list(tensors)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ShapeError(at_user_line(f"stack expects tensors of one shape, got {sorted(shapes)}"))
    dim = normalize_dim("stack", dim, tensors[0].ndim + 1)
    return cat([t.unsqueeze(dim) for t in tensors], dim)


def einsum(*args) -> Tensor:
    """Einstein summation over the operands, as ``torch.einsum`` (and ``numpy.einsum``):
    ``einsum(equation, *operands)`` or the sublist form; ``...`` and repeated subscripts
    (diagonals) are rewritten into a plain equation first (``tracegrad.tensor.einsum_forms``).

    Args:
        *args: the subscripts, such as ``"ij,jk->ik"``, then the tensors (or one list of
            them); or operands each followed by its list of subscripts.

    Examples:
        >>> tg.einsum("ij,j->i", tg.ones(2, 3), tg.tensor([1.0, 2.0, 3.0]))
        tensor([6., 6.])
    """
    equation, operands = plain_einsum(args)
    return call("einsum", *promote_operands(*operands), equation=equation)


def _triangle(x: Tensor, diagonal: int, lower: bool) -> Tensor:
    rows, cols = x.shape[-2:]
    keep = (
        np.tri(rows, cols, diagonal, dtype=bool)
        if lower
        else ~np.tri(rows, cols, diagonal - 1, dtype=bool)
    )
    return where(wrap(keep), x, wrap(np.zeros((), x.dtype.np)))


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle of the last two dimensions of ``x`` (see ``Tensor.tril``).

    Examples:
        >>> tg.tril(tg.ones(2, 2), diagonal=-1)
        tensor([[0., 0.],
                [1., 0.]])
    """
    return _triangle(x, diagonal, lower=True)


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle of the last two dimensions of ``x`` (see ``Tensor.triu``).

    Examples:
        >>> tg.triu(tg.ones(2, 2))
        tensor([[1., 1.],
                [0., 1.]])
    """
    return _triangle(x, diagonal, lower=False)


# --- methods that are one op each --------------------------------------------------------------

# method name -> (op name, how the operands are formed):
#   "unary"        op(self)
#   "float_unary"  op(self), self made the default float first if it is an integer
#   "binary"       op(self, other), promoted to one dtype ("float_binary": a float one)
#   "reflected"    op(other, self), promoted (Python's __r*__ operators)
ONE_OP_METHODS = {
    "__neg__": ("neg", "unary"),
    "relu": ("relu", "unary"),
    "abs": ("abs", "unary"),
    "sign": ("sign", "unary"),
    "exp": ("exp", "float_unary"),
    "log": ("log", "float_unary"),
    "log1p": ("log1p", "float_unary"),
    "sqrt": ("sqrt", "float_unary"),
    "tanh": ("tanh", "float_unary"),
    "sigmoid": ("sigmoid", "float_unary"),
    "sin": ("sin", "float_unary"),
    "cos": ("cos", "float_unary"),
    "erf": ("erf", "float_unary"),
    "__add__": ("add", "binary"),
    "__sub__": ("sub", "binary"),
    "__mul__": ("mul", "binary"),
    "__truediv__": ("div", "float_binary"),
    "neg": ("neg", "unary"),
    "eq": ("eq", "binary"),
    "ne": ("ne", "binary"),
    "lt": ("lt", "binary"),
    "le": ("le", "binary"),
    "gt": ("gt", "binary"),
    "ge": ("ge", "binary"),
    "__eq__": ("eq", "binary"),
    "__ne__": ("ne", "binary"),
    "__lt__": ("lt", "binary"),
    "__le__": ("le", "binary"),
    "__gt__": ("gt", "binary"),
    "__ge__": ("ge", "binary"),
    "maximum": ("maximum", "binary"),
    "minimum": ("minimum", "binary"),
    "__radd__": ("add", "reflected"),
    "__rsub__": ("sub", "reflected"),
    "__rmul__": ("mul", "reflected"),
    "__rtruediv__": ("div", "float_reflected"),
    "__rpow__": ("pow", "reflected"),
    "tan": ("tan", "float_unary"),
    "asin": ("asin", "float_unary"),
    "arcsin": ("asin", "float_unary"),
    "acos": ("acos", "float_unary"),
    "arccos": ("acos", "float_unary"),
    "atan": ("atan", "float_unary"),
    "arctan": ("atan", "float_unary"),
    "sinh": ("sinh", "float_unary"),
    "cosh": ("cosh", "float_unary"),
    "asinh": ("asinh", "float_unary"),
    "arcsinh": ("asinh", "float_unary"),
    "acosh": ("acosh", "float_unary"),
    "arccosh": ("acosh", "float_unary"),
    "atanh": ("atanh", "float_unary"),
    "arctanh": ("atanh", "float_unary"),
    "expm1": ("expm1", "float_unary"),
    "exp2": ("exp2", "float_unary"),
    "log2": ("log2", "float_unary"),
    "log10": ("log10", "float_unary"),
    "floor": ("floor", "float_unary"),
    "ceil": ("ceil", "float_unary"),
    "atan2": ("atan2", "float_binary"),
    "arctan2": ("atan2", "float_binary"),
    "remainder": ("remainder", "binary"),
    "__mod__": ("remainder", "binary"),
    "__rmod__": ("remainder", "reflected"),
}


def _one_op_method(op: str, form: str):
    if form == "unary":
        return lambda self: call(op, self)
    if form == "float_unary":
        return lambda self: float_unary(op, self)
    floating = form.startswith("float_")
    if form.endswith("reflected"):
        return lambda self, other: binary(op, other, self, floating)
    return lambda self, other: binary(op, self, other, floating)


def _one_op_doc(op: str, form: str) -> str:
    """The docstring of a one-op method, from its op and form."""
    if form.endswith("unary"):
        made_float = ", an integer tensor made float32 first" if form == "float_unary" else ""
        return f"Elementwise ``{op}`` of this tensor{made_float}.\n\nReturns:\n    A new tensor."
    return (
        f"Elementwise ``{op}`` of this tensor and ``other``, broadcast together and promoted "
        "to one dtype as in PyTorch.\n\nArgs:\n    other: a tensor or a number.\n\n"
        "Returns:\n    A new tensor.\n\nRaises:\n    ShapeError: if the shapes cannot be "
        "broadcast together."
    )


# what every class body has (__module__, __dict__, __doc__...), not methods
_CLASS_BOOKKEEPING = frozenset(vars(type("Empty", (), {})))


def install() -> None:
    """Put the methods on Tensor: those written out, then one per ONE_OP_METHODS entry."""
    for name, member in vars(TensorMethods).items():
        if name not in _CLASS_BOOKKEEPING:
            setattr(Tensor, name, member)
    for name, (op, form) in ONE_OP_METHODS.items():
        method = _one_op_method(op, form)
        method.__name__ = method.__qualname__ = name
        method.__doc__ = _one_op_doc(op, form)
        setattr(Tensor, name, method)


install()
