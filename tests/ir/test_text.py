"""The IR text form: exact printed text for small graphs, round trips, and parse errors."""

from __future__ import annotations

import enum
import textwrap

import numpy as np
import pytest
from ir_graphs import ZOO, Twice, at, constant, inf, mlp, node, val

from tracegrad.ir.core import Phase
from tracegrad.ir.graph import Graph, structure
from tracegrad.ir.lint import GraphLintError
from tracegrad.ir.text import IRParseError, print_graph


class Swap:
    """A custom node's class, defined here so the parser has to import this module."""


def dedent(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def roundtrip(graph: Graph) -> Graph:
    return Graph.parse(print_graph(graph))


# --- expect-tests: the exact text --------------------------------------------------------------


def test_prints_mlp():
    assert str(mlp()) == dedent("""
        graph(%x:f32[4,3], %fc1.weight:f32[2,3], %fc1.bias:f32[2]) {
          %1:f32[3,2] = permute[dims=(1, 0)] %fc1.weight  # model.py:12
          %2:f32[4,2] = matmul %x, %1  # model.py:12
          %3:f32[4,2] = add %2, %fc1.bias  # model.py:12
          %4:f32[4,2] = relu %3  # model.py:13
          %5:f32[] = constant[value=0.5]
          %6:f32[] = sum[dims=(0, 1), keepdim=False] %4  # model.py:14
          %7:f32[] = mul %6, %5  # model.py:14
          return %7
        }
    """)


def swap_graph() -> Graph:
    a, b = val("a", "f32[2,2]"), val("b", "i64[3]")
    c = constant("c", np.array([[1.5, -inf], [0.1, 2.0]], np.float32))
    mask = constant("m", np.array([True, False, True]))
    s1, s2 = val("s1", "f32[2,2]"), val("s2", "f32[2,2]")
    swap = node(
        "custom", [a, c.outputs[0]], [s1, s2], at(7, "t.py"), fn=Swap, args=(("t",), ("t",))
    )
    return Graph([a, b], [c, mask, swap], [s2, mask.outputs[0]], {"a": s1})


def test_prints_constants_custom_nodes_and_updates():
    assert str(swap_graph()) == dedent(f"""
        graph(%a:f32[2,2], %b:i64[3]) {{
          %c:f32[2,2] = constant[value=[[1.5, -inf], [0.1, 2.0]]]
          %m:b8[3] = constant[value=[True, False, True]]
          %s1:f32[2,2], %s2:f32[2,2] = custom[args=(('t',), ('t',)), fn='{__name__}:Swap'] %a, %c  # t.py:7
          return %s2, %m
          update %a <- %s1
        }}
    """)  # noqa: E501


def test_prints_empty_graph():
    assert str(Graph()) == "graph() {\n  return\n}"


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ZOO))
def test_roundtrip_equal_structure(name):
    graph = ZOO[name]()
    back = roundtrip(graph)
    assert structure(back) == structure(graph)
    assert print_graph(back) == print_graph(graph)  # printing is a fixed point


def test_roundtrip_rebuilds_constant_arrays_exactly():
    graph = ZOO["constants"]()
    back = roundtrip(graph)
    for before, after in zip(graph.nodes, back.nodes, strict=True):
        old, new = before.attrs["value"], after.attrs["value"]
        assert (new.dtype, new.shape) == (old.dtype, old.shape)
        assert new.tobytes() == old.tobytes()  # -0.0, nan and -inf included


def test_float32_constants_print_their_short_form():
    graph = Graph([], [constant("c", np.array([0.1, 1 / 3], np.float32))], [], {})
    assert "constant[value=[0.1, 0.33333334]]" in str(graph)


def test_custom_class_is_imported_back():
    back = roundtrip(swap_graph())
    assert back.nodes[2].attrs["fn"] is Swap
    assert roundtrip(ZOO["odd_attrs"]()).nodes[0].attrs["fn"] is Twice


def test_unimportable_class_stays_a_string_for_lint_to_report():
    source = dedent("""
        graph(%x:f32[2]) {
          %y:f32[2] = custom[fn='no_such_module_xyz:Gone'] %x
          return %y
        }
    """)
    graph = Graph.parse(source)
    assert graph.nodes[0].attrs["fn"] == "no_such_module_xyz:Gone"
    with pytest.raises(GraphLintError, match="not a class"):
        graph.lint()


def test_locations_keep_file_and_line_but_not_the_source_text():
    back = roundtrip(ZOO["odd_attrs"]())
    location = back.nodes[0].location
    assert (location.filename, location.lineno, location.line) == (
        "C:\\odd path#1:2\\model.py",
        99,
        "",
    )


