"""Adagrad, RMSprop and Adadelta: PyTorch's update rules written as tensor ops, so a compiled
whole step traces them (their numbers read as the step's inputs) and an eager step runs the
same ops, with the same bits."""

from __future__ import annotations

from tracegrad.creation import full_like, zeros_like
from tracegrad.optim.optimizer import (
    Optimizer,
    add_scaled,
    ascent_decayed,
    check_settings,
    number,
    scalar,
)
from tracegrad.tensor import call, tensor


def _step_count():
    return tensor(0.0)  # float32, as PyTorch keeps it


class Adagrad(Optimizer):
    """Adagrad, with PyTorch's update rule, arguments and state (``step``, ``sum``).

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups.
        lr: the learning rate.
        lr_decay: the learning rate's decay per step, ``lr / (1 + (step - 1) * lr_decay)``.
        weight_decay: L2 penalty added to the gradient.
        initial_accumulator_value: the starting value of the sum of squared gradients.
        eps: added to the denominator for numerical stability.
        maximize: ascend instead of descend.

    Raises:
        ValueError: for a negative setting.

    Examples:
        >>> w = nn.Parameter(tg.tensor([1.0]))
        >>> opt = optim.Adagrad([w], lr=0.5)
        >>> w.grad = tg.tensor([2.0])
        >>> opt.step()
        >>> w
        Parameter containing:
        tensor([0.5], requires_grad=True)
    """

    elementwise = True
    numbers = ("lr", "lr_decay", "weight_decay", "eps")
    zero_tested = ("weight_decay",)

    def __init__(
        self,
        params,
        lr=1e-2,
        lr_decay=0,
        weight_decay=0,
        initial_accumulator_value=0,
        eps=1e-10,
        maximize=False,
    ):
        check_settings(
            "Adagrad",
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
        )
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            maximize=maximize,
        )
        super().__init__(params, defaults)
        # PyTorch fills Adagrad's state when it is built, not at the first step
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = self.initial_state(p, group)

    def initial_state(self, param, settings) -> dict:
        return {
            "step": _step_count(),
            "sum": full_like(param, settings["initial_accumulator_value"]),
        }

    def update(self, param, grad, state, group, settings) -> None:
        # sum += g^2;  p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)
        if not state:
            state.update(self.initial_state(param, settings))
        grad = ascent_decayed(param, grad, group, settings)
        state["step"].add_(1)
        state["sum"].add_(grad * grad)
        # The decayed rate in float64, as PyTorch computes it from Python floats
        clr = group["lr"] / ((state["step"].double() - 1) * group["lr_decay"] + 1)
        std = state["sum"].sqrt() + scalar(group["eps"], param.dtype)
        add_scaled(param, grad / std, clr, sign=-1)


class RMSprop(Optimizer):
    """RMSprop, with PyTorch's update rule, arguments and state (``step``, ``square_avg``,
    ``momentum_buffer`` with momentum, ``grad_avg`` when centered).

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups.
        lr: the learning rate.
        alpha: the smoothing constant of the squared-gradient average.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty added to the gradient.
        momentum: the momentum factor (0 for none).
        centered: normalize by an estimate of the gradient's variance.
        maximize: ascend instead of descend.

    Raises:
        ValueError: for a negative setting.

    Examples:
        >>> w = nn.Parameter(tg.tensor([1.0]))
        >>> opt = optim.RMSprop([w], lr=0.01)
        >>> w.grad = tg.tensor([1.0])
        >>> opt.step()
        >>> round(w.item(), 4)
        0.9
    """

    elementwise = True
    numbers = ("lr", "alpha", "eps", "weight_decay", "momentum")
    zero_tested = ("weight_decay", "momentum")

    def __init__(
        self,
        params,
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0,
        momentum=0,
        centered=False,
        maximize=False,
    ):
        check_settings(
            "RMSprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum
        )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def initial_state(self, param, settings) -> dict:
        state = {"step": _step_count(), "square_avg": zeros_like(param)}
        if settings["momentum"]:
            state["momentum_buffer"] = zeros_like(param)
        if settings["centered"]:
            state["grad_avg"] = zeros_like(param)
        return state

    def update(self, param, grad, state, group, settings) -> None:
        # v = a v + (1 - a) g^2;  avg = sqrt(v - mean(g)^2 (centered) or v) + eps;
        # buf = m buf + g / avg, p -= lr buf (momentum) or p -= lr g / avg
        if not state:
            state.update(self.initial_state(param, settings))
        grad = ascent_decayed(param, grad, group, settings)
        state["step"].add_(1)
        square_avg = state["square_avg"]
        call("ema_square", square_avg, grad, number(group["alpha"]), out=square_avg)
        if settings["centered"]:
            grad_avg = state["grad_avg"]
            call("lerp", grad_avg, grad, number(1 - group["alpha"]), out=grad_avg)
            avg = (square_avg - grad_avg * grad_avg).sqrt()
        else:
            avg = square_avg.sqrt()
        step = grad / (avg + scalar(group["eps"], param.dtype))
        if settings["momentum"]:
            buf = state["momentum_buffer"]
            step = buf.mul_(scalar(group["momentum"], param.dtype)).add_(step)
        add_scaled(param, step, group["lr"], sign=-1)


class Adadelta(Optimizer):
    """Adadelta, with PyTorch's update rule, arguments and state (``step``, ``square_avg``,
    ``acc_delta``).

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups.
        lr: a scale of the computed update.
        rho: the decay rate of the running averages.
        eps: added for numerical stability.
        weight_decay: L2 penalty added to the gradient.
        maximize: ascend instead of descend.

    Raises:
        ValueError: for a negative setting or ``rho`` outside [0, 1].

    Examples:
        >>> w = nn.Parameter(tg.tensor([1.0]))
        >>> opt = optim.Adadelta([w])
        >>> w.grad = tg.tensor([1.0])
        >>> opt.step()
        >>> w.item() < 1.0
        True
    """

    elementwise = True
    numbers = ("lr", "rho", "eps", "weight_decay")
    zero_tested = ("weight_decay",)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False):
        check_settings("Adadelta", lr=lr, eps=eps, weight_decay=weight_decay)
        if not 0 <= rho <= 1:
            raise ValueError(f"invalid Adadelta settings: rho={rho} (must be in [0, 1])")
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def initial_state(self, param, settings) -> dict:
        return {
            "step": _step_count(),
            "square_avg": zeros_like(param),
            "acc_delta": zeros_like(param),
        }

    def update(self, param, grad, state, group, settings) -> None:
        # v = rho v + (1 - rho) g^2;  delta = sqrt(u + eps) / sqrt(v + eps) * g;
        # u = rho u + (1 - rho) delta^2;  p -= lr delta
        if not state:
            state.update(self.initial_state(param, settings))
        grad = ascent_decayed(param, grad, group, settings)
        state["step"].add_(1)
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        rho, eps = number(group["rho"]), scalar(group["eps"], param.dtype)
        call("ema_square", square_avg, grad, rho, out=square_avg)
        delta = (acc_delta + eps).sqrt() / (square_avg + eps).sqrt() * grad
        call("ema_square", acc_delta, delta, rho, out=acc_delta)
        add_scaled(param, delta, group["lr"], sign=-1)
