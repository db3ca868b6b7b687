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
                self._init_state(p, self.state.setdefault(p, {}), group)

    @staticmethod
    def _init_state(param, state, settings) -> None:
        state["step"] = _step_count()
        state["sum"] = full_like(param, settings["initial_accumulator_value"])

    def update(self, param, grad, state, group, settings) -> None:
        # sum += g^2;  p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)
        if not state:
            self._init_state(param, state, settings)
        grad = ascent_decayed(param, grad, group, settings)
        state["step"].add_(1)
        state["sum"].add_(grad * grad)
        # The decayed rate in float64, as PyTorch computes it from Python floats
        clr = group["lr"] / ((state["step"].double() - 1) * group["lr_decay"] + 1)
        std = state["sum"].sqrt() + scalar(group["eps"], param.dtype)
        add_scaled(param, grad / std, clr, sign=-1)


class RMSprop(Optimizer):
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

    def update(self, param, grad, state, group, settings) -> None:
        # v = a v + (1 - a) g^2;  avg = sqrt(v - mean(g)^2 (centered) or v) + eps;
        # buf = m buf + g / avg, p -= lr buf (momentum) or p -= lr g / avg
        if not state:
            state["step"] = _step_count()
            state["square_avg"] = zeros_like(param)
            if settings["momentum"]:
                state["momentum_buffer"] = zeros_like(param)
            if settings["centered"]:
                state["grad_avg"] = zeros_like(param)
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
    elementwise = True
    numbers = ("lr", "rho", "eps", "weight_decay")
    zero_tested = ("weight_decay",)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False):
        check_settings("Adadelta", lr=lr, eps=eps, weight_decay=weight_decay)
        if not 0 <= rho <= 1:
            raise ValueError(f"invalid Adadelta settings: rho={rho} (must be in [0, 1])")
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def update(self, param, grad, state, group, settings) -> None:
        # v = rho v + (1 - rho) g^2;  delta = sqrt(u + eps) / sqrt(v + eps) * g;
        # u = rho u + (1 - rho) delta^2;  p -= lr delta
        if not state:
            state["step"] = _step_count()
            state["square_avg"] = zeros_like(param)
            state["acc_delta"] = zeros_like(param)
        grad = ascent_decayed(param, grad, group, settings)
        state["step"].add_(1)
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        rho, eps = number(group["rho"]), scalar(group["eps"], param.dtype)
        call("ema_square", square_avg, grad, rho, out=square_avg)
        delta = (acc_delta + eps).sqrt() / (square_avg + eps).sqrt() * grad
        call("ema_square", acc_delta, delta, rho, out=acc_delta)
        add_scaled(param, delta, group["lr"], sign=-1)
