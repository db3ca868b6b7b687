"""The IR's text form: ``print_graph`` writes it, ``parse_parts`` reads it back.

One line per node, so a graph reads top to bottom like a program::

    graph(%x:f32[32,784], %fc1.weight:f32[128,784]) {
      %1:f32[784,128] = permute[dims=(1, 0)] %fc1.weight  # fc1 (Linear) model.py:12
      %2:f32[32,128] = matmul %x, %1  # fc1 (Linear) model.py:12
      %3:f32[] = constant[value=2.5]
      %4:f32[32,128], %5:f32[32,128] = custom[args=(('t',), ('t',)), fn='pkg.mod:Swap'] %2, %2
      %6:f32[32,128] = mul %4, %3
      %7:f32[128,784] = neg %fc1.weight
      return %6, %5
      update %fc1.weight <- %7
    }

Grammar (``[...]?`` optional, ``{...}*`` repeated; blank lines and lines starting with ``#``
are skipped)::

    graph    := "graph(" decls? ")" "{" line* "}"
    line     := node body? | "return" refs? | "update" ref "<-" ref | "const" ref "=" literal
    body     := graph                      a fused node's body, on the lines below it
    node     := decls? "=" OP attrs? refs? ("#" scope? (FILENAME ":" LINENO)? ("(" ORIGIN ")")?)?
    scope    := (NAME | QUOTED) "(" CLASS ")"   the module call that made the node: its path
                                                and class (``tracegrad.scopes``)
    decls    := decl {"," decl}*          decl := ref ":" type
    refs     := ref {"," ref}*            ref  := "%" (NAME | QUOTED)   NAME := [A-Za-z0-9_.]+
    type     := DTYPE "[" dims? "]"       DTYPE is f32, f64, i64 or b8; "f32[]" is a scalar
    attrs    := "[" KEY "=" literal {"," KEY "=" literal}* "]"   KEYs are Python identifiers,
                                                                 printed in sorted order
    ORIGIN   := "update" | "recomputed" | "grad of " OP {", grad of " OP}*  the phase (see
                                                                 ``ir.core.Phase``); none
                                                                 for a forward node

A value named with any other character (``layer-1.weight``, a space, a quote, Unicode, or the
empty name) prints QUOTED: a double-quoted Python string literal, characters that are not
printable written as escapes (``%"layer-1.weight"``, ``%"w\\u2028"``). A scope's path prints
the same way. A location's filename prints QUOTED when it holds a character that is not
printable, starts with a quote or holds " (" (which would read as a scope); otherwise as is.
The scope's ``outer`` calls are not written (JSON keeps them).

A ``literal`` is Python-literal-like text: ints, floats (``inf``, ``-inf`` and ``nan`` for the
non-finite ones), ``True``/``False``, ``None``, strings, and tuples, lists and dicts of these.
It is read by a small walker over ``ast.parse(..., mode="eval")`` that accepts nothing else
(never ``eval``). Two attribute kinds need the node to be read back:

- a ``constant``'s ``value`` array prints as the nested list of its items (a bare number for
  0-d); the parser rebuilds the array with the node's output dtype and shape. Of more than
  ``INLINE_ELEMENTS`` items it prints ``value=...``, its items in a ``const`` line at the
  end of the graph (``Graph.constant(name)`` gives them), so node lines stay short;
- a Python class (a ``custom`` node's ``fn``) prints as the string ``'module:qualname'``; the
  parser imports the module and walks the qualname, and keeps the string when that fails so
  ``lint`` can say the class is missing. Parsing therefore imports the modules a graph names.

A reference may name a value defined further down (broken graphs print and parse too, so lint
can report on them); with duplicate names the first definition wins. The location's source
``line`` text is not printed. NumPy arrays outside a constant's ``value`` print as plain
lists, and NaN signs and payloads are not kept.
"""

from __future__ import annotations

import ast
import importlib
import math
import re
from typing import TYPE_CHECKING, TypeGuard, cast

import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation
from tracegrad.ir.core import CONSTANT, CUSTOM, Node, Value, phase_of_origin

if TYPE_CHECKING:
    from tracegrad.ir.graph import Graph
from tracegrad.scopes import Scope

