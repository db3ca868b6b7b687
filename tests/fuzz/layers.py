"""Layer constructs: each registers an nn layer on the Holder ``m`` in ``setup`` and applies it to
a pool matrix of the program's shape (rows, cols), reshaped to the layer's layout, adding its
results (made matrices again) to the pool. Layers that keep state or draw at random (batch
norm's running statistics, dropout) are what the runner compares after every call."""

from __future__ import annotations

from .builder import Builder
from .models import add_module, input_matrix

RECURRENT = ["nn.LSTM", "nn.GRU", "nn.RNN", "nn.RNN"]


def recurrent(b: Builder) -> None:
    """An LSTM (its hidden state projected or not), GRU or RNN (tanh or relu) over the matrix
    as a sequence of ``rows`` steps of one batch, ``batch_first`` or not, one or two layers
    (with dropout between them in train mode), one or two directions, with biases or without,
    from zeros or from a pool row as the initial state."""
    x, r, c = input_matrix(b), b.rows, b.cols
    kind = b.rng.choice(RECURRENT)
    layers, directions = b.rng.randint(1, 2), b.rng.randint(1, 2)
    batch_first = b.rng.random() < 0.5
    projected = kind == "nn.LSTM" and b.rng.random() < 0.3  # h of size c, the cell c + 2
    hidden = c + 2 if projected else c
    options = [f"num_layers={layers}", f"batch_first={batch_first}"]
    options += ["bidirectional=True"] if directions == 2 else []
    options += ["dropout=0.25"] if layers == 2 and b.rng.random() < 0.5 else []
    options += ["nonlinearity='relu'"] if kind == "nn.RNN" and b.rng.random() < 0.5 else []
    options += [f"proj_size={c}"] if projected else []
    options += ["bias=False"] if b.rng.random() < 0.2 else []
    rnn = add_module(b, f"{kind}({c}, {hidden}, {', '.join(options)})")
    seq = f"{x.name}.unsqueeze({0 if batch_first else 1})"
    row = b.pick(shape=(1, c))
    start = ""
    if row is not None and layers * directions == 1:
        h0 = f"{row.name}.unsqueeze(0)"
        cell = f"tg.cat([{h0}, {h0}[..., :2]], -1)" if projected else h0
        start = f", ({h0}, {cell}.tanh())" if kind == "nn.LSTM" else f", {h0}"
    out, state = b.fresh("seq"), b.fresh("state")
    b.line(f"{out}, {state} = {rnn}({seq}{start})")
    b.let(f"{out}.reshape({r}, {directions * c})", (r, directions * c))
    which = b.rng.randrange(2) if kind == "nn.LSTM" else None
    h_n = state if which is None else f"{state}[{which}]"
    size = hidden if which == 1 else c
    b.let(f"{h_n}.reshape({layers * directions}, {size})", (layers * directions, size))


def batch_norm(b: Builder) -> None:
    """BatchNorm1d over the rows as a batch, or BatchNorm2d over the matrix as channels of a
    one-image batch; momentum or a cumulative average, with or without affine parameters and
    running statistics; the caller may flip it between train and eval mode."""
    x, r, c = input_matrix(b), b.rows, b.cols
    momentum = b.rng.choice(["0.1", "0.5", "None"])
    affine = b.rng.choice(["True", "False"])
    track = b.rng.choice(["True", "True", "False"])
    options = f"momentum={momentum}, affine={affine}, track_running_stats={track}"
    if b.rng.random() < 0.5:
        norm = add_module(b, f"nn.BatchNorm1d({c}, {options})")
        b.let(f"{norm}({x.name})", (r, c))
    else:
        norm = add_module(b, f"nn.BatchNorm2d({r}, {options})")
        b.let(f"{norm}({x.name}.reshape(1, {r}, {c}, 1)).reshape({r}, {c})", (r, c))
    if b.rng.random() < 0.5:
        b.add_between(f"{norm}.train(i % 2 == 1)")


