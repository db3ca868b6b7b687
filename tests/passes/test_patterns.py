"""The rewrite-rule language of ``tracegrad.passes.patterns``, one feature per test.

Each test writes a one-rule rule set, runs the engine on a small IR graph and looks at what it
rewrote: operand orders, captures that must agree, any-position and trailing operands,
attribute and constant constraints, alternatives, and the engine's two refusals (a replacement
of another type, a builder that declines after emitting nodes).
"""

from __future__ import annotations

from tracegrad.ir.graph import Graph
from tracegrad.passes import run
from tracegrad.passes.patterns import AnyOf, Const, Emit, Pat, Rule, V, by_op, rewrite


def graph(body: str, inputs: str = "%x:f64[2,3], %y:f64[2,3]") -> Graph:
    return Graph.parse(f"graph({inputs}) {{\n{body}\n}}")


def ops_after(rule: Rule, text: str, inputs: str = "%x:f64[2,3], %y:f64[2,3]") -> list[str]:
    """The ops left once the rule has run and dce has dropped what it replaced."""
    after = run(rewrite(graph(text, inputs), by_op([rule])), ["dce"])
    return [n.op for n in after.nodes]


MUL_ONE = Rule("mul-one", "x * 1 -> x", Pat("mul", V("x"), Const(1.0), commutative=True), "x")


def test_a_commutative_pattern_matches_either_order():
    text = """  %1:f64[] = constant[value=1.0]
  %2:f64[2,3] = mul %1, %x
  %3:f64[2,3] = mul %x, %1
  return %2, %3"""
    assert ops_after(MUL_ONE, text) == []


def test_a_constant_pattern_checks_every_element():
    text = """  %1:f64[3] = constant[value=[1.0, 2.0, 1.0]]
  %2:f64[2,3] = mul %x, %1
  return %2"""
    assert ops_after(MUL_ONE, text) == ["constant", "mul"]


def test_a_name_used_twice_captures_one_value():
    same = Rule("sub-self", "x - x -> 0 * x", Pat("sub", V("x"), V("x")), Emit("mul", "x", "x"))
    text = """  %1:f64[2,3] = sub %x, %x
  %2:f64[2,3] = sub %x, %y
  return %1, %2"""
    assert ops_after(same, text) == ["mul", "sub"]


def test_some_matches_one_operand_at_any_position():
    seen = []

    def record(m):
        seen.append(m.position)
        return m.root.inputs[1 - m.position]

    rule = Rule("drop-neg", "f(-a, b) -> b", Pat("add", some=Pat("neg", V())), record)
    text = """  %1:f64[2,3] = neg %y
  %2:f64[2,3] = add %x, %1
  return %2"""
    assert ops_after(rule, text) == []
    assert seen == [1]


def test_rest_captures_the_trailing_operands():
    seen = []

    def record(m):
        seen.append(tuple(v.name for v in m["others"]))
        return m["x"]

    rule = Rule("first", "where(c, x, ...) -> x", Pat("where", V(), V("x"), rest="others"), record)
    text = """  %1:b8[2,3] = gt %x, %y
  %2:f64[2,3] = where %1, %x, %y
  return %2"""
    assert ops_after(rule, text) == []
    assert seen == [("y",)]


def test_attributes_constrain_by_value_or_predicate():
    by_value = Rule(
        "same", "permute(x, (0, 1)) -> x", Pat("permute", V("x"), attrs={"dims": (0, 1)}), "x"
    )
    identity = {"dims": lambda dims: list(dims) == sorted(dims)}
    by_predicate = Rule("same", "permute(x, id) -> x", Pat("permute", V("x"), attrs=identity), "x")
    text = """  %1:f64[2,3] = permute[dims=(0, 1)] %x
  %2:f64[3,2] = permute[dims=(1, 0)] %x
  return %1, %2"""
    assert ops_after(by_value, text) == ["permute"]
    assert ops_after(by_predicate, text) == ["permute"]


def test_a_replacement_of_another_type_is_refused():
    wrong = Rule("wrong", "sum(x) -> x", Pat("sum_to", V("x")), "x")
    text = """  %1:f64[3] = sum_to[shape=(3,)] %x
  return %1"""
    assert ops_after(wrong, text) == ["sum_to"]


def test_a_builder_that_declines_leaves_no_nodes():
    def declines(m):
        m.emit("exp", [m["x"]])
        return None

    rule = Rule("declines", "exp(x) -> nothing", Pat("exp", V("x")), declines)
    text = """  %1:f64[2,3] = exp %x
  return %1"""
    before = graph(text)
    after = rewrite(graph(text), by_op([rule]))
    assert str(after) == str(before)


def test_any_of_tries_its_alternatives_in_order():
    rule = Rule(
        "inner",
        "exp(neg(x)) or exp(abs(x)) -> exp(x)",
        Pat("exp", AnyOf(Pat("neg", V("x")), Pat("abs", V("x")))),
        Emit("exp", "x"),
    )
    text = """  %1:f64[2,3] = abs %x
  %2:f64[2,3] = exp %1
  %3:f64[2,3] = tanh %x
  %4:f64[2,3] = exp %3
  return %2, %4"""
    assert ops_after(rule, text) == ["exp", "tanh", "exp"]


def test_a_side_condition_sees_the_captures():
    rule = Rule(
        "square",
        "x * x -> x ** 2 for 2-D x",
        Pat("mul", V("x"), V("x")),
        Emit("pow_scalar", "x", exponent=2.0),
        when=lambda m: m["x"].type.ndim == 2,
    )
    text = """  %1:f64[2,3] = mul %x, %x
  %2:f64[3] = sum_to[shape=(3,)] %x
  %3:f64[3] = mul %2, %2
  return %1, %3"""
    assert ops_after(rule, text) == ["pow_scalar", "sum_to", "mul"]


def _reshape_chain(on_build: bool) -> Rule:
    return Rule(
        "reshape-chain",
        "reshape(reshape(x), S) -> reshape(x, S)",
        Pat("reshape", Pat("reshape", V("x"))),
        lambda m: m.emit("reshape", [m["x"]], shape=m.root.attrs["shape"]),
        on_build=on_build,
    )


# A rule whose right side is a reshape of a reshape (of its flattened operand)
ROUND_TRIP = Rule(
    "round-trip",
    "tanh(x) -> reshape(reshape(x, (6,)), (2, 3))",
    Pat("tanh", V("x")),
    lambda m: m.emit("reshape", [m.emit("reshape", [m["x"]], shape=(6,))], shape=(2, 3)),
)
TANH = """  %1:f64[2,3] = tanh %x
  return %1"""


def test_an_on_build_rule_fires_on_the_nodes_a_firing_builds():
    # One round: without on_build, the chain the firing built waits for the next round.
    for on_build, reshapes in ((False, 2), (True, 1)):
        rules = by_op([ROUND_TRIP, _reshape_chain(on_build)])
        after = run(rewrite(graph(TANH), rules, rounds=1), ["dce"])
        assert [n.op for n in after.nodes] == ["reshape"] * reshapes
        assert [n.op for n in run(rewrite(graph(TANH), rules), ["dce"]).nodes] == ["reshape"]
