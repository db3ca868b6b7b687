"""Value names and file names with any characters: the text form quotes them and reads them
back, JSON keeps them, and plain names still print bare."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ir_graphs import at, node, val

import tracegrad as tg
from tracegrad import nn
from tracegrad.ir.graph import Graph
from tracegrad.ir.text import IRParseError, format_name

# Characters str.splitlines() or the tokenizer end a line on, and other troublemakers
BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
AWKWARD = ['"', "'", "\\", "#", "%", ",", ":", "=", "<-", "(", ")", "[", "]", " ", "\x00", "\ud800"]
NAMES = [*BREAKS, *AWKWARD, "", "layer-1.weight", "fi", "\ufb01", "w\u00b2", '"""', "a" * 5000]


def graph_named(a: str, b: str, out: str, filename: str = "model.py") -> Graph:
    """Two inputs, one node and an update, named by the arguments."""
    x, w = val(a, "f32[2]"), val(b, "f32[2]")
    y = val(out, "f32[2]")
    return Graph([x, w], [node("add", [x, w], [y], at(3, filename))], [y], {b: y})


@pytest.mark.parametrize("name", NAMES)
def test_awkward_names_round_trip(name):
    g = graph_named("x" + name, name + "w", name or "1", filename=f"f{name}.py")
    text = str(g)
    assert len(text.split("\n")) == 5  # header, node, return, update, closing brace
    assert Graph.parse(text) == g
    assert Graph.from_json(g.to_json()) == g


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=3, max_size=3, unique=True), st.text())
def test_any_names_round_trip(names, filename):
    g = graph_named(*names, filename=filename)
    assert Graph.parse(str(g)) == g
    assert Graph.from_json(g.to_json()) == g


def test_plain_names_print_bare_and_others_quoted():
    assert format_name("fc1.weight") == "fc1.weight"
    assert format_name("layer-1.weight") == '"layer-1.weight"'
    assert format_name('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert format_name("") == '""'
    g = graph_named("x", "layer-1.weight", "2", filename="a\nb.py")
    assert str(g).split("\n") == [
        'graph(%x:f32[2], %"layer-1.weight":f32[2]) {',
        '  %2:f32[2] = add %x, %"layer-1.weight"  # "a\\nb.py":3',
        "  return %2",
        '  update %"layer-1.weight" <- %2',
        "}",
    ]


def test_a_quoted_name_must_close():
    with pytest.raises(IRParseError, match="declarations"):
        Graph.parse('graph(%"x:f32[2]) {\n  return\n}')


def test_traced_module_dict_keys_round_trip():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = nn.ModuleDict({"layer-1": nn.Linear(2, 2), 'w\u00b2 "q"': nn.Linear(2, 2)})

        def forward(self, x):
            return self.d['w\u00b2 "q"'](self.d["layer-1"](x)).sum()

    g = tg.trace(Net(), tg.randn(3, 2))
    assert '%"d.layer-1.weight"' in str(g) and '%"d.w\u00b2 \\"q\\".bias"' in str(g)
    assert Graph.parse(str(g)) == g
    assert Graph.from_json(g.to_json()) == g
