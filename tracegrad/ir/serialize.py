"""The IR as JSON (lossless, like the text form) and as a networkx graph (for analysis and views).

JSON layout::

    {"format": "tracegrad-ir", "version": 1,
     "inputs":  [{"name": "x", "dtype": "f32", "shape": [32, 784]}, ...],
     "nodes":   [{"op": "matmul", "inputs": ["x", "1"],
                  "outputs": [{"name": "2", "dtype": "f32", "shape": [32, 128]}],
                  "attrs": {...}, "location": {"filename": "model.py", "lineno": 12} | null,
                  "origin": "grad of relu" | "update" (only when not forward),
                  "scope": [["blocks", "Sequential"], ["blocks.0", "Block"]] (the module
                  calls that made it, outermost first; only when there is one)}, ...],
     "outputs": ["2"],
     "updates": {"fc1.weight": "1"}}

Values are referred to by name. Attribute values that JSON cannot hold are tagged by a
one-key object, so every other JSON object is a tag:

    {"tuple": [...]}                                  a tuple (JSON lists stay lists)
    {"dict": [[key, value], ...]}                     a dict, keys of any kind
    {"float": "inf" | "-inf" | "nan"}                 a non-finite float
    {"array": {"dtype": "float32", "shape": [..], "data": [flat items]}}    a NumPy array
    {"class": "module:qualname"}                      a class, imported back when read

The networkx form has one node per IR node, keyed by its index in ``graph.nodes``, and an edge
from producer to consumer for each value passed (see ``to_networkx``).
"""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.errors import SourceLocation
from tracegrad.ir.core import Node, Value, phase_of_origin
from tracegrad.ir.text import class_path, format_attrs, is_graph, print_graph, resolve_class
from tracegrad.scopes import Scope

FORMAT, VERSION = "tracegrad-ir", 1


# --- JSON ------------------------------------------------------------------------------------


def to_json(graph) -> str:
    """The JSON text of ``graph`` (any object with ``inputs nodes outputs updates``)."""
    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "inputs": [_value_json(v) for v in graph.inputs],
            "nodes": [_node_json(node) for node in graph.nodes],
            "outputs": [v.name for v in graph.outputs],
            "updates": {key: v.name for key, v in graph.updates.items()},
        }
    )


def _value_json(value: Value) -> dict:
    return {"name": value.name, "dtype": value.dtype.short, "shape": list(value.shape)}


def _node_json(node: Node) -> dict:
    where = node.location
    data: dict[str, object] = {
        "op": node.op,
        "inputs": [v.name for v in node.inputs],
        "outputs": [_value_json(v) for v in node.outputs],
        "attrs": {key: encode(value) for key, value in node.attrs.items()},
        "location": {"filename": where.filename, "lineno": where.lineno} if where else None,
    }
    if node.origin is not None:
        data["origin"] = node.origin  # the phase as the text form notes it: "grad of matmul"
    if node.scope is not None:
        data["scope"] = [[s.path, s.kind] for s in node.scope.chain()]  # outermost first
    return data


def _scope_from(chain) -> Scope | None:
    """A scope from its JSON: the calls [path, class] from the outermost one."""
    scope = None
    for path, kind in chain or ():
        scope = Scope(path, kind) if scope is None else scope.inside(path, kind)
    return scope


def encode(value):
    """An attribute value as plain JSON data, tagging what JSON cannot hold."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):  # subclasses such as IntEnum are written as their base type
        return int(value)
    if isinstance(value, str):
        return str.__str__(value)  # str() of a (str, Enum) member would give its name
    if value is None:
        return None
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else {"float": _nonfinite_name(value)}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, np.ndarray):
        return {"array": _array_json(value)}
    if isinstance(value, np.generic):
        return encode(value.item())
    if isinstance(value, type):
        return {"class": class_path(value)}
    if is_graph(value):  # a fused node's body, as its text (ir.graph reads it back)
        return print_graph(value)
    raise TypeError(f"cannot write a {type(value).__name__} attribute as JSON: {value!r}")


def _nonfinite_name(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return "inf" if x > 0 else "-inf"


def _array_json(array: np.ndarray) -> dict:
    data = [encode(item) for item in array.ravel().tolist()]
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": data}


def decode(data):
    """The inverse of ``encode``."""
    if isinstance(data, list):
        return [decode(item) for item in data]
    if not isinstance(data, dict):
        return data
    if len(data) != 1 or next(iter(data)) not in _TAGS:
        raise ValueError(f"not a tagged attribute value: {data!r}")
    ((tag, content),) = data.items()
    return _TAGS[tag](content)


def _decode_array(content: dict) -> np.ndarray:
    items = [decode(item) for item in content["data"]]
    return np.array(items, dtype=content["dtype"]).reshape(content["shape"])


_TAGS = {
    "tuple": lambda items: tuple(decode(item) for item in items),
    "dict": lambda pairs: {decode(k): decode(v) for k, v in pairs},
    "float": float,
    "array": _decode_array,
    "class": resolve_class,
}


def parts_from_json(source: str):
    """Read ``to_json``'s text: ``(inputs, nodes, outputs, updates)`` for ``Graph(...)``."""
    data = json.loads(source)
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"not {FORMAT} JSON version {VERSION}")
    try:
        return _parts(data)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"malformed {FORMAT} JSON: {exc!r}") from None


