"""Matrix products: batched ``matmul`` with NumPy's 1-D rules, and ``einsum``; the singular
values of (batches of) matrices, ``svdvals``, which the spectral and nuclear norms are made of."""

from __future__ import annotations

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import rules
from tracegrad.ops.registry import Sample, call, register
from tracegrad.ops.runtime import kernel


def _matmul_infer(a: TensorType, b: TensorType) -> TensorType:
    dtype = rules.same_dtype("matmul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: both operands need at least 1 dim, got {a.shape} and {b.shape}")
    a2 = a.shape if a.ndim > 1 else (1, *a.shape)
    b2 = b.shape if b.ndim > 1 else (*b.shape, 1)
    if a2[-1] != b2[-2]:
        raise ShapeError(
            f"matmul: shapes {a.shape} and {b.shape} do not fit "
            f"(inner dims {a2[-1]} and {b2[-2]} differ)"
        )
    batch = rules.broadcast_shape("matmul", a2[:-2], b2[:-2])
    shape = (*batch, *((a2[-2],) if a.ndim > 1 else ()), *((b2[-1],) if b.ndim > 1 else ()))
    return TensorType(shape, dtype)


def _as_matrices(c, g):
    """Operands and cotangent with NumPy's implied unit dims made explicit."""
    a, b = c.a, c.b
    if a.ndim == 1:
        a, g = a.reshape(1, -1), g.unsqueeze(-2 if b.ndim > 1 else -1)
    if b.ndim == 1:
        b, g = b.reshape(-1, 1), g.unsqueeze(-1)
    return a, b, g


def _matmul_grad_a(c, g):
    a, b, g = _as_matrices(c, g)
    return (g @ b.mT).sum_to(a.shape).reshape(c.a.shape)


def _matmul_grad_b(c, g):
    a, b, g = _as_matrices(c, g)
    return (a.mT @ g).sum_to(b.shape).reshape(c.b.shape)


