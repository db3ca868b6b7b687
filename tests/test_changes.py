"""tracegrad.changes counts changes to module trees, training flags and parameter groups:
every way of changing them must move the count, or a compiled step's guards would miss it."""

from __future__ import annotations

import pytest

import tracegrad as tg
from tracegrad import changes, nn, optim

GROUP_CHANGES = {
    "item set": lambda g: g.__setitem__("lr", 0.5),
    "item deleted": lambda g: g.__delitem__("momentum"),
    "update": lambda g: g.update(lr=0.5),
    "|=": lambda g: g.__ior__({"lr": 0.5}),
    "setdefault": lambda g: g.setdefault("extra", 1.0),
    "pop": lambda g: g.pop("momentum"),
    "popitem": lambda g: g.popitem(),
    "clear": lambda g: g.clear(),
}


@pytest.mark.parametrize("change", GROUP_CHANGES.values(), ids=GROUP_CHANGES.keys())
def test_every_change_to_a_parameter_group_is_counted(change):
    group = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1).param_groups[0]
    assert isinstance(group, dict)  # PyTorch's type, for code that checks it
    before = changes.count[0]
    change(group)
    assert changes.count[0] > before


MODULE_CHANGES = {
    "train(False)": lambda m: m.train(False),
    "eval()": lambda m: m.eval(),
    "a submodule's flag set": lambda m: setattr(m[0], "training", False),
    "a submodule replaced": lambda m: m.__setitem__(1, nn.Tanh()),
    "a submodule added": lambda m: m.append(nn.ReLU()),
    "a submodule deleted": lambda m: delattr(m, "1"),
    "a parameter replaced": lambda m: setattr(m[0], "bias", nn.Parameter(tg.zeros(2))),
    "a parameter set to None": lambda m: setattr(m[0], "bias", None),
    "a parameter registered": lambda m: m.register_parameter("w", nn.Parameter(tg.zeros(2))),
    "a buffer registered": lambda m: m.register_buffer("mean", tg.zeros(2)),
    "a submodule added by name": lambda m: m.add_module("extra", nn.ReLU()),
}


@pytest.mark.parametrize("change", MODULE_CHANGES.values(), ids=MODULE_CHANGES.keys())
def test_every_change_to_a_module_tree_or_training_flag_is_counted(change):
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    before = changes.count[0]
    change(model)
    assert changes.count[0] > before


def test_reading_settings_counts_nothing():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    group = optim.SGD(model.parameters(), lr=0.1).param_groups[0]
    before = changes.count[0]
    _ = model.training, model[0].training, group["lr"], group.get("momentum"), dict(group)
    assert changes.count[0] == before


def test_a_buffer_assigned_anew_is_counted():
    model = nn.Linear(2, 2)
    model.register_buffer("mean", tg.zeros(2))
    before = changes.count[0]
    model.mean = tg.ones(2)  # (a running statistic replaced in a forward, say)
    assert changes.count[0] > before
