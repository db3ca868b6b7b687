"""Recurrent layers with PyTorch's names, parameters, initialization and gate order: RNN (tanh
or relu), LSTM, GRU, and their single-step cells RNNCell, LSTMCell, GRUCell.

Everything is written in tensor ops, so gradients, tracing and compiling come from the ops. A
layer projects the whole input sequence at once (``x @ W_ih^T + b_ih``, one matmul per layer and
direction), then loops over the time steps in Python: each step adds the recurrent projection
``h @ W_hh^T + b_hh`` and applies its cell's update. The sequence length is static, so a traced
or compiled layer is unrolled over it: one set of nodes per time step, and a new length compiles
a new specialization.

The cell updates, one function per kind, shared by the layers and the cells (PyTorch's formulas):

    RNN   h' = tanh(xi + hh)  or  relu(xi + hh)
    LSTM  i, f, g, o = chunks of xi + hh;  c' = sigmoid(f) c + sigmoid(i) tanh(g);
          h' = sigmoid(o) tanh(c')
    GRU   r, z, n = chunks of xi and of hh;  r = sigmoid(xi_r + hh_r), z = sigmoid(xi_z + hh_z),
          n = tanh(xi_n + r * hh_n);  h' = (1 - z) n + z h

LSTM's ``proj_size`` adds one step after the update: h' = h' @ W_hr^T. Without it, an LSTM
layer's direction is one op (``lstm_sequence``, tracegrad/ops/recurrent.py) whose kernel loops
over the time steps, and so is a GRU's (``gru_sequence``); RNN layers and projected LSTMs are
unrolled into ops, a cell per step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from tracegrad.creation import zeros
from tracegrad.errors import DTypeError, ShapeError, at_user_line
from tracegrad.nn import functional as F
from tracegrad.nn import init
from tracegrad.nn.layers import _empty
from tracegrad.nn.module import Module
from tracegrad.ops import recurrent as recurrent_ops
from tracegrad.tensor import call, cat, stack

# --- the cell updates: (input projection, recurrent projection, state) -> new state ------------
# A state is a tuple: (h,) for RNN and GRU, (h, c) for LSTM.


def _rnn_tanh_step(xi, hh, state):
    return ((xi + hh).tanh(),)


def _rnn_relu_step(xi, hh, state):
    return ((xi + hh).relu(),)


def _lstm_step(xi, hh, state):
    i, f, g, o = (xi + hh).chunk(4, dim=-1)
    c = f.sigmoid() * state[1] + i.sigmoid() * g.tanh()
    return (o.sigmoid() * c.tanh(), c)


def _gru_step(xi, hh, state):
    xi_r, xi_z, xi_n = xi.chunk(3, dim=-1)
    hh_r, hh_z, hh_n = hh.chunk(3, dim=-1)
    r = (xi_r + hh_r).sigmoid()
    z = (xi_z + hh_z).sigmoid()
    n = (xi_n + r * hh_n).tanh()
    return ((1 - z) * n + z * state[0],)


@dataclass(frozen=True)
class _Kind:
    """What differs between the recurrent kinds: gate count, state size and the update."""

    name: str  # for error messages, as PyTorch names the module
    gates: int  # blocks of hidden_size rows stacked in W_ih and W_hh
    state_size: int  # 2 for LSTM's (h, c), else 1
    step: Callable


_KINDS = {
    "RNN_TANH": _Kind("RNN", 1, 1, _rnn_tanh_step),
    "RNN_RELU": _Kind("RNN", 1, 1, _rnn_relu_step),
    "LSTM": _Kind("LSTM", 4, 2, _lstm_step),
    "GRU": _Kind("GRU", 3, 1, _gru_step),
}


def _rnn_mode(nonlinearity: str) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return "RNN_" + nonlinearity.upper()


# --- checks shared by layers and cells ---------------------------------------------------------


def _check_input(name: str, input, input_size: int, batched_ndim: int) -> bool:
    """Whether ``input`` is batched; raises on a wrong rank or feature size."""
    if input.ndim not in (batched_ndim - 1, batched_ndim):
        raise ShapeError(
            at_user_line(
                f"{name}: Expected input to be {batched_ndim - 1}D or {batched_ndim}D, got "
                f"{input.ndim}D tensor of shape {tuple(input.shape)} instead"
            )
        )
    if input.shape[-1] != input_size:
        raise ShapeError(
            at_user_line(
                f"{name}: input.size(-1) must be equal to input_size. Expected {input_size}, "
                f"got {input.shape[-1]} (input of shape {tuple(input.shape)})"
            )
        )
    return input.ndim == batched_ndim


def _check_dtype(name: str, input, weight) -> None:
    if input.dtype != weight.dtype:
        raise DTypeError(
            at_user_line(
                f"{name}: input must have the type {weight.dtype.name} of the weights, "
                f"got type {input.dtype.name}"
            )
        )


def _initial_state(kind: _Kind, hx, shapes: tuple, like) -> tuple:
    """The state tuple from the user's ``hx`` (a tensor, or LSTM's ``(h, c)``), zeros if None;
    each part checked against its shape in ``shapes``."""
    if hx is None:
        return tuple(zeros(*shape, dtype=like.dtype) for shape in shapes)
    parts = _state_parts(kind, hx)
    for index, (part, shape) in enumerate(zip(parts, shapes, strict=True)):
        _check_state_part(kind, index, part, shape)
    return parts


def _state_parts(kind: _Kind, hx) -> tuple:
    """The user's state as a tuple of tensors: LSTM takes ``(h, c)``, the others a tensor."""
    if kind.state_size == 1:
        return (hx,)
    if not isinstance(hx, (tuple, list)) or len(hx) != kind.state_size:
        raise TypeError(
            f"{kind.name}: expected hx as a tuple (h_0, c_0) of two tensors, got "
            f"{type(hx).__name__}"
        )
    return tuple(hx)


