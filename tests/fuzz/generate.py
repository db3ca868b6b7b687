"""Random programs from an integer seed (``random.Random(seed)``, so a seed names a program).

Every program opens the same way: a Holder ``m`` with parameters ``w0`` (rows x cols) and
``w1`` (cols x cols), arguments ``x0`` (requiring grad or not) and ``x1`` (not), and a first
statement that reads them all. Then a few statements from the chosen constructs, mixed with
op-family statements as glue, and the results: the last values the body made. Between calls
the caller moves the arguments, takes an SGD step on ``m`` by hand (unless ``fn`` is a step
itself), and does what the constructs asked (refill a list, update an array, rebind a
closure, swap a layer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .builder import Builder, Var
from .constructs import CONSTRUCTS, GROUPS

# How a step reaches its optimizer: by name, through a dict or a list, or only through helper
# functions whose closures hold it (tracing its step() is the first sign of it).
OPTIMIZER_PATHS = {
    "name": ([], "opt.zero_grad()", "opt.step()"),
    "dict": (['kit = {"opt": opt}'], 'kit["opt"].zero_grad()', 'kit["opt"].step()'),
    "list": (["kit = [opt]"], "kit[0].zero_grad()", "kit[0].step()"),
    "helpers": (
        ["def zero():", "    opt.zero_grad()", "def update():", "    opt.step()"],
        "zero()",
        "update()",
    ),
}

# How the function reaches the Holder ``m``: by name, through a dict, or through a helper.
HOLDER_PATHS = {
    "name": ([], []),
    "dict": (['box = {"m": m}'], ['m = box["m"]']),
    "helper": (["def holder():", "    return m"], ["m = holder()"]),
}

# (an eps far above rounding for those dividing by the gradient's size: a gradient that is 0
# but for rounding, such as a key projection's bias under softmax, would otherwise be its sign)
OPTIMIZERS = [
    "optim.SGD(m.parameters(), lr=0.05, momentum=0.9)",
    "optim.SGD(m.parameters(), lr=0.05, momentum=0.9, dampening=0.3)",
    "optim.Adam(m.parameters(), lr=0.01, eps=1e-6)",
    "optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1, eps=1e-6)",
    "optim.RMSprop(m.parameters(), lr=0.01, momentum=0.5, centered=True, eps=1e-3)",
    "optim.Adagrad(m.parameters(), lr=0.05, eps=1e-3)",
]

# Where a step drops its .grad: first (the usual loop), last, or never (it accumulates)
ZERO_GRAD_PLACES = ["first", "first", "last", "never"]


@dataclass(frozen=True)
class Program:
    seed: int
    constructs: tuple[str, ...]
    source: str


def generate(seed: int, enabled=None) -> Program:
    """The program of ``seed`` drawing on the ``enabled`` construct names (default: all)."""
    rng = random.Random(seed)
    names = sorted(enabled or CONSTRUCTS)
    chosen = rng.sample(names, min(len(names), rng.randint(1, 3)))
    for other in ("mixed", "caller_backward"):
        if "step" in chosen and other in chosen:
            chosen.remove(other)
    b = Builder(rng, rows=rng.randint(2, 4), cols=rng.randint(2, 4))
    for name in chosen:
        if CONSTRUCTS[name].frame:
            CONSTRUCTS[name].emit(b)
    _write_body(b, chosen, names)
    return Program(seed, tuple(sorted(chosen)), _source(b, seed, chosen))


def _write_body(b: Builder, chosen: list[str], names: list[str]) -> None:
    """The opening statement, then the chosen statements (once or twice) among glue ops."""
    r, c = b.rows, b.cols
    b.pool += [Var("x0", (r, c)), Var("x1", (r, c)), Var("m.w0", (r, c))]
    b.let("(x0 @ m.w1).tanh() + m.w0 * x1", (r, c))
    glue = [CONSTRUCTS[n].emit for n in GROUPS["ops"] if n in names]
    glue = glue or [CONSTRUCTS["elementwise"].emit]
    plan = [CONSTRUCTS[n].emit for n in chosen if not CONSTRUCTS[n].frame]
    plan = plan * b.rng.randint(1, 2) + [b.rng.choice(glue) for _ in range(b.rng.randint(2, 5))]
    b.rng.shuffle(plan)
    for emit in plan:
        emit(b)


def _results(b: Builder) -> list[str]:
    """The last one to three values the body made (never an input read as it is)."""
    made = [v.name for v in b.pool if v.name in b.made]
    return made[-b.rng.randint(1, 3) :]


def _nest(names: list[str]) -> str:
    """Results as nested containers: ``{"out": a, "rest": [b, (c,)]}``."""
    rest = [names[1]] if len(names) > 1 else []
    if len(names) > 2:
        rest.append(f"({names[2]},)")
    return f'{{"out": {names[0]}, "rest": [{", ".join(rest)}]}}'


def _step_tail(b: Builder, results: list[str], data_step: bool) -> list[str]:
    """Loss, backward and the update of a whole training step."""
    terms = ["v1", *results]  # v1 reads every parameter
    loss = " + ".join(f"({name}.sum() * {k + 1}.0)" for k, name in enumerate(terms))
    if data_step:
        zero = "m.zero_grad()"
        update = "\n".join(
            [
                "for p in m.parameters():",
                "    if p.grad is not None:  # (a layer the loss does not reach has none)",
                "        p.data.add_(-0.05 * p.grad)",
            ]
        )
    else:
        b.add_setup(f"opt = {b.rng.choice(OPTIMIZERS)}")
        setup, zero, update = OPTIMIZER_PATHS[b.rng.choice(sorted(OPTIMIZER_PATHS))]
        for line in setup:
            b.add_setup(line)
        b.state.append("opt")
        b.add_between('opt.param_groups[0]["lr"] *= 0.5')  # a schedule's decay
        update = b.rng.choice([update] * 4 + ["pass"])
    body = [f"loss = {loss}", "loss.backward()", *update.split("\n")]
    if b.rng.random() < 0.3:  # the caller's own backward: a .grad exists as a call starts
        b.add_between("with tg.enable_grad(): (m.w0 * m.w0).sum().backward()")
    place = b.rng.choice(ZERO_GRAD_PLACES)
    if place == "never":
        return body
    return [zero, *body] if place == "first" else [*body, zero]


def _source(b: Builder, seed: int, chosen: list[str]) -> str:
    results = _results(b)
    tail = _step_tail(b, results, "data_update" in chosen) if b.step else []
    out = _nest(results) if b.containers else f"({', '.join(results)},)"
    if b.step:
        out = f"loss, {out}"
    params = ["x0", "x1", *b.params]
    args = list(params)
    unpack = []
    if b.containers:
        more = ", ".join(params[2:])
        args = ["x0", f'{{"x": [x1], "more": ({more}{"," if more else ""})}}']
        unpack = ['x1 = pack["x"][0]']
        unpack += [f'{p} = pack["more"][{i}]' for i, p in enumerate(params[2:])]
        params = ["x0", "pack"]
    fn_name = "piece" if b.mixed else "fn"
    # (an argument requiring grad gets a .grad, whose guard alone would notice a new state)
    x0_grad = b.rng.choice([".requires_grad_()", ""])
    holder_setup, holder_read = HOLDER_PATHS[b.rng.choice(sorted(HOLDER_PATHS))]
    body = [*holder_read, *unpack, *b.prologue]
    lines = [
        f"# fuzz program: seed {seed}, constructs {', '.join(sorted(chosen))}",
        "def setup(compile_):",
        f"    tg.manual_seed({seed})",
        "    m = Holder()",
        f"    m.w0 = nn.Parameter(tg.randn({b.rows}, {b.cols}, dtype=tg.float64))",
        f"    m.w1 = nn.Parameter(tg.randn({b.cols}, {b.cols}, dtype=tg.float64))",
        f"    x0 = tg.randn({b.rows}, {b.cols}, dtype=tg.float64){x0_grad}",
        f"    x1 = tg.randn({b.rows}, {b.cols}, dtype=tg.float64)",
        *b.setup,
        "    m.to(tg.float64)",
        *("    " + line for line in holder_setup),
        f"    def {fn_name}({', '.join(params)}):",
        *("        " + line for line in body),
        *b.body,
        *("        " + line for line in tail),
        f"        return {out}",
    ]
    if b.mixed:
        lines += [
            "    compiled = compile_(piece)",
            "    def fn(*args):",
            "        return tree_add(compiled(*args), piece(*args))",
        ]
    lines += _between(b)
    state = ", ".join(f"{n}={n}" for n in ["m", "x0", "x1", *b.state])
    flags = f"step={b.step}, mixed={b.mixed}, backward={b.backward and not b.step}, keep={b.keep}"
    lines.append(
        f"    return Case(fn=fn, args=({', '.join(args)},), holder=m, state=lambda: dict({state}),"
        f" between=between, {flags})"
    )
    return "\n".join(lines) + "\n"


def _between(b: Builder) -> list[str]:
    """What the caller does after each call: move the arguments, an SGD step by hand (unless
    the function is a step itself), and the constructs' own actions."""
    lines = ["    def between(i):"]
    if b.nonlocals:
        lines.append(f"        nonlocal {', '.join(b.nonlocals)}")
    lines += ["        with tg.no_grad():", "            x0.add_(0.25)", "            x1.mul_(0.5)"]
    if not b.step:
        lines += [
            "            for p in m.parameters():",
            "                if p.grad is not None:",
            "                    p.sub_(0.1 * p.grad)",
            "                    p.grad = None",
        ]
    lines += ["    " + line for line in b.between]
    return lines
