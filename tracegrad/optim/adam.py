"""Adam and AdamW, with PyTorch's update order and bias corrections."""

from __future__ import annotations

import functools

from tracegrad.creation import zeros_like
from tracegrad.dtypes import float64
from tracegrad.functions import maximum
from tracegrad.optim.optimizer import Optimizer, number, scalar
from tracegrad.tensor import Tensor, active_tracer, call, tensor


class Adam(Optimizer):
    """Adam, with PyTorch's update rule, arguments and state (``step``, ``exp_avg``,
    ``exp_avg_sq``, and ``max_exp_avg_sq`` with ``amsgrad``).

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups.
        lr: the learning rate.
        betas: the decay rates of the first and second moment averages.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty added to the gradient (see ``AdamW`` for decoupled decay).
        amsgrad: use the maximum of past second moments.
        maximize: ascend instead of descend.

    Raises:
        ValueError: for a negative ``lr``, ``eps`` or ``weight_decay``, or a beta outside [0, 1).

    Examples:
        >>> w = nn.Parameter(tg.tensor([1.0]))
        >>> opt = optim.Adam([w], lr=0.1)
        >>> (w * w).sum().backward()
        >>> opt.step()
        >>> round(w.item(), 4), opt.state_dict()["state"][0]["step"]
        (0.9, tensor(1.))
    """

    elementwise = True
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

    def initial_state(self, param, settings) -> dict:
        state = {"step": tensor(0.0)}  # float32, as PyTorch keeps it
        state["exp_avg"] = zeros_like(param)
        state["exp_avg_sq"] = zeros_like(param)
        if settings["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_like(param)
        return state

    def update(self, param, grad, state, group, settings) -> None:
        # m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
        # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        if not state:
            state.update(self.initial_state(param, settings))
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        if settings["maximize"]:
            grad = -grad
        if settings["weight_decay"] and self.decoupled_weight_decay:
            param.mul_(scalar(1 - lr * wd, param.dtype))
        elif settings["weight_decay"]:
            grad = grad + param * scalar(wd, param.dtype)
        state["step"].add_(1)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # Each update is one kernel (tracegrad/ops/optim.py) that reads its arrays once and
        # writes in place (eagerly into the state's memory; traced, a new value of it).
        call("lerp", exp_avg, grad, number(1.0 - beta1), out=exp_avg)
        call("ema_square", exp_avg_sq, grad, number(beta2), out=exp_avg_sq)
        second = exp_avg_sq
        if settings["amsgrad"]:
            second = state["max_exp_avg_sq"].copy_(maximum(state["max_exp_avg_sq"], exp_avg_sq))
        step_size, bias2_sqrt = bias_corrections(state["step"], lr, beta1, beta2, param.dtype)
        eps = number(group["eps"])
        call("adam_step", param, exp_avg, second, step_size, bias2_sqrt, eps, out=param)


def bias_corrections(step: Tensor, lr, beta1, beta2, dtype) -> tuple[Tensor, Tensor]:
    """lr / (1 - beta1^t) and sqrt(1 - beta2^t), computed in float64 like PyTorch's Python
    floats and rounded to the parameter's dtype as PyTorch's scalar arguments are.

    Traced, the step count, ``lr`` and the betas are tensors (the step count optimizer
    state, the others the step's inputs), so a compiled step reads them instead of baking
    them in. Eagerly they are numbers, and the parameters of a group share them: the
    corrections are computed once per step, not once per parameter."""
    if active_tracer() is None and not isinstance(lr, Tensor):
        return _known_corrections(step.item(), lr, beta1, beta2, dtype)
    return _corrections(step, lr, beta1, beta2, dtype)


def _corrections(step: Tensor, lr, beta1, beta2, dtype) -> tuple[Tensor, Tensor]:
    t = step.double()
    return (lr / (1 - beta1**t)).to(dtype), (1 - beta2**t).sqrt().to(dtype)


@functools.lru_cache(maxsize=256)
def _known_corrections(count: float, lr, beta1, beta2, dtype) -> tuple[Tensor, Tensor]:
    return _corrections(tensor(count, dtype=float64), lr, beta1, beta2, dtype)


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr * weight_decay`` before the Adam step,
    as PyTorch's AdamW (whose ``weight_decay`` defaults to 0.01).

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups.
        lr: the learning rate.
        betas: the decay rates of the first and second moment averages.
        eps: added to the denominator for numerical stability.
        weight_decay: the decoupled weight decay.
        amsgrad: use the maximum of past second moments.
        maximize: ascend instead of descend.

    Raises:
        ValueError: for a negative ``lr``, ``eps`` or ``weight_decay``, or a beta outside [0, 1).

    Examples:
        >>> w = nn.Parameter(tg.tensor([1.0]))
        >>> opt = optim.AdamW([w], lr=0.1, weight_decay=0.5)
        >>> w.grad = tg.zeros(1)
        >>> opt.step()
        >>> w
        Parameter containing:
        tensor([0.95], requires_grad=True)
    """

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
