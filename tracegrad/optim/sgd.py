"""Stochastic gradient descent, with PyTorch's momentum, dampening, weight decay and Nesterov."""

from __future__ import annotations

from tracegrad.optim.optimizer import Optimizer


class SGD(Optimizer):
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

    def update(self, param, grad, state, group) -> None:
        # g = grad + wd * p;  buf = m * buf + (1 - dampening) * g (buf = g at first);
        # step = g + m * buf (Nesterov) or buf;  p -= lr * step
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"]:
            grad = grad + param * group["weight_decay"]
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad + buf * momentum if group["nesterov"] else buf
        param.sub_(grad, alpha=group["lr"])