def test_graph_parse_reads_hand_written_text():
    # Blank lines, comment lines and loose spacing are accepted; references may point forward.
    source = """
        # a hand-written graph
        graph( %x:f64[3] ,%y:f64[3] ) {

          %s:f64[3] = add %x,%y
          %t:f64[] = sum[keepdim=False, dims=(0,)]   %s   # my file.py:3
          return %t
        }
    """
    graph = Graph.parse(source)
    assert [n.op for n in graph.nodes] == ["add", "sum"]
    assert graph.nodes[1].attrs == {"dims": (0,), "keepdim": False}
    assert graph.nodes[1].location.filename == "my file.py"
    graph.lint()


def test_phases_print_as_origin_notes_and_read_back():
    source = dedent("""
        graph(%x:f32[2], %w:f32[2]) {
          %1:f32[2] = exp %x  # model.py:3
          %2:f32[2] = mul %1, %x  # model.py:3 (grad of exp)
          %3:f32[2] = neg %2  # (grad of exp, grad of mul)
          %4:f32[2] = sub %w, %3  # optim.py:9 (update)
          return %1
          update %w <- %4
        }
    """)
    graph = Graph.parse(source)
    assert [(n.phase, n.grad_of) for n in graph.nodes] == [
        (Phase.FORWARD, None),
        (Phase.BACKWARD, "exp"),
        (Phase.BACKWARD, "exp, mul"),
        (Phase.UPDATE, None),
    ]
    assert str(graph) == source and roundtrip(graph) == graph


def test_scopes_print_before_the_location_and_read_back():
    graph = ZOO["scoped"]()
    assert str(graph) == dedent("""\
        graph(%x:f32[4,2], %w:f32[2,2]) {
          %y:f32[4,2] = matmul %x, %w  # blocks.0.mlp.0 (Linear) model.py:7
          %r:f32[4,2] = relu %y  # "heads-1.a b" (ReLU)
          %g:f32[4,2] = relu_grad %r, %y  # blocks.0.mlp.0 (Linear) model.py:3 (grad of relu)
          %s:f32[4,2] = neg %g  # "my (odd) file.py":30
          return %s
        }""")
    back = roundtrip(graph)
    assert [n.scope for n in back.nodes] == [n.scope for n in graph.nodes]
    assert back.nodes[3].location.filename == "my (odd) file.py" and back.nodes[3].scope is None
    assert back == graph


def test_a_lone_origin_is_not_read_as_a_scope():
    graph = Graph.parse("graph(%x:f32[2]) {\n  %1:f32[2] = neg %x  # (update)\n  return %1\n}")
    assert graph.nodes[0].scope is None and graph.nodes[0].phase is Phase.UPDATE


def test_a_fused_body_prints_nested_below_its_node_and_reads_back_as_a_graph():
    graph = ZOO["fused"]()
    assert str(graph).split("\n")[1:8] == [
        "  %y:f32[4,2] = fused[kind='elementwise add relu'] %x, %b  # model.py:3",
        "    graph(%a0:f32[4,2], %a1:f32[2]) {",
        "      %s:f32[4,2] = add %a0, %a1",
        "      %r:f32[4,2] = relu %s",
        "      return %r",
        "    }",
        "  %g:f32[4,2] = relu_grad %y, %x  # model.py:3 (grad of relu)",
    ]
    back = Graph.parse(str(graph))
    assert isinstance(back.nodes[0].attrs["body"], Graph)
    assert back.nodes[0].attrs["body"] == graph.nodes[0].attrs["body"] and back == graph


def test_a_body_written_as_a_string_attribute_still_reads_back():
    graph = ZOO["fused"]()
    body = str(graph.nodes[0].attrs["body"]).replace("\n", "\\n")
    old_form = dedent(f"""\
        graph(%x:f32[4,2], %b:f32[2], %w:f32[2]) {{
          %y:f32[4,2] = fused[body='{body}', kind='elementwise add relu'] %x, %b  # model.py:3
          return %y
        }}""")
    assert Graph.parse(old_form).nodes[0].attrs["body"] == graph.nodes[0].attrs["body"]


def test_fused_bodies_nest_inside_fused_bodies():
    inner = ZOO["fused"]()
    outer = Graph(inner.inputs[:2], [inner.nodes[0]], inner.outputs[:1])
    wrapper = node("fused", inner.inputs[:2], [val("z", "f32[4,2]")], body=outer, kind="outer")
    graph = Graph(inner.inputs[:2], [wrapper], wrapper.outputs)
    assert str(graph).count("graph(") == 3 and "        %s:f32[4,2] = add %a0, %a1" in str(graph)
    assert roundtrip(graph) == graph