BARE = r"[A-Za-z0-9_.]+"
QUOTED = r'"(?:[^"\\\n]|\\.)*"'  # a double-quoted string literal: escapes, no line break
NAME = rf"(?:{BARE}|{QUOTED})"
_DECL = rf"%({NAME}):([A-Za-z0-9]+)\[([^\]]*)\]"
_DECLS = rf"{_DECL}(?:\s*,\s*{_DECL})*"
_REFS = rf"%{NAME}(?:\s*,\s*%{NAME})*"
_NODE_HEAD = re.compile(rf"(?P<outs>{_DECLS})?\s*=\s*(?P<op>[A-Za-z_][A-Za-z0-9_.]*)")
_HEADER = re.compile(r"graph\((?P<decls>.*)\)\s*\{")
_UPDATE = re.compile(rf"update\s+%(?P<key>{NAME})\s*<-\s*%(?P<value>{NAME})")
_CONST = re.compile(rf"const\s+%(?P<name>{NAME})\s*=\s*(?P<value>.*)")
_SCOPE = re.compile(rf"(?P<path>{NAME}) \((?P<kind>[A-Za-z_][A-Za-z0-9_]*)\)(?: (?P<rest>.*)|$)")


class IRParseError(ValueError):
    """The text is not a graph in the form described in ``tracegrad.ir.text``."""

    def __init__(self, lineno: int, text: str, message: str):
        shown = text.strip()
        shown = shown if len(shown) <= 200 else shown[:200] + "..."  # long constants
        super().__init__(f"line {lineno}: {message}: {shown!r}")
        self.lineno = lineno
        self.text = text


# --- printing --------------------------------------------------------------------------------


# A constant of more elements than this prints ``value=...`` on its node's line, and its
# values in a ``const`` line at the end of the graph.
INLINE_ELEMENTS = 8


def print_graph(graph) -> str:
    """The text form of ``graph`` (any object with ``inputs nodes outputs updates``)."""
    return "\n".join(_graph_lines(graph))


def _graph_lines(graph) -> list[str]:
    lines = [f"graph({_decls(graph.inputs)}) {{"]
    for node in graph.nodes:
        lines.append("  " + format_node(node))
        body = node.attrs.get("body")
        if is_graph(body):  # a fused node's body, nested below its line
            lines += ["    " + line for line in _graph_lines(body)]
    lines.append("  return" + (" " + _refs(graph.outputs) if graph.outputs else ""))
    lines += [
        f"  update %{format_name(key)} <- %{format_name(value.name)}"
        for key, value in graph.updates.items()
    ]
    lines += [
        f"  const %{format_name(node.outputs[0].name)} = {format_value(node.attrs['value'])}"
        for node in graph.nodes
        if _elided(node)
    ]
    lines.append("}")
    return lines


def _elided(node: Node) -> bool:
    """Whether a constant's values print at the end of its graph (more than a few)."""
    value = node.attrs.get("value")
    return node.op == CONSTANT and isinstance(value, np.ndarray) and value.size > INLINE_ELEMENTS


def constant_value(graph, name: str) -> np.ndarray:
    """The array of the constant node defining the value ``name``."""
    for node in graph.nodes:
        if node.op == CONSTANT and node.outputs and node.outputs[0].name == name:
            return node.attrs["value"]
    raise KeyError(f"no constant node defines %{name}")


def format_node(node: Node) -> str:
    """One node's line, without indentation: ``%2:f32[3] = add %0, %1  # file.py:7``. A
    fused node's body and a constant's many values are left to ``print_graph``."""
    text = f"{_decls(node.outputs)} = {node.op}".lstrip()
    attrs = {k: v for k, v in node.attrs.items() if not (k == "body" and is_graph(v))}
    if _elided(node):
        attrs["value"] = ...
    if attrs:
        text += f"[{format_attrs(attrs)}]"
    if node.inputs:
        text += " " + _refs(node.inputs)
    notes = []
    if node.scope is not None:
        notes.append(f"{format_name(node.scope.path)} ({node.scope.kind})")
    if node.location is not None:
        notes.append(f"{_format_filename(node.location.filename)}:{node.location.lineno}")
    if node.origin:
        notes.append(f"({node.origin})")
    return text + "  # " + " ".join(notes) if notes else text