def _check_state_part(kind: _Kind, index: int, part, shape: tuple) -> None:
    if tuple(part.shape) != shape:
        which = f"hidden[{index}]" if kind.state_size > 1 else "hidden"
        raise ShapeError(
            at_user_line(f"{kind.name}: Expected {which} size {shape}, got {tuple(part.shape)}")
        )


def _check_state_rank(kind: _Kind, hx, batched: bool, batched_ndim: int) -> None:
    """PyTorch's rule: unbatched input takes an unbatched state, batched a batched one."""
    if hx is None:
        return
    for part in _state_parts(kind, hx):
        expected = batched_ndim if batched else batched_ndim - 1
        if part.ndim != expected:
            style = "batched" if batched else "unbatched"
            raise ShapeError(
                at_user_line(
                    f"{kind.name}: For {style} {expected}-D input, hx should also be "
                    f"{expected}-D but got {part.ndim}-D tensor of shape {tuple(part.shape)}"
                )
            )


def _map_state(hx, fn):
    """Apply ``fn`` to each tensor of a state: a tensor, a tuple of them, or None."""
    if hx is None:
        return None
    return tuple(fn(part) for part in hx) if isinstance(hx, (tuple, list)) else fn(hx)


def _reset_uniform(module: Module, hidden_size: int) -> None:
    # PyTorch's default: every weight and bias from U(-1/sqrt(hidden), 1/sqrt(hidden)).
    bound = 1.0 / math.sqrt(hidden_size)
    for weight in module.parameters():
        init.uniform_(weight, -bound, bound)


def _check_sizes(input_size, hidden_size) -> None:
    if not isinstance(hidden_size, int) or hidden_size <= 0:
        raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
    if not isinstance(input_size, int) or input_size < 0:
        raise ValueError(f"input_size must be a non-negative integer, got {input_size!r}")


# --- the layers --------------------------------------------------------------------------------


def _run_direction(kind: _Kind, projected, state: tuple, weights: dict, reverse: bool):
    """One direction of one layer over the time steps of ``projected`` (L, N, gates*H), the
    input already projected. Returns the outputs h_t stacked in time order and the last state.
    With LSTM's ``weight_hr`` each h_t is projected (``proj_size``) before it is used."""
    w_hh, b_hh, w_hr = weights["weight_hh"], weights.get("bias_hh"), weights.get("weight_hr")
    if kind.name == "LSTM" and w_hr is None:
        return _lstm_direction(projected, state, w_hh, b_hh, reverse)
    if kind.name == "GRU":
        return _gru_direction(projected, state, w_hh, b_hh, reverse)
    steps = projected.unbind(0)
    outputs = [None] * len(steps)
    for t in reversed(range(len(steps))) if reverse else range(len(steps)):
        state = kind.step(steps[t], F.linear(state[0], w_hh, b_hh), state)
        if w_hr is not None:
            state = (F.linear(state[0], w_hr), *state[1:])
        outputs[t] = state[0]
    return stack(outputs), state