def test_a_constant_of_many_elements_prints_its_values_last():
    mask = np.tril(np.ones((16, 16), np.float32))
    x, out = val("x", "f32[16,16]"), val("y", "f32[16,16]")
    graph = Graph([x], [constant("mask", mask), node("mul", [x, val("mask", "f32[16,16]")], [out])])
    graph.nodes[1].inputs[1] = graph.nodes[0].outputs[0]
    graph.outputs = [out]
    lines = str(graph).split("\n")
    assert lines[1] == "  %mask:f32[16,16] = constant[value=...]"
    assert lines[-2].startswith("  const %mask = [[1.0, 0.0, ") and max(map(len, lines[:-2])) < 60
    back = roundtrip(graph)
    assert back == graph and np.array_equal(back.constant("mask"), mask)
    assert back.constant("mask").dtype == np.float32 and np.array_equal(
        graph.constant("mask"), mask
    )
    with pytest.raises(KeyError, match="no constant node defines %y"):
        graph.constant("y")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("  const %nope = [1.0]", "no constant node of that name"),
        ("  const %c = [1.0, ", "bad constant values"),
        ("  const c = 1", "expected 'const %name = \\[values\\]'"),
    ],
)
def test_bad_const_lines_are_parse_errors(line, message):
    source = "graph() {\n  %c:f32[9] = constant[value=...]\n  return %c\n" + line + "\n}"
    with pytest.raises(IRParseError, match=message):
        Graph.parse(source)


def test_a_bad_fused_body_is_a_parse_error_naming_the_node():
    source = str(ZOO["fused"]()).replace("relu %s", "relu %q")
    with pytest.raises(IRParseError, match="%q is not defined") as caught:
        Graph.parse(source)
    assert "in the body of the fused node defining [%y:f32[4,2]]" in caught.value.__notes__


# --- parse errors ------------------------------------------------------------------------------

HEADER = "graph(%x:f32[2]) {"


@pytest.mark.parametrize(
    ("body", "lineno", "message"),
    [
        (["%y:f32[2] = neg %x"], 2, "missing the closing '}'"),
        (["%y:f16[2] = neg %x", "}"], 2, "bad type f16[2]"),
        (["%y:f32[2] = neg %z", "}"], 2, "%z is not defined"),
        (["%y:f32[2] = neg[a=(1, 2 %x", "}"], 2, "never closed"),
        (["%y:f32[2] = neg[a=__import__('os')] %x", "}"], 2, "bad attributes"),
        (["%y:f32[2] = neg[a=1+2] %x", "}"], 2, "bad attributes"),
        (["%y:f32[2] = neg[1] %x", "}"], 2, "bad attributes"),
        (["%y:f32[2] = neg x", "}"], 2, "expected value references"),
        (["y:f32[2] = neg %x", "}"], 2, "expected '%name:type = op"),
        (["%y:f32[2] = neg %x  # file.py", "}"], 2, "expected a location"),
        (["%y:i64[2] = constant[value=[1.5, inf]]", "}"], 2, "constant value"),
        (["return %x", "return %x", "}"], 3, "one return line"),
        (["update %x -> %x", "}"], 2, "expected 'update %input <- %value'"),
        (["update %x <- %x", "update %x <- %x", "}"], 3, "%x is updated twice"),
        (["%y:f32[2] = neg[a={[1]: 2}] %x", "}"], 2, "bad attributes"),
        (["return %x", "}", "%y:f32[2] = neg %x"], 4, "after the graph's closing"),
        (["%y:f32[2] = neg %x  # (backward)", "}"], 2, "unknown origin 'backward'"),
    ],
)
def test_parse_errors_name_the_line_and_text(body, lineno, message):
    source = "\n".join([HEADER, *body])
    bad_line = source.split("\n")[lineno - 1].strip()
    with pytest.raises(IRParseError) as caught:
        Graph.parse(source)
    assert f"line {lineno}:" in str(caught.value)
    assert message in str(caught.value)
    assert repr(bad_line) in str(caught.value)
    assert caught.value.lineno == lineno


@pytest.mark.parametrize("source", ["", "   \n", "graph(%x:f32[2])", "graph(x) {\n}"])
def test_bad_headers_are_parse_errors(source):
    with pytest.raises(IRParseError, match="line 1"):
        Graph.parse(source)


def test_parse_error_is_a_value_error():
    assert issubclass(IRParseError, ValueError)


def test_printing_an_unknown_attribute_kind_is_a_type_error():
    x, y = val("x", "f32[2]"), val("y", "f32[2]")
    graph = Graph([x], [node("custom", [x], [y], fn=Swap, args=(print,))], [y], {})
    with pytest.raises(TypeError, match="builtin_function_or_method"):
        str(graph)


def test_enum_attributes_print_as_their_base_type():
    class Mode(enum.IntEnum):
        FAST = 2

    class Kind(str, enum.Enum):  # noqa: UP042 (a mixin, whose str() is its name)
        TANH = "tanh"

    x, y = val("x", "f32[2]"), val("y", "f32[2]")
    custom = node("custom", [x], [y], fn=Swap, mode=Mode.FAST, kind=Kind.TANH)
    graph = Graph([x], [custom], [y], {})
    assert f"custom[fn='{__name__}:Swap', kind='tanh', mode=2]" in str(graph)
    assert Graph.parse(str(graph)) == graph
