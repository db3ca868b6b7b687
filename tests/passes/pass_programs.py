"""Random tracegrad programs for the pass tests, as Python source.

A program is a short function of one to three float64 tensors, written line by line from
public tracegrad ops (elementwise ops with broadcasting, reductions, views, matmul, softmax)
and from patterns the optimizer has rules for (``x * 1``, ``(x * 2) * 3``, ``x.exp().log()``,
``log(softmax(x))``, two permutes in a row, the same expression twice...). It is generated as
source text, so a failing example prints as a program one can paste and run:

    def program(x0, x1):
        v0 = x0.softmax(1).log()
        v1 = (v0 * 2.0) * 3.0
        v2 = v1 @ x1
        return (v2, v0)

While drawing, every candidate line runs eagerly on the program's own input arrays; a line is
kept only when its values are finite and moderate (|v| < 1e3), so the programs stay in the
range where the passes must agree with the unoptimized graph to ~1e-10, and domains stay valid
(logs and square roots only see positive values; ``exp`` of log is only taken where defined).
"""

from __future__ import annotations

import itertools
import linecache
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import tracegrad as tg
from tracegrad.ir.core import CONSTANT, Node
from tracegrad.ir.graph import Graph

BIG = 1e3  # values must stay below this, so float64 results are compared at ~1e-10
_counter = itertools.count()


@dataclass
class Program:
    """A generated function: its source, its example arrays and the compiled Python function."""

    source: str
    arrays: list[np.ndarray]
    bound: tuple[int, ...] = ()  # inputs that become constants in `graph()`
    fn: object = field(default=None, repr=False)

    def __post_init__(self):
        filename = f"<random program {next(_counter)}>"
        lines = self.source.splitlines(keepends=True)
        linecache.cache[filename] = (len(self.source), None, lines, filename)
        namespace = {"tg": tg, "np": np}
        exec(compile(self.source, filename, "exec"), namespace)
        self.fn = namespace["program"]

    def __repr__(self) -> str:
        shapes = ", ".join(str(a.shape) for a in self.arrays)
        bound = f"; inputs {list(self.bound)} bound to constants" if self.bound else ""
        return f"\n{self.source}# input shapes {shapes}{bound}\n"

    def tensors(self, requires_grad: bool = False) -> list[tg.Tensor]:
        return [tg.tensor(a.copy(), requires_grad=requires_grad) for a in self.arrays]

    def traced(self) -> Graph:
        """The unoptimized graph with all inputs."""
        return tg.trace(self.fn, *self.arrays)

    def graph(self) -> Graph:
        """The traced graph with the ``bound`` inputs replaced by constants (work for fold)."""
        return bind(self.traced(), {i: self.arrays[i] for i in self.bound})

    def free_arrays(self) -> list[np.ndarray]:
        return [a for i, a in enumerate(self.arrays) if i not in self.bound]


def bind(graph: Graph, constants: dict[int, np.ndarray]) -> Graph:
    """``graph`` with input ``i`` turned into a constant node holding ``constants[i]``."""
    graph = graph.copy()
    heads = [
        Node(CONSTANT, [], [graph.inputs[i]], {"value": np.asarray(array)})
        for i, array in sorted(constants.items())
    ]
    inputs = [v for i, v in enumerate(graph.inputs) if i not in constants]
    return Graph(inputs, heads + graph.nodes, graph.outputs, graph.updates)


# --- the line generators: each returns an expression (source) or None when it does not fit ---


class Pool:
    """The values a new line may read: names and their eager tensors."""

    def __init__(self, draw, names, tensors):
        self.draw, self.names, self.tensors = draw, names, tensors

    def pick(self, accept=lambda t: True, latest: bool = True) -> str | None:
        """A value accepted by ``accept``; by default the latest values first, so lines build
        chains (else the inputs first, so values get read again later)."""
        names = [n for n in self.names if accept(self.tensors[n])]
        names = names[::-1] if latest else names
        return self.draw(st.sampled_from(names)) if names else None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def magnitude(self, name: str) -> float:
        data = self.tensors[name].detach().numpy()
        return float(np.max(np.abs(data), initial=0.0))


def _template(text: str):
    def make(pool):
        a = pool.pick()
        return None if a is None else text.format(a=a)

    return make


def _at_least(ndim: int):
    return lambda t: t.ndim >= ndim


