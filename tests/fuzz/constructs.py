"""The registry of constructs a program is made of, each a named, switchable feature.

A *statement* construct writes one statement (or a few) into the body of ``fn`` at the
current point, reading operands from the pool and adding its results; it may also add state
to ``setup`` and caller actions to ``between``. A *frame* construct changes the shape of the
whole program once (a training step, containers, compiled and eager mixed). ``GROUPS``
gathers constructs for reporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import layers, models, ops
from .builder import Builder, Var


@dataclass(frozen=True)
class Construct:
    name: str
    group: str
    emit: Callable[[Builder], None]
    frame: bool = False  # applied once per program rather than as statements


def clone_of(b: Builder, var: Var, detached: bool = False) -> Var:
    """A fresh copy of ``var`` owned by the body, safe to update in place; ``detached`` for
    the updates eager autograd refuses on tensors it records (through views, assignment)."""
    spellings = ["{x}.clone()", "{x} * 1.0", "{x} + 0.0"]
    spelling = "{x}.detach()" + b.rng.choice(spellings)[3:] if detached else b.rng.choice(spellings)
    return b.let(spelling.format(x=var.name), var.shape, prefix="t")


def updates_arguments(b: Builder) -> bool:
    """Whether the body may update ``x1`` in place: not when it runs twice per call (mixed),
    since the second run's update would break the first one's saved values."""
    return not b.mixed


def inplace_local(b: Builder) -> None:
    """``t.add_``, ``mul_``, ``fill_``, ``zero_``, ``copy_`` on a local, a result taken
    from it first (the update must not leak into it)."""
    t = clone_of(b, b.matrix())
    if b.rng.random() < 0.5:  # a result taken before the update
        r, c = t.shape
        taken = [("{x} + 0.5", (r, c)), ("{x}.sum(0, keepdim=True)", (1, c)), ("-{x}", (r, c))]
        expr, shape = b.rng.choice(taken)
        b.let(expr.format(x=t.name), shape)
    y = b.partner(t)
    updates = ["sub_(0.5)", "mul_(2.0)", "div_(4.0)", "fill_(0.5)", "zero_()"]
    updates.append("mul_(2.0).add_(1.0)")
    if y is not None:
        updates += [f"add_({y.name})", f"mul_({y.name}.tanh())"]
    if y is not None and y.name in b.made:  # copies of inputs: see copy_input
        updates.append(f"copy_({y.name})")
    b.line(f"{t.name}.{b.rng.choice(updates)}")


def update_argument(b: Builder) -> None:
    """An in-place update of the argument ``x1`` at the top of the body: the caller sees it,
    and results that are views of ``x1`` keep aliasing it."""
    b.keep = True
    if updates_arguments(b):
        b.prologue.append(b.rng.choice(["x1.mul_(2.0)", "x1.add_(0.5)", "x1.copy_(x1 * x1)"]))
    r, c = b.rows, b.cols
    b.let(*b.rng.choice([("x1.t()", (c, r)), ("x1[1:]", (r - 1, c)), ("x1 * 1.0", (r, c))]))


def copy_input(b: Builder) -> None:
    """``t.copy_(x)`` of an argument, parameter or closure tensor into a local that is then
    returned: the result must not share the input's memory."""
    b.keep = True
    t = clone_of(b, b.pick(shape=(b.rows, b.cols)))
    sources = [v for v in b.pool if v.name not in b.made and v.shape == t.shape]
    b.line(f"{t.name}.copy_({b.rng.choice(sources).name})")


def inplace_view(b: Builder) -> None:
    """An in-place update through a view of a local (``x[0].add_(1)``, ``x.t().mul_(2)``,
    ``x.reshape(-1).mul_()``), sometimes through a view taken before and read after; or an
    update of an argument through a view at the top of the body."""
    if b.rng.random() < 0.2 and updates_arguments(b):
        b.prologue.append(b.rng.choice(["x1[0].add_(1.0)", "x1.t()[0].mul_(2.0)"]))
        return
    t = clone_of(b, b.matrix(), detached=True)
    r, c = t.shape
    if b.rng.random() < 0.4:
        b.let(f"{t.name}.t()", (c, r))  # a view read after the update below
    updates = [
        f"{t.name}[0].add_(1.0)",
        f"{t.name}.t().mul_(2.0)",
        f"{t.name}.reshape(-1).mul_(0.5)",
        f"{t.name}.transpose(0, 1)[0].fill_(0.25)",
        f"{t.name}[{min(1, r - 1)}:].zero_()",
        f"{t.name}[:, :1].sub_(0.75)",
        f"{t.name}.unsqueeze(0)[0][-1].div_(2.0)",
    ]
    row = b.pick(shape=(1, c))
    if row is not None:
        updates.append(f"{t.name}[-1:].add_({row.name}.detach())")
    b.line(b.rng.choice(updates))


