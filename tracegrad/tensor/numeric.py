"""Composite math methods PyTorch and NumPy share: ``logaddexp hypot fmax sinc prod diagonal
trace diag kron inner diff rot90 nan_to_num ravel astype ...``, each written in the ops of
other methods (so differentiated, traced and compiled like them). ``install()`` puts them on
``Tensor`` beside ``tracegrad.tensor.methods``'; ``tracegrad.numpy_interop`` maps NumPy's
functions of the same meaning to them.
"""

from __future__ import annotations

import math

import numpy as np

from tracegrad import dtypes
from tracegrad.errors import ShapeError, at_user_line
from tracegrad.ops.rules import normalize_dim
from tracegrad.tensor.core import Tensor, as_tensor, wrap
from tracegrad.tensor.dispatch import call
from tracegrad.tensor.methods import TensorMethods, einsum, where
from tracegrad.tensor.promotion import binary, promote_operands


class NumericMethods(TensorMethods):
    """The methods (installed on Tensor). The base is for type checkers, which see Tensor
    derive from this class; ``install()`` copies only this class's own members."""

    def reciprocal(self):
        """``1 / self``, elementwise."""
        return binary("div", 1.0, self, floating=True)

    def logaddexp(self, other):
        """log(exp(x) + exp(y)), shifted by the (constant) larger of the two so it stays finite."""
        x, y = _floats(self, other)
        peak = binary("maximum", x, y).detach()
        return ((x - peak).exp() + (y - peak).exp()).log() + peak

    def logaddexp2(self, other):
        """``log2(2**self + 2**other)``, elementwise, computed stably."""
        x, y = _floats(self, other)
        return (x * math.log(2.0)).logaddexp(y * math.log(2.0)) * (1.0 / math.log(2.0))

    def hypot(self, other):
        """``sqrt(self**2 + other**2)``, elementwise, without overflow for large inputs."""
        x, y = _floats(self, other)
        return (x * x + y * y).sqrt()

    def fmax(self, other):
        """maximum, except that a NaN loses to a number."""
        return _nan_ignoring("maximum", self, other)

    def fmin(self, other):
        """The elementwise minimum, ignoring NaN where one side is NaN (``numpy.fmin``)."""
        return _nan_ignoring("minimum", self, other)

    def deg2rad(self):
        """Degrees to radians, elementwise."""
        return self * (math.pi / 180.0)

    def rad2deg(self):
        """Radians to degrees, elementwise."""
        return self * (180.0 / math.pi)

    def sinc(self):
        """sin(pi x) / (pi x), 1 at 0; x = 0 reads 1 in the quotient so its gradient stays
        finite there (the double where guard), and sinc'(0) = 0 comes out."""
        x = self if self.dtype.is_floating_point else self.float()
        zero = x == 0
        safe = where(zero, 1.0, x) * math.pi
        return where(zero, 1.0, safe.sin() / safe)

    def prod(self, dim=None, keepdim=False, dtype=None):
        """The product over ``dim`` (all elements if None); integers multiply as int64."""
        x = self.to(dtype) if dtype is not None else self
        if not x.dtype.is_floating_point and x.dtype is not dtypes.int64:
            x = x.long()
        if dim is None:
            return call("prod", x.reshape(-1), dim=0, keepdim=False)
        return call("prod", x, dim=normalize_dim("prod", dim, x.ndim), keepdim=keepdim)

    def diagonal(self, offset=0, dim1=0, dim2=1):
        """The diagonal of the ``dim1``, ``dim2`` planes as the last dim (a view, as NumPy's)."""
        d1, d2 = (
            normalize_dim("diagonal", dim1, self.ndim),
            normalize_dim("diagonal", dim2, self.ndim),
        )
        if d1 == d2:
            raise ShapeError(at_user_line(f"diagonal: dim1 and dim2 are both dim {d1}"))
        rest = [d for d in range(self.ndim) if d not in (d1, d2)]
        planes = self.permute(*rest, d1, d2)
        rows, cols = planes.shape[-2:]
        length = max(0, min(rows, cols - offset) if offset >= 0 else min(rows + offset, cols))
        start_row, start_col = max(0, -offset), max(0, offset)
        steps = np.arange(length)
        return planes[..., wrap(steps + start_row), wrap(steps + start_col)]

    def diag(self, diagonal=0):
        """A 1-d tensor's matrix with it on the ``diagonal``-th diagonal; a matrix's diagonal."""
        if self.ndim == 2:
            return self.diagonal(diagonal)
        if self.ndim != 1:
            raise ShapeError(at_user_line(f"diag: expected 1 or 2 dims, got shape {self.shape}"))
        n = self.shape[0] + abs(diagonal)
        rows = np.arange(self.shape[0]) + max(0, -diagonal)
        positions = rows * n + rows + diagonal
        return call("view_update", self.new_zeros(n, n), self, wrap(positions))

    def trace(self):
        """The sum of the main diagonal of a 2-D tensor."""
        if self.ndim != 2:
            raise ShapeError(at_user_line(f"trace: expected a matrix, got shape {self.shape}"))
        return self.diagonal().sum()

    def kron(self, other):
        """The Kronecker product: each element of self times all of other, blocks in place."""
        a, b = as_tensor(self), as_tensor(other)
        ndim = max(a.ndim, b.ndim)
        a = a.reshape((1,) * (ndim - a.ndim) + tuple(a.shape))
        b = b.reshape((1,) * (ndim - b.ndim) + tuple(b.shape))
        spread_a = [n for s in a.shape for n in (s, 1)]
        spread_b = [n for s in b.shape for n in (1, s)]
        product = a.reshape(spread_a) * b.reshape(spread_b)
        return product.reshape([m * n for m, n in zip(a.shape, b.shape, strict=True)])

    def outer(self, other):
        """The outer product of two vectors: ``out[i, j] = self[i] * other[j]``."""
        return self.reshape(-1, 1) * as_tensor(other).reshape(-1)

    def inner(self, other):
        """Sum over the last dims of both; a 0-d operand multiplies."""
        other = as_tensor(other)
        if self.ndim == 0 or other.ndim == 0:
            return self * other
        return tensordot(self, other, ([-1], [-1]))

    def diff(self, n=1, dim=-1):
        """The n-th forward difference along ``dim``."""
        dim = normalize_dim("diff", dim, self.ndim)
        out = self
        for _ in range(n):
            out = out.narrow(dim, 1, out.shape[dim] - 1) - out.narrow(dim, 0, out.shape[dim] - 1)
        return out

    def movedim(self, source, destination):
        """Dims ``source`` moved to ``destination`` (ints or sequences), the others in order."""
        sources = normalize_dims_in_order("movedim", source, self.ndim)
        targets = normalize_dims_in_order("movedim", destination, self.ndim)
        if len(sources) != len(targets):
            raise ValueError(at_user_line("movedim: source and destination differ in length"))
        rest = iter(d for d in range(self.ndim) if d not in sources)
        placed = dict(zip(targets, sources, strict=True))
        return self.permute(*(placed[d] if d in placed else next(rest) for d in range(self.ndim)))

    moveaxis = movedim

    def swapaxes(self, axis0, axis1):
        """Exchange dims ``axis0`` and ``axis1`` (a view), as ``torch.swapaxes``."""
        return self.transpose(axis0, axis1)

    swapdims = swapaxes

    def fliplr(self):
        """The columns (dim 1) in reverse order, as ``numpy.fliplr``."""
        return self.flip(1)

    def flipud(self):
        """The rows (dim 0) in reverse order, as ``numpy.flipud``."""
        return self.flip(0)

    def rot90(self, k=1, dims=(0, 1)):
        """Rotate by 90 degrees ``k`` times in the plane of ``dims``, from the first towards
        the second (NumPy's and PyTorch's direction)."""
        d0, d1 = dims
        k %= 4
        if k == 0:
            return self
        if k == 2:
            return self.flip(d0, d1)
        if k == 1:
            return self.flip(d1).transpose(d0, d1)
        return self.transpose(d0, d1).flip(d1)

    def nan_to_num(self, nan=0.0, posinf=None, neginf=None):
        """NaN, +inf and -inf replaced by ``nan`` and the largest/smallest finite values
        (or the given ones); the gradient passes where the values were finite."""
        if not self.dtype.is_floating_point:
            return self
        info = np.finfo(self.dtype.np)
        high = float(info.max) if posinf is None else posinf
        low = float(info.min) if neginf is None else neginf
        out = where(self == math.inf, high, where(self == -math.inf, low, self))
        return where(self != self, nan, out)

    def ravel(self):
        """The elements as a 1-D tensor (a view when possible), as ``numpy.ravel``."""
        return self.reshape(-1)

    def astype(self, dtype):
        """NumPy's name for ``to(dtype)``: NumPy dtypes and their names are accepted."""
        return self.to(
            dtypes.from_numpy(np.dtype(dtype)) if not isinstance(dtype, dtypes.DType) else dtype
        )