UNARY = {
    "neg": "-{a}",
    "tanh": "{a}.tanh()",
    "sigmoid": "{a}.sigmoid()",
    "relu": "{a}.relu()",
    "abs": "{a}.abs()",
    "exp_of_tanh": "{a}.tanh().exp()",
    "sqrt": "({a} * {a} + 1.0).sqrt()",
    "square": "{a} ** 2",
    "clamp": "{a}.clamp(-1.0, 1.0)",
    "clone": "{a}.clone()",
    # a value read again after an elementwise op read it: not to be overwritten there
    "residual": "{a}.tanh() + {a}",
    "swish": "{a} * {a}.sigmoid()",
    # patterns with a rewrite rule
    "mul_one": "{a} * 1.0",
    "one_mul": "1.0 * {a}",
    "add_zero": "{a} + 0.0",
    "zero_add": "0.0 + {a}",
    "sub_zero": "{a} - 0.0",
    "div_one": "{a} / 1.0",
    "neg_neg": "-(-{a})",
    "log_one_plus": "({a}.abs() + 1.0).log()",
    "log_one_plus_left": "(1.0 + {a} * {a}).log()",
    "exp_of_log": "({a} * {a} + 0.5).log().exp()",
    "log_sigmoid": "{a}.sigmoid().log()",
}
LINES = {name: _template(text) for name, text in UNARY.items()}


def _log_of_exp(pool):
    a = pool.pick()
    return None if a is None or pool.magnitude(a) > 30 else f"{a}.exp().log()"


def _scalar_chain(pool):
    a = pool.pick()
    scalars = st.sampled_from([0.5, 2.0, 3.0, -1.5])
    return None if a is None else f"({a} * {pool.draw(scalars)}) * {pool.draw(scalars)}"


def _shaped_scalar_chain(pool):
    """(x * c) * b with c a size-1 array, possibly of more dims than x (the product
    broadcasts up): a near miss for the scalar rules."""
    a = pool.pick()
    if a is None:
        return None
    ndim = len(pool.shape(a)) + pool.draw(st.integers(0, 1))
    c = f"tg.tensor(np.full({(1,) * ndim!r}, 2.0))"
    return f"({a} * {c}) * 3.0"


def _dim(pool, name):
    return pool.draw(st.integers(0, len(pool.shape(name)) - 1))


def _softmax(pool):
    a = pool.pick(_at_least(1))
    if a is None:
        return None
    method = pool.draw(st.sampled_from(["softmax({d})", "log_softmax({d})", "softmax({d}).log()"]))
    return f"{a}." + method.format(d=_dim(pool, a))


