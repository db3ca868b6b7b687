"""Vector and matrix norms with ``torch.linalg``'s signatures (``tg.linalg`` publishes them;
``np.linalg.norm`` on tensors and ``Tensor.norm(p="nuc")`` run them too).

Each is written in other ops: vector norms in sums and extrema of ``abs``, the matrix norms 1,
-1, inf and -inf in row or column sums, and 2, -2 and 'nuc' in the singular values
(``svdvals``, one op whose gradient is ``U diag(g) V^T``), so they are differentiated, traced
and compiled like the ops they are made of. Arguments have PyTorch's names
(``A`` a matrix).
"""

from __future__ import annotations

import contextlib
import math

from tracegrad import dtypes
from tracegrad.errors import DTypeError, ShapeError, at_user_line
from tracegrad.ops.reduce import std_of_var
from tracegrad.ops.rules import normalize_dim, normalize_dims
from tracegrad.tensor.core import Tensor, as_tensor
from tracegrad.tensor.dispatch import call

MATRIX_ORDS = ("fro", "nuc", math.inf, -math.inf, 1, -1, 2, -2)


def svdvals(A, *, driver=None, out=None) -> Tensor:  # noqa: N803
    """The singular values of a matrix (or of each matrix of a batch: the last two dims), in
    descending order, as ``torch.linalg.svdvals``.

    Differentiable where the singular values are distinct (the gradient is
    ``U diag(grad) V^T``), not twice.

    Args:
        A: a floating-point tensor of shape ``(..., m, n)``.
        driver: None (PyTorch's choice of a CUDA solver; there is none here).

    Returns:
        A tensor of shape ``(..., min(m, n))``.

    Raises:
        ShapeError: if ``A`` has fewer than 2 dims.

    Examples:
        >>> tg.linalg.svdvals(tg.tensor([[3.0, 0.0], [0.0, -4.0]]))
        tensor([4., 3.])
    """
    _no_out("svdvals", out)
    if driver is not None:
        raise ValueError(f"linalg.svdvals: driver={driver!r} chooses a CUDA solver; leave it None")
    return call("svdvals", _floating("svdvals", A, None))


def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None, out=None) -> Tensor:
    """The vector ``ord``-norm of ``x`` over ``dim`` (every element if None), as
    ``torch.linalg.vector_norm``: ``sum(|x|^ord)^(1/ord)``; inf and -inf the largest and
    smallest ``|x|``, 0 the count of nonzero elements.

    Args:
        x: a floating-point tensor.
        ord: the order, a number (or inf, -inf).
        dim: a dim, a tuple of dims, or None for every element.
        keepdim: keep the reduced dims with length 1.
        dtype: compute in this dtype.

    Raises:
        DTypeError: if ``x`` is not floating-point.
        ValueError: if ``ord`` is not a number.

    Examples:
        >>> tg.linalg.vector_norm(tg.tensor([3.0, -4.0]))
        tensor(5.)
        >>> tg.linalg.vector_norm(tg.tensor([[3.0, -4.0], [1.0, 0.0]]), ord=1, dim=1)
        tensor([7., 1.])
    """
    _no_out("vector_norm", out)
    x = _floating("vector_norm", x, dtype)
    if isinstance(ord, (str, bool)):
        raise ValueError(at_user_line(f"linalg.vector_norm: ord must be a number, got {ord!r}"))
    dims = normalize_dims("linalg.vector_norm", dim, x.ndim)
    if ord == 2:
        return std_of_var((x * x).sum(dims, keepdim))
    if ord == math.inf:
        return x.abs().amax(dims, keepdim)
    if ord == -math.inf:
        return x.abs().amin(dims, keepdim)
    if ord == 0:
        return (x != 0).to(x.dtype).sum(dims, keepdim)
    if ord == 1:
        return x.abs().sum(dims, keepdim)
    return (x.abs() ** ord).sum(dims, keepdim) ** (1.0 / ord)


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim=False, *, dtype=None, out=None) -> Tensor:  # noqa: N803
    """The matrix norm of ``A`` over the two dims ``dim``, as ``torch.linalg.matrix_norm``:
    'fro' (Frobenius), 'nuc' (the sum of the singular values), 2 and -2 (the largest and the
    smallest singular value), 1 and -1 (the largest and smallest column sum of ``|A|``), inf
    and -inf (the same of the row sums).

    Args:
        A: a floating-point tensor of at least 2 dims.
        ord: one of 'fro', 'nuc', inf, -inf, 1, -1, 2, -2.
        dim: the two dims the matrices lie in.
        keepdim: keep those dims with length 1.
        dtype: compute in this dtype.

    Raises:
        ShapeError: if ``dim`` does not name two different dims of ``A``.
        ValueError: for another ``ord``.

    Examples:
        >>> A = tg.tensor([[3.0, 0.0], [0.0, -4.0]])
        >>> tg.linalg.matrix_norm(A), tg.linalg.matrix_norm(A, 2), tg.linalg.matrix_norm(A, "nuc")
        (tensor(5.), tensor(4.), tensor(7.))
    """
    _no_out("matrix_norm", out)
    m = _floating("matrix_norm", A, dtype)
    if ord not in MATRIX_ORDS:
        raise ValueError(
            at_user_line(
                f"linalg.matrix_norm: ord={ord!r} is not a matrix norm; use one of "
                "'fro', 'nuc', inf, -inf, 1, -1, 2, -2"
            )
        )
    rows, cols = _matrix_dims(m, dim)
    if ord == "fro":
        return vector_norm(m, 2, (rows, cols), keepdim)
    if ord in ("nuc", 2, -2):
        values = svdvals(m.movedim((rows, cols), (-2, -1)))
        reduced = {"nuc": values.sum, 2: values.amax, -2: values.amin}[ord](-1)
        return reduced.unsqueeze(min(rows, cols)).unsqueeze(max(rows, cols)) if keepdim else reduced
    summed, across = (rows, cols) if ord in (1, -1) else (cols, rows)
    sums = m.abs().sum(summed, keepdim=True)
    extreme = sums.amax(across, keepdim=True) if ord > 0 else sums.amin(across, keepdim=True)
    return extreme if keepdim else extreme.squeeze((rows, cols))


