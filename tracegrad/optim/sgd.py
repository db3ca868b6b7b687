"""Stochastic gradient descent, with PyTorch's momentum, dampening, weight decay and Nesterov."""

from __future__ import annotations

from tracegrad.creation import zeros_like
from tracegrad.optim.optimizer import Optimizer, add_scaled, scalar


class SGD(Optimizer):
    """Stochastic gradient descent, with PyTorch's update rule, arguments and state.

    With momentum ``mu``, dampening ``tau`` and weight decay ``wd``, each step computes
    ``g = grad + wd * p``, ``b = mu * b + (1 - tau) * g`` (``b = g`` at the first step),
    ``g = g + mu * b`` with Nesterov or ``g = b`` otherwise, and ``p -= lr * g``.

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups.
        lr: the learning rate.
        momentum: the momentum factor (0 for none).
        dampening: dampening of the momentum.
        weight_decay: L2 penalty added to the gradient.
        nesterov: use Nesterov momentum (needs a momentum and zero dampening).
        maximize: ascend instead of descend.

    Raises:
        ValueError: for a negative ``lr``, ``momentum`` or ``weight_decay``, or Nesterov
            without momentum or with dampening.

    Examples:
        >>> w = nn.Parameter(tg.tensor([1.0, -1.0]))
        >>> opt = optim.SGD([w], lr=0.1)
        >>> (w * w).sum().backward()
        >>> opt.step()
        >>> w
        Parameter containing:
        tensor([ 0.8, -0.8], requires_grad=True)
    """

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

    def initial_state(self, param, settings) -> dict | None:
        # Without dampening, the first step's b = g is the rule's b = mu * 0 + g
        if settings["momentum"] and settings["dampening"] == 0:
            return {"momentum_buffer": zeros_like(param)}
        return None

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
            if not state:
                state.update(self.initial_state(param, settings) or {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.clone()
            else:
                add_scaled(buf.mul_(momentum), grad, 1 - group["dampening"])
            grad = grad + buf * momentum if settings["nesterov"] else buf
        add_scaled(param, grad, group["lr"], sign=-1)
