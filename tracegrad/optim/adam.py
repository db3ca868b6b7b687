"""Adam and AdamW, with PyTorch's update order and bias corrections."""

from __future__ import annotations

import numpy as np

from tracegrad.creation import zeros_like
from tracegrad.functions import maximum
from tracegrad.ops import kernels
from tracegrad.optim.flat import FlatState, small_params
from tracegrad.optim.optimizer import Optimizer, number, scalar
from tracegrad.tensor import Tensor, active_tracer, tensor


class Adam(Optimizer):
    decoupled_weight_decay = False
    numbers = ("lr", "betas", "eps", "weight_decay")
    zero_tested = ("weight_decay",)

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=False,
        maximize=False,
    ):
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas) or weight_decay < 0:
            raise ValueError(
                f"invalid {type(self).__name__} settings: lr={lr}, betas={betas}, "
                f"eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
            ),
        )

    def update(self, param, grad, state, group, settings) -> None:
        # m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
        # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        if not state:
            state["step"] = tensor(0.0)  # float32, as PyTorch keeps it
            state["exp_avg"] = zeros_like(param)
            state["exp_avg_sq"] = zeros_like(param)
            if settings["amsgrad"]:
                state["max_exp_avg_sq"] = zeros_like(param)
        if active_tracer() is None and not settings["amsgrad"] and _plain(param, grad, state):
            self._update_arrays(param, grad, state, group)
            return
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        if settings["maximize"]:
            grad = -grad
        if settings["weight_decay"] and self.decoupled_weight_decay:
            param.mul_(scalar(1 - lr * wd, param.dtype))
        elif settings["weight_decay"]:
            grad = grad + param * scalar(wd, param.dtype)
        state["step"].add_(1)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # Each update is one kernel (tracegrad/ops/optim.py) that reads its arrays once.
        exp_avg._assign("lerp", exp_avg, grad, number(1.0 - beta1))
        exp_avg_sq._assign("ema_square", exp_avg_sq, grad, number(beta2))
        second = exp_avg_sq
        if settings["amsgrad"]:
            second = state["max_exp_avg_sq"].copy_(maximum(state["max_exp_avg_sq"], exp_avg_sq))
        step_size, bias2_sqrt = bias_corrections(state["step"], lr, beta1, beta2, param.dtype)
        eps = number(group["eps"])
        param._assign("adam_step", param, exp_avg, second, step_size, bias2_sqrt, eps)

    def _update_arrays(self, param, grad, state, group) -> None:
        """The update above, eagerly: the same kernels and the same float64 scalars (so the
        same bits, which a test checks) on the NumPy arrays directly, without a tensor op and
        its checks per term. Traced steps take the tensor ops, which the compiler sees."""
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        arrays = (param._data, grad._data, step._data, exp_avg._data, exp_avg_sq._data)
        self._update_on(*arrays, group)
        for t in (param, step, exp_avg, exp_avg_sq):
            t._version[0] += 1

    def _update_on(self, p, g, step, m, v, group) -> None:
        """Adam on arrays in place: one parameter's, or the flat arrays of many parameters at
        one step count (``step`` then holds each one's count, all equal)."""
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        if group["maximize"]:
            g = -g
        if wd and self.decoupled_weight_decay:
            np.multiply(p, 1 - lr * wd, out=p)
        elif wd:
            g = g + p * wd
        np.add(step, 1, out=step)
        t = step.reshape(-1)[0]
        corrections = _bias_corrections_eager(t, lr, beta1, beta2, p.dtype)
        kernels.adam_update(p, g, m, v, *corrections, beta1, beta2, group["eps"])

    def _update_together(self, index, group, pairs):
        """Small parameters at one step count, updated at once on flat arrays (see
        tracegrad/optim/flat.py); the rest one by one."""
        small = small_params(pairs) if not group["amsgrad"] else []
        params = [p for p, _ in small]
        states = [self.state.get(p, {}) for p in params]
        flat = self._flat.pop(index, None)
        if flat is None or not flat.holds(params, states):
            flat = None  # let go of the old views before the new state is checked
            flat = FlatState.build(params, states, ("step", "exp_avg", "exp_avg_sq"))
        if flat is None or len(params) < 2:
            return pairs
        self._flat[index] = flat
        steps = flat.flats["step"]
        if steps.min() != steps.max():
            return pairs
        values = flat.gather([p._data for p in params], flat.values)
        grads = flat.gather([g._data for _, g in small], flat.grads)
        self._update_on(values, grads, steps, flat.flats["exp_avg"], flat.flats["exp_avg_sq"],
                        group)  # fmt: skip
        flat.scatter_values()
        done = {id(p) for p in params}
        return [(p, g) for p, g in pairs if id(p) not in done]


def _plain(param, grad, state) -> bool:
    """Whether the update may run on the arrays: the state is tensors of the parameter's
    dtype and shape (as the update makes it), the gradient too, and the memory it writes
    contiguous and writable."""
    p, m, v = param._data, state["exp_avg"]._data, state["exp_avg_sq"]._data
    if not all(a.flags.c_contiguous and a.flags.writeable for a in (p, m, v)):
        return False
    return all(a.dtype == p.dtype and a.shape == p.shape for a in (grad._data, m, v))


def _bias_corrections_eager(step: np.ndarray, lr, beta1, beta2, dtype: np.dtype):
    """lr / (1 - beta1^t) and sqrt(1 - beta2^t) as NumPy scalars of ``dtype`` (see
    ``bias_corrections``)."""
    t = np.float64(step)
    step_size = np.asarray(lr / (1 - np.power(beta1, t)), dtype)
    return step_size, np.asarray(np.sqrt(1 - np.power(beta2, t)), dtype)


def bias_corrections(step: Tensor, lr, beta1, beta2, dtype) -> tuple[Tensor, Tensor]:
    """lr / (1 - beta1^t) and sqrt(1 - beta2^t), computed in float64 like PyTorch's Python
    floats and rounded to the parameter's dtype as PyTorch's scalar arguments are.

    Traced, the step count, ``lr`` and the betas are tensors (the step count optimizer
    state, the others the step's inputs), so a compiled step reads them instead of baking
    them in. Eagerly, the same float64 arithmetic runs on NumPy scalars, as PyTorch's
    non-capturable Adam runs it on Python floats, instead of a tensor op per term: the same
    bits (a test checks them), far faster.
    """
    if active_tracer() is not None:
        t = step.double()
        return (lr / (1 - beta1**t)).to(dtype), (1 - beta2**t).sqrt().to(dtype)
    # NumPy's power, not Python's **: the same loop the tensor op runs (they may differ in
    # the last place).
    step_size, bias2_sqrt = _bias_corrections_eager(step._data, lr, beta1, beta2, dtype.np)
    return Tensor._wrap(step_size), Tensor._wrap(bias2_sqrt)


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * wd before the Adam step."""

    decoupled_weight_decay = True

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        maximize=False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
