"""Stochastic gradient descent, with PyTorch's momentum, dampening, weight decay and Nesterov."""

from __future__ import annotations

import numpy as np

from tracegrad.ops import kernels
from tracegrad.optim.optimizer import Optimizer, add_scaled, scalar
from tracegrad.tensor import active_tracer


class SGD(Optimizer):
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
        if active_tracer() is None and _plain(param, grad, group):
            # Eagerly, plain SGD on the arrays (what param.sub_(grad, alpha=lr) computes,
            # without a tensor op's checks); traced steps take the tensor op below.
            scaled = kernels.scratch(grad._data, "sgd")
            np.subtract(param._data, np.multiply(grad._data, group["lr"], out=scaled),
                        out=param._data)  # fmt: skip
            param._version[0] += 1
            return
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


def _plain(param, grad, group) -> bool:
    """Plain SGD (no momentum, weight decay or maximize) of a writable parameter by a
    gradient of its dtype and shape."""
    p, g = param._data, grad._data
    options = group["momentum"] or group["weight_decay"] or group["maximize"]
    if options or type(group["lr"]) not in (int, float) or not p.flags.writeable:
        return False
    return g.dtype == p.dtype and g.shape == p.shape
