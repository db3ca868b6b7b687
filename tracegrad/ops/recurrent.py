"""Recurrent ops: an LSTM or GRU layer's loop over time steps, as one op (PyTorch's
``aten::lstm``, ``aten::gru``).

NOTE: ``lstm_sequence`` is a composite with kernels of its own for compile time. Unrolled into
primitives, a 2-layer LSTM over 64 steps is thousands of nodes that every pass, the code
generator and Python's compiler go through (a second and a half before W5's first step); as
one node the loop runs inside its kernel, as a hand-written NumPy LSTM runs it, and the graph
shows one LSTM layer where the model has one. Its meaning is ``_lstm_reference``, the unrolled
composition in tracegrad ops: the tests hold the kernels to it, and the gradient op's VJP is
the reference's, so gradients of gradients stay exact.

The forward keeps what the backward reads in its one result, a flat record of regions, each
contiguous (NumPy's ufuncs run several times slower on rows with gaps between them, and the
next layer's product wants all the h_t as one matrix): the activated gates i, f, g, o as
(steps, batch, 4 hidden), then h, c and tanh(c) as (steps, batch, hidden) each. The layer's
outputs are views of it (``h``, the last ``c``); ``region`` reads it.
"""

from __future__ import annotations

import functools

import numpy as np

from tracegrad.dtypes import TensorType
from tracegrad.errors import ShapeError
from tracegrad.ops import rules
from tracegrad.ops.fused import reference_vjp
from tracegrad.ops.registry import Sample, call, register
from tracegrad.ops.runtime import kernel, scratch

GATES = 4  # i, f, g, o
H_BLOCK, C_BLOCK = 4, 5  # regions after the gates (tanh(c) is the last)
RECORD = 7  # blocks of hidden columns a time step keeps


def block(rows, k: int, hidden: int):
    """Block ``k`` of ``hidden`` columns of ``rows`` (the last axis): gate k of a region."""
    return rows[..., k * hidden : (k + 1) * hidden]


def region(record, start: int, width: int, dims: tuple[int, int, int]):
    """Regions ``start`` to ``start + width`` of a flat record for ``dims`` (steps, batch,
    hidden) as (steps, batch, width * hidden): the gates, h, c or tanh(c) of every step."""
    steps, batch, hidden = dims
    size = steps * batch * hidden
    return record[start * size : (start + width) * size].reshape((steps, batch, width * hidden))


def _order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _lstm_infer(projected: TensorType, h0: TensorType, c0: TensorType, w_hh: TensorType, reverse):
    dtype = rules.same_dtype("lstm_sequence", projected, h0, c0, w_hh)
    if projected.ndim != 3 or projected.shape[2] % GATES:
        raise ShapeError(f"lstm_sequence: projected input {projected.shape} is not (L, N, 4H)")
    steps, batch, gates = projected.shape
    hidden = gates // GATES
    if h0.shape != (batch, hidden) or c0.shape != (batch, hidden):
        raise ShapeError(
            f"lstm_sequence: states {h0.shape} and {c0.shape} are not ({batch}, {hidden})"
        )
    if w_hh.shape != (gates, hidden):
        raise ShapeError(f"lstm_sequence: weight_hh {w_hh.shape} is not ({gates}, {hidden})")
    return TensorType((RECORD * steps * batch * hidden,), dtype)


