"""Turning graphs into NumPy source.

Each node becomes one statement named after its value, built from its op's ``emit`` template
(``tracegrad.ops``), with the user's source line as a comment. Values are deleted after their
last use so memory is released as the function runs. jinja2 lays out the module
(``templates/module.py.j2``); the logic stays here.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass, field

import jinja2
import numpy as np

import tracegrad
from tracegrad.ir.core import CONSTANT, CUSTOM, FUSED
from tracegrad.ir.graph import Graph, body_of
from tracegrad.ops import OPS

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tracegrad.codegen", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass
class FunctionSource:
    name: str
    params: list[str]
    sections: list[Section]
    returns: list[str]
    constants: dict[str, np.ndarray]
    buffers: list[tuple[str, tuple, str]] = field(default_factory=list)  # name, shape, dtype
    kernels: list[FunctionSource] = field(default_factory=list)  # fused kernels it calls
    returns_tuple: bool = True  # a kernel returns its one array as it is


class Literal:
    """Source text standing for an attribute value (so ``-inf`` prints as ``-np.inf``)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def literal(value):
    if isinstance(value, float) and not math.isfinite(value):
        return Literal("np.nan" if math.isnan(value) else ("np.inf" if value > 0 else "-np.inf"))
    if isinstance(value, tuple):
        return tuple(literal(v) for v in value)
    return value


class Namer:
    """Python identifiers for IR values: inputs keep their (sanitized) names, nodes get v<N>."""

    def __init__(self):
        self.names: dict[int, str] = {}
        self.taken: set[str] = {"np", "rt", "C", "rng"}

    def __call__(self, value, prefix: str = "") -> str:
        if id(value) not in self.names:
            base = re.sub(r"\W", "_", value.name)
            if prefix or base[0].isdigit():
                base = (prefix or "v") + base
            if keyword.iskeyword(base):
                base += "_"
            name, k = base, 1
            while name in self.taken:
                name, k = f"{base}_{k}", k + 1
            self.taken.add(name)
            self.names[id(value)] = name
        return self.names[id(value)]


def _section_of(node) -> str:
    origin = node.origin or ""
    if origin.startswith("grad of"):
        return "backward"
    return "update" if origin == "update" else "forward"


def _comment(node) -> str:
    parts = []
    if node.location is not None:
        parts.append(f"{node.location.filename}:{node.location.lineno}")
    if node.origin:
        parts.append(f"({node.origin})")
    return f"  # {' '.join(parts)}" if parts else ""


def expression(node, args: list[str], constants: dict, target: str, out: str | None = None):
    """The right-hand side for one node; with ``out``, the op writes into that array."""
    if node.op == CONSTANT:
        value = node.attrs["value"]
        if value.ndim == 0:
            text = repr(literal(value.item()))
            return f"np.{value.dtype.name}({text})"
        constants[target] = value
        return f"C[{target!r}]"
    if node.op == CUSTOM:
        raise ValueError("codegen: expand custom nodes first (passes.inline_custom)")
    if node.op == FUSED:
        destination = f", out={out}" if out is not None else ""
        return f"{node.meta['kernel']}({', '.join(args)}{destination})"
    op = OPS[node.op]
    attrs = {k: literal(v) for k, v in node.attrs.items()}
    template = op.emit if out is None else op.out
    return template.format(
        *args, inputs=", ".join(args), indices=", ".join(args[1:]), out=out, **attrs
    )


def emit_kernel(node, name: str) -> FunctionSource:
    """The function computing a fused chain: each member writes into ``out`` in turn, so the
    chain's intermediates need no memory of their own."""
    body = body_of(node)
    names = {id(v): f"a{i}" for i, v in enumerate(body.inputs)}
    result = node.outputs[0].type
    lines = [f"out = np.empty({result.shape}, np.{result.dtype.name}) if out is None else out"]
    for member in body.nodes:
        args = [names[id(v)] for v in member.inputs]
        lines.append(f"out = {expression(member, args, {}, 'out', 'out')}")
        names[id(member.outputs[0])] = "out"
    params = [*(names[id(v)] for v in body.inputs), "out=None"]
    section = Section(f"{node.attrs['kind']} (one buffer, in place)", lines)
    return FunctionSource(name, params, [section], ["out"], {}, returns_tuple=False)


def emit_function(graph: Graph, name: str, *, debug_nans: bool = False) -> FunctionSource:
    namer = Namer()
    params = [namer(v) for v in graph.inputs]
    last_use = _last_uses(graph)
    keep = {id(v) for v in graph.outputs}
    constants: dict[str, np.ndarray] = {}
    sections: list[Section] = []
    kernels: list[FunctionSource] = []
    buffers = [
        (f"{name}_b{i}", shape, dtype)
        for i, (shape, dtype) in enumerate(graph.meta.get("buffers", []))
    ]
    for index, node in enumerate(graph.nodes):
        target = namer(node.outputs[0], prefix="v")
        args = [namer(v) for v in node.inputs]
        title = _section_of(node)
        if not sections or sections[-1].title != title:
            sections.append(Section(title))
        lines = sections[-1].lines
        out = _destination(node, args, buffers)
        if node.op == FUSED:
            kernels.append(emit_kernel(node, f"{name}_kernel{len(kernels)}"))
            node.meta["kernel"] = kernels[-1].name
        rhs = expression(node, args, constants, target, out)
        lines.append(f"{target} = {rhs}{_comment(node)}")
        # where/masked_fill outputs may hold an intended -inf (attention masks): not checked
        if debug_nans and node.op not in (CONSTANT, "where"):
            where = f"{node.location.filename}:{node.location.lineno}" if node.location else "?"
            phase = "backward" if title == "backward" else "forward"
            lines.append(
                f"rt.check_finite({target}, {node.origin or node.op!r}, {phase!r}, {where!r})"
            )
        dead = [namer(v) for v in node.inputs if last_use.get(id(v)) == index and id(v) not in keep]
        if dead:
            lines.append(f"del {', '.join(dict.fromkeys(dead))}")
    returns = [namer(v) for v in graph.outputs]
    sections = sections or [Section("nothing to compute")]
    return FunctionSource(name, params, sections, returns, constants, buffers, kernels)


def _destination(node, args: list[str], buffers) -> str | None:
    """Where the memory plan says the node writes: an input it overwrites, or a buffer."""
    if "inplace" in node.meta:
        return args[node.meta["inplace"]]
    if "buffer" in node.meta:
        return buffers[node.meta["buffer"]][0]
    return None


def _last_uses(graph: Graph) -> dict[int, int]:
    last = {}
    for index, node in enumerate(graph.nodes):
        for v in node.inputs:
            last[id(v)] = index
    return last


def render_module(functions: list[FunctionSource], title: str, runtime: str, graphs) -> str:
    header = []
    for fn, graph in zip(functions, graphs, strict=True):
        counts = ", ".join(f"{op} {n}" for op, n in graph.op_counts().items())
        header.append(f"{fn.name}: {len(graph.nodes)} nodes ({counts})")
        header.append(f"  {fn.name}({', '.join(fn.params)}) -> ({', '.join(fn.returns)})")
    return _ENV.get_template("module.py.j2").render(
        version=tracegrad.__version__,
        title=title,
        header=header,
        runtime=runtime,
        functions=functions,
    )
