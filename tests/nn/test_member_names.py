"""Member names follow PyTorch's rules: a string, not empty, without a dot."""

from __future__ import annotations

import pytest

import tracegrad as tg
from tracegrad import nn

REGISTER = {
    "parameter": lambda m, name: m.register_parameter(name, nn.Parameter(tg.ones(2))),
    "buffer": lambda m, name: m.register_buffer(name, tg.ones(2)),
    "module": lambda m, name: m.add_module(name, nn.Tanh()),
}


@pytest.mark.parametrize("kind", list(REGISTER))
@pytest.mark.parametrize(
    ("name", "message"), [("", 'can\'t be empty string ""'), ("a.b", 'can\'t contain "."')]
)
def test_empty_and_dotted_names_raise_key_error(kind, name, message):
    model = nn.Linear(2, 2)
    with pytest.raises(KeyError) as error:
        REGISTER[kind](model, name)
    assert error.value.args[0] == f"{kind} name {message}"
    assert name not in model._parameters and name not in model._buffers


def test_setattr_of_a_parameter_checks_its_name():
    with pytest.raises(KeyError):
        setattr(nn.Linear(2, 2), "a.b", nn.Parameter(tg.ones(2)))
    with pytest.raises(KeyError):
        nn.ModuleDict({"a.b": nn.Tanh()})


@pytest.mark.parametrize("kind", list(REGISTER))
def test_names_must_be_strings(kind):
    with pytest.raises(TypeError, match=f"{kind} name should be a string. Got int"):
        REGISTER[kind](nn.Linear(2, 2), 1)


def test_any_other_name_is_kept():
    model = nn.Linear(2, 2)
    for name in ["layer-1", "w\u00b2", "a b", "\n"]:
        model.register_parameter(name, nn.Parameter(tg.ones(2)))
    assert [n for n, _ in model.named_parameters()][2:] == ["layer-1", "w\u00b2", "a b", "\n"]
