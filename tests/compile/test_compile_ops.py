"""Compiled == eager for every op in the registry, driven by one table.

Each row is a small function written with the public API (one or a few ops), the argument
specs it is called with and the registry ops it is meant to reach. A row is wrapped in a tiny
``nn.Module`` that holds some arguments as parameters and takes the rest as inputs, run once
eagerly and once through ``tg.compile`` (unoptimized and with the default passes), and the
outputs plus the ``.grad`` of every parameter and input must agree: to 1e-10 in float64 and
1e-5 in float32. The same function also goes through ``tg.grad`` and is compared with
``tg.autograd.grad`` on the eager tape. A final test checks that the compiled forward and
backward graphs of the table, together, contain every op of ``tracegrad.ops.OPS``.

A new op's rows are generated from the ``samples`` of its declaration
(``tracegrad.ops.registry.Sample``): for a differentiable op, one row per sample on its first
shape set and one on its last (broadcasting, higher rank), the op called directly with the
first float argument a parameter, the other float ones inputs requiring grad and integer or
bool ones (indices, targets, masks) constants. ``ROWS_TABLE`` keeps by hand the public
functions made of several ops (conv2d, attention, mse_loss, var...), Python scalars and
captured constants, writes through views, random draws and ops without samples, each a
``row(id, fn, args, covers)`` under its family's heading with argument specs from the helpers
below (``P`` parameter, ``X`` input, ``POS`` positive, ``PD`` distinct values for max-like ops,
``CI`` int64 indices). Ops without a gradient (argmax, argsort, one_hot) are compared, forward
only, in ``test_compile_extreme_values.py``; an op that only a VJP rule emits needs no row of
its own when the row of the op it differentiates reaches it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn
from tracegrad.ops import OPS
from tracegrad.tensor import call

DTYPES = {"float64": (tg.float64, 1e-10), "float32": (tg.float32, 1e-5)}

# Ops of the registry that no compiled graph can contain, each with the reason; every other op
# must show up in the forward or backward graph of some row (``test_table_covers_every_op``).
# It is empty: each op is either reachable from the public API in a forward pass, or emitted
# by a VJP rule and so reachable in the backward graph of the row using the op it transposes
# (including ops only VJP rules use, such as those below or fused gradient kernels).
CANNOT_APPEAR: dict[str, str] = {
    # Optimizer updates run in optimizer.step(), never in a module's forward or backward; the
    # whole-step tests check they appear in compiled steps (test_adam_step_uses_fused_updates).
    "lerp": "Adam's first-moment update",
    "ema_square": "Adam's second-moment update",
    "adam_step": "Adam's parameter update",
    # Gradient averaging runs in whole training steps of DistributedDataParallel only (tested
    # in tests/distributed: one process here, two under mpiexec).
    "all_reduce": "a data-parallel step's gradient average",
    "all_reduce_start": "a data-parallel step's bucket of gradients, its average started",
    "all_reduce_wait": "a data-parallel step's bucket, its average completed",
    "broadcast": "a data-parallel forward's buffers taken from rank 0",
}

# Ops no public function calls directly (their generated rows call them; in programs they
# appear in backward graphs).
ONLY_IN_BACKWARD = {
    "scatter_add": "the transpose of getitem, emitted by its VJP rule",
    "fold": "the transpose of unfold (conv2d and max_pool2d windows), emitted by its VJP rule",
    "sum_to": "undoes broadcasting in the backward of broadcasting ops",
}


# --- argument specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument: ``role`` is "param" (held by the module, gets .grad), "input"
    (a graph input that requires grad) or "const" (an input that does not)."""

    role: str
    make: Callable[[np.random.Generator], np.ndarray]
    floating: bool = True


def _uniform(shape, lo, hi):
    return lambda rng: rng.uniform(lo, hi, shape)


def _distinct(shape):
    """Values at least 0.09 apart (no ties for max-like and comparison ops)."""

    def make(rng):
        n = int(np.prod(shape, dtype=np.int64))
        return (rng.permutation(n) * 0.1 - 0.05 * n + rng.uniform(0.0, 0.01, n)).reshape(shape)

    return make


def P(*shape, lo=-2.0, hi=2.0):
    return Arg("param", _uniform(shape, lo, hi))


