"""Adam and AdamW, with PyTorch's update order and bias corrections."""

from __future__ import annotations

import numpy as np

from tracegrad.creation import zeros_like
from tracegrad.functions import maximum
from tracegrad.ops import kernels
from tracegrad.optim.optimizer import Optimizer
from tracegrad.tensor import Tensor, active_tracer, tensor


class Adam(Optimizer):
    decoupled_weight_decay = False

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

    def update(self, param, grad, state, group) -> None:
        # m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
        # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        if not state:
            state["step"] = tensor(0.0)  # float32, as PyTorch keeps it
            state["exp_avg"] = zeros_like(param)
            state["exp_avg_sq"] = zeros_like(param)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = zeros_like(param)
        if active_tracer() is None and not group["amsgrad"] and _plain(param, grad, state):
            self._update_arrays(param, grad, state, group)
            return
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        if group["maximize"]:
            grad = -grad
        if wd and self.decoupled_weight_decay:
            param.mul_(1 - lr * wd)
        elif wd:
            grad = grad + param * wd
        state["step"].add_(1)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # Each update is one kernel (tracegrad/ops/optim.py) that reads its arrays once.
        exp_avg._assign("lerp", exp_avg, grad, weight=1.0 - beta1)
        exp_avg_sq._assign("ema_square", exp_avg_sq, grad, beta=beta2)
        second = exp_avg_sq
        if group["amsgrad"]:
            second = state["max_exp_avg_sq"].copy_(maximum(state["max_exp_avg_sq"], exp_avg_sq))
        step_size, bias2_sqrt = bias_corrections(state["step"], lr, beta1, beta2, param.dtype)
        param._assign("adam_step", param, exp_avg, second, step_size, bias2_sqrt, eps=group["eps"])

    def _update_arrays(self, param, grad, state, group) -> None:
        """The update above, eagerly: the same kernels and the same float64 scalars (so the
        same bits, which a test checks) on the NumPy arrays directly, without a tensor op and
        its checks per term; what PyTorch's foreach and fused Adam are to its per-tensor
        loop. Traced steps take the tensor ops, which the compiler sees."""
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        p, g = param._data, grad._data
        if group["maximize"]:
            g = -g
        if wd and self.decoupled_weight_decay:
            np.multiply(p, 1 - lr * wd, out=p)
        elif wd:
            g = g + p * wd
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        np.add(step._data, 1, out=step._data)
        kernels.lerp(exp_avg._data, g, 1.0 - beta1, out=exp_avg._data)
        kernels.ema_square(exp_avg_sq._data, g, beta2, out=exp_avg_sq._data)
        step_size, bias2_sqrt = _bias_corrections_eager(step._data, lr, beta1, beta2, p.dtype)
        kernels.adam_step(p, exp_avg._data, exp_avg_sq._data, step_size, bias2_sqrt,
                          group["eps"], out=p)  # fmt: skip
        for t in (param, step, exp_avg, exp_avg_sq):
            t._version[0] += 1


def _plain(param, grad, state) -> bool:
    """Whether the update may run on the arrays: the state is tensors of the parameter's
    dtype and shape (as the update makes it), the gradient too, and the memory writable."""
    p = param._data
    arrays = (grad._data, state["exp_avg"]._data, state["exp_avg_sq"]._data)
    return p.flags.writeable and all(a.dtype == p.dtype and a.shape == p.shape for a in arrays)


def _bias_corrections_eager(step: np.ndarray, lr, beta1, beta2, dtype: np.dtype):
    """lr / (1 - beta1^t) and sqrt(1 - beta2^t) as NumPy scalars of ``dtype`` (see
    ``bias_corrections``)."""
    t = np.float64(step)
    step_size = np.asarray(lr / (1 - np.power(beta1, t)), dtype)
    return step_size, np.asarray(np.sqrt(1 - np.power(beta2, t)), dtype)


def bias_corrections(step: Tensor, lr, beta1, beta2, dtype) -> tuple[Tensor, Tensor]:
    """lr / (1 - beta1^t) and sqrt(1 - beta2^t), computed in float64 like PyTorch's Python
    floats and rounded to the parameter's dtype as PyTorch's scalar arguments are.

    Traced, the step count stays a tensor, so a compiled step reads it instead of baking it
    in. Eagerly, the same float64 arithmetic runs on NumPy scalars, as PyTorch's
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