def data_update(b: Builder) -> None:
    """``p.data`` updated inside the function (parameters and a local); in a step, the
    optimizer may be a manual ``p.data.add_(-lr * p.grad)`` loop (see ``step``)."""
    if b.rng.random() < 0.5:
        b.prologue.append(b.rng.choice(["m.w0.data.mul_(0.9)", "m.w0.data.add_(0.125)"]))
        return
    t = clone_of(b, b.matrix())
    b.line(f"{t.name}.data.add_(1.5)")


def setitem(b: Builder) -> None:
    """Item assignment into a local (rows, columns, integer-array rows), or into an argument
    at the top of the body."""
    if b.rng.random() < 0.2 and updates_arguments(b):
        b.prologue.append("x1[0] = 0.5")
        return
    t = clone_of(b, b.matrix(), detached=True)
    r = t.shape[0]
    same = b.pick(shape=t.shape, exclude=(t.name,))
    targets = [f"{t.name}[:, 0] = 0.0", f"{t.name}[tg.tensor([{r - 1}])] = 1.5"]
    if same is not None:
        v = f"{same.name}.detach()"  # eager autograd refuses assigning a recorded value
        targets += [f"{t.name}[0] = {v}[{r - 1}]", f"{t.name}[1:] = {v}[1:]"]
    b.line(b.rng.choice(targets))


def random_draws(b: Builder) -> None:
    """``tg.randn``, ``tg.rand``, ``tg.randn_like``, dropout in train mode and multinomial
    (with and without replacement, of weights made positive and finite)."""
    x = b.matrix()
    r, c = x.shape
    weights = f"({x.name}.detach().nan_to_num().sigmoid() + 0.1)"
    draws = [
        f"{x.name} + tg.randn({r}, {c}, dtype=tg.float64)",
        f"{x.name} * tg.rand({r}, 1, dtype=tg.float64)",
        f"{x.name} - tg.randn_like({x.name})",
        f"F.dropout({x.name}, 0.3, training=True)",
        f"{x.name}.gather(1, tg.multinomial({weights}, {c}))",
        f"{x.name}.gather(1, {weights}.multinomial({c}, replacement=True))",
    ]
    b.let(b.rng.choice(draws), x.shape)


def closure_tensor(b: Builder) -> None:
    """A tensor of ``setup`` the function closes over; the caller updates it in place."""
    name = _closure(b)
    b.add_between(f"{name}.mul_(0.5).add_(0.25)")


def closure_rebind(b: Builder) -> None:
    """A tensor of ``setup`` the function closes over; the caller binds the name to a new
    tensor between calls."""
    name = _closure(b)
    b.nonlocals.append(name)
    b.add_between(f"{name} = {b.setup[-1].split(' = ', 1)[1]}")


def _closure(b: Builder) -> str:
    """A closure tensor (requiring grad or not) read by one statement; its name."""
    r, c = b.rows, b.cols
    name = b.fresh("c")
    grad = ".requires_grad_()" if b.rng.random() < 0.5 else ""
    b.add_setup(f"{name} = tg.randn({r}, {c}, dtype=tg.float64){grad}")
    b.state.append(name)
    b.pool.append(Var(name, (r, c)))
    x = b.pick(shape=(r, c), exclude=(name,))
    b.let(f"{x.name} * {name}", (r, c))
    return name


def closure_list(b: Builder) -> None:
    """A list of tensors the function closes over; the caller refills it between calls."""
    r, c = b.rows, b.cols
    name = b.fresh("cl")
    items = f"[tg.randn({r}, {c}, dtype=tg.float64), tg.randn(1, {c}, dtype=tg.float64)]"
    b.add_setup(f"{name} = {items}")
    b.state.append(name)
    b.add_between(b.rng.choice([f"{name}[:] = {items}", f"{name}[0] = {name}[0] * 0.5 + 1.0"]))
    b.pool += [Var(f"{name}[0]", (r, c)), Var(f"{name}[1]", (1, c))]
    x = b.pick(shape=(r, c), exclude=(f"{name}[0]",))
    b.let(f"{x.name} * {name}[0] + {name}[1]", (r, c))


def numpy_arg(b: Builder) -> None:
    """A NumPy array argument, updated in place by the caller between calls."""
    r, c = b.rows, b.cols
    name = b.fresh("a")
    b.add_setup(f"{name} = np.linspace(-1.0, 1.0, {r * c}).reshape({r}, {c})")
    b.params.append(name)
    b.args.append(name)
    b.state.append(name)
    b.add_between(f"{name}[...] = {name} * 0.5 + 0.25")
    spelling = b.rng.choice(["tg.as_tensor({a})", "tg.tensor({a})", "{x} * tg.as_tensor({a})"])
    b.let(spelling.format(a=name, x=b.pick(shape=(r, c)).name), (r, c))


