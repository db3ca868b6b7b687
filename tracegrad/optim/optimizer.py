"""Optimizer base: parameter groups, per-parameter state, zero_grad, state_dict.

Updates run on the parameters' NumPy buffers in place (no tape, like PyTorch's updates under
``no_grad``), and bump each parameter's version counter, so a stale saved value is caught.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np

from tracegrad import tape
from tracegrad.changes import CountedDict
from tracegrad.tensor import Tensor, active_tracer


class Optimizer:
    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.state: dict = {}
        self._flat: dict = {}  # group index -> the flat state of its small parameters
        self.param_groups: list[dict] = []
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
                    p.grad = Tensor._wrap(np.zeros_like(p.grad._data))

    def step(self, closure=None):
        """Apply one update to every parameter that has a gradient; returns closure's loss.

        Updates are tensor ops under no_grad, so a compiled training step traces them."""
        loss = None
        if closure is not None:
            with tape.enable_grad():
                loss = closure()
        tracer = active_tracer()
        traced = tracer.optimizer_step(self) if tracer is not None else contextlib.nullcontext()
        # inf and nan results, not warnings, as eager ops give (once for the whole update)
        with traced, tape.no_grad(), np.errstate(all="ignore"):
            for index, group in enumerate(self.param_groups):
                pairs = [(p, _grad_for(p)) for p in group["params"] if p.grad is not None]
                if tracer is None:
                    pairs = self._update_together(index, group, pairs)
                for p, grad in pairs:
                    self.update(p, grad, self.state.setdefault(p, {}), group)
        return loss

    def _update_together(self, index: int, group: dict, pairs: list) -> list:
        """Eagerly, update some of a group's (parameter, gradient) pairs at once; returns the
        pairs left for ``update`` one by one (here: all of them)."""
        return pairs

    def update(self, param: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        """Update ``param`` in place from ``grad``; ``state`` holds this parameter's buffers."""
        raise NotImplementedError

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """PyTorch's layout: state by parameter index, groups with parameter indices."""
        index = {}
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


def _grad_for(param: Tensor) -> Tensor:
    """``param.grad`` in the parameter's dtype."""
    grad = param.grad
    return grad if grad._data.dtype == param._data.dtype else grad.to(param.dtype)