def X(*shape, lo=-2.0, hi=2.0):
    return Arg("input", _uniform(shape, lo, hi))


def PD(*shape):
    return Arg("param", _distinct(shape))


def XD(*shape):
    return Arg("input", _distinct(shape))


def POS(*shape, role="param"):
    return Arg(role, _uniform(shape, 0.5, 2.0))


def CF(*shape):
    """A float input that does not require grad."""
    return Arg("const", _uniform(shape, -2.0, 2.0))


def CI(array):
    """An int64 input (indices, targets)."""
    array = np.asarray(array, np.int64)
    return Arg("const", lambda rng: array, floating=False)


# Constants captured by row functions: a bool mask and int index arrays made before tracing.
MASK = np.array(
    [[True, False, True, False], [False, False, True, True], [True, True, False, False]]
)
CAUSAL = tg.tensor(np.triu(np.ones((4, 4), bool), 1))  # key after query: masked
ROW_MASKED_WHOLE = tg.tensor(np.array([[False, True, True], [True, True, True]]))
ROWS = np.array([2, 0, 2, 1])
COLS = np.array([3, 3, 0, 1])
TOKENS = tg.tensor([[1, 5, 1], [0, 2, 5]])  # made before tracing: lifted as a graph input


@dataclass(frozen=True)
class Row:
    id: str
    fn: Callable
    args: tuple[Arg, ...]
    covers: tuple[str, ...]
    seed: int | None = None  # reseed tracegrad's generator before each run (random ops)
    xfail: str | None = None  # a known bug this row exposes in every test
    xfail_module: str | None = None  # ... only in the compiled-module test


def row(id, fn, args, covers, seed=None, xfail=None, xfail_module=None):
    covers = (covers,) if isinstance(covers, str) else tuple(covers)
    return Row(id, fn, tuple(args), covers, seed, xfail, xfail_module)


def _other_float(x):
    return tg.float32 if x.dtype == tg.float64 else tg.float64


def _no_grad_scale(x):
    with tg.no_grad():
        scale = x.sum()
    return x * scale


_DRAWS = ("random_normal", "random_uniform", "random_integers", "random_permutation")


def _random_draws(x):
    """Draws made inside the forward: drawn anew on every call, as eagerly."""
    noise = tg.randn_like(x) + tg.rand(4, dtype=x.dtype)
    picks = tg.randint(0, 3, (2,))
    return (x + noise)[tg.randperm(3)][picks]


def _write_through_views(x):
    """In-place writes through a slice, a transpose and item assignment of a local."""
    with tg.no_grad():
        z = x * 1.0
        z[0].add_(z[1])
        z.t()[1:, 0].mul_(3.0)
        z[:, 1] = 0.5
    return x * z


def _calling(name: str, attrs: dict):
    return lambda *xs: call(name, *xs, **attrs)


def _declared_args(sample, shapes) -> list[Arg]:
    """Arguments drawn as the sample says: the first float one a parameter, the other float
    ones inputs requiring grad, integer and bool ones (indices, targets, masks) constants."""
    args = []
    for drawn, shape in zip(sample.per_input(), shapes, strict=True):
        make = partial(drawn.draw, shape=shape)
        if not drawn.floating:
            args.append(Arg("const", make, floating=False))
        else:
            args.append(Arg("input" if any(a.floating for a in args) else "param", make))
    return args


def declared_rows() -> list[Row]:
    """Rows of the samples declared with differentiable ops: the op called directly, on the
    sample's first shape set and on its last (broadcasting, higher rank)."""
    rows = []
    for name, op in OPS.items():
        for sample in op.samples if op.differentiable else ():
            label = sample.label(name)
            for shapes in dict.fromkeys((sample.shapes[0], sample.shapes[-1])):
                shape_id = "-".join("x".join(map(str, s)) or "0d" for s in shapes)
                args = _declared_args(sample, shapes)
                rows.append(row(f"{label}-{shape_id}", _calling(name, sample.attrs), args, name))
    return rows


