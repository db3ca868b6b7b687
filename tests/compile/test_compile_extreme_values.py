"""Compiled == eager, bit for bit, for every op at the edges of its domain: rows generated from
the samples declared with the ops (``tracegrad.ops.registry.Sample``).

Each sample gives rows in float32 and float64, on its first shape set and on its 0-d one if
it declares one:

- ``drawn``: the inputs as the sample draws them;
- ``specials``: its float inputs filled, in a shuffled order, with inf, -inf, nan, +-0, the
  largest and the smallest normal value of the dtype and a few ordinary ones (integer and
  bool inputs, indices and masks, stay as drawn);
- ``empty``: every input of 1 or more dims given a leading dim of 0.

The op runs eagerly and as a compiled function (``tg.compile``, default passes); the results
must have the same dtype, shape and bytes (nan where eager has nan, -0.0 where it has -0.0),
or both calls must raise an error of the same type whose message starts the same (an empty
input is not legal for every op). A new op gets its rows from its samples: nothing to add; an
op declared without samples must say why in ``WITHOUT_SAMPLES``.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import tracegrad as tg
from tracegrad.ops import OPS
from tracegrad.tensor import call


def _specials(dtype) -> np.ndarray:
    info = np.finfo(dtype)
    ordinary = [1.0, -1.0, 0.5, -3.0]
    return np.array(
        [np.inf, -np.inf, np.nan, 0.0, -0.0, info.max, -info.max, info.tiny, -info.tiny, *ordinary],
        dtype,
    )


def _empty(shape) -> tuple:
    return (0, *shape[1:]) if shape else shape


def _fill_specials(rng, array):
    if array.dtype.kind != "f":
        return array
    values = rng.permutation(_specials(array.dtype))
    return np.resize(values, array.shape).astype(array.dtype)


def inputs(name, sample, shapes, variant, dtype) -> list[np.ndarray]:
    """The row's input arrays: drawn as the sample says, then made extreme."""
    rng = np.random.default_rng(zlib.crc32(f"{sample.label(name)}{shapes}{variant}".encode()))
    if variant == "empty":
        shapes = tuple(_empty(s) for s in shapes)
    drawers = sample.drawers()
    drawn = [np.asarray(d(rng, s)) for d, s in zip(drawers, shapes, strict=True)]
    drawn = [a.astype(dtype) if a.dtype.kind == "f" else a for a in drawn]
    if variant == "specials":
        drawn = [_fill_specials(rng, a) for a in drawn]
    return drawn


def _shape_id(shapes) -> str:
    return "-".join("x".join(map(str, s)) or "0d" for s in shapes)


def _rows():
    rows = []
    for name, op in OPS.items():
        for sample in op.samples:
            zero_d = [s for s in sample.shapes if all(shape == () for shape in s)]
            for shapes in dict.fromkeys([sample.shapes[0], *zero_d]):
                for variant in ("drawn", "specials", "empty"):
                    if variant == "empty" and shapes in zero_d:
                        continue
                    label = f"{sample.label(name)}-{_shape_id(shapes)}-{variant}"
                    rows.append(pytest.param(name, sample, shapes, variant, id=label))
    return rows


ROWS = _rows()


def outcome(fn, arrays):
    """("value", dtype, shape, bytes) of ``fn`` on tensors of ``arrays``, or ("error", type,
    the first line of the message)."""
    try:
        out = fn(*map(tg.tensor, arrays))
    except Exception as exc:  # the error itself is what is compared
        return ("error", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    array = np.ascontiguousarray(out.numpy())
    return ("value", array.dtype, array.shape, array.tobytes())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "sample", "shapes", "variant"), ROWS)
def test_compiled_op_equals_eager_bit_for_bit(name, sample, shapes, variant, dtype):
    arrays = inputs(name, sample, shapes, variant, dtype)

    def op(*xs):
        return call(name, *xs, **sample.attrs)

    eager = outcome(op, arrays)
    compiled = outcome(tg.compile(op), arrays)
    assert compiled[:3] == eager[:3], f"compiled {compiled[:3]} != eager {eager[:3]}"
    if eager[0] == "value":
        got = np.frombuffer(compiled[3], eager[1]).reshape(eager[2])
        want = np.frombuffer(eager[3], eager[1]).reshape(eager[2])
        assert compiled[3] == eager[3], f"compiled {got} != eager {want}"


# Ops declared without samples, each with the reason (their rows in the gradient, forward and
# compiled tables are written by hand); every other op must declare samples.
WITHOUT_SAMPLES = {
    **dict.fromkeys(
        ("maximum", "minimum", "remainder"),
        "draws of the two operands depend on each other (kept from ties, or x / y from integers)",
    ),
    **dict.fromkeys(
        ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor"),
        "comparisons and logic: elementwise, not yet declared with samples",
    ),
    **dict.fromkeys(("logical_not", "where", "cast"), "elementwise, not yet declared with samples"),
    **dict.fromkeys(
        (
            *("relu_grad", "tanh_grad", "sigmoid_grad", "gelu_grad", "gelu_tanh"),
            *("gelu_with_tanh", "gelu_grad_with_tanh", "softmax_grad", "masked_softmax_grad"),
            *("log_softmax_grad", "cross_entropy_grad", "nll_loss", "log_softmax_nll_grad"),
            *("layer_norm_grad", "layer_norm_center", "layer_norm_std"),
            *("layer_norm_grad_from_std", "extreme_grad"),
            *("lstm_sequence_grad", "gru_sequence_grad"),
        ),
        "fused ops: inputs built from each other (y the forward's output), each checked "
        "against its reference composition",
    ),
    **dict.fromkeys(
        ("all_reduce", "all_reduce_start", "all_reduce_wait"),
        "collectives over MPI processes (the identity in one), checked in data-parallel steps",
    ),
    "svdvals_grad": "the gradient of svdvals, checked through svdvals' rows (it refuses a "
    "derivative of its own)",
    **dict.fromkeys(
        ("add_scaled", "lerp", "ema_square", "adam_step"),
        "optimizer updates, checked in compiled training steps",
    ),
    **dict.fromkeys(
        (
            "dropout_mask",
            "random_normal",
            "random_uniform",
            "random_integers",
            "random_permutation",
        ),
        "random draws: no inputs to draw, compared under one seed",
    ),
    "keep_gradient": "its gradient is by design not its derivative (a test of its own)",
}


def test_every_op_declares_samples_or_says_why_not():
    without = {name for name, op in OPS.items() if not op.samples}
    assert without == set(WITHOUT_SAMPLES), (
        f"declare samples for {sorted(without - set(WITHOUT_SAMPLES))}; "
        f"no longer without: {sorted(set(WITHOUT_SAMPLES) - without)}"
    )


def test_every_op_with_samples_has_rows_of_every_variant():
    variants = {(p.values[0], p.values[3]) for p in ROWS}
    for name in (n for n, op in OPS.items() if op.samples):
        assert {v for n, v in variants if n == name} == {"drawn", "specials", "empty"}, name