def norm(input, ord=None, dim=None, keepdim=False, *, out=None, dtype=None) -> Tensor:
    """A vector or a matrix norm, as ``torch.linalg.norm`` (and ``np.linalg.norm``): over one
    dim a vector norm, over two a matrix norm; with ``dim`` None, the 2-norm of every element
    when ``ord`` is None, else the vector norm of a 1-d ``input`` or the matrix norm of a 2-d one.

    Args:
        input: a floating-point tensor.
        ord: the order (None: 2 for vectors, 'fro' for matrices); see ``vector_norm`` and
            ``matrix_norm``.
        dim: None, a dim, or a pair of dims.
        keepdim: keep the reduced dims with length 1.
        dtype: compute in this dtype.

    Raises:
        ShapeError: if ``ord`` is given with ``dim`` None and ``input`` has other than 1 or 2
            dims, or ``dim`` names more than two dims.

    Examples:
        >>> A = tg.tensor([[0.0, 3.0], [4.0, 0.0]])
        >>> tg.linalg.norm(A), tg.linalg.norm(A, 2), tg.linalg.norm(A, dim=0)
        (tensor(5.), tensor(4.), tensor([4., 3.]))
    """
    _no_out("norm", out)
    x = _floating("norm", input, dtype)
    if dim is None and ord is not None:
        if x.ndim not in (1, 2):
            raise ShapeError(
                at_user_line(
                    f"linalg.norm: with ord={ord!r} and dim=None the input must be 1-d or 2-d, "
                    f"got shape {tuple(x.shape)}; give dim"
                )
            )
        dim = tuple(range(x.ndim))
    dims = (dim,) if isinstance(dim, int) else dim
    if dims is None or len(dims) == 1:
        return vector_norm(x, 2 if ord is None else ord, dim, keepdim)
    if len(dims) != 2:
        raise ShapeError(at_user_line(f"linalg.norm: dim must name 1 or 2 dims, got {dim}"))
    return matrix_norm(x, "fro" if ord is None else ord, tuple(dims), keepdim)


def _floating(name: str, x, dtype) -> Tensor:
    x = as_tensor(x)
    x = x.to(dtypes.to_dtype(dtype)) if dtype is not None else x
    if not x.dtype.is_floating_point:
        raise DTypeError(
            at_user_line(
                f"linalg.{name}: expected a floating-point tensor, got {x.dtype} of shape "
                f"{tuple(x.shape)}"
            )
        )
    return x


def _matrix_dims(m: Tensor, dim) -> tuple[int, int]:
    """The two dims the matrices lie in, made non-negative; a ShapeError unless two distinct."""
    found: tuple[int, ...] = ()
    with contextlib.suppress(TypeError, ValueError):  # (the error below names the dims)
        found = tuple(normalize_dim("linalg.matrix_norm", d, m.ndim) for d in dim)
    if m.ndim < 2 or len(found) != 2 or found[0] == found[1]:
        raise ShapeError(
            at_user_line(
                f"linalg.matrix_norm: dim={dim!r} must name two different dims of a tensor of "
                f"shape {tuple(m.shape)}"
            )
        )
    return found[0], found[1]


def _no_out(name: str, out) -> None:
    if out is not None:
        raise TypeError(f"linalg.{name}: out= is not supported; use the returned tensor")