ROWS_TABLE = [
    # --- ops declared with samples get generated rows; public composites here ---
    *declared_rows(),
    row("rsqrt", lambda x: x.rsqrt(), [POS(3, 4)], ("sqrt", "div")),
    row("add_scaled", lambda x, y: (x + 1.0).sub_(y, alpha=0.5), [P(3, 4), P(3, 4)], "add_scaled"),
    row("square", lambda x: x.square() + x.pow(2), [P(3, 4)], ("mul", "pow_scalar")),
    # --- binary arithmetic, broadcasting both ways, Python scalars ---
    row("add_input_broadcast", lambda x, y: x + y, [P(3, 4), X(4)], ("add", "sum_to")),
    row("add_scalar", lambda x: 2.5 + x + 1, [P(3, 4)], "add"),
    row("sub_outer_broadcast", lambda x, y: x - y, [P(3, 1), X(1, 4)], ("sub", "sum_to", "neg")),
    row("rsub", lambda x: 1.0 - x, [P(3, 4)], "sub"),
    row("mul_input_broadcast", lambda x, y: x * y, [P(2, 3, 4), X(3, 1)], ("mul", "sum_to")),
    row("div_by_input", lambda x, y: x / y, [P(3, 4), POS(4, role="input")], ("div", "sum_to")),
    row("rdiv", lambda x: 2.0 / x, [POS(3, 4)], "div"),
    row("pow_of_input", lambda x, y: x**y, [POS(3, 4), X(3, 4)], ("pow", "log", "where")),
    row("rpow", lambda x: 2.0**x, [P(3, 4)], "pow"),
    row("maximum", lambda x, y: tg.maximum(x, y), [PD(3, 4), XD(3, 4)], "maximum"),
    row("minimum", lambda x, y: tg.minimum(x, y), [PD(3, 4), XD(3, 4)], "minimum"),
    row("atan2_by_input", lambda x, y: tg.atan2(x, y), [P(3, 4), POS(4, role="input")], "atan2"),
    row("remainder", lambda x, y: x % y + 5.5 % y, [P(3, 4), POS(4, role="input")], "remainder"),
    # --- comparisons and logic select values through where ---
    row(
        "where_gt",
        lambda x, y: tg.where(x > y, x * y, x - y),
        [PD(3, 4), XD(3, 4)],
        ("gt", "where"),
    ),
    row("where_ge", lambda x, y: tg.where(x >= 0.1, x, y), [PD(3, 4), X(3, 4)], "ge"),
    row("where_lt", lambda x, y: tg.where(x < y, y, x.exp()), [PD(3, 4), XD(3, 4)], "lt"),
    row("where_le", lambda x: tg.where(x <= 0.1, x * x, 0.5), [PD(3, 4)], "le"),
    row("where_eq", lambda x, k: tg.where(k == 1, x, -x), [P(3, 4), CI([0, 1, 1, 2])], "eq"),
    row("where_ne", lambda x, k: tg.where(k != 1, x, x * 3), [P(3, 4), CI([0, 1, 1, 2])], "ne"),
    row(
        "logical_and",
        lambda x, y: tg.where((x > 0) & (y < 0), x, y),
        [PD(3, 4), XD(3, 4)],
        "logical_and",
    ),
    row(
        "logical_or",
        lambda x, y: tg.where((x > 0.3) | (y < -0.2), x, y),
        [PD(3, 4), XD(3, 4)],
        "logical_or",
    ),
    row(
        "logical_xor",
        lambda x, y: tg.where((x > 0) ^ (y > 0), x, y * 2),
        [PD(3, 4), XD(3, 4)],
        "logical_xor",
    ),
    row("logical_not", lambda x: tg.where(~(x > 0), x, x * x), [PD(3, 4)], "logical_not"),
    row("masked_fill", lambda x: x.masked_fill(x > 0.2, 0.0), [PD(3, 4)], "where"),
    row("tril_triu", lambda x: x.tril() * 2 + tg.triu(x, 1), [P(4, 4)], "where"),
    row("cast_int", lambda x, k: x * k.to(x.dtype), [P(3, 4), CI([1, 2, 3, 4])], "cast"),
    row("cast_float", lambda x: x.to(_other_float(x)).to(x.dtype) * x, [P(3, 4)], "cast"),
    # --- indexing ---
    row(
        "getitem_int_array_const",
        lambda x: x[tg.tensor(ROWS)] * x[tg.tensor(ROWS), tg.tensor(COLS)].unsqueeze(1),
        [P(3, 4)],
        "getitem",
    ),
    row("getitem_bool_mask", lambda x: x[tg.tensor(MASK)] ** 2, [P(3, 4)], "getitem"),
    row("getitem_np_bool_mask", lambda x: x[:, MASK[0]] * 3, [P(3, 4)], "getitem"),
    row(
        "getitem_traced_argmax",
        lambda x: x[tg.arange(3), x.argmax(1)] + x[tg.arange(3), x.argmin(1)],
        [PD(3, 4)],
        ("getitem", "argmax", "argmin"),
    ),
    row(
        "one_hot",
        lambda x, k: (F.one_hot(k, num_classes=4).to(x.dtype) * x).sum(1),
        [P(5, 4), CI([0, 3, 1, 1, 2])],
        "one_hot",
    ),
    row(
        "svdvals",
        lambda a, b: tg.linalg.svdvals(a) * tg.linalg.svdvals(b).sum(),
        [P(3, 4), X(2, 4, 3)],
        ("svdvals", "svdvals_grad"),
    ),
    # --- convolution and pooling (unfold windows, fold in the backward) ---
    row(
        "conv2d",
        lambda x, w, b: F.conv2d(x, w, b),
        [X(2, 3, 6, 5), P(4, 3, 3, 3), P(4)],
        ("unfold", "fold", "matmul", "reshape", "permute"),
    ),
    row(
        "conv2d_stride_pad_dilation",
        lambda x, w: F.conv2d(x, w, stride=2, padding=1, dilation=(1, 2)),
        [X(1, 2, 7, 7), P(3, 2, 3, 2)],
        ("unfold", "fold"),
    ),
    row(
        "conv2d_groups",
        lambda x, w: F.conv2d(x, w, groups=2),
        [X(2, 4, 5, 5), P(4, 2, 2, 2)],
        "unfold",
    ),
    row("max_pool2d", lambda x: F.max_pool2d(x, 2), [PD(2, 3, 4, 6)], ("reshape", "amax")),
    row("max_pool2d_trim", lambda x: F.max_pool2d(x, 2), [PD(2, 3, 5, 7)], ("getitem", "amax")),
    row(
        "max_pool2d_pad",
        lambda x: F.max_pool2d(x, 3, stride=2, padding=1),
        [PD(1, 2, 5, 5)],
        ("unfold", "amax", "fold"),
    ),
    # --- softmax family, losses, normalization ---
    # attention: the passes make these keys-major masked_softmax / softmax over (b^T @ a^T)
    row(
        "masked_attention",
        lambda q, k, v: (
            (q @ k.transpose(-1, -2)).masked_fill(CAUSAL, float("-inf")).softmax(-1) @ v
        ),
        [P(2, 3, 4, 2), P(2, 3, 4, 2), P(2, 3, 4, 2)],
        ("matmul", "where", "softmax"),
    ),
    row(
        "attention",
        lambda q, k: (q @ k.transpose(-1, -2) * 0.5).softmax(-1),
        [P(2, 3, 4, 2), P(2, 3, 4, 2)],
        ("matmul", "softmax"),
    ),
    row(
        "masked_softmax_row_masked_whole",  # nan in that row, as PyTorch; zero gradient there
        lambda x: x.masked_fill(ROW_MASKED_WHOLE, float("-inf")).softmax(-1),
        [P(2, 3)],
        ("where", "softmax"),
    ),
    row("mse_loss", lambda x, y: F.mse_loss(x, y), [P(3, 4), CF(3, 4)], ("sub", "mul", "sum")),
    row(
        "layer_norm",
        lambda x, w, b: F.layer_norm(x, (5,), w, b, 1e-5),
        [X(3, 5), P(5), P(5)],
        "layer_norm",
    ),
    row("dropout", lambda x: F.dropout(x, 0.4), [P(6, 8)], "dropout_mask", seed=3),
    row("random_draws", _random_draws, [P(3, 4)], _DRAWS, seed=5),
    row(
        "multinomial_of_softmax",
        lambda x: x.gather(1, tg.multinomial(x.softmax(1).detach(), 2)),
        [P(3, 4)],
        "multinomial_weights",
        seed=7,
    ),
    row(
        "weighted_cross_entropy",
        lambda x, t, w: F.cross_entropy(x, t, weight=w),
        [P(4, 3), CI(ROWS), POS(3, role="input")],
        "class_targets",
    ),
    row(
        "embedding_input_indices",
        lambda w, i: F.embedding(i, w),
        [P(6, 3), CI([[1, 5, 1], [0, 2, 5]])],
        "getitem",
    ),
    row("embedding_const_indices", lambda w: F.embedding(TOKENS, w), [P(6, 3)], "getitem"),
    row(
        "embedding_padding_idx",
        lambda w: F.embedding(tg.tensor(TOKENS.numpy()), w, padding_idx=5),
        [P(6, 3)],
        "where",
    ),
    row("detach_traced", lambda x: x * x.detach(), [X(3, 4)], "mul"),
    row("no_grad_block", _no_grad_scale, [X(3, 4)], "mul"),
    row("write_through_views", _write_through_views, [X(3, 4)], "view_update"),
    row("detach_parameter", lambda x: x * x.detach() + x.data, [P(3, 4)], "mul"),
    # --- reductions ---
    row("mean", lambda x: x.mean(1), [P(3, 4)], ("sum", "mul")),
    row("var_std", lambda x: x.var(0) + x.std(1, keepdim=True), [P(3, 4)], ("sum", "sqrt")),
    row("amax_tie", lambda x: x.amax(1), [Arg("param", lambda rng: np.ones((2, 3)))], "amax"),
    row("logsumexp", lambda x: x.logsumexp(1), [P(3, 4)], ("amax", "exp", "log")),
    row("prod", lambda x: x.prod(1) * x.prod(), [P(3, 4)], "prod"),
    row(
        "sort_topk",
        lambda x: x.sort(1, descending=True).values * 2 + x.topk(3, dim=0).values.sum(0),
        [PD(3, 4)],
        ("argsort", "getitem"),
    ),
    # --- shapes ---
    row(
        "flatten_unsqueeze", lambda x: x.flatten(1).unsqueeze(0).squeeze(0), [P(2, 3, 2)], "reshape"
    ),
    row("stack", lambda x, y: tg.stack([x, y], 0), [P(3, 4), X(3, 4)], ("cat", "reshape")),
    row("split_chunk", lambda x: x.split(1, 0)[0] * x.chunk(3, 0)[2], [P(3, 4)], "getitem"),
    row("repeat", lambda x: x.repeat(2, 3), [P(2, 3)], ("broadcast_to", "reshape")),
    # --- NumPy functions on tensors dispatch to ops ---
    row("numpy_interop", lambda x: np.sum(np.tanh(x) * np.exp(x), axis=0), [P(3, 4)], "tanh"),
]