def _matmul_reference(a, b):
    """Products summed over the inner dim by broadcasting, with NumPy's 1-D operands as a row
    or a column that is dropped after (a test reference)."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    out = (a2[..., :, :, None] * b2[..., None, :, :]).sum(-2)
    out = out[..., 0, :] if a.ndim == 1 else out
    return out[..., 0] if b.ndim == 1 else out


# NumPy's cases: from vectors, of matrices, batched (batch dims broadcast)
MATMUL_SHAPES = (
    (((3,), (3,)), ((3,), (3, 2))),
    (((2, 3), (3, 4)), ((2, 3), (3,))),
    (((2, 1, 2, 3), (3, 3, 2)), ((2, 2, 3), (3,)), ((3,), (2, 3, 2))),
)

register(
    "matmul",
    ("a", "b"),
    _matmul_infer,
    np.matmul,
    (_matmul_grad_a, _matmul_grad_b),
    "{0} @ {1}",
    saves={"a": ("b",), "b": ("a",)},  # a's rule reads only b's data, and b's only a's
    out="np.matmul({0}, {1}, out={out})",
    samples=tuple(Sample(shapes=shapes, ref=_matmul_reference) for shapes in MATMUL_SHAPES),
)


def parse_equation(equation: str, n_inputs: int) -> tuple[list[str], str]:
    """Split ``"ij,jk->ik"`` into input subscripts and output subscripts (implicit output
    is the sorted letters that appear once, as in NumPy)."""
    equation = equation.replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    ins = lhs.split(",")
    if len(ins) != n_inputs or "." in equation:
        raise ShapeError(f"einsum: equation {equation!r} does not fit {n_inputs} operands")
    if not arrow:
        letters = "".join(ins)
        out = "".join(sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    return ins, out


def _einsum_infer(*xs: TensorType, equation) -> TensorType:
    dtype = rules.same_dtype("einsum", *xs)
    ins, out = parse_equation(equation, len(xs))
    sizes: dict[str, int] = {}
    for subs, x in zip(ins, xs, strict=True):
        if len(subs) != x.ndim:
            raise ShapeError(f"einsum: subscripts {subs!r} do not fit shape {x.shape}")
        if len(set(subs)) != len(subs):
            raise ShapeError(
                f"einsum: repeated subscripts in {subs!r} (diagonals) are not supported"
            )
        for ch, size in zip(subs, x.shape, strict=True):
            if sizes.setdefault(ch, size) != size:
                raise ShapeError(f"einsum: index {ch!r} has sizes {sizes[ch]} and {size}")
    return TensorType(tuple(sizes[ch] for ch in out), dtype)


def _einsum_grad(c, g):
    """d/dx_i of einsum is einsum of g with the other operands, written to x_i's subscripts;
    letters only x_i has are summed over in the forward, so their cotangent is broadcast."""
    ins, out = parse_equation(c.equation, len(c.inputs))
    grads: list = []  # one cotangent (or None) per input
    for i, (subs, x) in enumerate(zip(ins, c.inputs, strict=True)):
        if not c.needs_input_grad[i]:
            grads.append(None)
            continue
        others = [(s, t) for j, (s, t) in enumerate(zip(ins, c.inputs, strict=True)) if j != i]
        known = set(out).union(*(s for s, _ in others))
        target = "".join(ch for ch in subs if ch in known)
        eq = ",".join([out, *(s for s, _ in others)]) + "->" + target
        grad = call("einsum", g, *(t for _, t in others), equation=eq)
        grad = grad.reshape(tuple(n if ch in known else 1 for ch, n in zip(subs, x.shape)))
        grads.append(call("broadcast_to", grad, shape=x.shape))
    return tuple(grads)


register(
    "einsum",
    ("*xs",),
    _einsum_infer,
    lambda *xs, equation: np.einsum(equation, *xs),
    _einsum_grad,
    "np.einsum({equation!r}, {inputs})",
    saves=("xs",),
    samples=(
        Sample({"equation": "ij,jk->ik"}, shapes=(((2, 3), (3, 4)),)),
        # k only in b, summed away: its cotangent is broadcast
        Sample({"equation": "ij,jk->i"}, shapes=(((2, 3), (3, 4)), ((1, 2), (2, 1)))),
        Sample({"equation": "bij,bjk->bik"}, shapes=(((2, 2, 3), (2, 3, 2)),)),
        Sample({"equation": "i,j->ij"}, shapes=(((2,), (3,)),)),
        Sample({"equation": "ijk->kj"}, shapes=(((2, 3, 2),),)),
        Sample({"equation": "ij,jk"}, shapes=(((2, 3), (3, 2)),)),
        Sample({"equation": "ij,ij->"}, shapes=(((2, 3), (2, 3)),)),
        Sample({"equation": "ij,jk,kl->il"}, shapes=(((2, 3), (3, 2), (2, 2)),)),
    ),
)


# --- singular values --------------------------------------------------------------------------


def _svdvals_infer(x: TensorType) -> TensorType:
    rules.floating("svdvals", x)
    if x.ndim < 2:
        raise ShapeError(f"svdvals: expected a matrix or a batch of matrices, got shape {x.shape}")
    return TensorType((*x.shape[:-2], min(x.shape[-2:])), x.dtype)


def _svdvals_reference(x):
    """The square roots of the eigenvalues of x^T x or x x^T (the smaller), descending."""
    m, n = x.shape[-2:]
    gram = np.swapaxes(x, -1, -2) @ x if n <= m else x @ np.swapaxes(x, -1, -2)
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))[..., ::-1]


@kernel
def svdvals_grad(x, g):
    """U diag(g) V^T from the reduced SVD of x: singular value i changes by u_i^T dx v_i
    (the signs U and V may take cancel in each product)."""
    u, _, vh = np.linalg.svd(x, full_matrices=False)
    return np.matmul(u * g[..., None, :], vh)


def _no_second_derivative(c, g):
    raise NotImplementedError(
        "the second derivative of singular values (svdvals, matrix norms with ord 2, -2 or "
        "'nuc') is not supported"
    )


# svdvals: the singular values of the last two dims, in descending order, as
# torch.linalg.svdvals. Their gradient (distinct values) is U diag(g) V^T, one more SVD in the
# backward, as PyTorch's; that gradient op has none of its own.
register(
    "svdvals",
    ("x",),
    _svdvals_infer,
    lambda x: np.linalg.svd(x, compute_uv=False),
    (lambda c, g: call("svdvals_grad", c.x, g),),
    "np.linalg.svd({0}, compute_uv=False)",
    saves=("x",),
    # (distinct singular values away from 0, where the gradient is smooth; no second
    # derivative: not smooth for the tables)
    samples=(
        Sample(shapes=(((3, 4),), ((2, 4, 3),), ((2, 2),)), smooth=False, ref=_svdvals_reference),
    ),
)
register(
    "svdvals_grad",
    ("x", "g"),
    lambda x, g: rules.floating("svdvals_grad", x),
    svdvals_grad,
    (_no_second_derivative, _no_second_derivative),
    "rt.svdvals_grad({0}, {1})",
    saves=("x",),
)