def no_grad(b: Builder) -> None:
    """A ``tg.no_grad()`` region holding one or two op statements."""
    b.line("with tg.no_grad():")
    b.indent += 1
    for _ in range(b.rng.randint(1, 2)):
        b.rng.choice([ops.elementwise, ops.reduction, ops.linalg])(b)
    b.indent -= 1


def step(b: Builder) -> None:
    """The function is a whole training step: ``loss.backward()`` then an SGD, Adam or
    manual ``.data`` update (or no update at all)."""
    b.step = True


def mixed(b: Builder) -> None:
    """The function adds a compiled piece's results to the same piece run eagerly; the
    caller backpropagates through the sum."""
    b.mixed = b.backward = True


def keep_results(b: Builder) -> None:
    """The caller keeps every call's results and compares them after the last call: a later
    call, or the caller's updates of its arguments, must change them only where they change
    eager's results (views of what was updated). Writes a result that is an input's value
    (``x1 * 1.0``, ``-(-x1)``), which must still be a tensor of its own."""
    b.keep = True
    source = b.rng.choice([v for v in b.pool if v.name not in b.made])
    spelling = b.rng.choice(["{x} * 1.0", "-(-{x})", "{x} + 0.0", "{x}.clone()", "{x}.t().t()"])
    b.let(spelling.format(x=source.name), source.shape)


def caller_backward(b: Builder) -> None:
    """The caller backpropagates through the results of a function that is not a step (they
    must carry gradients back to the arguments, parameters and closure tensors)."""
    b.backward = True


def containers(b: Builder) -> None:
    """Arguments after the first arrive nested in a dict and a list; results are nested."""
    b.containers = True


def training(name: str) -> Callable[[Builder], None]:
    """A training construct: the function is a whole training step (see ``step``), varied
    as steps.py describes under ``name``: ``clip_grad``, ``scheduler``, ``optimizer_options``,
    ``accumulate`` (two calls per update) or ``eval_calls`` (no-grad evaluation calls of the
    same compiled model between training calls)."""

    def emit(b: Builder) -> None:
        b.step = True
        b.options.add(name)

    return emit


def memory_budget(b: Builder) -> None:
    """The runner also compiles with a memory budget of ~60% of the estimated peak (see
    runner.py). A wide chain of activations (models.wide_chain) is what the backward may
    recompute; the caller backpropagates through the results unless the function is a step."""
    b.backward = True
    models.wide_chain(b)


# The frames that make the function a training step
STEP_FRAMES = {"step", "clip_grad", "scheduler", "optimizer_options", "accumulate", "eval_calls"}


def _construct_list() -> list[Construct]:
    statements = [
        ("elementwise", "ops", ops.elementwise),
        ("reduction", "ops", ops.reduction),
        ("shape", "ops", ops.shape),
        ("index", "ops", ops.index),
        ("linalg", "ops", ops.linalg),
        ("inplace_local", "inplace", inplace_local),
        ("update_argument", "inplace", update_argument),
        ("copy_input", "inplace", copy_input),
        ("inplace_view", "inplace", inplace_view),
        ("data_update", "inplace", data_update),
        ("setitem", "inplace", setitem),
        ("random", "random", random_draws),
        ("train_eval", "random", models.train_eval),
        ("closure_tensor", "closures", closure_tensor),
        ("closure_rebind", "closures", closure_rebind),
        ("closure_list", "closures", closure_list),
        ("numpy_arg", "arguments", numpy_arg),
        ("no_grad", "control", no_grad),
        ("keep_results", "control", keep_results),
        ("memory_budget", "compile", memory_budget),
        *((name, "models", emit) for name, emit in models.IDIOMS.items()),
        *((name, "layers", emit) for name, emit in layers.LAYERS.items()),
    ]
    frames = [
        ("containers", "arguments", containers),
        ("step", "control", step),
        ("mixed", "control", mixed),
        ("caller_backward", "control", caller_backward),
        *((name, "training", training(name)) for name in sorted(STEP_FRAMES - {"step"})),
    ]
    return [Construct(n, g, e) for n, g, e in statements] + [
        Construct(n, g, e, frame=True) for n, g, e in frames
    ]


CONSTRUCTS: dict[str, Construct] = {c.name: c for c in _construct_list()}
GROUPS: dict[str, list[str]] = {}
for _c in CONSTRUCTS.values():
    GROUPS.setdefault(_c.group, []).append(_c.name)
