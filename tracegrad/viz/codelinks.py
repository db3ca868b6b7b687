"""Linking generated source to the boxes of a picture.

The code generator names each node's value after what made it (``model_0_relu = ...``, see
``tracegrad.codegen.naming``) and each function's parameters after the graph's inputs; a box's
variable is the name the generator recorded for its value (``FunctionSource.names``, see
``scene``). A statement ``NAME = ...`` inside ``def f(params):`` is linked to the node whose
variable is NAME in every view whose inputs are named ``params`` (the traced and the
optimized forward graph both match ``forward``; long parameter lists are wrapped); when no
view matches the signature, every view is searched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tracegrad.viz.scene import Scene

# A ``def`` line: its parameters, and ``):`` when they end on it (long ones are wrapped onto
# the lines after ``def name(``, up to a line ``):``)
_DEF = re.compile(r"^def (\w+)\((.*?)(\):)?$")
_ASSIGN = re.compile(r"^\s+(\w+) = ")


@dataclass
class CodeLine:
    text: str
    targets: list[str] = field(default_factory=list)  # ids of the boxes this line defines


@dataclass
class _ViewNames:
    params: list[str | None]  # (an input box always has its variable)
    defined: dict[str, str]  # code variable -> box id, for nodes (not inputs)


def link_code(code: str, scenes: list[Scene]) -> list[CodeLine]:
    names = [_names(scene) for scene in scenes]
    current = names
    lines = []
    signature: list[str] | None = None  # the parameters' text of an open ``def``
    for text in code.splitlines():
        header = _DEF.match(text)
        if header is not None:
            signature = [header.group(2)]
        elif signature is not None and text != "):":
            signature.append(text)
        if signature is not None and (text == "):" or (header and header.group(3))):
            params = [p.strip() for p in ",".join(signature).split(",") if p.strip()]
            current = [n for n in names if n.params == params] or names
            signature = None
        assign = _ASSIGN.match(text)
        targets = []
        if assign:
            var = assign.group(1)
            targets = [n.defined[var] for n in current if var in n.defined]
        lines.append(CodeLine(text, targets))
    return lines


def _names(scene: Scene) -> _ViewNames:
    params = [b.var for b in scene.boxes if b.op == "input"]
    defined = {b.var: b.id for b in scene.boxes if b.op != "input" and b.var}
    return _ViewNames(params, defined)


def first_lines(lines: list[CodeLine]) -> dict[str, int]:
    """Box id -> index of the first line defining it."""
    table: dict[str, int] = {}
    for index, line in enumerate(lines):
        for target in line.targets:
            table.setdefault(target, index)
    return table