def _sum(pool):
    a = pool.pick()
    ndim = len(pool.shape(a))
    if ndim == 0 or pool.draw(st.booleans()):
        return f"{a}.sum()"
    dims = tuple(sorted(pool.draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
    return f"{a}.sum(dim={dims}, keepdim={pool.draw(st.booleans())})"


def _mean_or_max(pool):
    a = pool.pick(_at_least(1))
    if a is None:
        return None
    d, keep = _dim(pool, a), pool.draw(st.booleans())
    if pool.draw(st.booleans()):
        return f"{a}.mean({d}, keepdim={keep})"
    return f"{a}.max(dim={d}, keepdim={keep})[0]"


def _permutation(pool, name):
    return tuple(pool.draw(st.permutations(range(len(pool.shape(name))))))


def _permute(pool):
    a = pool.pick(_at_least(2))
    if a is None:
        return None
    if pool.draw(st.booleans()):
        return f"{a}.permute{_permutation(pool, a)}"
    return f"{a}.permute{_permutation(pool, a)}.permute{_permutation(pool, a)}"


def _transpose(pool):
    a = pool.pick(_at_least(2))
    if a is None:
        return None
    ndim = len(pool.shape(a))
    i, j = pool.draw(st.lists(st.integers(0, ndim - 1), min_size=2, max_size=2, unique=True))
    return f"{a}.T" if ndim == 2 and pool.draw(st.booleans()) else f"{a}.transpose({i}, {j})"


def _reshape(pool):
    a = pool.pick()
    shape = pool.shape(a)
    choices = [(-1,), (1, *shape), shape[::-1], (*shape, 1)]
    new = pool.draw(st.sampled_from(choices))
    if pool.draw(st.booleans()):
        return f"{a}.reshape{new!r}.reshape{shape!r}"  # there and back
    return f"{a}.reshape{new!r}"


def _expand(pool):
    a = pool.pick()
    shape = pool.shape(a)
    k = pool.draw(st.integers(1, 3))
    if 1 in shape and pool.draw(st.booleans()):
        new = tuple(k if s == 1 else s for s in shape)
    else:
        new = (k, *shape)
    total = f"{a}.expand{new!r}"
    return f"{total}.sum(0)" if len(new) > len(shape) and pool.draw(st.booleans()) else total


def _slice(pool):
    a = pool.pick(_at_least(1))
    if a is None:
        return None
    last = pool.draw(st.booleans())
    n = pool.shape(a)[-1 if last else 0]
    start = pool.draw(st.integers(0, n - 1))
    stop = pool.draw(st.integers(start + 1, n))
    return f"{a}[..., {start}:{stop}]" if last else f"{a}[{start}:{stop}]"


BINARY = {
    "add": "{a} + {b}",
    "sub": "{a} - {b}",
    "mul": "{a} * {b}",
    "div": "{a} / ({b} * {b} + 1.0)",
    "maximum": "tg.maximum({a}, {b})",
    "minimum": "tg.minimum({a}, {b})",
}


def _binary(pool):
    a = pool.pick()
    shape = pool.shape(a)

    def fits(t):
        try:
            np.broadcast_shapes(shape, tuple(t.shape))
        except ValueError:
            return False
        return True

    b = pool.pick(fits, latest=False)
    return pool.draw(st.sampled_from(sorted(BINARY.values()))).format(a=a, b=b)


def _matmul(pool):
    a = pool.pick(_at_least(1))
    if a is None:
        return None
    shape = pool.shape(a)

    def fits(t):
        if t.ndim == 0:
            return False
        try:
            np.matmul(np.zeros(shape), np.zeros(tuple(t.shape)))
        except ValueError:
            return False
        return True

    b = pool.pick(fits, latest=False)
    if b is None or pool.draw(st.booleans()):  # a Gram product always fits
        return f"{a} @ {a}.transpose(-1, -2)" if len(shape) >= 2 else f"{a} @ {a}"
    product = f"({a} @ {b})"
    if len(np.matmul(np.zeros(shape), np.zeros(pool.shape(b))).shape) >= 2:
        return product + ".transpose(-1, -2)" if pool.draw(st.booleans()) else product
    return product


def _transposed_product(pool):
    """(a @ b)^T, which the rules turn into b^T @ a^T."""
    a = pool.pick(_at_least(2))
    if a is None:
        return None
    shape = pool.shape(a)

    def fits(t):
        if t.ndim != len(shape) or t.shape[-2] != shape[-1]:
            return False
        try:
            np.broadcast_shapes(shape[:-2], tuple(t.shape)[:-2])
        except ValueError:
            return False
        return True

    b = pool.pick(fits)
    product = f"({a} @ {b})" if b is not None else f"({a} @ {a}.transpose(-1, -2))"
    return product + ".transpose(-1, -2)"


def _products_of_one_operand(pool):
    """a @ b next to a @ c, or a @ (a @ b): work (and a trap) for horizontal fusion."""
    a = pool.pick(lambda t: t.ndim == 2)
    if a is None:
        return None
    shape = pool.shape(a)

    def product(b_shape) -> tuple | None:
        try:
            return np.matmul(np.zeros(shape), np.zeros(b_shape)).shape
        except ValueError:
            return None

    b = pool.pick(lambda t: t.ndim == 2 and product(tuple(t.shape)) is not None, latest=False)
    if b is None:
        return None
    if product(product(pool.shape(b))) is not None and pool.draw(st.booleans()):
        return f"{a} @ ({a} @ {b})"
    return f"({a} @ {b}).sum(-1, keepdim=True) * ({a} @ {a}.transpose(0, 1))"


def _expand_and_sum(pool):
    """Broadcast size-1 dims, then sum them back with keepdim: sum_to(broadcast_to(x)) in
    the gradient."""
    a = pool.pick(lambda t: 1 in tuple(t.shape))
    if a is None:
        return None
    shape = pool.shape(a)
    k = pool.draw(st.integers(2, 3))
    dims = tuple(i for i, s in enumerate(shape) if s == 1)
    new = tuple(k if s == 1 else s for s in shape)
    return f"{a}.expand{new!r}.sum({dims!r}, keepdim=True)"


def _assembled_products(pool):
    """Products made contiguous in another dim order, or concatenated (attention's heads
    merged back, its q/k/v gradients joined): the memory plan writes them in place. (Each
    product distinct, so CSE leaves them apart; read again by an op, so not an output.)"""
    a = pool.pick(_at_least(2))
    if a is None:
        return None
    ndim = len(pool.shape(a))
    at = f"{a}.transpose(-1, -2)"
    if pool.draw(st.booleans()):
        dims = tuple(pool.draw(st.permutations(range(ndim))))
        return f"({a} @ {at}).permute{dims}.contiguous().tanh()"
    dim = pool.draw(st.integers(-ndim, ndim - 1))
    parts = [f"({a} @ {at})", f"(({a} + 1.0) @ {at}).relu().exp()"]
    parts.append(f"(({a} * 0.5) @ {at}).transpose(-1, -2).contiguous()")  # square: same shape
    return f"tg.cat([{', '.join(parts)}], dim={dim}).tanh()"


def _normalized(pool):
    """A layer norm over the last dim, or gelu's tanh form: with their gradients in the joint
    graph, the rules keeping std and t fire."""
    a = pool.pick(_at_least(1))
    if a is None:
        return None
    if pool.draw(st.booleans()):
        return f"tg.nn.functional.layer_norm({a}, {pool.shape(a)[-1:]!r})"
    return f"tg.nn.functional.gelu({a} * 2.0, approximate='tanh')"


LINES.update(
    normalized=_normalized,
    assembled_products=_assembled_products,
    transposed_product=_transposed_product,
    products_of_one_operand=_products_of_one_operand,
    expand_and_sum=_expand_and_sum,
    log_of_exp=_log_of_exp,
    scalar_chain=_scalar_chain,
    shaped_scalar_chain=_shaped_scalar_chain,
    softmax=_softmax,
    sum=_sum,
    mean_or_max=_mean_or_max,
    permute=_permute,
    transpose=_transpose,
    reshape=_reshape,
    expand=_expand,
    slice=_slice,
    binary=_binary,
    binary2=_binary,  # twice: most interesting graphs combine values
    matmul=_matmul,
)


# --- programs ---------------------------------------------------------------------------------


def _sub_shape(draw, base):
    """A suffix of ``base`` with some dims set to 1: shapes that broadcast against it."""
    n = draw(st.integers(0, len(base)))
    return tuple(1 if draw(st.integers(0, 3)) == 0 else s for s in base[len(base) - n :])


def _acceptable(value) -> bool:
    if not isinstance(value, tg.Tensor) or value.dtype != tg.float64:
        return False
    data = value.detach().numpy()
    return bool(np.all(np.isfinite(data)) and np.max(np.abs(data), initial=0.0) < BIG)


@st.composite
def programs(draw, max_lines: int = 12, bind_inputs: bool = True) -> Program:
    """A random program (see the module docstring) with its example arrays."""
    base = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    n_inputs = draw(st.integers(1, 3))
    shapes = [base] + [_sub_shape(draw, base) for _ in range(n_inputs - 1)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = [rng.uniform(-2.0, 2.0, s) for s in shapes]
    names = [f"x{i}" for i in range(n_inputs)]
    tensors = {n: tg.tensor(a) for n, a in zip(names, arrays, strict=True)}
    lines: list[str] = []
    expressions: list[str] = []
    pool = Pool(draw, list(names), tensors)
    for _ in range(draw(st.integers(3, max_lines))):
        repeat = bool(expressions) and draw(st.integers(0, 5)) == 0
        if repeat:  # the same expression again: work for CSE
            expr = draw(st.sampled_from(expressions))
        else:
            expr = LINES[draw(st.sampled_from(sorted(LINES)))](pool)
        if expr is None:
            continue
        value = eval(expr, {"tg": tg, "np": np}, dict(tensors))
        if not _acceptable(value):
            continue
        name = f"v{len(lines)}"
        lines.append(f"    {name} = {expr}\n")
        expressions.append(expr)
        tensors[name] = value
        pool.names.append(name)
    if not lines:
        lines.append("    v0 = -x0\n")
    last = f"v{len(lines) - 1}"
    extra = draw(st.sampled_from([None, *(f"v{i}" for i in range(len(lines) - 1))]))
    outputs = [last] if extra is None else [last, extra]
    source = f"def program({', '.join(names)}):\n" + "".join(lines)
    returned = outputs[0] if len(outputs) == 1 else f"({', '.join(outputs)})"
    source += f"    return {returned}\n"
    bound: tuple[int, ...] = ()
    if bind_inputs and n_inputs > 1:
        bound = tuple(i for i in range(1, n_inputs) if draw(st.booleans()))
    return Program(source, arrays, bound)
