"""Stochastic gradient descent, with PyTorch's momentum, dampening, weight decay and Nesterov."""

from __future__ import annotations

from tracegrad.optim.optimizer import Optimizer, add_scaled, scalar


class SGD(Optimizer):
    elementwise = True
    numbers = ("lr", "momentum", "dampening", "weight_decay")
    zero_tested = ("momentum", "weight_decay")

    def __init__(
        self,
        params,
        lr=1e-3,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        maximize=False,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"invalid SGD settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}"
            )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )

    def update(self, param, grad, state, group, settings) -> None:
        # g = grad + wd * p;  buf = m * buf + (1 - dampening) * g (buf = g at first);
        # step = g + m * buf (Nesterov) or buf;  p -= lr * step
        dtype = param.dtype
        if settings["maximize"]:
            grad = -grad
        if settings["weight_decay"]:
            grad = grad + param * scalar(group["weight_decay"], dtype)
        if settings["momentum"]:
            momentum = scalar(group["momentum"], dtype)
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.clone()
            else:
                add_scaled(buf.mul_(momentum), grad, 1 - group["dampening"])
            grad = grad + buf * momentum if settings["nesterov"] else buf
        add_scaled(param, grad, group["lr"], sign=-1)
