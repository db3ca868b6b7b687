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
from .constructs import CONSTRUCTS, GROUPS, STEP_FRAMES
from .steps import StepTail, step_tail

# How the function reaches the Holder ``m``: by name, through a dict, or through a helper.
HOLDER_PATHS = {
    "name": ([], []),
    "dict": (['box = {"m": m}'], ['m = box["m"]']),
    "helper": (["def holder():", "    return m"], ["m = holder()"]),
}


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
        if STEP_FRAMES.intersection(chosen) and other in chosen:
            chosen.remove(other)
    if "eval_calls" in chosen and "accumulate" in chosen:  # (each alternates its own calls)
        chosen.remove("accumulate")
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


def _source(b: Builder, seed: int, chosen: list[str]) -> str:
    results = _results(b)
    tail = step_tail(b, results, "data_update" in chosen) if b.step else None
    out = _nest(results) if b.containers else f"({', '.join(results)},)"
    params = ["x0", "x1", *b.params]
    args = list(params)
    unpack = []
    if b.containers:
        more = ", ".join(params[2:])
        args = ["x0", f'{{"x": [x1], "more": ({more}{"," if more else ""})}}']
        unpack = ['x1 = pack["x"][0]']
        unpack += [f'{p} = pack["more"][{i}]' for i, p in enumerate(params[2:])]
        params = ["x0", "pack"]
    # (an argument requiring grad gets a .grad, whose guard alone would notice a new state)
    x0_grad = b.rng.choice([".requires_grad_()", ""])
    holder_setup, holder_read = HOLDER_PATHS[b.rng.choice(sorted(HOLDER_PATHS))]
    body = [*holder_read, *unpack, *b.prologue]

    def define(name: str, tail_lines: list[str], returned: str) -> list[str]:
        return [
            f"    def {name}({', '.join(params)}):",
            *("        " + line for line in body),
            *b.body,
            *("        " + line for line in tail_lines),
            f"        return {returned}",
        ]

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
    ]
    if "accumulate" in b.options:
        lines += _accumulating(define, tail, out)
    elif "eval_calls" in b.options:
        lines += _evaluating(b, define, tail, out, params, results)
    elif b.mixed:
        lines += define("piece", [], out)
        lines += [
            "    compiled = compile_(piece)",
            "    def fn(*args):",
            "        return tree_add(compiled(*args), piece(*args))",
        ]
    else:
        outputs = ", ".join([*tail.outputs(), out]) if tail else out
        lines += define("fn", tail.lines() if tail else [], outputs)
    lines += _between(b)
    state = ", ".join(f"{n}={n}" for n in ["m", "x0", "x1", *b.state])
    composed = b.mixed or bool(b.options & {"accumulate", "eval_calls"})
    flags = (
        f"step={b.step}, mixed={b.mixed}, composed={composed}, "
        f"backward={b.backward and not b.step}, keep={b.keep}"
    )
    lines.append(
        f"    return Case(fn=fn, args=({', '.join(args)},), holder=m, state=lambda: dict({state}),"
        f" between=between, {flags})"
    )
    return "\n".join(lines) + "\n"


def _accumulating(define, tail: StepTail, out: str) -> list[str]:
    """Gradient accumulation: odd calls backward only (no zero_grad), even ones backward,
    update and zero_grad; each step compiled on its own."""
    return [
        *define("accumulate_step", tail.backward, f"loss, {out}"),
        *define("update_step", tail.updating(), ", ".join([*tail.outputs(), out])),
        "    accumulating, updating = compile_(accumulate_step), compile_(update_step)",
        "    calls = []",
        "    def fn(*args):",
        "        calls.append(len(calls))",
        "        return (updating if len(calls) % 2 == 0 else accumulating)(*args)",
    ]


def _evaluating(b: Builder, define, tail: StepTail, out: str, params, results) -> list[str]:
    """Odd calls train, even ones evaluate under ``tg.no_grad()`` (in eval mode or not), on
    one compiled model: the body as a compiled module's forward, with loss, backward and
    update run eagerly after it; or the body compiled as a function for evaluation and inside
    a whole training step compiled for training."""
    args, values = ", ".join(params), ", ".join(["v1", *results])
    flip = b.rng.random() < 0.5  # eval mode for the evaluation: of the compiled model or m
    if b.rng.random() < 0.5:
        lines = ["    model = compile_(Wrapped(piece, m))"]
        evaluate, mode = f"model({args})", b.rng.choice(["model", "m"])
        train_lines = [
            f"        {values}, = {evaluate}",
            *("        " + line for line in tail.lines()),
            f"        return {', '.join([*tail.outputs(), out])}",
        ]
    else:
        lines = [
            f"    def train_step({args}):",
            f"        {values}, = piece({args})",
            *("        " + line for line in tail.lines()),
            f"        return {', '.join([*tail.outputs(), out])}",
            "    training, evaluating = compile_(train_step), compile_(piece)",
        ]
        evaluate, mode = f"evaluating({args})", "m"
        train_lines = [f"        return training({args})"]
    evaluation = [f"out = {evaluate}"]
    if flip:
        evaluation = [f"{mode}.eval()", *evaluation, f"{mode}.train()"]
    return [
        *define("piece", [], f"({values},)"),
        *lines,
        "    calls = []",
        f"    def fn({args}):",
        "        calls.append(len(calls))",
        "        if len(calls) % 2 == 0:  # an evaluation between training calls",
        "            with tg.no_grad():",
        *("                " + line for line in evaluation),
        "            return out",
        *train_lines,
    ]


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