BY_ID = {r.id: r for r in ROWS_TABLE}
assert len(BY_ID) == len(ROWS_TABLE), "row ids must be unique"


def _params(module_test: bool):
    params = []
    for r in ROWS_TABLE:
        reason = r.xfail or (r.xfail_module if module_test else None)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(r, id=r.id, marks=marks))
    return params


# --- running a row -------------------------------------------------------------------------------


class RowModule(nn.Module):
    """Holds the row's "param" arguments as parameters; the others are forward inputs."""

    def __init__(self, fn, roles, params):
        super().__init__()
        self.fn, self.roles = fn, roles
        for i, array in enumerate(params):
            setattr(self, f"p{i}", nn.Parameter(tg.tensor(array)))

    def forward(self, *inputs):
        params = iter(getattr(self, f"p{i}") for i in range(self.roles.count("param")))
        rest = iter(inputs)
        return self.fn(*(next(params) if r == "param" else next(rest) for r in self.roles))


def row_arrays(r: Row, dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(r.id.encode()))
    return [a.make(rng).astype(dtype.np) if a.floating else a.make(rng) for a in r.args]


def instantiate(r: Row, dtype):
    """A fresh module and fresh input tensors for one run."""
    arrays = row_arrays(r, dtype)
    roles = [a.role for a in r.args]
    module = RowModule(r.fn, roles, [x for x, a in zip(arrays, r.args) if a.role == "param"])
    inputs = [
        tg.tensor(x, requires_grad=a.role == "input")
        for x, a in zip(arrays, r.args)
        if a.role != "param"
    ]
    return module, inputs


