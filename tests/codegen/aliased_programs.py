"""Random programs reading one value through many views, for the memory-plan tests.

A program is a short function of ``x`` (a batch, its first dimension 1, 2 or 3), ``w`` (a
square weight) and ``bias``, written as source text from tensor methods that PyTorch has too,
so the same text runs in tracegrad (eager and compiled) and in PyTorch:

    def program(x, w, bias):
        v0 = F.linear(x, w, bias)
        v1 = v0.T - v0
        v2 = (v1 * v1[:1]).tanh()
        return v2

Each line combines values with views of themselves: transposes, permutes, reshapes, slices,
reductions kept as broadcast rows or columns, explicit broadcasts. Those are what a memory plan
writing a result over one of its inputs must not destroy before they are read.
"""

from __future__ import annotations

import linecache
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

_count = iter(range(1 << 62))

UNARY = ["({}).tanh()", "({}).sigmoid()", "-({})", "({}) * 0.5 + 1.0", "({}) * ({})"]
BINARY = ["+", "-", "*"]


@dataclass
class Program:
    source: str
    batch: int
    width: int
    fn: dict = field(default_factory=dict, repr=False)  # namespace id -> function

    def __repr__(self) -> str:
        return f"\n{self.source}# x: ({self.batch}, {self.width})\n"

    def function(self, functional):
        """The program with ``F`` bound to ``functional`` (tracegrad's or PyTorch's)."""
        if id(functional) not in self.fn:
            filename = f"<aliased program {next(_count)}>"
            lines = self.source.splitlines(keepends=True)
            linecache.cache[filename] = (len(self.source), None, lines, filename)
            namespace = {"F": functional}
            exec(compile(self.source, filename, "exec"), namespace)
            self.fn[id(functional)] = namespace["program"]
        return self.fn[id(functional)]

    def arrays(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.batch * 10 + self.width)
        d = self.width
        return {
            "x": rng.uniform(-1, 1, (self.batch, d)),
            "w": rng.uniform(-1, 1, (d, d)),
            "bias": rng.uniform(-1, 1, (d,)),
        }


def views(name: str, shape: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
    """Expressions reading ``name`` (of ``shape``) through views, with their shapes."""
    r, c = shape
    found = [
        (name, shape),
        (f"{name}.T", (c, r)),
        (f"{name}.permute(1, 0)", (c, r)),
        (f"{name}.reshape({c}, {r})", (c, r)),
        (f"{name}.T.reshape({r}, {c})", (r, c)),
        (f"{name}[:1]", (1, c)),
        (f"{name}[:, :1]", (r, 1)),
        (f"{name}.sum(0, keepdim=True)", (1, c)),
        (f"{name}.mean(1, keepdim=True)", (r, 1)),
        (f"{name}[:1].expand({r}, {c})", (r, c)),
        (f"{name}.reshape(1, {r * c})", (1, r * c)),
    ]
    if r > 1:
        found.append((f"{name}[1:]", (r - 1, c)))
    return found


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        return None


@st.composite
def aliased_programs(draw) -> Program:
    batch, width = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([2, 3]))
    pool = {"x": (batch, width), "w": (width, width)}
    lines = []
    if draw(st.booleans()):
        lines.append("v0 = F.linear(x, w, bias)")
        pool["v0"] = (batch, width)
    for _ in range(draw(st.integers(1, 5))):
        name = f"v{len(lines)}"
        operands = [view for value, shape in pool.items() for view in views(value, shape)]
        first, shape = draw(st.sampled_from(operands[-22:]))  # mostly the latest values
        kind = draw(st.sampled_from(["binary", "binary", "unary", "matmul"]))
        factors = [(e, s) for e, s in operands if s[0] == shape[1] and s[1] <= 3]
        if kind == "unary" or (kind == "matmul" and not factors):
            expression = draw(st.sampled_from(UNARY)).format(first, first)
        elif kind == "matmul":
            second, other = draw(st.sampled_from(factors))
            expression, shape = f"({first}) @ ({second})", (shape[0], other[1])
        else:
            seconds = [(e, s) for e, s in operands if _broadcast(shape, s)]
            second, other = draw(st.sampled_from(seconds))
            op = draw(st.sampled_from(BINARY))
            expression, shape = f"({first}) {op} ({second})", _broadcast(shape, other)
        lines.append(f"{name} = {expression}")
        pool[name] = shape
    last = f"v{len(lines) - 1}" if lines else "x"
    body = "".join(f"    {line}\n" for line in lines)
    return Program(f"def program(x, w, bias):\n{body}    return {last}\n", batch, width)