def dropout_layer(b: Builder) -> None:
    """nn.Dropout or nn.Dropout2d in train mode (its draws must be eager's under the seed the
    caller set), now and then after the function seeds the generator itself, which compiling
    refuses (TraceError: the seed would be set once, at the trace)."""
    x, r, c = input_matrix(b), b.rows, b.cols
    if b.rng.random() < 0.1:
        b.line(f"tg.manual_seed({b.rng.randrange(100)})")
    p = b.rng.choice([0.2, 0.5])
    if b.rng.random() < 0.5:
        b.let(f"{add_module(b, f'nn.Dropout({p})')}({x.name})", (r, c))
    else:
        drop = add_module(b, f"nn.Dropout2d({p})")
        b.let(f"{drop}({x.name}.reshape(1, {r}, {c}, 1)).reshape({r}, {c})", (r, c))


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pooling(b: Builder) -> None:
    """MaxPool2d, AvgPool2d (padding counted or not) or ConvTranspose2d over the matrix as a
    one-channel image; the result a matrix of the image's rows (per channel) and columns."""
    x, r, c = input_matrix(b), b.rows, b.cols
    image = f"{x.name}.reshape(1, 1, {r}, {c})"
    kind = b.rng.choice(["max", "avg", "transpose"])
    if kind == "transpose":
        kernel, stride = b.rng.choice([(2, 1), (2, 2), (3, 1), (3, 2)])
        padding = b.rng.randint(0, 1)
        layer = f"nn.ConvTranspose2d(1, 2, {kernel}, stride={stride}, padding={padding})"
        h, w = ((n - 1) * stride - 2 * padding + kernel for n in (r, c))
        channels = 2
    else:
        kernel, stride = 2, b.rng.randint(1, 2)
        padding = b.rng.randint(0, 1)
        if kind == "max":
            layer = f"nn.MaxPool2d({kernel}, stride={stride}, padding={padding})"
        else:
            counted = b.rng.choice(["True", "False"])
            layer = f"nn.AvgPool2d({kernel}, {stride}, {padding}, count_include_pad={counted})"
        h, w = (_out_size(n, kernel, stride, padding) for n in (r, c))
        channels = 1
    b.let(f"{add_module(b, layer)}({image}).reshape({channels * h}, {w})", (channels * h, w))


def transformer(b: Builder) -> None:
    """MultiheadAttention (self-attention, causal mask or none, weights averaged or per head)
    or a TransformerEncoderLayer (post- or pre-norm, relu or gelu, dropout or none) over the
    matrix as a sequence of one batch, ``batch_first`` or not."""
    x, r, c = input_matrix(b), b.rows, b.cols
    heads = b.rng.choice([h for h in (1, 2) if c % h == 0])
    batch_first = b.rng.random() < 0.5
    seq = f"{x.name}.unsqueeze({0 if batch_first else 1})"
    dropout = b.rng.choice([0.0, 0.0, 0.2])
    if b.rng.random() < 0.5:
        attn = add_module(
            b, f"nn.MultiheadAttention({c}, {heads}, dropout={dropout}, batch_first={batch_first})"
        )
        _freeze_key_bias(b, attn)
        mask = b.rng.choice(["None", f"nn.Transformer.generate_square_subsequent_mask({r})"])
        averaged = b.rng.choice(["True", "False"])
        out, weights = b.fresh("att"), b.fresh("weights")
        b.line(
            f"{out}, {weights} = {attn}({seq}, {seq}, {seq}, attn_mask={mask}, "
            f"average_attn_weights={averaged})"
        )
        b.let(f"{out}.reshape({r}, {c})", (r, c))
        rows = r if averaged == "True" else heads * r
        b.let(f"{weights}.reshape({rows}, {r})", (rows, r))
        return
    activation = b.rng.choice(["'relu'", "'gelu'"])
    norm_first = b.rng.choice(["True", "False"])
    layer = add_module(
        b,
        f"nn.TransformerEncoderLayer({c}, {heads}, dim_feedforward={2 * c}, dropout={dropout}, "
        f"activation={activation}, batch_first={batch_first}, norm_first={norm_first})",
    )
    _freeze_key_bias(b, f"{layer}.self_attn")
    b.let(f"{layer}({seq}).reshape({r}, {c})", (r, c))


def _freeze_key_bias(b: Builder, attention: str) -> None:
    """Leave the input projections' bias out of training (a frozen parameter inside a layer):
    its key part has a gradient that is rounding noise (softmax is shift invariant), which
    optimizers dividing by the gradient's size scale up to the learning rate."""
    b.add_setup(f"{attention}.in_proj_bias.requires_grad_(False)")


LAYERS = {
    "recurrent": recurrent,
    "batch_norm": batch_norm,
    "dropout_layer": dropout_layer,
    "pooling": pooling,
    "transformer": transformer,
}