@functools.cache
def _gate_columns(hidden: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per gate column: sigmoid(x) = 0.5 tanh(0.5 x) + 0.5 on i, f, o, and tanh on g, so one
    tanh activates a whole row of gates (the scale and the shift); and 1 on g's columns, 0 on
    the others, for the derivative (1 - a)(a + that): (1 - s) s and (1 - g)(1 + g). Shared,
    never written."""
    scale = np.full(GATES * hidden, 0.5, dtype)
    scale[2 * hidden : 3 * hidden] = 1.0
    shift = np.where(scale == 0.5, 0.5, 0.0).astype(dtype)
    return scale, shift, (1.0 - 2.0 * shift).astype(dtype)


@kernel
def lstm_sequence(projected, h0, c0, w_hh, reverse, out=None):
    """The record of an LSTM layer over the time steps of ``projected`` (L, N, 4H: the input
    projection plus both biases) from the state (h0, c0), stepping backwards in time when
    ``reverse``."""
    steps, batch, gates = projected.shape
    hidden = gates // GATES
    record = np.empty(RECORD * steps * batch * hidden, projected.dtype) if out is None else out
    scale, shift, _ = _gate_columns(hidden, projected.dtype)
    gates_all, *states = _regions(record, (steps, batch, hidden))
    h, c = h0, c0
    for t in _order(steps, reverse):
        a = gates_all[t]
        np.matmul(h, w_hh.T, out=a)
        a += projected[t]
        a *= scale
        np.tanh(a, out=a)
        a *= scale
        a += shift
        i, f, g, o = (block(a, k, hidden) for k in range(GATES))
        h, new_c, tanh_c = (state[t] for state in states)
        np.multiply(i, g, out=tanh_c)  # (a temporary until tanh(c) is made)
        np.multiply(f, c, out=new_c)
        new_c += tanh_c
        np.tanh(new_c, out=tanh_c)
        np.multiply(o, tanh_c, out=h)
        c = new_c
    return record


@kernel
def lstm_sequence_grad(projected, h0, c0, w_hh, record, g, reverse, out=None):
    """The cotangents of an LSTM layer from ``g``, its record's cotangent: those of the
    pre-activation gates for each time step (L, N, 4H), then one more step holding the
    initial state's [dh0 | dc0 | 0 | 0]."""
    steps, batch, gates = projected.shape
    hidden = gates // GATES
    grads = np.empty((steps + 1, batch, gates), projected.dtype) if out is None else out
    dh = scratch((batch, hidden), "lstm_dh", projected.dtype)
    dc = scratch((batch, hidden), "lstm_dc", projected.dtype)
    tmp = scratch((batch, hidden), "lstm_tmp", projected.dtype)
    tmp4 = scratch((batch, gates), "lstm_tmp4", projected.dtype)
    tanh_columns = _gate_columns(hidden, projected.dtype)[2]
    dh.fill(0.0)
    dc.fill(0.0)
    order = list(_order(steps, reverse))
    dims = (steps, batch, hidden)
    gates_all, _, c_all, tanh_all = _regions(record, dims)
    cotangents = _regions(g, dims)
    previous_c = [c0] + [c_all[t] for t in order[:-1]]
    for t, c_before in zip(reversed(order), reversed(previous_c), strict=True):
        a, tanh_c, da = gates_all[t], tanh_all[t], grads[t]
        i, f, gg, o = (block(a, k, hidden) for k in range(GATES))
        cot_gates, cot_h, cot_c, cot_tanh_c = (cot[t] for cot in cotangents)
        di, df, dg, do = (block(da, k, hidden) for k in range(GATES))
        dh += cot_h
        dc += cot_c
        np.multiply(dh, tanh_c, out=do)
        # d tanh(c) = dh o (+ its own cotangent); dc += d tanh(c) (1 - tanh(c)^2)
        np.multiply(dh, o, out=tmp)
        tmp += cot_tanh_c
        np.multiply(tanh_c, tanh_c, out=dh)
        np.subtract(1.0, dh, out=dh)
        tmp *= dh
        dc += tmp
        np.multiply(dc, gg, out=di)
        np.multiply(dc, i, out=dg)
        np.multiply(dc, c_before, out=df)
        dc *= f  # (carried to the step before)
        da += cot_gates
        # through the activations, whole rows: (1 - s) s on i, f, o; (1 - g)(1 + g) on g
        np.subtract(1.0, a, out=tmp4)
        da *= tmp4
        np.add(a, tanh_columns, out=tmp4)
        da *= tmp4
        np.matmul(da, w_hh, out=dh)
    last = grads[steps]
    last[:, :hidden] = dh
    last[:, hidden : 2 * hidden] = dc
    last[:, 2 * hidden :] = 0.0
    return grads


def _regions(record, dims) -> list:
    """An LSTM record (or its cotangent) as its regions: gates, h, c, tanh(c)."""
    singles = (region(record, k, 1, dims) for k in range(GATES, RECORD))
    return [region(record, 0, GATES, dims), *singles]


def _flat_record(*regions):
    """A record of regions, each a list of its steps' (batch, width) values, in tracegrad ops."""
    stacked = [call("cat", *map(_one_step, r), dim=0) for r in regions]
    return call("cat", *(call("reshape", r, shape=(r.numel(),)) for r in stacked), dim=0)


def _lstm_reference(projected, h0, c0, w_hh, reverse):
    """The record in tracegrad ops: the LSTM cell unrolled over the time steps."""
    steps, hidden = projected.shape[0], h0.shape[-1]
    h, c = h0, c0
    rows: list[list] = [[None] * steps for _ in range(RECORD - GATES + 1)]
    for t in _order(steps, reverse):
        pre = call("getitem", projected, key=(("int", t),)) + call("matmul", h, w_hh.mT)
        i, f, g, o = (block(pre, k, hidden) for k in range(GATES))
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        tanh_c = c.tanh()
        h = o * tanh_c
        for r, value in zip(rows, (call("cat", i, f, g, o, dim=1), h, c, tanh_c), strict=True):
            r[t] = value
    return _flat_record(*rows)


def _one_step(x):
    return call("reshape", x, shape=(1, *x.shape))


def _grad_reference(projected, h0, c0, w_hh, record, g, reverse):
    """What ``lstm_sequence_grad`` packs, in tracegrad ops: the backward recurrence of the
    reference's steps (``record`` is the forward's result, computed again here, so that its
    derivatives follow the inputs)."""
    steps, hidden = projected.shape[0], h0.shape[-1]
    batch = h0.shape[0]
    record = _lstm_reference(projected, h0, c0, w_hh, reverse)
    order = list(_order(steps, reverse))
    dims = (steps, batch, hidden)
    gates_all, _, c_all, tanh_all = _regions(record, dims)
    cotangents = _regions(g, dims)
    before = [c0] + [c_all[t] for t in order[:-1]]
    dh = dc = h0 * 0.0
    d_pre = [None] * steps
    for t, c_before in zip(reversed(order), reversed(before), strict=True):
        a, tanh_c = gates_all[t], tanh_all[t]
        i, f, gg, o = (block(a, k, hidden) for k in range(GATES))
        cot_gates, cot_h, cot_c, cot_tanh_c = (cot[t] for cot in cotangents)
        cot = [block(cot_gates, k, hidden) for k in range(GATES)]
        dh = dh + cot_h
        dc = dc + cot_c + (dh * o + cot_tanh_c) * (1.0 - tanh_c * tanh_c)
        d_gates = (dc * gg + cot[0], dc * c_before + cot[1], dc * i + cot[2], dh * tanh_c + cot[3])
        d_i, d_f, d_g, d_o = (d * a * (1.0 - a) for d, a in zip(d_gates, (i, f, gg, o)))
        d_g = d_gates[2] * (1.0 - gg * gg)
        d_pre[t] = call("cat", d_i, d_f, d_g, d_o, dim=1)
        dc = dc * f
        dh = call("matmul", d_pre[t], w_hh)
    last = call("cat", dh, dc, dh * 0.0, dh * 0.0, dim=1)
    return call("cat", *map(_one_step, d_pre), _one_step(last), dim=0)


def _lstm_vjp(c, g):
    """The cotangents of projected, h0 and c0 from the gradient kernel; weight_hh's is the sum
    over the steps of d pre_t^T h_(t-1): one product over the whole sequence."""
    steps, hidden = c.projected.shape[0], c.h0.shape[-1]
    grads = call("lstm_sequence_grad", c.projected, c.h0, c.c0, c.w_hh, c.out, g, reverse=c.reverse)
    d_pre = call("getitem", grads, key=(("slice", 0, steps, None),))
    last = call("getitem", grads, key=(("int", steps),))
    need = c.needs_input_grad
    return (
        d_pre if need[0] else None,
        block(last, 0, hidden) if need[1] else None,
        block(last, 1, hidden) if need[2] else None,
        _weight_hh_grad(c, d_pre, hidden, H_BLOCK) if need[3] else None,
    )


def _weight_hh_grad(c, d_hh, hidden: int, h_block: int):
    """sum over the steps of d_hh_t^T h_(t-1), the states before each step being the h block
    of the record shifted by one step, h0 first (in the order of the steps)."""
    h = region(c.out, h_block, 1, (c.projected.shape[0], *c.h0.shape))
    h0 = _one_step(c.h0)
    before = call("cat", *((h[1:], h0) if c.reverse else (h0, h[:-1])), dim=0)
    rows = d_hh.shape[0] * d_hh.shape[1]
    d_hh = call("reshape", d_hh, shape=(rows, d_hh.shape[2]))
    return call("matmul", d_hh.mT, call("reshape", before, shape=(rows, hidden)))


def _lstm_numpy(projected, h0, c0, w_hh, reverse):
    """The record in NumPy, step by step (a test reference)."""
    hidden = h0.shape[-1]
    h, c, rows = h0, c0, {}
    for t in _order(len(projected), reverse):
        pre = projected[t] + h @ w_hh.T
        i, f, g, o = (block(pre, k, hidden) for k in range(GATES))
        i, f, o = (1 / (1 + np.exp(-x)) for x in (i, f, o))
        c = f * c + i * np.tanh(g)
        h = o * np.tanh(c)
        rows[t] = [np.concatenate([i, f, np.tanh(g), o], axis=-1), h, c, np.tanh(c)]
    return _numpy_record(rows, len(projected))


_LSTM_SHAPES = (
    ((3, 2, 8), (2, 2), (2, 2), (8, 2)),
    ((1, 1, 4), (1, 1), (1, 1), (4, 1)),
    ((4, 3, 12), (3, 3), (3, 3), (12, 3)),
)


def _sequence_op(name, inputs, infer, kernel_fn, vjp, shapes=(), ref=None):
    """Declare a recurrent op of ``inputs`` and the ``reverse`` attribute, its kernel taking
    ``out=``. A layer's op has ``shapes``: samples of both directions checked against ``ref``,
    and its VJP reads its record; a gradient op's VJP (its reference's) reads its inputs."""
    args = ", ".join(f"{{{i}}}" for i in range(len(inputs)))
    register(
        name,
        inputs,
        infer,
        kernel_fn,
        vjp,
        f"rt.{name}({args}, {{reverse}})",
        out=f"rt.{name}({args}, {{reverse}}, out={{out}})",
        saves=(*inputs, "out") if shapes else inputs,
        samples=tuple(
            Sample({"reverse": reverse}, low=-1.5, high=1.5, shapes=shapes, ref=ref)
            for reverse in (False, True)
            if shapes
        ),
    )


_sequence_op(
    "lstm_sequence",
    ("projected", "h0", "c0", "w_hh"),
    _lstm_infer,
    lstm_sequence,
    _lstm_vjp,
    _LSTM_SHAPES,
    _lstm_numpy,
)


def _lstm_grad_infer(projected, h0, c0, w_hh, record, g, reverse) -> TensorType:
    steps, batch, gates = projected.shape
    return TensorType((steps + 1, batch, gates), projected.dtype)


_sequence_op(
    "lstm_sequence_grad",
    ("projected", "h0", "c0", "w_hh", "record", "g"),
    _lstm_grad_infer,
    lstm_sequence_grad,
    reference_vjp(_grad_reference),
)


# --- GRU: a record of r, z, n, W_hn h + b_hn and h_t per step; gradients packed as the
# pre-activation ones of r and z, then n's on the hidden side and on the input side ---------

GRU_GATES = 3  # r, z, n
GRU_HN, GRU_H = 3, 4  # after the gates: W_hn h + b_hn, then h_t
GRU_RECORD = 5


def _gru_regions(record, dims) -> list:
    """A GRU record (or its cotangent) as its regions: gates r, z, n; W_hn h + b_hn; h."""
    return [
        region(record, 0, GRU_GATES, dims),
        *(region(record, k, 1, dims) for k in (GRU_HN, GRU_H)),
    ]


def _gru_parts(regions, t: int, hidden: int) -> tuple:
    """Step ``t`` of a GRU record's regions as r, z, n, W_hn h + b_hn and h_t."""
    gates, hn, h = (r[t] for r in regions)
    return (*(block(gates, k, hidden) for k in range(GRU_GATES)), hn, h)


def _gru_infer(projected, h0, w_hh, b_hh, reverse) -> TensorType:
    dtype = rules.same_dtype("gru_sequence", projected, h0, w_hh, b_hh)
    if projected.ndim != 3 or projected.shape[2] % GRU_GATES:
        raise ShapeError(f"gru_sequence: projected input {projected.shape} is not (L, N, 3H)")
    steps, batch, gates = projected.shape
    hidden = gates // GRU_GATES
    if h0.shape != (batch, hidden):
        raise ShapeError(f"gru_sequence: state {h0.shape} is not ({batch}, {hidden})")
    if w_hh.shape != (gates, hidden) or b_hh.shape != (gates,):
        raise ShapeError(
            f"gru_sequence: weight_hh {w_hh.shape} and bias_hh {b_hh.shape} are not "
            f"({gates}, {hidden}) and ({gates},)"
        )
    return TensorType((GRU_RECORD * steps * batch * hidden,), dtype)


@kernel
def gru_sequence(projected, h0, w_hh, b_hh, reverse, out=None):
    """The record of a GRU layer over the time steps of ``projected`` (L, N, 3H: the input
    projection plus its bias) from the state h0, stepping backwards in time when
    ``reverse``."""
    steps, batch, gates = projected.shape
    hidden = gates // GRU_GATES
    shape = GRU_RECORD * steps * batch * hidden
    record = np.empty(shape, projected.dtype) if out is None else out
    regions = _gru_regions(record, (steps, batch, hidden))
    hh = scratch((batch, gates), "gru_hh", projected.dtype)
    h = h0
    for t in _order(steps, reverse):
        x = projected[t]
        r, z, n, hn, new_h = _gru_parts(regions, t, hidden)
        np.matmul(h, w_hh.T, out=hh)
        hh += b_hh
        rz = regions[0][t][:, : 2 * hidden]
        np.add(x[:, : 2 * hidden], hh[:, : 2 * hidden], out=rz)
        np.negative(rz, out=rz)  # sigmoid, as the elementwise op computes it
        np.exp(rz, out=rz)
        rz += 1.0
        np.divide(1.0, rz, out=rz)
        hn[...] = block(hh, 2, hidden)
        np.multiply(r, hn, out=n)
        n += block(x, 2, hidden)
        np.tanh(n, out=n)
        np.subtract(h, n, out=new_h)  # h' = n + z (h - n)
        new_h *= z
        new_h += n
        h = new_h
    return record


@kernel
def gru_sequence_grad(projected, h0, w_hh, b_hh, record, g, reverse, out=None):
    """The cotangents of a GRU layer from ``g``, its record's cotangent: per time step those
    of r and z before their sigmoid, of W_hn h + b_hn and of n before its tanh (L, N, 4H),
    then one more step holding the initial state's [dh0 | 0 | 0 | 0]."""
    steps, batch, gates = projected.shape
    hidden = gates // GRU_GATES
    grads = np.empty((steps + 1, batch, 4 * hidden), projected.dtype) if out is None else out
    dh = scratch((batch, hidden), "gru_dh", projected.dtype)
    carried = scratch((batch, hidden), "gru_carried", projected.dtype)
    slope = scratch((batch, 2 * hidden), "gru_slope", projected.dtype)
    dh.fill(0.0)
    order = list(_order(steps, reverse))
    regions = _gru_regions(record, (steps, batch, hidden))
    cotangents = _gru_regions(g, (steps, batch, hidden))
    previous_h = [h0] + [regions[2][t] for t in order[:-1]]
    for t, h_before in zip(reversed(order), reversed(previous_h), strict=True):
        da = grads[t]
        r, z, n, hn, _ = _gru_parts(regions, t, hidden)
        cot_r, cot_z, cot_n, cot_hn, cot_h = _gru_parts(cotangents, t, hidden)
        d_r, d_z, d_hn, d_n = (block(da, k, hidden) for k in range(4))
        dh += cot_h
        # h' = n + z (h - n): dz = dh (h - n), dn = dh (1 - z), dh carried = dh z
        np.subtract(h_before, n, out=d_z)
        d_z *= dh
        np.multiply(dh, z, out=carried)
        np.subtract(dh, carried, out=d_n)
        d_z += cot_z
        d_n += cot_n
        np.multiply(n, n, out=dh)  # (dh is free until the product below)
        np.subtract(1.0, dh, out=dh)
        d_n *= dh
        np.multiply(d_n, r, out=d_hn)
        d_hn += cot_hn
        np.multiply(d_n, hn, out=d_r)
        d_r += cot_r
        rz, d_rz = regions[0][t][:, : 2 * hidden], da[:, : 2 * hidden]
        np.subtract(1.0, rz, out=slope)
        d_rz *= slope
        d_rz *= rz
        np.matmul(da[:, :gates], w_hh, out=dh)
        dh += carried
    last = grads[steps]
    last[:, :hidden] = dh
    last[:, hidden:] = 0.0
    return grads


def _gru_reference(projected, h0, w_hh, b_hh, reverse):
    """The record in tracegrad ops: the GRU cell unrolled over the time steps."""
    steps, hidden = projected.shape[0], h0.shape[-1]
    h, rows = h0, [[None] * steps for _ in range(3)]
    for t in _order(steps, reverse):
        x = call("getitem", projected, key=(("int", t),))
        hh = call("matmul", h, w_hh.mT) + b_hh
        r, z = ((block(x, k, hidden) + block(hh, k, hidden)).sigmoid() for k in range(2))
        hn = block(hh, 2, hidden)
        n = (block(x, 2, hidden) + r * hn).tanh()
        h = n + z * (h - n)
        for region_steps, value in zip(rows, (call("cat", r, z, n, dim=1), hn, h), strict=True):
            region_steps[t] = value
    return _flat_record(*rows)


def _gru_grad_reference(projected, h0, w_hh, b_hh, record, g, reverse):
    """What ``gru_sequence_grad`` packs, in tracegrad ops (``record`` computed again)."""
    (batch, hidden), steps = h0.shape, projected.shape[0]
    record = _gru_reference(projected, h0, w_hh, b_hh, reverse)
    order = list(_order(steps, reverse))
    regions = _gru_regions(record, (steps, batch, hidden))
    cotangents = _gru_regions(g, (steps, batch, hidden))
    before = [h0] + [regions[2][t] for t in order[:-1]]
    dh, rows = h0 * 0.0, [None] * steps
    for t, h_before in zip(reversed(order), reversed(before), strict=True):
        r, z, n, hn, _ = _gru_parts(regions, t, hidden)
        cot = _gru_parts(cotangents, t, hidden)
        dh = dh + cot[GRU_H]
        d_n = (dh * (1.0 - z) + cot[2]) * (1.0 - n * n)
        d_z = (dh * (h_before - n) + cot[1]) * z * (1.0 - z)
        d_r = (d_n * hn + cot[0]) * r * (1.0 - r)
        d_hn = d_n * r + cot[GRU_HN]
        rows[t] = call("cat", d_r, d_z, d_hn, d_n, dim=1)
        dh = dh * z + call("matmul", call("cat", d_r, d_z, d_hn, dim=1), w_hh)
    last = call("cat", dh, dh * 0.0, dh * 0.0, dh * 0.0, dim=1)
    return call("cat", *map(_one_step, rows), _one_step(last), dim=0)


def _gru_vjp(c, g):
    """The cotangents from the gradient kernel; weight_hh's and bias_hh's are the products
    and sums of the hidden side's over the whole sequence."""
    steps, hidden = c.projected.shape[0], c.h0.shape[-1]
    grads = call(
        "gru_sequence_grad", c.projected, c.h0, c.w_hh, c.b_hh, c.out, g, reverse=c.reverse
    )
    d_steps = call("getitem", grads, key=(("slice", 0, steps, None),))
    d_hh = d_steps[..., : GRU_GATES * hidden]
    need = c.needs_input_grad
    d_projected = None
    if need[0]:
        d_projected = call("cat", d_steps[..., : 2 * hidden], d_steps[..., 3 * hidden :], dim=2)
    last = call("getitem", grads, key=(("int", steps),))
    d_b = d_hh.sum((0, 1)) if need[3] else None
    return (
        d_projected,
        block(last, 0, hidden) if need[1] else None,
        _weight_hh_grad(c, d_hh, hidden, GRU_H) if need[2] else None,
        d_b,
    )


def _gru_numpy(projected, h0, w_hh, b_hh, reverse):
    """The record in NumPy, step by step (a test reference)."""
    hidden = h0.shape[-1]
    h, rows = h0, {}
    for t in _order(len(projected), reverse):
        x, hh = projected[t], h @ w_hh.T + b_hh
        r, z = (1 / (1 + np.exp(-(block(x, k, hidden) + block(hh, k, hidden)))) for k in range(2))
        n = np.tanh(block(x, 2, hidden) + r * block(hh, 2, hidden))
        h = (1 - z) * n + z * h
        rows[t] = [np.concatenate([r, z, n], axis=-1), block(hh, 2, hidden), h]
    return _numpy_record(rows, len(projected))


def _numpy_record(rows: dict, steps: int) -> np.ndarray:
    """A flat record from each step's regions, in NumPy (a test reference)."""
    regions = zip(*(rows[t] for t in range(steps)), strict=True)
    return np.concatenate([np.stack(steps_of).reshape(-1) for steps_of in regions])


_GRU_SHAPES = (
    ((3, 2, 6), (2, 2), (6, 2), (6,)),
    ((1, 1, 3), (1, 1), (3, 1), (3,)),
    ((4, 3, 9), (3, 3), (9, 3), (9,)),
)

_sequence_op(
    "gru_sequence",
    ("projected", "h0", "w_hh", "b_hh"),
    _gru_infer,
    gru_sequence,
    _gru_vjp,
    _GRU_SHAPES,
    _gru_numpy,
)


def _gru_grad_infer(projected, h0, w_hh, b_hh, record, g, reverse) -> TensorType:
    steps, batch, gates = projected.shape
    return TensorType((steps + 1, batch, 4 * (gates // GRU_GATES)), projected.dtype)


_sequence_op(
    "gru_sequence_grad",
    ("projected", "h0", "w_hh", "b_hh", "record", "g"),
    _gru_grad_infer,
    gru_sequence_grad,
    reference_vjp(_gru_grad_reference),
)