def _parts(data: dict):
    inputs = [_value_from(v) for v in data["inputs"]]
    nodes = [_node_from(n) for n in data["nodes"]]
    values = _definitions(inputs, nodes)
    for node, n in zip(nodes, data["nodes"], strict=True):
        node.inputs = [_lookup(values, name) for name in n["inputs"]]
    outputs = [_lookup(values, name) for name in data["outputs"]]
    updates = {key: _lookup(values, name) for key, name in data["updates"].items()}
    return inputs, nodes, outputs, updates


def _value_from(data: dict) -> Value:
    return Value(data["name"], TensorType(tuple(data["shape"]), dtypes.from_name(data["dtype"])))


def _node_from(data: dict) -> Node:
    """A node without its inputs, which are linked once every value is known."""
    where = data["location"]
    phase, grad_of = phase_of_origin(data.get("origin"))
    return Node(
        data["op"],
        [],
        [_value_from(v) for v in data["outputs"]],
        {key: decode(value) for key, value in data["attrs"].items()},
        SourceLocation(where["filename"], where["lineno"]) if where else None,
        phase=phase,
        grad_of=grad_of,
        scope=_scope_from(data.get("scope")),
    )


def _definitions(inputs, nodes) -> dict[str, Value]:
    """Every value by name; the first definition wins when names repeat (as in the text form)."""
    table: dict[str, Value] = {}
    for value in [*inputs, *(out for node in nodes for out in node.outputs)]:
        table.setdefault(value.name, value)
    return table


def _lookup(values: dict[str, Value], name: str) -> Value:
    if name not in values:
        raise ValueError(f"%{name} is used but not defined by an input or a node")
    return values[name]


# --- networkx --------------------------------------------------------------------------------


def to_networkx(graph) -> nx.DiGraph:
    """One networkx node per IR node, keyed by its index in ``graph.nodes``.

    Node attributes: ``op``; ``outputs`` (value names); ``shape`` and ``dtype`` of the first
    output as strings (``"(32, 128)"``, ``"float32"``; None without outputs); ``attrs`` as text
    (``"dims=(1, 0)"``, ``""`` for none); ``location`` as ``"file:line"`` or None; ``scope``,
    the module call that made it, as ``"fc1 (Linear)"`` or None, and ``module_path`` its path
    (``"fc1"``) or None. An edge
    producer -> consumer carries ``value``, the name of the value passed (names joined with
    ``", "`` when one node passes several values to another). Graph attributes: ``inputs`` and
    ``outputs`` (value names) and ``updates`` (input name -> value name).
    """
    result = nx.DiGraph(
        inputs=[v.name for v in graph.inputs],
        outputs=[v.name for v in graph.outputs],
        updates={key: v.name for key, v in graph.updates.items()},
    )
    for index, node in enumerate(graph.nodes):
        result.add_node(index, **_node_attributes(node))
    for (producer, consumer), names in _edges(graph).items():
        result.add_edge(producer, consumer, value=", ".join(names))
    return result


def _node_attributes(node: Node) -> dict:
    first = node.outputs[0] if node.outputs else None
    where = node.location
    return {
        "op": node.op,
        "outputs": [v.name for v in node.outputs],
        "shape": str(first.shape) if first else None,
        "dtype": first.dtype.name if first else None,
        "attrs": format_attrs(node.attrs),
        "location": f"{where.filename}:{where.lineno}" if where else None,
        "scope": str(node.scope) if node.scope else None,
        "module_path": node.scope.path if node.scope else None,
    }


def _edges(graph) -> dict[tuple[int, int], list[str]]:
    """(producer index, consumer index) -> names of the values passed, in first-use order."""
    producer = {v: i for i, node in enumerate(graph.nodes) for v in node.outputs}
    edges: dict[tuple[int, int], list[str]] = {}
    for consumer, node in enumerate(graph.nodes):
        for value in node.inputs:
            if value not in producer:
                continue  # a graph input: no node produces it
            names = edges.setdefault((producer[value], consumer), [])
            if value.name not in names:
                names.append(value.name)
    return edges
