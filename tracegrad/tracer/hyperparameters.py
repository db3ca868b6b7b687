"""Optimizer hyperparameters as inputs of a compiled training step.

The numbers an optimizer's update reads from a parameter group (its ``numbers``: a learning
rate, a momentum, Adam's betas and eps) are not baked into the generated step: each one is a
``Hyperparameter``, a 0-d float64 tensor that reads its value from the group whenever the step
runs, lifted as an input named after the optimizer, the key and the group (``opt.lr0``). A
learning-rate schedule then compiles nothing. The update rounds each one to the dtype it
scales, as NumPy does with the Python floats an eager update uses: the same bits.
"""

from __future__ import annotations

import numpy as np

from tracegrad.tensor import Tensor

_NUMBER_TYPES = (int, float)  # (exactly: a bool is a switch, not a number)


def is_number(value) -> bool:
    """Whether a compiled step reads ``value`` as input(s): a Python number, or a tuple of them
    (Adam's betas)."""
    if type(value) is tuple:
        return all(type(v) in _NUMBER_TYPES for v in value)
    return type(value) in _NUMBER_TYPES


class Hyperparameter(Tensor):
    """``optimizer.param_groups[group][key]`` (its entry ``index`` for a tuple) as a 0-d float64
    tensor, read anew every time its data is (from the group in that place: code outside may
    put an equal group dict there)."""

    def __init__(self, optimizer, group: int, key: str, index: int | None = None):
        self._init_autograd(False)
        self.optimizer, self.group, self.key, self.index = optimizer, group, key, index
        self._value: object = None  # the number _array was made from (None: not read yet)
        self._array = np.empty(0)

    @property
    def array(self) -> np.ndarray:
        value = self.optimizer.param_groups[self.group][self.key]
        if self.index is not None:
            value = value[self.index]
        if value is not self._value:  # (a new array only when the group holds a new number)
            self._value, self._array = value, np.array(value, np.float64)
        return self._array


class TracedGroup(dict):
    """A parameter group as a traced update reads it: its settings as they are, and each of
    its ``numbers`` lifted as input(s) of the step when the update first reads it (one it never
    reads, a dampening without momentum, costs the step nothing). ``lift(h, name)`` lifts a
    ``Hyperparameter`` and returns the tensor standing for it; ``names`` formats its name
    from the key (``"opt.{}0"``)."""

    def __init__(self, optimizer, index: int, numbers, names: str, lift):
        group = optimizer.param_groups[index]
        super().__init__((k, v) for k, v in group.items() if k not in numbers or not is_number(v))
        self.group, self.names, self.lift = group, names, lift
        self.source = (optimizer, index)  # where its Hyperparameters read

    def __missing__(self, key):
        value = self.group[key]
        if type(value) is tuple:
            entries = [(Hyperparameter(*self.source, key, j), f"_{j}") for j in range(len(value))]
            lifted = tuple(self.lift(h, self.names.format(key) + tail) for h, tail in entries)
        else:
            lifted = self.lift(Hyperparameter(*self.source, key), self.names.format(key))
        self[key] = lifted
        return lifted

    def get(self, key, default=None):
        return self[key] if key in self.group else default


def group_settings(optimizers) -> list[tuple[object, list[dict]]]:
    """Each optimizer with the settings of its parameter groups now (not their tensors)."""
    return [
        (opt, [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
        for opt in optimizers
    ]
