"""Op families: each emitter writes one statement applying a Tensor op to pool tensors.

Domains stay well conditioned in float64: ``log``, ``sqrt`` and ``rsqrt`` see ``x*x + 1``,
divisors are ``y*y + 1``, ``exp`` sees ``tanh(x)``, and two-operand ``maximum``/``where``
never compare a tensor with itself (ties would make their gradients a convention).
"""

from __future__ import annotations

from .builder import Builder

UNARY = [
    "{x}.tanh()",
    "{x}.sigmoid()",
    "{x}.sin()",
    "{x}.cos()",
    "{x}.erf()",
    "{x}.tanh().exp()",
    "({x}.square() + 1).log()",
    "({x}.square() + 1).sqrt()",
    "({x}.square() + 1).rsqrt()",
    "{x}.abs().log1p()",
    "{x}.relu()",
    "{x}.clamp(-1.0, 1.0)",
    "{x}.tanh() ** 3",
    "-{x}",
    "{x} * 0.5",
    "2.0 - {x}",
    "tg.sigmoid({x}) * {x}",
]
BINARY = [
    "{x} + {y}",
    "{x} - {y}",
    "{x} * {y}",
    "{x} / ({y}.square() + 1)",
    "tg.maximum({x}, {y})",
    "tg.minimum({x}, {y})",
    "tg.where({y} > {x}, {y}, {x})",
    "{x}.masked_fill({y} > 0.5, 0.25)",
]
KEEPDIM = [
    "{x}.sum({d}, keepdim=True)",
    "{x}.mean({d}, keepdim=True)",
    "{x}.var({d}, keepdim=True)",
    "{x}.std({d}, keepdim=True)",
    "{x}.amax({d}, keepdim=True)",
    "{x}.amin({d}, keepdim=True)",
    "{x}.logsumexp({d}, keepdim=True)",
    "{x}.max({d}, keepdim=True)[0]",
    "{x}.min(dim={d}, keepdim=True).values",
]
SAME_SHAPE = [
    "{x}.softmax({d})",
    "{x}.log_softmax({d})",
    "{x} - {x}.mean({d}, keepdim=True)",
    "{x} * {x}.sum({d}, keepdim=True)",
]
TOTAL = ["{x}.sum()", "{x}.mean()", "{x}.amax()", "(({x} * {x}).sum() + 1).sqrt()"]


def elementwise(b: Builder) -> None:
    """A unary op, or a binary op with a broadcastable partner."""
    x = b.pick()
    y = b.partner(x)
    if y is None or b.rng.random() < 0.4:
        b.let(b.rng.choice(UNARY).format(x=x.name), x.shape)
    else:
        b.let(b.rng.choice(BINARY).format(x=x.name, y=y.name), x.shape)


def reduction(b: Builder) -> None:
    """A reduction over one dim (kept), a softmax-like map, or a total to a scalar."""
    x = b.matrix()
    d = b.rng.randrange(2)
    kind = b.rng.random()
    if kind < 0.45:
        shape = (1, x.shape[1]) if d == 0 else (x.shape[0], 1)
        # var and std of one element divide by zero
        spellings = (
            KEEPDIM if x.shape[d] > 1 else [s for s in KEEPDIM if "var" not in s and "std" not in s]
        )
        b.let(b.rng.choice(spellings).format(x=x.name, d=d), shape)
    elif kind < 0.85:
        b.let(b.rng.choice(SAME_SHAPE).format(x=x.name, d=d), x.shape)
    else:
        b.let(b.rng.choice(TOTAL).format(x=x.name), ())


def shape(b: Builder) -> None:
    """A view or copy that changes the layout, always ending as a matrix."""
    x = b.matrix()
    r, c = x.shape
    choices = [
        (f"{x.name}.t()", (c, r)),
        (f"{x.name}.transpose(0, 1)", (c, r)),
        (f"{x.name}.permute(1, 0)", (c, r)),
        (f"{x.name}.mT", (c, r)),
        (f"{x.name}.reshape({c}, {r})", (c, r)),
        (f"{x.name}.flatten().reshape({r}, {c})", (r, c)),
        (f"{x.name}.reshape(-1).view_as({x.name})", (r, c)),
        (f"{x.name}.unsqueeze(0).expand(2, {r}, {c}).sum(0)", (r, c)),
        (f"{x.name}.unsqueeze(-1).squeeze(-1)", (r, c)),
        (f"{x.name}.repeat(2, 1)", (2 * r, c)),
        (f"{x.name}.tril()", (r, c)),
        (f"{x.name}.triu(1)", (r, c)),
        (f"tg.cat([{x.name}, {x.name}.tanh()], 1)", (r, 2 * c)),
        (f"tg.stack([{x.name}, -{x.name}.sin()]).mean(0)", (r, c)),
        (f"{x.name}.chunk(2, 1)[0]", (r, (c + 1) // 2)),
        (f"{x.name}.split(1, dim=0)[-1]", (1, c)),
    ]
    b.let(*b.rng.choice(choices))


def index(b: Builder) -> None:
    """Basic and advanced indexing: slices, integer lists and tensors, one row kept 2-D."""
    x = b.matrix()
    r, c = x.shape
    rows = [b.rng.randrange(r) for _ in range(b.rng.randint(1, 3))]
    cols = [b.rng.randrange(c) for _ in range(b.rng.randint(1, 3))]
    start = b.rng.randrange(c)
    choices = [
        (f"{x.name}[{min(1, r - 1)}:]", (r - min(1, r - 1), c)),
        (f"{x.name}[:, {start}:]", (r, c - start)),
        (f"{x.name}[::2]", ((r + 1) // 2, c)),
        (f"{x.name}[{rows}]", (len(rows), c)),
        (f"{x.name}[tg.tensor({rows})]", (len(rows), c)),
        (f"{x.name}[{rows[0]}].unsqueeze(0)", (1, c)),
        (f"{x.name}[:, tg.tensor({cols})]", (r, len(cols))),
    ]
    expr, shape_ = b.rng.choice(choices)
    b.let(expr, shape_)


def linalg(b: Builder) -> None:
    """Products of matrices whose inner dims agree, in the spellings the API offers."""
    x = b.matrix()
    r, c = x.shape
    y = b.pick(ndim=2, exclude=(x.name,)) or x
    p, q = y.shape
    choices = []
    if c == p:
        choices += [(f"{x.name} @ {y.name}", (r, q)), (f"tg.mm({x.name}, {y.name})", (r, q))]
        choices.append((f"tg.bmm({x.name}.unsqueeze(0), {y.name}.unsqueeze(0))[0]", (r, q)))
    if c == q:
        choices += [
            (f"{x.name} @ {y.name}.t()", (r, p)),
            (f"tg.einsum('ij,kj->ik', {x.name}, {y.name})", (r, p)),
            (f"tg.matmul({x.name}, {y.name}.transpose(0, 1))", (r, p)),
        ]
    choices.append((f"tg.outer({x.name}.sum(1), {y.name}.mean(0))", (r, q)))
    choices.append((f"{x.name}.t() @ {x.name}", (c, c)))
    b.let(*b.rng.choice(choices))
