"""Finite-difference checks of gradients, in float64.

``gradcheck`` compares the Jacobian autograd computes with central differences, one input
element at a time; ``gradgradcheck`` does the same for the gradient itself (second order).
A mismatch raises ``GradcheckError`` naming the worst element of the worst Jacobian.
"""

from __future__ import annotations

import numpy as np

from tracegrad import dtypes, tape
from tracegrad.autograd.functional import grad
from tracegrad.tensor import Tensor, wrap


class GradcheckError(RuntimeError):
    """Analytic and numerical gradients disagree."""


def _fresh(inputs, requires_grad: bool):
    """Copies of the tensor inputs (never perturb what the user passed in)."""
    return [
        wrap(a.array.copy(), requires_grad=requires_grad and a.requires_grad)
        if isinstance(a, Tensor)
        else a
        for a in inputs
    ]


def _outputs(fn, inputs) -> list[Tensor]:
    out = fn(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o for o in outs if isinstance(o, Tensor) and o.dtype.is_floating_point]


def _numerical(fn, inputs, i, eps) -> list[np.ndarray]:
    """d outputs / d inputs[i] by central differences: one (out.size, in.size) matrix per output."""
    base = _fresh(inputs, requires_grad=True)  # fn may itself differentiate (gradgradcheck)
    flat = base[i].array.reshape(-1)
    columns = []
    for k in range(flat.size):
        original = flat[k]
        flat[k] = original + eps
        plus = [o.array.astype(np.float64).ravel() for o in _outputs(fn, base)]
        flat[k] = original - eps
        minus = [o.array.astype(np.float64).ravel() for o in _outputs(fn, base)]
        flat[k] = original
        columns.append([(p - m) / (2 * eps) for p, m in zip(plus, minus, strict=True)])
    n_out = len(_outputs(fn, base))
    return [np.stack([c[j] for c in columns], axis=1) for j in range(n_out)]


def _analytic(fn, inputs, i) -> list[np.ndarray]:
    """d outputs / d inputs[i] by reverse mode, one row per output element."""
    xs = _fresh(inputs, requires_grad=True)
    outs = _outputs(fn, xs)
    jacobians = []
    for out in outs:
        rows = []
        for k in range(out.numel()):
            seed = np.zeros(out.array.shape, out.dtype.np)
            seed.reshape(-1)[k] = 1.0
            if not out.requires_grad:
                rows.append(np.zeros(xs[i].array.size))
                continue
            (g,) = grad(out, xs[i], wrap(seed), retain_graph=True, allow_unused=True)
            rows.append(
                np.zeros(xs[i].array.size) if g is None else g.array.astype(np.float64).ravel()
            )
        jacobians.append(np.array(rows).reshape(out.numel(), xs[i].array.size))
    return jacobians


def _report(i, j, analytic, numerical, atol, rtol) -> str | None:
    excess = np.abs(analytic - numerical) - (atol + rtol * np.abs(numerical))
    if excess.size == 0 or excess.max() <= 0:
        return None
    row, col = np.unravel_index(np.argmax(excess), excess.shape)
    return (
        f"Jacobian mismatch for output {j} with respect to input {i}: "
        f"worst at output element {row}, input element {col}: analytic "
        f"{analytic[row, col]:.10g}, numerical {numerical[row, col]:.10g}, "
        f"difference {abs(analytic[row, col] - numerical[row, col]):.3g} exceeds "
        f"atol + rtol * |numerical| = {atol + rtol * abs(numerical[row, col]):.3g} "
        f"({int((excess > 0).sum())} of {excess.size} entries disagree)"
    )


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True) -> bool:
    """Check reverse-mode gradients of ``fn`` at ``inputs`` against central differences.

    Inputs that require grad are checked; they should be float64 so that ``eps`` is meaningful.

    Args:
        fn: a function of the inputs returning a tensor (or a tuple of tensors).
        inputs: a tensor or a tuple of them.
        eps: the finite-difference step.
        atol: the absolute tolerance.
        rtol: the relative tolerance.
        raise_exception: raise on a mismatch instead of returning False.

    Returns:
        True when every gradient agrees.

    Raises:
        GradcheckError: on a mismatch, naming the input and the largest difference (with
            ``raise_exception``).

    Examples:
        >>> x = tg.randn(3, dtype=tg.float64, requires_grad=True)
        >>> tg.autograd.gradcheck(lambda x: (x.sin() * x).sum(), (x,))
        True
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.requires_grad and x.dtype is not dtypes.float64:
            raise GradcheckError(f"gradcheck: input {i} is {x.dtype}; use float64 inputs")
    for i, x in enumerate(inputs):
        if not (isinstance(x, Tensor) and x.requires_grad):
            continue
        analytic, numerical = _analytic(fn, inputs, i), _numerical(fn, inputs, i, eps)
        for j, (a, n) in enumerate(zip(analytic, numerical, strict=True)):
            problem = _report(i, j, a, n, atol, rtol)
            if problem and raise_exception:
                raise GradcheckError(problem)
            if problem:
                return False
    return True


def gradgradcheck(fn, inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3) -> bool:
    """Check second-order gradients: gradcheck of the map inputs -> vjp(fn)(inputs, v)."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    with tape.no_grad():
        outs = _outputs(fn, _fresh(inputs, requires_grad=False))
    rng = np.random.default_rng(0)
    if grad_outputs is None:
        grad_outputs = [wrap(rng.standard_normal(o.array.shape)) for o in outs]
    positions = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]

    def first_order(*xs):
        diff = [xs[i] for i in positions]
        out = _outputs(fn, xs)
        return grad(
            out, diff, grad_outputs, create_graph=True, allow_unused=True, materialize_grads=True
        )

    return gradcheck(first_order, inputs, eps, atol, rtol)