def cotangent(out, seed: str):
    """Fixed random weights the output is reduced with, so the backward gets a non-trivial
    cotangent (the compiled output is a non-scalar in most rows)."""
    rng = np.random.default_rng(zlib.crc32(seed.encode()) + 1)
    return tg.tensor(rng.uniform(0.5, 1.5, tuple(out.shape)).astype(out.dtype.np))


def run(r: Row, dtype, compile_with=None):
    module, inputs = instantiate(r, dtype)
    target = tg.compile(module, passes=compile_with[0]) if compile_with else module
    if r.seed is not None:
        tg.manual_seed(r.seed)
    out = target(*inputs)
    (out * cotangent(out, r.id)).sum().backward()
    grads = [p.grad for p in module.parameters()] + [x.grad for x in inputs]
    return out, grads, target


def assert_close(actual, expected, tol, what):
    if expected is None:
        assert actual is None, f"{what}: expected no gradient, got one"
        return
    assert actual is not None, f"{what}: expected a gradient, got None"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert tuple(actual.shape) == tuple(expected.shape), what
    np.testing.assert_allclose(
        actual.detach().numpy(), expected.detach().numpy(), rtol=tol, atol=tol, err_msg=what
    )


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("r", _params(module_test=True))
def test_compiled_module_matches_eager(r, dtype_name, passes):
    dtype, tol = DTYPES[dtype_name]
    out_eager, grads_eager, _ = run(r, dtype)
    out_compiled, grads_compiled, cm = run(r, dtype, compile_with=(passes,))
    assert out_compiled.requires_grad
    assert_close(out_compiled, out_eager, tol, "output")
    for i, (got, want) in enumerate(zip(grads_compiled, grads_eager, strict=True)):
        assert_close(got, want, tol, f"gradient {i}")
    if passes is None:  # optimizations may rewrite the ops a row is meant to reach
        ops = {n.op for n in cm.graph.nodes} | {n.op for n in cm.backward_graph.nodes}
        assert set(r.covers) <= ops, f"row {r.id} did not reach {set(r.covers) - ops}"


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("r", _params(module_test=False))
def test_grad_transform_matches_autograd_grad(r, dtype_name):
    dtype, tol = DTYPES[dtype_name]
    arrays = row_arrays(r, dtype)
    wrt = [i for i, a in enumerate(r.args) if a.role != "const"]
    probe = r.fn(*(tg.tensor(x) for x in arrays))
    weights = cotangent(probe, r.id)

    def scalar(*args):
        return (r.fn(*args) * weights).sum()

    eager_args = [tg.tensor(x, requires_grad=i in wrt) for i, x in enumerate(arrays)]
    if r.seed is not None:
        tg.manual_seed(r.seed)
    expected = tg.autograd.grad(
        scalar(*eager_args), [eager_args[i] for i in wrt], allow_unused=True
    )
    if r.seed is not None:
        tg.manual_seed(r.seed)
    got = tg.grad(scalar, argnums=tuple(wrt))(*(tg.tensor(x) for x in arrays))
    assert len(got) == len(wrt)
    for i, g, e in zip(wrt, got, expected, strict=True):
        if e is None:  # no differentiable path: eager says None, the transform gives zeros
            e = tg.zeros_like(eager_args[i])
        assert_close(g, e, tol, f"gradient of argument {i}")


def test_table_covers_every_op():
    """Every registry op is reached by the table: in a compiled forward or backward graph,
    unoptimized or (for ops only rewrites introduce, such as nll_loss) with the default
    passes."""
    seen: set[str] = set()
    for r in ROWS_TABLE:
        if r.xfail or r.xfail_module:
            continue
        for passes in (None, "default"):
            _, _, cm = run(r, tg.float64, compile_with=(passes,))
            seen |= {n.op for n in cm.graph.nodes} | {n.op for n in cm.backward_graph.nodes}
    missing = set(OPS) - seen - set(CANNOT_APPEAR)
    assert not missing, f"ops no row reaches: {sorted(missing)}"
    assert set(CANNOT_APPEAR) <= set(OPS)
    assert set(ONLY_IN_BACKWARD) <= set(OPS)
