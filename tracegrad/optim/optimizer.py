"""Optimizer base: parameter groups, per-parameter state, zero_grad, state_dict.

Updates are tensor ops writing in place under ``no_grad``, as PyTorch's are: eagerly they write
into the parameters' and the state's memory and bump their version counters (so a stale saved
value is caught); traced, the same code records the compiled step's update.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np

from tracegrad import tape
from tracegrad.changes import CountedDict
from tracegrad.optim.grouped import update_grouped
from tracegrad.tensor import Tensor, active_tracer, float_errors_ignored, wrap


class Optimizer:
    """The base of the optimizers: parameter groups, state, ``zero_grad``, ``step`` and
    state dicts in PyTorch's layout.

    A subclass writes its update once in in-place tensor ops; the same code runs eagerly and when
    a whole training step is compiled.

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups (each may
            override the defaults).
        defaults: the hyperparameters of groups that do not set their own.
    """

    # Group entries learning-rate schedulers keep for themselves. No update reads them, so a
    # compiled step's guards leave them out: creating a scheduler recompiles nothing.
    schedule_keys = frozenset({"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"})

    # The hyperparameters the update uses as numbers (each entry of a tuple such as Adam's
    # betas): a compiled step reads them from the group as inputs on every call, so a new
    # learning rate compiles nothing (see tracegrad/tracer/hyperparameters.py).
    numbers: tuple[str, ...] = ()
    # Those of the numbers whose being 0 decides what the update computes (a momentum buffer,
    # a weight decay term): a compiled step is specialized on that, not on their values.
    zero_tested: tuple[str, ...] = ()
    # Whether ``update`` is elementwise in the parameter and its state (0-d state entries
    # aside, which it changes alike whatever the values): eagerly, small parameters are then
    # updated together and large ones in pieces (tracegrad/optim/grouped.py)
    elementwise = False

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.state: dict = {}
        self.param_groups: list[dict] = []
        # group index -> its small parameters updated together (tracegrad/optim/grouped.py)
        self.flat_groups: dict = {}
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        group = CountedDict(group)  # compiled steps' guards count changes to hyperparameters
        group["params"] = (
            [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        )
        for p in group["params"]:
            if not isinstance(p, Tensor) or not p.is_leaf:
                raise ValueError("optimizer can only optimize leaf Tensors")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad = wrap(np.zeros_like(p.grad.array))

    def step(self, closure=None):
        """Apply one update to every parameter that has a gradient; returns closure's loss.

        Updates are tensor ops under no_grad, so a compiled training step traces them."""
        loss = None
        if closure is not None:
            with tape.enable_grad():
                loss = closure()
        tracer = active_tracer()
        eager = contextlib.nullcontext(self.param_groups)
        # Traced, the groups' numbers are the compiled step's inputs
        traced = tracer.optimizer_step(self) if tracer is not None else eager
        # inf and nan results, not warnings, as eager ops give (once for the whole update)
        with traced as read, tape.no_grad(), float_errors_ignored():
            for index, (group, numbers) in enumerate(zip(self.param_groups, read, strict=True)):
                pairs = [(p, _grad_for(p)) for p in group["params"] if p.grad is not None]
                if tracer is None and self.elementwise:
                    pairs = update_grouped(self, index, pairs, numbers, group)
                for p, grad in pairs:
                    self.update(p, grad, self.state.setdefault(p, {}), numbers, group)
        return loss

    def initial_state(self, param: Tensor, settings: dict) -> dict | None:
        """The state this optimizer's first update of ``param`` starts from, when that update
        is its every later update run on this state; its ``update`` makes the state here.
        A compiled training step makes it before its first call traces (only for the
        parameters that call steps), so that call already has the state of every later call
        and a training loop compiles once. None when the first update is different (it
        makes its state from the gradient, say) or makes none."""
        return None

    def update(self, param: Tensor, grad: Tensor, state: dict, group: dict, settings: dict):
        """Update ``param`` in place from ``grad``; ``state`` holds this parameter's buffers.
        Its numbers come from ``group`` (Python numbers, or a compiled step's inputs when
        traced), what decides the code from ``settings`` (the parameter group itself)."""
        raise NotImplementedError

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """PyTorch's layout: state by parameter index, groups with parameter indices."""
        index: dict[int, int] = {}  # id of a parameter -> its index
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {
            index[id(p)]: {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
            for p, s in self.state.items()
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)
        ):
            raise ValueError(
                "loaded state dict has a different number of parameter groups or parameters"
            )
        params = {
            i: p
            for g, own in zip(groups, self.param_groups)
            for i, p in zip(g["params"], own["params"])
        }
        self.state = {
            params[i]: {
                k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in s.items()
            }
            for i, s in state_dict["state"].items()
        }
        for g, own in zip(groups, self.param_groups):
            own.update({k: v for k, v in g.items() if k != "params"})

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({settings})"


def scalar(value, dtype):
    """A hyperparameter as the operand of an op on tensors of ``dtype``: a Python number as
    it is (NumPy rounds a weak scalar to the dtype), a traced one (a float64 input) rounded
    to the dtype in the graph: the same bits."""
    return value.to(dtype) if isinstance(value, Tensor) else value


def number(value) -> Tensor:
    """A hyperparameter as the 0-d float64 tensor an update op takes (tracegrad/ops/optim.py)."""
    return value if isinstance(value, Tensor) else wrap(np.array(value, np.float64))


def add_scaled(target: Tensor, other: Tensor, alpha, sign: int = 1) -> Tensor:
    """``target += sign * alpha * other`` in place (``add_`` or ``sub_`` with ``alpha``): a
    traced alpha, a tensor, scales ``other`` first, as add_ does with a Python one."""
    method = target.add_ if sign > 0 else target.sub_
    if isinstance(alpha, Tensor):
        return method(other * alpha.to(target.dtype))
    return method(other, alpha=alpha)


def _grad_for(param: Tensor) -> Tensor:
    """``param.grad`` in the parameter's dtype."""
    grad = param.grad
    assert grad is not None  # (the update reads only parameters that have a gradient)
    return grad if grad.array.dtype == param.array.dtype else grad.to(param.dtype)


def ascent_decayed(param: Tensor, grad: Tensor, group: dict, settings: dict) -> Tensor:
    """The gradient PyTorch's Adagrad, RMSprop and Adadelta step along: negated for
    ``maximize``, plus ``weight_decay * param`` (L2 decay, when the group has one)."""
    if settings["maximize"]:
        grad = -grad
    if settings["weight_decay"]:
        grad = grad + param * scalar(group["weight_decay"], param.dtype)
    return grad


def check_settings(name: str, **values) -> None:
    """PyTorch's argument checks: every value given must be at least 0."""
    bad = {k: v for k, v in values.items() if not v >= 0}
    if bad:
        settings = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise ValueError(f"invalid {name} settings (each must be >= 0): {settings}")