def _lstm_direction(projected, state: tuple, w_hh, b_hh, reverse: bool):
    """An LSTM direction as one op, its time steps looping in the op's kernel (as PyTorch's
    ``aten::lstm``): the outputs h_t and the last (h, c) are views of its record."""
    if b_hh is not None:
        projected = projected + b_hh
    record = call("lstm_sequence", projected, *state, w_hh, reverse=reverse)
    dims, last = (projected.shape[0], *state[0].shape), 0 if reverse else -1
    h, c = (
        recurrent_ops.region(record, k, 1, dims)
        for k in (recurrent_ops.H_BLOCK, recurrent_ops.C_BLOCK)
    )
    return h, (h[last], c[last])


def _gru_direction(projected, state: tuple, w_hh, b_hh, reverse: bool):
    """A GRU direction as one op (as PyTorch's ``aten::gru``); outputs are views of its
    record."""
    if b_hh is None:
        b_hh = zeros(w_hh.shape[0], dtype=w_hh.dtype)
    record = call("gru_sequence", projected, state[0], w_hh, b_hh, reverse=reverse)
    h = recurrent_ops.region(record, recurrent_ops.GRU_H, 1, (projected.shape[0], *state[0].shape))
    return h, (h[0 if reverse else -1],)


def _check_layer_options(mode: str, hidden_size, num_layers, dropout, proj_size) -> None:
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if isinstance(dropout, bool) or not 0.0 <= dropout <= 1.0:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of "
            f"an element being zeroed, got {dropout!r}"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero "
            f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=4,
        )
    if not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(
            f"proj_size should be a positive integer or zero to disable projections, got "
            f"{proj_size!r}"
        )
    if proj_size and mode != "LSTM":
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
            f"hidden_size={hidden_size}"
        )


class RNNBase(Module):
    """The multi-layer, optionally bidirectional recurrent layer of a given mode ("RNN_TANH",
    "RNN_RELU", "LSTM", "GRU"). Parameters are named as PyTorch names them: ``weight_ih_l{k}``,
    ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (and LSTM's ``weight_hr_l{k}``), with
    ``_reverse`` for the backward direction; gates are stacked in PyTorch's order (LSTM i, f, g,
    o; GRU r, z, n). Input (L, N, H_in), (N, L, H_in) with ``batch_first``, or unbatched
    (L, H_in)."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_sizes(input_size, hidden_size)
        _check_layer_options(mode, hidden_size, num_layers, dropout, proj_size)
        self.mode, self.kind = mode, _KINDS[mode]
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.dropout, self.bidirectional = float(dropout), bidirectional
        self.proj_size = proj_size
        self._all_weights = [
            self._add_weights(layer, direction, device, dtype)
            for layer in range(num_layers)
            for direction in range(self.num_directions)
        ]
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def real_hidden_size(self) -> int:
        """The size of h: ``proj_size`` when LSTM projects it, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _add_weights(self, layer: int, direction: int, device, dtype) -> list[str]:
        """Register one layer-direction's parameters in PyTorch's order; return their names."""
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        rows, h_size = self.kind.gates * self.hidden_size, self.real_hidden_size
        columns = self.input_size if layer == 0 else h_size * self.num_directions
        shapes: dict[str, tuple[int, ...]] = {
            "weight_ih": (rows, columns),
            "weight_hh": (rows, h_size),
        }
        if self.bias:
            shapes.update(bias_ih=(rows,), bias_hh=(rows,))
        if self.proj_size:
            shapes.update(weight_hr=(self.proj_size, self.hidden_size))
        for name, shape in shapes.items():
            setattr(self, name + suffix, _empty(*shape, device=device, dtype=dtype))
        return [name + suffix for name in shapes]

    def reset_parameters(self) -> None:
        _reset_uniform(self, self.hidden_size)

    def flatten_parameters(self) -> None:
        """A no-op kept for PyTorch programs that call it. In PyTorch it packs the weights into
        one contiguous cuDNN buffer; tracegrad uses each weight as it is, so there is nothing
        to pack."""

    @property
    def all_weights(self) -> list[list]:
        """Per layer and direction, its parameters in order (PyTorch's ``all_weights``)."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _weights(self, index: int) -> dict:
        """Layer-direction ``index``'s parameters by kind ("weight_ih", "bias_hh"...)."""
        return {name.rpartition("_l")[0]: getattr(self, name) for name in self._all_weights[index]}

    def forward(self, input, hx=None):
        name = self.kind.name
        batched = _check_input(name, input, self.input_size, 3)
        _check_dtype(name, input, self.weight_ih_l0)
        _check_state_rank(self.kind, hx, batched, 3)
        if not batched:
            input, hx = input.unsqueeze(1), _map_state(hx, lambda part: part.unsqueeze(1))
        elif self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[0] == 0:  # (PyTorch's words)
            raise ShapeError(at_user_line("Expected sequence length to be larger than 0 in RNN"))
        layers = self.num_layers * self.num_directions
        shapes = [(layers, input.shape[1], self.real_hidden_size)]
        shapes += [(layers, input.shape[1], self.hidden_size)] * (self.kind.state_size - 1)
        output, state = self._layers(input, _initial_state(self.kind, hx, shapes, input))
        if not batched:
            output, state = output.squeeze(1), tuple(part.squeeze(1) for part in state)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, state if self.kind.state_size > 1 else state[0]

    def _layers(self, x, initial: tuple):
        """Run every layer on time-major ``x`` (L, N, H_in); returns the last layer's outputs
        (L, N, directions*H) and the final states stacked as (layers*directions, N, H)."""
        finals = []
        for layer in range(self.num_layers):
            if layer > 0:  # PyTorch's dropout: on every layer's output but the last
                x = F.dropout(x, self.dropout, self.training)
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                weights = self._weights(index)
                state = tuple(part[index] for part in initial)
                projected = F.linear(x, weights["weight_ih"], weights.get("bias_ih"))
                out, final = _run_direction(self.kind, projected, state, weights, direction == 1)
                outputs.append(out)
                finals.append(final)
            x = outputs[0] if len(outputs) == 1 else cat(outputs, dim=2)
        return x, tuple(stack(parts) for parts in zip(*finals))

    def extra_repr(self) -> str:
        # PyTorch's text: only the settings that differ from their defaults
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        if self.batch_first is not False:
            text += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            text += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            text += f", bidirectional={self.bidirectional}"
        return text