def _floats(x, y) -> list[Tensor]:
    """Both operands promoted to one floating dtype, as PyTorch's binary float ops do."""
    return promote_operands(x, y, floating=True)


def _nan_ignoring(op: str, x, y) -> Tensor:
    x, y = _floats(x, y)
    return where(y != y, x, where(x != x, y, binary(op, x, y)))


def normalize_dims_in_order(name: str, dims, ndim: int) -> tuple[int, ...]:
    """Dims as given (one or a sequence), non-negative, in their order."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    normalized = tuple(normalize_dim(name, d, ndim) for d in dims)
    if len(set(normalized)) != len(normalized):
        raise ValueError(at_user_line(f"{name}: repeated dim in {dims}"))
    return normalized


def tensordot(a, b, dims=2) -> Tensor:
    """Sum the products over the last ``dims`` dims of ``a`` and the first of ``b`` (or the
    two given lists of dims), as one einsum."""
    a, b = as_tensor(a), as_tensor(b)
    if isinstance(dims, int):
        dims_a, dims_b = tuple(range(a.ndim - dims, a.ndim)), tuple(range(dims))
    else:
        dims_a, dims_b = (
            normalize_dims_in_order("tensordot", d, n) for d, n in zip(dims, (a.ndim, b.ndim))
        )
    if len(dims_a) != len(dims_b):
        raise ShapeError(at_user_line(f"tensordot: {len(dims_a)} dims of a for {len(dims_b)} of b"))
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    subs_a = [next(letters) for _ in range(a.ndim)]
    subs_b = [next(letters) for _ in range(b.ndim)]
    for da, db in zip(dims_a, dims_b, strict=True):
        subs_b[db] = subs_a[da]
    free_a = "".join(s for d, s in enumerate(subs_a) if d not in dims_a)
    free_b = "".join(s for d, s in enumerate(subs_b) if d not in dims_b)
    return einsum(f"{''.join(subs_a)},{''.join(subs_b)}->{free_a}{free_b}", a, b)


# what every class body has (__module__, __dict__, __doc__...), not methods
_CLASS_BOOKKEEPING = frozenset(vars(type("Empty", (), {})))


def install() -> None:
    for name, member in vars(NumericMethods).items():
        if name not in _CLASS_BOOKKEEPING:
            setattr(Tensor, name, member)


install()
