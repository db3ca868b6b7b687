"""Elementwise ops: unary math, binary arithmetic with broadcasting, comparisons, where, cast.

Binary ops take operands of one dtype; the tensor layer inserts ``cast`` nodes to apply
PyTorch's type promotion first, so promotions are explicit in graphs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from tracegrad import dtypes
from tracegrad.dtypes import TensorType
from tracegrad.ops import rules
from tracegrad.ops.registry import (
    AWAY_FROM_ZERO,
    BINARY_SHAPES,
    CHEAP,
    COMMUTATIVE,
    ELEMENTWISE,
    NON_NEGATIVE,
    POSITIVE,
    Sample,
    call,
    register,
)
from tracegrad.ops.runtime import (
    bound_like,
    chunked,
    joint_scratch,
    kernel,
    out_or_new,
    scratch,
)

# The constants of gelu's two forms (its fused gradients in tracegrad/ops/fused.py read them too)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_COEF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def ufunc_out(impl, arity: int) -> str | None:
    """``np.<ufunc>({0}, ..., out={out})`` when ``impl`` is a NumPy ufunc."""
    if not isinstance(impl, np.ufunc):
        return None
    args = ", ".join(f"{{{i}}}" for i in range(arity))
    return f"np.{impl.__name__}({args}, out={{out}})"


def unary(
    name, impl, rule, emit, saves=(), floats=True, check=None, out=None, props=(), samples=None
):
    """A one-input elementwise op; ``floats`` requires a floating-point operand, ``check(x,
    **attrs)`` validates the attributes against the operand; ``props`` add to ELEMENTWISE;
    ``samples`` default to inputs in [-2, 2] where the op is smooth."""

    def infer(x: TensorType, **attrs) -> TensorType:
        if check is not None:
            check(x, **attrs)
        return rules.floating(name, x) if floats else x

    # No rule means no gradient at all (not a rule-less entry), so the tape never records it.
    vjp = (rule,) if rule is not None else None
    out = out or ufunc_out(impl, 1)
    samples = (Sample(),) if samples is None else samples
    register(name, ("x",), infer, impl, vjp, emit, saves, {ELEMENTWISE, *props}, out, samples)


def binary(name, impl, rules_xy, emit, saves=(), props=(), samples=None):
    """A two-input elementwise op with broadcasting; ``props`` add to ELEMENTWISE; test
    ``samples`` draw both inputs in [-2, 2] on BINARY_SHAPES unless given."""

    def infer(x: TensorType, y: TensorType) -> TensorType:
        return rules.elementwise(name, x, y)

    out = ufunc_out(impl, 2)
    samples = (Sample(shapes=BINARY_SHAPES),) if samples is None else samples
    props = {ELEMENTWISE, *props}
    register(name, ("x", "y"), infer, impl, rules_xy, emit, saves, props, out, samples)


def comparison(name, impl, emit):
    def infer(x: TensorType, y: TensorType) -> TensorType:
        return rules.elementwise(name, x, y, out_dtype=dtypes.bool_)

    register(name, ("x", "y"), infer, impl, None, emit, (), {ELEMENTWISE}, ufunc_out(impl, 2))


# Relu-like ops: inputs kept away from the kink at 0, checked to first order only.
KINK_AT_ZERO = Sample(kinks=(0.0,), smooth=False)

# --- unary math:  name, NumPy implementation, VJP rule (d/dx), emit template ----------------
unary("neg", np.negative, lambda c, g: -g, "np.negative({0})", floats=False, props={CHEAP})
unary("exp", np.exp, lambda c, g: g * c.out, "np.exp({0})", saves=("out",), props={NON_NEGATIVE})
unary("log", np.log, lambda c, g: g / c.x, "np.log({0})", saves=("x",), samples=(POSITIVE,))
unary(
    "log1p",
    np.log1p,
    lambda c, g: g / (1.0 + c.x),
    "np.log1p({0})",
    saves=("x",),
    samples=(POSITIVE,),
)
unary(
    "sqrt",
    np.sqrt,
    lambda c, g: g / (2.0 * c.out),
    "np.sqrt({0})",
    saves=("out",),
    props={NON_NEGATIVE},
    samples=(POSITIVE,),
)
unary("tanh", np.tanh, lambda c, g: call("tanh_grad", c.out, g), "np.tanh({0})", saves=("out",))


@kernel
@chunked
def sigmoid(x, out=None):
    """1 / (1 + exp(-x)); ``out`` may be ``x``."""
    out = np.negative(x, out=out_or_new(x, out))
    np.exp(out, out=out)
    out += 1.0
    return np.divide(1.0, out, out=out)  # the same quotient as np.reciprocal, twice as fast


unary(
    "sigmoid",
    sigmoid,
    lambda c, g: call("sigmoid_grad", c.out, g),
    "rt.sigmoid({0})",
    saves=("out",),
    out="rt.sigmoid({0}, out={out})",
    props={NON_NEGATIVE},
)


@kernel
@chunked
def relu(x, out=None):
    """max(x, 0), against an array of zeros (see ``bound_like``); ``out`` may be ``x``."""
    return np.maximum(x, bound_like(x, 0), out=out)


# d relu(x) = [x > 0]; the output is as good a witness as the input and is kept anyway.
unary(
    "relu",
    relu,
    lambda c, g: call("relu_grad", c.out, g),
    "rt.relu({0})",
    saves=("out",),
    floats=False,
    out="rt.relu({0}, out={out})",
    props={NON_NEGATIVE, CHEAP},
    samples=(KINK_AT_ZERO,),
)
unary(
    "abs",
    np.abs,
    lambda c, g: g * call("sign", c.x),
    "np.abs({0})",
    saves=("x",),
    floats=False,
    props={NON_NEGATIVE},
    samples=(KINK_AT_ZERO,),
)
# sign is flat almost everywhere: a zero gradient, as in PyTorch (the output still tracks grad)
unary("sign", np.sign, lambda c, g: g * 0.0, "np.sign({0})", floats=False, samples=(KINK_AT_ZERO,))


@kernel
def erf(x):
    """The error function, vectorized (SciPy's ufunc keeps float32 as float32)."""
    return np.asarray(special.erf(x))


unary(
    "erf",
    erf,
    lambda c, g: g * (2.0 / math.sqrt(math.pi)) * call("exp", -c.x * c.x),
    "rt.erf({0})",
    saves=("x",),
)
unary("sin", np.sin, lambda c, g: g * call("cos", c.x), "np.sin({0})", saves=("x",))
unary("cos", np.cos, lambda c, g: -g * call("sin", c.x), "np.cos({0})", saves=("x",))


@kernel
@chunked
def gelu(x, approximate, out=None):
    """x * Phi(x); with ``approximate='tanh'`` PyTorch's tanh form. ``out`` may be ``x``."""
    if approximate != "tanh":
        return np.multiply(0.5 * x, 1.0 + erf(x / math.sqrt(2.0)), out=out)
    t = gelu_tanh_into(x, out=scratch(x, "gelu"))
    return gelu_from_tanh(x, t, out=out, work=t)  # t is ours: 1 + t goes in its place


def gelu_tanh_into(x, out=None):
    """t = tanh(c (x + k x^3)), the tanh of gelu's tanh form, into ``out`` (new unless given)."""
    return np.tanh(_tanh_argument(x, out_or_new(x, out)), out=out)


def gelu_from_tanh(x, t, out=None, work=None):
    """x (1 + t) / 2, with 1 + t made in ``work`` (a scratch array unless given)."""
    inner = np.add(t, 1.0, out=joint_scratch(x, t, "gelu_with_tanh") if work is None else work)
    out = np.multiply(x, inner, out=out)
    out *= 0.5
    return out


def _tanh_argument(x, out):
    """c (x + k x^3) as (c k x^2 + c) x: four passes (np.power is far slower)."""
    np.multiply(x, x, out=out)
    out *= SQRT_2_OVER_PI * GELU_TANH_COEF
    out += SQRT_2_OVER_PI
    out *= x
    return out


# gelu(x) = x * Phi(x); 'tanh' uses PyTorch's approximation of Phi.
unary(
    "gelu",
    gelu,
    lambda c, g: call("gelu_grad", c.x, g, approximate=c.approximate),
    "rt.gelu({0}, {approximate!r})",
    saves=("x",),
    out="rt.gelu({0}, {approximate!r}, out={out})",
    samples=(Sample({"approximate": "none"}), Sample({"approximate": "tanh"})),
)
# clamp passes the gradient where min <= x <= max, as PyTorch does.
unary(
    "clamp",
    lambda x, min, max: np.clip(x, min, max),
    lambda c, g: g * _inside(c.x, c.min, c.max),
    "np.clip({0}, {min!r}, {max!r})",
    saves=("x",),
    floats=False,
    check=lambda x, min, max: _integral_bounds(x, min, max),
    out="np.clip({0}, {min!r}, {max!r}, out={out})",
    samples=(
        Sample({"min": -0.5, "max": 0.7}, kinks=(-0.5, 0.7), smooth=False),
        Sample({"min": 0.3, "max": None}, kinks=(0.3,), smooth=False),
        Sample({"min": None, "max": -0.2}, kinks=(-0.2,), smooth=False),
    ),
)
unary(
    "pow_scalar",
    lambda x, exponent: np.power(x, exponent),
    lambda c, g: _pow_scalar_grad(c, g),
    "np.power({0}, {exponent!r})",
    saves=("x",),
    out="np.power({0}, {exponent!r}, out={out})",
    samples=(
        Sample({"exponent": 2.5}, low=0.5),
        Sample({"exponent": -1.5}, low=0.5),
        *(Sample({"exponent": p}) for p in (3.0, 1.0, 0.0)),
    ),
)
unary("clone", np.copy, lambda c, g: g, "{0}.copy()", floats=False, out="rt.copy_into({0}, {out})")


def _integral_bounds(x: TensorType, low, high) -> None:
    # The result keeps x's dtype, so a float bound on an integer tensor would be truncated
    # (clamp(min=0.5) acting as clamp(min=0)); PyTorch promotes to float instead. Refuse, so
    # the caller casts first rather than getting a silently wrong answer.
    if x.dtype.is_floating_point:
        return
    for bound in (low, high):
        if isinstance(bound, float | np.floating) and not float(bound).is_integer():
            raise rules.DTypeError(
                f"clamp: bound {bound!r} is not an integer but the input is {x.dtype} of shape "
                f"{x.shape}; cast the input to a floating dtype first"
            )


def _inside(x, low, high):
    """[low <= x <= high], either bound possibly None."""
    above = x >= low if low is not None else None
    below = x <= high if high is not None else None
    if above is None or below is None:
        return above if below is None else below
    return above & below


def _pow_scalar_grad(c, g):
    # x ** p for a constant p: d/dx = p * x ** (p - 1). For p = 0 that is 0 everywhere, also
    # at x = 0 where the formula gives 0 * inf = nan; PyTorch returns 0 there too.
    if c.exponent == 0.0:
        return g * 0.0
    if c.exponent == 1.0:
        return g
    return g * c.exponent * call("pow_scalar", c.x, exponent=c.exponent - 1.0)


def _pow_grad_x(c, g):
    # d/dx x**y = y * x**(y - 1), taken as 0 where y == 0 (the formula gives nan at x == 0),
    # as PyTorch does. The masked places compute with y = 1 instead: a where passes a zero
    # cotangent to its untaken branch, and that branch's own derivatives must be finite there
    # for 0 * them to be 0 (the "double where" guard).
    flat = c.y == 0
    y = call("where", flat, _one(c.y), c.y)
    return g * call("where", flat, _zero(c.y), y * call("pow", c.x, y - 1.0))


def _pow_grad_y(c, g):
    # d/dy x**y = x**y * log(x); PyTorch takes it as 0 where x == 0 and y >= 0, where the
    # function is flat. log reads x = 1 there, so that higher derivatives are 0 and not
    # 0 * log(0) = nan (the double where guard, as in _pow_grad_x).
    flat = (c.x == 0) & (c.y >= 0)
    x = call("where", flat, _one(c.x), c.x)
    return g * call("where", flat, _zero(c.x), c.out * call("log", x))


def _maximum_mask(c, picks_x):
    """maximum/minimum split the gradient evenly on ties, as PyTorch does."""
    wins = (c.x > c.y) if picks_x else (c.x < c.y)
    return wins + 0.5 * (c.x == c.y)


# --- binary arithmetic:  name, impl, (d/dx, d/dy), emit ---------------------------------------
binary("add", np.add, (lambda c, g: g, lambda c, g: g), "{0} + {1}", props={COMMUTATIVE, CHEAP})
binary("sub", np.subtract, (lambda c, g: g, lambda c, g: -g), "{0} - {1}", props={CHEAP})
binary(
    "mul",
    np.multiply,
    (lambda c, g: g * c.y, lambda c, g: g * c.x),
    "{0} * {1}",
    saves={"x": ("y",), "y": ("x",)},
    props={COMMUTATIVE, CHEAP},
)
binary(
    "div",
    np.divide,
    (lambda c, g: g / c.y, lambda c, g: -g * c.out / c.y),
    "{0} / {1}",
    saves={"x": ("y",), "y": ("y", "out")},
    props={CHEAP},
    samples=(Sample(shapes=BINARY_SHAPES, inputs=(Sample(), AWAY_FROM_ZERO)),),
)
binary(
    "pow",
    np.power,
    (_pow_grad_x, _pow_grad_y),
    "np.power({0}, {1})",
    saves={"x": ("x", "y"), "y": ("x", "y", "out")},
    samples=(Sample(shapes=BINARY_SHAPES, inputs=(POSITIVE, Sample())),),
)
binary(
    "maximum",
    np.maximum,
    (lambda c, g: g * _maximum_mask(c, True), lambda c, g: g * (1.0 - _maximum_mask(c, True))),
    "np.maximum({0}, {1})",
    saves=("x", "y"),
    props={COMMUTATIVE, CHEAP},
    samples=(),  # (ties need draws kept apart: the test tables' own rows)
)
binary(
    "minimum",
    np.minimum,
    (lambda c, g: g * _maximum_mask(c, False), lambda c, g: g * (1.0 - _maximum_mask(c, False))),
    "np.minimum({0}, {1})",
    saves=("x", "y"),
    props={COMMUTATIVE, CHEAP},
    samples=(),  # (as maximum)
)

# --- comparisons and logic: bool results, no gradient -----------------------------------------
comparison("eq", np.equal, "{0} == {1}")
comparison("ne", np.not_equal, "{0} != {1}")
comparison("lt", np.less, "{0} < {1}")
comparison("le", np.less_equal, "{0} <= {1}")
comparison("gt", np.greater, "{0} > {1}")
comparison("ge", np.greater_equal, "{0} >= {1}")
comparison("logical_and", np.logical_and, "{0} & {1}")
comparison("logical_or", np.logical_or, "{0} | {1}")
comparison("logical_xor", np.logical_xor, "{0} ^ {1}")
register(
    "logical_not",
    ("x",),
    lambda x: TensorType(x.shape, dtypes.bool_),
    np.logical_not,
    None,
    "~{0}",
    props={ELEMENTWISE},
    out="np.logical_not({0}, out={out})",
)


def _zero(like):
    """A 0-d zero of ``like``'s dtype: where's untaken branch gets exact zeros, as in PyTorch
    (``g * 0`` would keep nan and inf), and no pass over ``g``."""
    return like.new_zeros(())


def _one(like):
    """A 0-d one of ``like``'s dtype."""
    return like.new_ones(())


def _where_infer(cond: TensorType, x: TensorType, y: TensorType) -> TensorType:
    if cond.dtype is not dtypes.bool_:
        raise rules.DTypeError(f"where: condition must be bool, got {cond.dtype}")
    dtype = rules.same_dtype("where", x, y)
    return TensorType(rules.broadcast_shape("where", cond.shape, x.shape, y.shape), dtype)


@kernel
def where(cond, x, y, out=None):
    """np.where into ``out``, which may be ``x`` or ``y`` (masking attention in place)."""
    if out is None:
        return np.where(cond, x, y)
    if _same_elements(out, x):
        keep = np.logical_not(cond, out=scratch(np.shape(cond), "where", bool))
        np.copyto(out, y, where=keep)
        return out
    if not _same_elements(out, y):
        np.copyto(out, y)
    np.copyto(out, x, where=cond)
    return out


def _same_elements(a, b) -> bool:
    """Whether ``a`` and ``b`` are the same elements in the same layout: the same array, or
    two views of it, as a row loop in generated code passes ``out`` and an input (each
    ``buffer[piece]`` is a new view object)."""
    if a is b:
        return True
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    same_start = a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    return same_start and a.shape == b.shape and a.strides == b.strides


register(
    "where",
    ("cond", "x", "y"),
    _where_infer,
    np.where,
    (
        None,
        lambda c, g: call("where", c.cond, g, _zero(g)),
        lambda c, g: call("where", c.cond, _zero(g), g),
    ),
    "np.where({0}, {1}, {2})",
    saves=("cond",),
    props={ELEMENTWISE},
    out="rt.where({0}, {1}, {2}, out={out})",
)

register(
    "cast",
    ("x",),
    lambda x, dtype: TensorType(x.shape, dtypes.from_name(dtype)),
    lambda x, dtype: x.astype(dtypes.from_name(dtype).np),
    (lambda c, g: call("cast", g, dtype=c.x.dtype.name) if c.x.dtype.is_floating_point else None,),
    "{0}.astype(np.{dtype})",
    props={ELEMENTWISE, CHEAP},
    out="rt.copy_into({0}, {out})",
)


# --- more unary math (NumPy's ufuncs and PyTorch's methods of the same names) ---------------
# Inputs kept inside each domain: (-1, 1) for asin/acos/atanh, > 1 for acosh, tan off its poles.
INSIDE_ONE = Sample(low=-0.9, high=0.9)
LN2, LN10 = math.log(2.0), math.log(10.0)

unary("tan", np.tan, lambda c, g: g * (1.0 + c.out * c.out), "np.tan({0})", saves=("out",),
      samples=(Sample(low=-1.2, high=1.2),))  # fmt: skip
unary("asin", np.arcsin, lambda c, g: g / call("sqrt", 1.0 - c.x * c.x), "np.arcsin({0})",
      saves=("x",), samples=(INSIDE_ONE,))  # fmt: skip
unary("acos", np.arccos, lambda c, g: -g / call("sqrt", 1.0 - c.x * c.x), "np.arccos({0})",
      saves=("x",), samples=(INSIDE_ONE,))  # fmt: skip
unary("atan", np.arctan, lambda c, g: g / (1.0 + c.x * c.x), "np.arctan({0})", saves=("x",))
unary("sinh", np.sinh, lambda c, g: g * call("cosh", c.x), "np.sinh({0})", saves=("x",))
unary("cosh", np.cosh, lambda c, g: g * call("sinh", c.x), "np.cosh({0})", saves=("x",),
      props={NON_NEGATIVE})  # fmt: skip
unary("asinh", np.arcsinh, lambda c, g: g / call("sqrt", c.x * c.x + 1.0), "np.arcsinh({0})",
      saves=("x",))  # fmt: skip
unary("acosh", np.arccosh, lambda c, g: g / call("sqrt", c.x * c.x - 1.0), "np.arccosh({0})",
      saves=("x",), samples=(Sample(low=1.2, high=3.0),))  # fmt: skip
unary("atanh", np.arctanh, lambda c, g: g / (1.0 - c.x * c.x), "np.arctanh({0})", saves=("x",),
      samples=(INSIDE_ONE,))  # fmt: skip
unary("expm1", np.expm1, lambda c, g: g * (c.out + 1.0), "np.expm1({0})", saves=("out",))
unary("exp2", np.exp2, lambda c, g: g * c.out * LN2, "np.exp2({0})", saves=("out",),
      props={NON_NEGATIVE})  # fmt: skip
unary("log2", np.log2, lambda c, g: g / (c.x * LN2), "np.log2({0})", saves=("x",),
      samples=(POSITIVE,))  # fmt: skip
unary("log10", np.log10, lambda c, g: g / (c.x * LN10), "np.log10({0})", saves=("x",),
      samples=(POSITIVE,))  # fmt: skip
# floor and ceil are flat between integers: a zero gradient, as in PyTorch.
STEPS = Sample(kinks=(-2.0, -1.0, 0.0, 1.0, 2.0), gap=0.1, smooth=False)
unary("floor", np.floor, lambda c, g: g * 0.0, "np.floor({0})", samples=(STEPS,))
unary("ceil", np.ceil, lambda c, g: g * 0.0, "np.ceil({0})", samples=(STEPS,))


def _atan2_scale(c):
    return 1.0 / (c.x * c.x + c.y * c.y)


# atan2(x, y) = the angle of the point (y, x), atan(x / y) in the right quadrant (PyTorch's
# atan2(input, other), NumPy's arctan2(x1, x2)): d/dx = y / r^2, d/dy = -x / r^2.
binary(
    "atan2",
    np.arctan2,
    (lambda c, g: g * c.y * _atan2_scale(c), lambda c, g: -g * c.x * _atan2_scale(c)),
    "np.arctan2({0}, {1})",
    saves=("x", "y"),
    samples=(Sample(shapes=BINARY_SHAPES, inputs=(Sample(), AWAY_FROM_ZERO)),),
)
# remainder(x, y) = x - floor(x / y) * y, the sign of y's (Python's %, NumPy's remainder).
binary(
    "remainder",
    np.remainder,
    (lambda c, g: g, lambda c, g: -g * call("floor", c.x / c.y)),
    "np.remainder({0}, {1})",
    saves={"y": ("x", "y")},
    samples=(),  # (x / y kept from integers, where it jumps: the test tables' own rows)
)
