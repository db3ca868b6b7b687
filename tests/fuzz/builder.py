"""The source writer that constructs append to, and the pool of tensors a program has made.

A generated program is the text of one function, ``setup(compile_)``, that builds its
state (a ``Holder`` module of parameters and buffers, arguments, closure tensors) from
``tg.manual_seed`` and returns a ``Case`` (harness.py): the function under test ``fn``, its
arguments, the state to compare after each call and ``between(i)``, what the caller does
between calls. Inside ``fn`` every tensor value is a float64 local of a known shape (the
*pool*); statements draw their operands from the pool and add their result to it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Var:
    """A float64 tensor the body can read: its expression (a local or ``m.w0``) and shape."""

    name: str
    shape: tuple[int, ...]


@dataclass
class Builder:
    """One program being written: setup lines, the body of ``fn``, the caller's ``between``."""

    rng: random.Random
    rows: int
    cols: int
    setup: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    between: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # fn's parameter names
    args: list[str] = field(default_factory=list)  # the expressions the caller passes
    state: list[str] = field(default_factory=list)  # names compared after each call
    pool: list[Var] = field(default_factory=list)
    prologue: list[str] = field(default_factory=list)  # body statements run before any other
    nonlocals: list[str] = field(default_factory=list)  # closure names between() rebinds
    made: set[str] = field(default_factory=set)  # the pool names the body itself defined
    indent: int = 2
    count: int = 0
    step: bool = False  # fn calls backward (a whole training step)
    mixed: bool = False  # fn calls a compiled piece and eager code itself
    backward: bool = False  # the caller backpropagates through the results
    keep: bool = False  # the caller keeps each call's results and checks them at the end
    containers: bool = False  # arguments and results are nested containers
    options: set[str] = field(default_factory=set)  # the training constructs (steps.py)

    def fresh(self, prefix: str = "v") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def line(self, text: str) -> None:
        self.body.append("    " * self.indent + text)

    def let(self, expr: str, shape: tuple[int, ...], prefix: str = "v") -> Var:
        """Bind ``expr`` to a new local and add it to the pool."""
        var = Var(self.fresh(prefix), tuple(shape))
        self.line(f"{var.name} = {expr}")
        self.pool.append(var)
        self.made.add(var.name)
        return var

    def pick(self, ndim: int | None = None, shape=None, exclude=()) -> Var | None:
        """A random pool tensor (of this rank or shape), recent ones more likely."""
        found = [
            v
            for v in self.pool
            if (ndim is None or len(v.shape) == ndim)
            and (shape is None or v.shape == tuple(shape))
            and v.name not in exclude
        ]
        if not found:
            return None
        weights = [i + 1 for i in range(len(found))]
        return self.rng.choices(found, weights)[0]

    def matrix(self, exclude=()) -> Var:
        """A 2-D pool tensor; the pool always holds one (the first argument)."""
        return self.pick(ndim=2, exclude=exclude)

    def partner(self, var: Var) -> Var | None:
        """Another pool tensor broadcastable with ``var`` (never ``var`` itself, so that
        ``maximum`` and comparisons have no ties)."""
        found = [v for v in self.pool if v.name != var.name and broadcasts(v.shape, var.shape)]
        return self.rng.choice(found) if found else None

    def tensor_literal(self, shape) -> str:
        return f"tg.randn({', '.join(map(str, shape))}, dtype=tg.float64)"

    def add_setup(self, text: str) -> None:
        self.setup.append("    " + text)

    def add_between(self, text: str) -> None:
        self.between.append("        " + text)


def broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """True when ``a`` broadcasts to ``b`` exactly (the result keeps ``b``'s shape)."""
    try:
        return np.broadcast_shapes(a, b) == tuple(b)
    except ValueError:
        return False