def format_attrs(attrs: dict) -> str:
    """``k=v, ...`` in sorted key order, values as ``format_value`` writes them."""
    return ", ".join(f"{key}={format_value(attrs[key])}" for key in sorted(attrs))


def format_value(value) -> str:
    """Python-literal-like text for an attribute value (see the module docstring)."""
    # Subclasses (IntEnum, str enums...) print as their base type, which reads back equal.
    for base in (bool, int, str):
        if isinstance(value, base):
            return base.__repr__(value)
    if value is None:
        return "None"
    if value is ...:  # (a constant's values, printed at the end of the graph)
        return "..."
    if isinstance(value, float):
        return _format_float(float(value))
    if isinstance(value, tuple):
        items = [format_value(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(value, list):
        return f"[{', '.join(format_value(v) for v in value)}]"
    if isinstance(value, dict):
        entries = (f"{format_value(k)}: {format_value(v)}" for k, v in value.items())
        return "{" + ", ".join(entries) + "}"
    if isinstance(value, np.ndarray):
        return _format_array(value)
    if isinstance(value, np.generic):
        return format_value(value.item())
    if isinstance(value, type):
        return repr(class_path(value))
    if is_graph(value):
        return repr(print_graph(value))
    raise TypeError(f"cannot write a {type(value).__name__} attribute in the IR text: {value!r}")


def is_graph(value) -> TypeGuard[Graph]:
    """Whether an attribute is a graph (a fused node's body). Told by its parts: this module
    sits below ``ir.graph``, which prints and parses through it."""
    return all(hasattr(value, part) for part in ("inputs", "nodes", "outputs", "updates"))


def _format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def _format_array(array: np.ndarray) -> str:
    if array.ndim == 0:
        return _format_item(cast(np.generic, array[()]))  # (a 0-d array's item: a scalar)
    return "[" + ", ".join(_format_array(sub) for sub in array) + "]"


def _format_item(item: np.generic) -> str:
    # float32 prints its own shortest form (0.1, not 0.10000000149011612) when that reads back
    # to the same float32 through a Python float; otherwise the exact float64 repr.
    if isinstance(item, np.float32) and math.isfinite(item):
        short = str(item)
        if np.float32(float(short)) == item:
            return short
    return format_value(item.item())


def _decls(values) -> str:
    return ", ".join(f"%{format_name(v.name)}:{v.type}" for v in values)


def _refs(values) -> str:
    return ", ".join(f"%{format_name(v.name)}" for v in values)


def format_name(name: str) -> str:
    """A value's name as it follows ``%``: as is when ``[A-Za-z0-9_.]+``, else QUOTED."""
    return name if re.fullmatch(BARE, name) else _quote(name)


def _format_filename(filename: str) -> str:
    plain = filename.isprintable() and not filename.startswith('"') and " (" not in filename
    return filename if plain else _quote(filename)


def _quote(text: str) -> str:
    """A double-quoted literal of ``text`` on one line (``_unquote`` reads it back)."""
    return '"' + "".join(map(_escape, text)) + '"'


def _escape(char: str) -> str:
    if char in '\\"':
        return "\\" + char
    return char if char.isprintable() else repr(char)[1:-1]


def _unquote(name: str) -> str:
    """A NAME as ``format_name`` or ``_format_filename`` wrote it -> the name."""
    return ast.literal_eval(name) if name.startswith('"') else name


def class_path(cls: type) -> str:
    """``'module:qualname'``, the text that names a class in the IR."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(path: str):
    """The class ``class_path`` named, or ``path`` itself when it cannot be imported."""
    module_name, _, qualname = path.rpartition(":")
    try:
        found = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # any failure to import leaves the string for lint to report
        return path
    return found if isinstance(found, type) else path


# --- reading literals ------------------------------------------------------------------------

_NAMED_FLOATS = {"inf": math.inf, "nan": math.nan}


def literal(node: ast.AST):
    """The value of a literal's syntax tree; raises ValueError on anything else."""
    if isinstance(node, ast.Constant) and _is_plain_constant(node.value):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMED_FLOATS:
        return _NAMED_FLOATS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = literal(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand
    if isinstance(node, ast.Tuple):
        return tuple(literal(item) for item in node.elts)
    if isinstance(node, ast.List):
        return [literal(item) for item in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys = cast(list[ast.expr], node.keys)  # (no None: a ** spread is not a literal)
        return {literal(k): literal(v) for k, v in zip(keys, node.values, strict=True)}
    raise ValueError(f"not a literal: {ast.unparse(node)}")


def _is_plain_constant(value) -> bool:
    return value is None or value is ... or isinstance(value, (bool, int, float, str))


def parse_attrs(text: str) -> dict:
    """``k=v, ...`` -> dict, read as the keyword arguments of a call."""
    call = ast.parse(f"_({text})", mode="eval").body
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise ValueError("attributes must be written key=value")
    return {k.arg: literal(k.value) for k in call.keywords}


# --- parsing ---------------------------------------------------------------------------------


def parse_parts(source: str):
    """Read the text form: ``(inputs, nodes, outputs, updates)`` for ``Graph(...)``."""
    lines = _numbered_lines(source)
    if not lines:
        raise IRParseError(1, source, "expected 'graph(...) {'")
    inputs = _parse_header(*lines[0])
    nodes, returns, update_lines, const_lines = _classify(_body(lines))
    values = _definitions(inputs, nodes)
    _link_inputs(nodes, values)
    outputs = _parse_return(returns[0], values) if returns else []
    updates = _parse_updates(update_lines, values)
    _parse_constants(const_lines, nodes)
    return inputs, [node for node, _ in nodes], outputs, updates


def _classify(body):
    """Sort the body's lines into parsed nodes, the return line, the update lines and the
    const lines. A fused node's nested body (the lines from ``graph(`` to its ``}``) becomes
    its ``body`` attribute, as text (``ir.graph`` reads it into a Graph)."""
    nodes: list[tuple[Node, tuple]] = []  # (node, where its inputs are named)
    # (lineno, text) of each line of a kind
    returns: list[tuple[int, str]] = []
    updates: list[tuple[int, str]] = []
    constants: list[tuple[int, str]] = []
    lines = iter(body)
    for lineno, text in lines:
        stripped = text.strip()
        if _is_keyword(stripped, "return"):
            if returns:
                raise IRParseError(lineno, text, "a graph has one return line")
            returns.append((lineno, text))
        elif _is_keyword(stripped, "update"):
            updates.append((lineno, text))
        elif _is_keyword(stripped, "const"):
            constants.append((lineno, text))
        elif stripped.startswith("graph("):
            if not nodes or nodes[-1][0].op != "fused" or "body" in nodes[-1][0].attrs:
                raise IRParseError(lineno, text, "a nested graph must follow a fused node")
            nodes[-1][0].attrs["body"] = "\n".join([text, *_nested(lines, lineno, text)])
        else:
            nodes.append(_parse_node(lineno, text))
    return nodes, returns, updates, constants


def _nested(lines, lineno: int, header: str) -> list[str]:
    """The lines of a nested graph after its header, up to its closing brace."""
    found, depth = [], 1
    for _, text in lines:
        found.append(text)
        depth += _depth_change(text)
        if depth == 0:
            return found
    raise IRParseError(lineno, header, "missing the closing '}' of the nested graph")


def _depth_change(text: str) -> int:
    stripped = text.strip()
    return 1 if stripped.startswith("graph(") else -1 if stripped == "}" else 0


def _parse_constants(lines, nodes) -> None:
    """``const %3 = [[...]]``: the values of a constant printed ``value=...``."""
    elided = {node.outputs[0].name: node for node, _ in nodes if node.attrs.get("value") is ...}
    for lineno, text in lines:
        match = _CONST.fullmatch(text.strip())
        if not match:
            raise IRParseError(lineno, text, "expected 'const %name = [values]'")
        node = elided.pop(_unquote(match["name"]), None)
        if node is None:
            raise IRParseError(lineno, text, "no constant node of that name prints value=...")
        try:
            value = literal(ast.parse(match["value"], mode="eval").body)
        except (SyntaxError, ValueError) as exc:
            raise IRParseError(lineno, text, f"bad constant values ({exc})") from None
        node.attrs["value"] = _rebuild_array(lineno, text, value, node.outputs[0].type)


def _numbered_lines(source: str) -> list[tuple[int, str]]:
    """Non-blank, non-comment lines with their 1-based numbers."""
    # split("\n"), not splitlines(): a filename may hold characters splitlines() breaks on.
    lines = enumerate((line.rstrip("\r") for line in source.split("\n")), start=1)
    return [(n, line) for n, line in lines if line.strip() and not line.lstrip().startswith("#")]


def _is_keyword(text: str, word: str) -> bool:
    return text == word or text.startswith(word + " ")


def _parse_header(lineno: int, text: str) -> list[Value]:
    match = _HEADER.fullmatch(text.strip())
    if not match:
        raise IRParseError(lineno, text, "expected 'graph(%name:type, ...) {'")
    return _parse_decls(lineno, text, match["decls"])


def _body(lines):
    """The lines between the header and the closing brace, which must end the text (nested
    graphs, fused nodes' bodies, have braces of their own)."""
    depth = 0
    for i, (_, text) in enumerate(lines[1:], start=1):
        depth += _depth_change(text)
        if depth < 0:
            if i + 1 < len(lines):
                raise IRParseError(*lines[i + 1], "text after the graph's closing '}'")
            return lines[1:i]
    last = lines[-1]
    raise IRParseError(last[0], last[1], "missing the closing '}' of the graph")


def _parse_decls(lineno: int, text: str, decls: str) -> list[Value]:
    decls = decls.strip()
    if not decls:
        return []
    if not re.fullmatch(_DECLS, decls):
        raise IRParseError(lineno, text, "expected '%name:type' declarations like %x:f32[2,3]")
    return [
        Value(_unquote(name), _parse_type(lineno, text, dtype, dims))
        for name, dtype, dims in re.findall(_DECL, decls)
    ]


def _parse_type(lineno: int, text: str, dtype: str, dims: str) -> TensorType:
    try:
        dtype_ = dtypes.from_name(dtype)
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except (KeyError, ValueError):
        raise IRParseError(lineno, text, f"bad type {dtype}[{dims}]") from None
    return TensorType(shape, dtype_)


def _parse_node(lineno: int, text: str):
    """A node and the names of its inputs, which are linked once every value is known."""
    line = text.lstrip()
    head = _NODE_HEAD.match(line)
    if not head:
        raise IRParseError(lineno, text, "expected '%name:type = op ...'")
    outputs = _parse_decls(lineno, text, head["outs"] or "")
    rest = line[head.end() :]
    attrs = {}
    if rest.startswith("["):
        end = _closing_bracket(rest)
        if end is None:
            raise IRParseError(lineno, text, "the attributes' '[' is never closed")
        attrs = _parse_node_attrs(lineno, text, rest[1:end])
        rest = rest[end + 1 :]
    refs = re.match(rf"\s*(?:{_REFS})?", rest)  # (a quoted name may hold a '#')
    assert refs is not None  # (the pattern matches any text)
    tail = rest[refs.end() :].strip()
    if tail and not tail.startswith("#"):
        raise IRParseError(lineno, text, "expected value references like '%x, %1'")
    scope, location, origin = _parse_comment(lineno, text, tail[1:]) if tail else (None,) * 3
    try:
        phase, grad_of = phase_of_origin(origin)
    except ValueError as exc:
        raise IRParseError(lineno, text, str(exc)) from None
    node = Node(head["op"], [], outputs, attrs, location, phase=phase, grad_of=grad_of, scope=scope)
    _rebuild_attrs(lineno, text, node)
    return node, (lineno, text, _parse_refs(lineno, text, refs[0]))


def _closing_bracket(text: str) -> int | None:
    """The index of the bracket closing ``text[0]``, skipping over quoted strings."""
    depth, quote, i = 0, None, 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1  # an escaped character never ends the string
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _parse_node_attrs(lineno: int, text: str, attrs: str) -> dict:
    try:
        return parse_attrs(attrs)
    except (SyntaxError, ValueError, TypeError) as exc:  # TypeError: an unhashable dict key
        raise IRParseError(lineno, text, f"bad attributes ({exc})") from None


def _rebuild_attrs(lineno: int, text: str, node: Node) -> None:
    """Turn a constant's nested list back into its array and a custom's fn into its class."""
    value = node.attrs.get("value")
    if (
        node.op == CONSTANT
        and value is not ...
        and "value" in node.attrs
        and len(node.outputs) == 1
    ):
        node.attrs["value"] = _rebuild_array(lineno, text, value, node.outputs[0].type)
    fn = node.attrs.get("fn")
    if node.op == CUSTOM and isinstance(fn, str):
        node.attrs["fn"] = resolve_class(fn)


def _rebuild_array(lineno: int, text: str, value, type_: TensorType) -> np.ndarray:
    try:
        array = np.array(value, dtype=type_.dtype.np)
    except (TypeError, ValueError, OverflowError) as exc:
        raise IRParseError(lineno, text, f"constant value is not a {type_} array ({exc})") from None
    # A nested list loses the trailing dims of an empty array, e.g. (0, 3): restore them.
    return array.reshape(type_.shape) if array.size == type_.numel else array


def _parse_comment(lineno: int, text: str, comment: str):
    """``fc1 (Linear) file.py:12 (grad of log)``: a scope, a location and an origin in
    parentheses, each optional."""
    body, origin = _split_origin(comment.removeprefix(" "))
    scope = None
    written = _SCOPE.fullmatch(body)
    if written:
        scope, body = Scope(_unquote(written["path"]), written["kind"]), written["rest"] or ""
    return scope, (_parse_location(lineno, text, body) if body else None), origin


def _split_origin(body: str) -> tuple[str, str | None]:
    """The comment without its trailing ``(ORIGIN)``, and the origin. A comment that is a
    scope alone (``fc1 (Linear)``) has none."""
    start = body.rfind("(") if body.endswith(")") else -1
    if start < 0 or (start > 0 and body[start - 1] != " "):
        return body, None
    origin = body[start + 1 : -1]
    if start > 0 and _SCOPE.fullmatch(body) and not _is_origin(origin):
        return body, None
    return body[: max(start - 1, 0)], origin


def _is_origin(text: str) -> bool:
    try:
        phase_of_origin(text)
    except ValueError:
        return False
    return True


def _parse_location(lineno: int, text: str, comment: str) -> SourceLocation:
    filename, _, number = comment.rpartition(":")
    try:
        return SourceLocation(_unquote(filename), int(number))
    except (ValueError, SyntaxError):
        raise IRParseError(lineno, text, "expected a location '# filename:lineno'") from None


def _parse_refs(lineno: int, text: str, refs: str) -> list[str]:
    refs = refs.strip()
    if not refs:
        return []
    if not re.fullmatch(_REFS, refs):
        raise IRParseError(lineno, text, "expected value references like '%x, %1'")
    return [_unquote(name) for name in re.findall(rf"%({NAME})", refs)]


def _definitions(inputs, nodes) -> dict[str, Value]:
    """Every value by name; the first definition wins when names repeat."""
    table: dict[str, Value] = {}
    for value in [*inputs, *(out for node, _ in nodes for out in node.outputs)]:
        table.setdefault(value.name, value)
    return table


def _lookup(values: dict[str, Value], name: str, lineno: int, text: str) -> Value:
    if name not in values:
        raise IRParseError(lineno, text, f"%{name} is not defined by an input or a node")
    return values[name]


def _link_inputs(nodes, values: dict[str, Value]) -> None:
    for node, (lineno, text, names) in nodes:
        node.inputs = [_lookup(values, name, lineno, text) for name in names]


def _parse_return(line, values: dict[str, Value]) -> list[Value]:
    lineno, text = line
    names = _parse_refs(lineno, text, text.strip().removeprefix("return"))
    return [_lookup(values, name, lineno, text) for name in names]


def _parse_updates(lines, values: dict[str, Value]) -> dict[str, Value]:
    updates: dict[str, Value] = {}
    for lineno, text in lines:
        key, value = _parse_update(lineno, text, values)
        if key in updates:
            raise IRParseError(lineno, text, f"%{key} is updated twice")
        updates[key] = value
    return updates


def _parse_update(lineno: int, text: str, values: dict[str, Value]) -> tuple[str, Value]:
    match = _UPDATE.fullmatch(text.strip())
    if not match:
        raise IRParseError(lineno, text, "expected 'update %input <- %value'")
    return _unquote(match["key"]), _lookup(values, _unquote(match["value"]), lineno, text)