class RNN(RNNBase):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or relu), with
    PyTorch's parameters (``weight_ih_l0``...) and initialisation U(-1/sqrt(H), 1/sqrt(H)).

    Args:
        input_size: the features of each time step of the input.
        hidden_size: the features H of the hidden state.
        num_layers: recurrent layers stacked, each reading the previous one's outputs.
        nonlinearity: "tanh" or "relu".
        bias: whether the layers add ``b_ih`` and ``b_hh``.
        batch_first: input and output as (N, L, features) instead of (L, N, features).
        dropout: dropout probability on the outputs of every layer but the last (in training).
        bidirectional: run a second direction over the reversed sequence; outputs concatenate.
        device: None or "cpu".
        dtype: the parameters' dtype (default float32).

    Shape:
        ``forward(input, h_0=None)`` returns ``(output, h_n)``. Input (L, N, input_size), or
        unbatched (L, input_size); h_0 and h_n (D * num_layers, N, H), D = 2 if bidirectional
        else 1; output (L, N, D * H).

    Raises:
        ShapeError: on an input or h_0 of the wrong rank or size, naming both shapes.
        DTypeError: on an input whose dtype is not the parameters'.

    Compiled, the loop over time steps is unrolled: each sequence length is its own
    specialization.

    Examples:
        >>> rnn = nn.RNN(3, 5, num_layers=2, nonlinearity="relu")
        >>> output, h_n = rnn(tg.zeros(7, 4, 3))
        >>> output.shape, h_n.shape
        (tracegrad.Size([7, 4, 5]), tracegrad.Size([2, 4, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(
            _rnn_mode(nonlinearity), input_size, hidden_size, num_layers, bias, batch_first,
            dropout, bidirectional, 0, device, dtype,
        )  # fmt: skip
        self.nonlinearity = (
            nonlinearity  # (PyTorch's repr of RNN leaves it out; its cell's shows it)
        )


class LSTM(RNNBase):
    """Long short-term memory with PyTorch's gates (i, f, g, o stacked in ``weight_ih_l{k}``),
    parameters and initialisation. The arguments are `RNN`'s (no ``nonlinearity``), and:

    Args:
        proj_size: if > 0, each h_t is projected to this size by ``weight_hr_l{k}``; h_0, h_n
            and the output then have ``proj_size`` features instead of H.

    Shape:
        ``forward(input, (h_0, c_0)=None)`` returns ``(output, (h_n, c_n))``; c_0 and c_n are
        (D * num_layers, N, H), the rest as in `RNN`.

    Examples:
        >>> lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
        >>> output, (h_n, c_n) = lstm(tg.zeros(4, 7, 3))
        >>> output.shape, h_n.shape, c_n.shape
        (tracegrad.Size([4, 7, 5]), tracegrad.Size([2, 4, 5]), tracegrad.Size([2, 4, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size, device, dtype,
        )  # fmt: skip


class GRU(RNNBase):
    """Gated recurrent unit with PyTorch's gates (r, z, n; ``n = tanh(W_in x + b_in + r *
    (W_hn h + b_hn))``), parameters and initialisation. The arguments and shapes are
    `RNN`'s (no ``nonlinearity``): ``forward(input, h_0=None)`` returns
    ``(output, h_n)``.

    Examples:
        >>> gru = nn.GRU(3, 5, bidirectional=True)
        >>> output, h_n = gru(tg.zeros(7, 3))  # unbatched
        >>> output.shape, h_n.shape
        (tracegrad.Size([7, 10]), tracegrad.Size([2, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, 0, device, dtype,
        )  # fmt: skip


# --- the cells ---------------------------------------------------------------------------------


class RNNCellBase(Module):
    """One time step of a recurrent kind, with parameters ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``. Input (N, H_in) or unbatched (H_in,)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias, device, dtype):
        super().__init__()
        _check_sizes(input_size, hidden_size)
        self.kind = _KINDS[mode]
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        rows = self.kind.gates * hidden_size
        self.weight_ih = _empty(rows, input_size, device=device, dtype=dtype)
        self.weight_hh = _empty(rows, hidden_size, device=device, dtype=dtype)
        self.bias_ih = _empty(rows, device=device, dtype=dtype) if bias else None
        self.bias_hh = _empty(rows, device=device, dtype=dtype) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_uniform(self, self.hidden_size)

    def forward(self, input, hx=None):
        name = type(self).__name__
        batched = _check_input(name, input, self.input_size, 2)
        _check_dtype(name, input, self.weight_ih)
        _check_state_rank(self.kind, hx, batched, 2)
        if not batched:
            input, hx = input.unsqueeze(0), _map_state(hx, lambda part: part.unsqueeze(0))
        shapes = [(input.shape[0], self.hidden_size)] * self.kind.state_size
        state = _initial_state(self.kind, hx, shapes, input)
        projected = F.linear(input, self.weight_ih, self.bias_ih)
        state = self.kind.step(projected, F.linear(state[0], self.weight_hh, self.bias_hh), state)
        if not batched:
            state = tuple(part.squeeze(0) for part in state)
        return state if self.kind.state_size > 1 else state[0]

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        return text if self.bias else f"{text}, bias=False"


class RNNCell(RNNCellBase):
    """One RNN step: ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)`` (or relu).

    Args:
        input_size: the features of the input.
        hidden_size: the features H of the hidden state.
        bias: whether to add ``bias_ih`` and ``bias_hh``.
        nonlinearity: "tanh" or "relu".
        device: None or "cpu".
        dtype: the parameters' dtype (default float32).

    Shape:
        ``forward(input, h=None)`` returns h'. Input (N, input_size) or unbatched
        (input_size,); h and h' (N, H) or (H,); h defaults to zeros.

    Raises:
        ShapeError: on an input or state of the wrong rank or size.

    Examples:
        >>> nn.RNNCell(3, 5)(tg.zeros(4, 3)).shape
        tracegrad.Size([4, 5])
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
        device=None, dtype=None,
    ):  # fmt: skip
        super().__init__(_rnn_mode(nonlinearity), input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.nonlinearity == "tanh" else f"{text}, nonlinearity={self.nonlinearity}"


class LSTMCell(RNNCellBase):
    """One LSTM step; the arguments are `RNNCell`'s (no ``nonlinearity``), and
    ``forward(input, (h, c)=None)`` returns ``(h', c')``.

    Examples:
        >>> h, c = nn.LSTMCell(3, 5)(tg.zeros(4, 3))
        >>> h.shape, c.shape
        (tracegrad.Size([4, 5]), tracegrad.Size([4, 5]))
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None
    ):
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)


class GRUCell(RNNCellBase):
    """One GRU step; the arguments are `RNNCell`'s (no ``nonlinearity``), and
    ``forward(input, h=None)`` returns h'.

    Examples:
        >>> nn.GRUCell(3, 5)(tg.zeros(3)).shape
        tracegrad.Size([5])
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None
    ):
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)
