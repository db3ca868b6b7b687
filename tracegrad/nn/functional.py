"""Functional forms of layers and losses: ``import tracegrad.nn.functional as F``."""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np

from tracegrad import dtypes
from tracegrad.creation import arange, full
from tracegrad.errors import DTypeError, ShapeError, at_user_line
from tracegrad.tape import no_grad
from tracegrad.tensor import Tensor, as_tensor, call, cat, tensor, where
from tracegrad.tensor.promotion import promote_operands


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight^T + bias``, as ``torch.nn.functional.linear``.

    Args:
        input: a tensor of shape ``(*, in_features)``.
        weight: a tensor of shape ``(out_features, in_features)``.
        bias: a tensor of shape ``(out_features,)``, or None.

    Returns:
        A tensor of shape ``(*, out_features)``.

    Raises:
        ShapeError: if the feature sizes do not agree.

    Examples:
        >>> F.linear(tg.ones(2, 3), tg.ones(4, 3), tg.zeros(4)).shape
        tracegrad.Size([2, 4])
    """
    if input.shape[-1] != weight.shape[-1]:
        raise ShapeError(
            at_user_line(
                f"linear: input of shape {tuple(input.shape)} has {input.shape[-1]} features "
                f"but weight of shape {tuple(weight.shape)} expects {weight.shape[-1]}"
            )
        )
    out = input @ weight.T
    return out + bias if bias is not None else out


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """``max(input, 0)`` elementwise (``inplace`` is accepted; the result is new).

    The function form of ``nn.ReLU``.

    Examples:
        >>> F.relu(tg.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """
    return input.relu()


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """The Gaussian error linear unit; ``approximate='tanh'`` uses the tanh form.

    The function form of ``nn.GELU``.

    Examples:
        >>> F.gelu(tg.tensor([0.0]), approximate='tanh')
        tensor([0.])
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return call("gelu", input, approximate=approximate)


def tanh(input: Tensor) -> Tensor:
    """``tanh(input)`` elementwise.

    Examples:
        >>> F.tanh(tg.tensor([0.0]))
        tensor([0.])
    """
    return input.tanh()


def sigmoid(input: Tensor) -> Tensor:
    """``1 / (1 + exp(-input))`` elementwise.

    Examples:
        >>> F.sigmoid(tg.tensor([0.0]))
        tensor([0.5])
    """
    return input.sigmoid()


def softmax(input: Tensor, dim: int) -> Tensor:
    """Softmax along ``dim``, computed stably.

    The function form of ``nn.Softmax``.

    Examples:
        >>> F.softmax(tg.zeros(2), dim=0)
        tensor([0.5, 0.5])
    """
    return input.softmax(dim)


def log_softmax(input: Tensor, dim: int) -> Tensor:
    """``log(softmax(input))`` along ``dim``, computed stably.

    The function form of ``nn.LogSoftmax``.

    Examples:
        >>> F.log_softmax(tg.zeros(2), dim=0).exp()
        tensor([0.5, 0.5])
    """
    return input.log_softmax(dim)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """Class indices as one-hot rows of ``num_classes`` (by default the largest index + 1).

    Args:
        tensor: an int64 tensor of class indices.
        num_classes: the length of each row, or -1.

    Returns:
        An int64 tensor of shape ``tensor.shape + (num_classes,)``.

    Examples:
        >>> F.one_hot(tg.tensor([0, 2]), 3)
        tensor([[1, 0, 0],
                [0, 0, 1]])
    """
    if num_classes < 0:
        num_classes = int(tensor.max().item()) + 1
    return call("one_hot", tensor, num_classes=num_classes)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross entropy between logits and int64 class indices, as
    ``torch.nn.functional.cross_entropy``: ``log_softmax`` over dimension 1, then the negative
    log-likelihood, computed as one stable op.

    Args:
        input: logits of shape ``(N, C)`` or ``(N, C, d...)``.
        target: int64 class indices of shape ``(N,)`` or ``(N, d...)``.
        weight: a weight per class, or None.
        ignore_index: a target index contributing neither loss nor gradient.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``.
        label_smoothing: the amount of smoothing in [0, 1].

    Returns:
        The loss: a scalar, or one per sample with ``reduction='none'``.

    Raises:
        ShapeError: if the target's shape does not fit the input's.

    Examples:
        >>> round(F.cross_entropy(tg.zeros(2, 4), tg.tensor([0, 3])).item(), 4)
        1.3863
    """
    if weight is not None:
        logp = input.log_softmax(1)
        return _weighted_class_loss(
            "cross_entropy", logp, target, weight, ignore_index, label_smoothing, reduction
        )
    return _class_loss("cross_entropy", input, target, ignore_index, label_smoothing, reduction)


def nll_loss(
    input: Tensor, target: Tensor, weight=None, ignore_index: int = -100, reduction="mean"
) -> Tensor:
    """The negative log-likelihood of int64 class indices under log-probabilities
    ``(N, C, ...)`` (``weight``, ``ignore_index`` and ``reduction`` as in ``cross_entropy``).

    The function form of ``nn.NLLLoss``.

    Examples:
        >>> F.nll_loss(tg.tensor([[-1.0, -2.0]]), tg.tensor([1]))
        tensor(2.)
    """
    if weight is not None:
        return _weighted_class_loss("nll_loss", input, target, weight, ignore_index, 0.0, reduction)
    return _class_loss("nll_loss", input, target, ignore_index, 0.0, reduction)


def _weighted_class_loss(name, logp, target, weight, ignore_index, label_smoothing, reduction):
    """nll_loss with per-class weights, composed from indexing (the primitive has none).

    As in PyTorch, element i weighs weight[target[i]], 'mean' divides by the sum of the
    weights of the targets not ignored, and label smoothing adds the weighted mean over
    classes: (1 - s) * nll + s / C * sum_c(-weight[c] * logp[c])."""
    target, weight = as_tensor(target), as_tensor(weight)
    classes = logp.shape[1]
    if tuple(weight.shape) != (classes,):
        raise ShapeError(
            at_user_line(
                f"{name}: weight of shape {tuple(weight.shape)} must have one entry "
                f"for each of the {classes} classes of input of shape {tuple(logp.shape)}"
            )
        )
    with _naming_bad_indices(name):
        target = call("class_targets", target, classes=classes, ignore_index=ignore_index)
    valid = target != ignore_index
    safe = where(valid, target, 0)
    last = logp.permute(0, *range(2, logp.ndim), 1).reshape(-1, classes)  # (N*..., C)
    # "rows" indices are checked to lie in [0, C): a target of -1 is an error, not class C-1
    with _naming_bad_indices(name):
        picked = call(
            "getitem",
            last,
            arange(last.shape[0]),
            safe.reshape(-1),
            key=(("tensor", 0), ("rows", 1, classes)),
        ).reshape(*target.shape)
        target_weight = where(
            valid, call("getitem", weight, safe, key=(("rows", 0, classes),)), 0.0
        )
    loss = -picked * target_weight
    if label_smoothing:
        per_class = weight.reshape(-1, *[1] * (logp.ndim - 2))
        smooth = where(valid, -(logp * per_class).sum(1), 0.0)
        loss = loss * (1 - label_smoothing) + smooth * (label_smoothing / classes)
    if reduction == "mean":
        return loss.sum() / target_weight.sum()
    return _reduce(loss, reduction)


def _class_loss(name, input, target, ignore_index, label_smoothing, reduction) -> Tensor:
    # the kernel checks the targets (here when eager, in generated code on every call)
    with _naming_bad_indices(name):
        return call(
            name,
            input,
            as_tensor(target),
            ignore_index=int(ignore_index),
            label_smoothing=float(label_smoothing),
            reduction=reduction,
        )


@contextlib.contextmanager
def _naming_bad_indices(function: str):
    """An index error raised by a kernel while running eagerly, with the function's name and
    the user's line added."""
    try:
        yield
    except IndexError as exc:
        raise IndexError(at_user_line(f"{function}: {exc}")) from None


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """The mean squared error; ``reduction`` is ``'mean'``, ``'sum'`` or ``'none'``.

    The function form of ``nn.MSELoss``.

    Examples:
        >>> F.mse_loss(tg.tensor([1.0, 3.0]), tg.zeros(2))
        tensor(5.)
    """
    target = as_tensor(target)
    if tuple(input.shape) != tuple(target.shape):
        warnings.warn(
            f"mse_loss: target size {tuple(target.shape)} differs from input size "
            f"{tuple(input.shape)}; they will be broadcast, which is likely not intended",
            stacklevel=2,
        )
    diff = input - target
    return _reduce(diff * diff, reduction)


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """The mean absolute error; ``reduction`` is ``'mean'``, ``'sum'`` or ``'none'``.

    The function form of ``nn.L1Loss``.

    Examples:
        >>> F.l1_loss(tg.tensor([1.0, -3.0]), tg.zeros(2))
        tensor(2.)
    """
    return _reduce((input - target).abs(), reduction)


def conv2d(
    input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1
) -> Tensor:
    """A 2-d convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    Args:
        input: a tensor of shape ``(N, C_in, H, W)``.
        weight: a tensor of shape ``(C_out, C_in / groups, kh, kw)``.
        bias: a tensor of shape ``(C_out,)``, or None.
        stride: an int or a pair.
        padding: an int, a pair, or ``'valid'`` / ``'same'``.
        dilation: an int or a pair.
        groups: split the channels into this many independent groups.

    Returns:
        A tensor of shape ``(N, C_out, H_out, W_out)``.

    Raises:
        ShapeError: if the channels do not agree or the kernel does not fit the input.

    Examples:
        >>> F.conv2d(tg.ones(1, 1, 4, 4), tg.ones(2, 1, 3, 3)).shape
        tracegrad.Size([1, 2, 2, 2])
    """
    if input.ndim == 3:
        return conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups)[0]
    stride, dilation = _pair(stride), _pair(dilation)
    out_channels, group_channels, kh, kw = _check_conv(input, weight, groups)
    padding = _conv_padding(padding, (kh, kw), dilation, stride)
    cols = call(
        "unfold",
        input,
        kernel=(kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
        pad_value=0.0,
    )
    n, _, oh, ow = cols.shape[:4]
    cols = cols.reshape(n, groups, group_channels, oh, ow, kh, kw)
    # The window copy (im2col) as its own op, so compiled code writes it into a reused buffer.
    # Rows of output positions stay innermost: the copy moves whole image rows, the matmul
    # per sample gives (N, C, H, W) directly, and the gradient's fold adds whole rows.
    cols = call("contiguous", cols.permute(0, 1, 2, 5, 6, 3, 4))
    cols = cols.reshape(n, groups, group_channels * kh * kw, oh * ow)
    kernels = weight.reshape(groups, out_channels // groups, -1)
    out = (kernels @ cols).reshape(n, out_channels, oh, ow)
    return out + bias.reshape(1, -1, 1, 1) if bias is not None else out


def _check_conv(input: Tensor, weight: Tensor, groups: int):
    if input.ndim != 4 or weight.ndim != 4:
        raise ShapeError(
            at_user_line(
                f"conv2d: expected a 4-D input (N, C, H, W) and 4-D weight, got shapes "
                f"{tuple(input.shape)} and {tuple(weight.shape)}"
            )
        )
    out_channels, group_channels, kh, kw = weight.shape
    if input.shape[1] != group_channels * groups or out_channels % groups:
        raise ShapeError(
            at_user_line(
                f"conv2d: input of shape {tuple(input.shape)} has {input.shape[1]} channels, "
                f"but weight of shape {tuple(weight.shape)} with groups={groups} expects "
                f"{group_channels * groups}"
            )
        )
    return out_channels, group_channels, kh, kw


def _conv_padding(padding, kernel, dilation, stride) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("conv2d: padding='same' needs stride 1")
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError("conv2d: padding='same' with an even kernel extent is not supported")
        return tuple(t // 2 for t in total)
    return _pair(padding)


def max_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    """2-d max pooling, as ``torch.nn.functional.max_pool2d``; tied maxima share the gradient.

    Args:
        input: a tensor of shape ``(N, C, H, W)`` or ``(C, H, W)``.
        kernel_size: an int or a pair.
        stride: an int or a pair (default: ``kernel_size``).
        padding: an int or a pair of implicit ``-inf`` padding.
        dilation: an int or a pair.
        ceil_mode: must be False (rounding the output size up is not supported).
        return_indices: must be False (returning the positions is not supported).

    Raises:
        NotImplementedError: for ``ceil_mode`` or ``return_indices``.

    Examples:
        >>> F.max_pool2d(tg.arange(16.0).reshape(1, 1, 4, 4), 2)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    if ceil_mode or return_indices:
        raise NotImplementedError("max_pool2d: ceil_mode and return_indices are not supported")
    if input.ndim == 3:
        return max_pool2d(input.unsqueeze(0), kernel_size, stride, padding, dilation)[0]
    kernel = _pair(kernel_size)
    stride = _pair(stride) if stride is not None else kernel
    padding, dilation = _pair(padding), _pair(dilation)
    if any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
        raise ValueError(f"max_pool2d: padding {padding} must be at most half the kernel {kernel}")
    if stride == kernel and padding == (0, 0) and dilation == (1, 1):
        # Windows that tile the input are a reshape of it: no strided windows, and the
        # gradient lands in the input's layout without a fold.
        (kh, kw), (n, c, h, w) = kernel, input.shape
        oh, ow = h // kh, w // kw
        tiled = input if (h, w) == (oh * kh, ow * kw) else input[:, :, : oh * kh, : ow * kw]
        return tiled.reshape(n, c, oh, kh, ow, kw).amax(dim=(3, 5))
    cols = call(
        "unfold",
        input,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        pad_value=-math.inf,
    )
    return cols.amax(dim=(4, 5))


def layer_norm(input: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Normalize over the trailing ``normalized_shape`` dimensions, then scale by ``weight`` and
    shift by ``bias``, as ``torch.nn.functional.layer_norm``.

    Args:
        input: a tensor whose trailing shape is ``normalized_shape``.
        normalized_shape: an int or a tuple.
        weight: a scale of that shape, or None.
        bias: a shift of that shape, or None.
        eps: added to the variance for numerical stability.

    Raises:
        ShapeError: if the trailing shape does not match.

    Examples:
        >>> F.layer_norm(tg.tensor([[1.0, 3.0]]), (2,))
        tensor([[-0.999995,  0.999995]])
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(shape) :]) != shape:
        raise ShapeError(
            at_user_line(
                f"layer_norm: normalized_shape {shape} does not match the trailing dims of "
                f"input of shape {tuple(input.shape)}"
            )
        )
    out = call("layer_norm", input, ndims=len(shape), eps=float(eps))
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def embedding(input: Tensor, weight: Tensor, padding_idx=None) -> Tensor:
    """The rows of ``weight`` at the indices ``input``, as ``torch.nn.functional.embedding``.

    Args:
        input: an int64 tensor of indices.
        weight: the table, of shape ``(num_embeddings, embedding_dim)``.
        padding_idx: a row that gets no gradient, or None.

    Returns:
        A tensor of shape ``input.shape + (embedding_dim,)``.

    Raises:
        IndexError: for an index outside the table.

    Examples:
        >>> F.embedding(tg.tensor([2, 0]), tg.arange(6.0).reshape(3, 2))
        tensor([[4., 5.],
                [0., 1.]])
    """
    input = as_tensor(input)
    if input.dtype is not dtypes.int64:
        raise DTypeError(
            at_user_line(
                f"embedding: indices must be int64, got {input.dtype} of shape {tuple(input.shape)}"
            )
        )
    # A "rows" index is checked against the table when it is resolved: here when running
    # eagerly, and by the generated code on every call (index values are known only then).
    with _naming_bad_indices("embedding"):
        rows = call("getitem", weight, input, key=(("rows", 0, weight.shape[0]),))
    if padding_idx is None:
        return rows
    # The padding row is read as usual but gets no gradient, as in PyTorch.
    padding = padding_idx + weight.shape[0] if padding_idx < 0 else padding_idx
    return where((input != padding).unsqueeze(-1), rows, rows.detach())


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """In training, zero each element with probability ``p`` and scale the rest by
    ``1 / (1 - p)``; the identity when ``training`` is False.

    Args:
        input: any tensor.
        p: the probability of zeroing an element.
        training: whether to drop (a layer passes its own mode).
        inplace: accepted for PyTorch's signature; the result is a new tensor.

    Raises:
        ValueError: if ``p`` is not in [0, 1].

    Examples:
        >>> F.dropout(tg.ones(3), p=0.5, training=False)
        tensor([1., 1., 1.])
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    # The mask is an op (not data) so a compiled step draws a fresh one every run.
    mask = call("dropout_mask", shape=tuple(input.shape), p=float(p), dtype=input.dtype.name)
    return input * mask


# --- more activations: composites of existing ops, so gradients and compiling come free ----------


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """``input`` where positive, ``negative_slope * input`` elsewhere.

    The function form of ``nn.LeakyReLU``.

    Examples:
        >>> F.leaky_relu(tg.tensor([-1.0]), 0.5)
        tensor([-0.5])
    """
    return where(input > 0, input, input * negative_slope)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``input`` where positive, ``alpha * (exp(input) - 1)`` elsewhere.

    The function form of ``nn.ELU``.

    Examples:
        >>> F.elu(tg.tensor([2.0]))
        tensor([2.])
    """
    # exp of the non-positive part only: exp(x) of a large x would overflow in the unused branch
    # and its gradient (0 * inf) would be nan. (where, not minimum, which would halve the
    # gradient at 0 between the tied arguments.)
    negative = where(input > 0, 0.0, input)
    return where(input > 0, input, (negative.exp() - 1.0) * alpha)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """``input * sigmoid(input)`` elementwise.

    The function form of ``nn.SiLU``.

    Examples:
        >>> F.silu(tg.tensor([0.0]))
        tensor([0.])
    """
    return input * input.sigmoid()


def _softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), which never overflows. -|x| is taken by
    where rather than abs so that the gradient at 0 is sigmoid(0) = 1/2, not 0."""
    return x.relu() + where(x > 0, -x, x).exp().log1p()


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta * input)) / beta``, linear above ``threshold``.

    The function form of ``nn.Softplus``.

    Examples:
        >>> F.softplus(tg.tensor([0.0]))
        tensor([0.6931472])
    """
    scaled = input * beta
    # above the threshold, PyTorch returns x itself (the two differ by less than exp(-20))
    return where(scaled > threshold, input, _softplus(scaled) / beta)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """``input * tanh(softplus(input))`` elementwise.

    The function form of ``nn.Mish``.

    Examples:
        >>> F.mish(tg.tensor([0.0]))
        tensor([0.])
    """
    return input * _softplus(input).tanh()


def hardtanh(
    input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> Tensor:
    """``input`` clamped to ``[min_val, max_val]``.

    The function form of ``nn.Hardtanh``.

    Examples:
        >>> F.hardtanh(tg.tensor([-2.0, 2.0]))
        tensor([-1.,  1.])
    """
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val {min_val} must not exceed max_val {max_val}")
    # PyTorch passes no gradient at the bounds themselves (clamp passes it there)
    inside = (input > min_val) & (input < max_val)
    return where(inside, input, input.clamp(min_val, max_val).detach())


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """``min(max(input, 0), 6)`` elementwise.

    The function form of ``nn.ReLU6``.

    Examples:
        >>> F.relu6(tg.tensor([8.0]))
        tensor([6.])
    """
    return hardtanh(input, 0.0, 6.0)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """``input`` where positive, ``weight * input`` elsewhere (``weight``: one slope, or one
    per channel, dimension 1).

    The function form of ``nn.PReLU``.

    Examples:
        >>> F.prelu(tg.tensor([-2.0]), tg.tensor([0.25]))
        tensor([-0.5])
    """
    if weight.numel() != 1:
        channels = input.shape[1] if input.ndim >= 2 else input.shape[0]
        if weight.numel() != channels:
            raise ShapeError(
                at_user_line(
                    f"prelu: {weight.numel()} parameters for input of shape "
                    f"{tuple(input.shape)} with {channels} channels"
                )
            )
        if input.ndim >= 2:
            weight = weight.reshape(-1, *[1] * (input.ndim - 2))
    return where(input > 0, input, input * weight)


def softsign(input: Tensor) -> Tensor:
    """``input / (1 + |input|)`` elementwise.

    The function form of ``nn.Softsign``.

    Examples:
        >>> F.softsign(tg.tensor([1.0]))
        tensor([0.5])
    """
    return input / (input.abs() + 1.0)


def logsigmoid(input: Tensor) -> Tensor:
    """``log(sigmoid(input))`` elementwise, computed stably.

    The function form of ``nn.LogSigmoid``.

    Examples:
        >>> F.logsigmoid(tg.tensor([0.0])).exp()
        tensor([0.5])
    """
    return -_softplus(-input)


# --- normalization -------------------------------------------------------------------------------


def _check_channels(name: str, input: Tensor, *per_channel) -> None:
    """Per-channel statistics and affine parameters fit dim 1 of the input."""
    known = [t for t in per_channel if t is not None]
    if input.ndim < 2 or any(t.shape != (input.shape[1],) for t in known):
        expected = tuple(known[0].shape) if known else "(C,)"
        raise ShapeError(
            at_user_line(
                f"{name}: expected input of shape (N, C, ...) with C matching the {expected} "
                f"per-channel parameters, got input of shape {tuple(input.shape)}"
            )
        )


def batch_norm(
    input: Tensor,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training: bool = False,
    momentum=0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each channel (dim 1) over the other dims. Training normalizes by the batch's
    mean and biased variance and moves the running statistics (under no_grad, in place)
    towards the mean and unbiased variance by ``momentum``, a number or a 0-d tensor;
    otherwise the running statistics normalize."""
    dims = (0, *range(2, input.ndim))
    _check_channels("batch_norm", input, running_mean, weight)
    if training:
        count = input.numel() // input.shape[1]
        if count <= 1:
            raise ValueError(
                at_user_line(
                    f"batch_norm: expected more than 1 value per channel when training, got "
                    f"input of shape {tuple(input.shape)}"
                )
            )
        mean, var = _moments(input, dims)
        if running_mean is not None:
            _update_running(running_mean, running_var, mean, var * (count / (count - 1)), momentum)
    else:
        mean, var = running_mean, running_var
    return _normalize(input, mean, var, weight, bias, eps, dims)


def _moments(input: Tensor, dims) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``dims``, kept as size-1 dims."""
    mean = input.mean(dims, keepdim=True)
    centered = input - mean
    return mean, (centered * centered).mean(dims, keepdim=True)


def _update_running(running_mean, running_var, mean, unbiased_var, momentum) -> None:
    """running = (1 - momentum) * running + momentum * batch, in place (as PyTorch does, so
    the buffers are the same tensors after the call)."""
    shape = tuple(running_mean.shape)
    with no_grad():
        running_mean.mul_(1 - momentum).add_(mean.detach().reshape(shape) * momentum)
        running_var.mul_(1 - momentum).add_(unbiased_var.detach().reshape(shape) * momentum)


def _normalize(input, mean, var, weight, bias, eps, dims) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias, with per-channel statistics, weight and
    bias (of shape (C,) or already broadcastable) spread over the dims after the channels."""
    channel = (-1, *[1] * (input.ndim - 2))
    out = (input - mean.reshape(channel)) / (var.reshape(channel) + eps).sqrt()
    if weight is not None:
        out = out * weight.reshape(channel)
    return out + bias.reshape(channel) if bias is not None else out


def group_norm(input: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Normalize each sample's channels in ``num_groups`` groups, over the group's channels
    and every other dim; then a per-channel affine map."""
    n, channels = input.shape[0], input.shape[1]
    if channels % num_groups:
        raise ShapeError(
            at_user_line(
                f"group_norm: {channels} channels of input of shape {tuple(input.shape)} "
                f"do not divide into {num_groups} groups"
            )
        )
    grouped = input.reshape(n, num_groups, -1)
    mean, var = _moments(grouped, (2,))
    out = ((grouped - mean) / (var + eps).sqrt()).reshape(*input.shape)
    channel = (-1, *[1] * (input.ndim - 2))
    if weight is not None:
        out = out * weight.reshape(channel)
    return out + bias.reshape(channel) if bias is not None else out


def instance_norm(
    input: Tensor,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats: bool = True,
    momentum=0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each (sample, channel) over the remaining dims. With running statistics and
    input statistics in use, they move towards the batch's mean of the per-instance means
    and unbiased variances, as PyTorch does."""
    dims = tuple(range(2, input.ndim))
    if not use_input_stats:
        return _normalize(input, running_mean, running_var, weight, bias, eps, (0, *dims))
    count = math.prod(input.shape[2:])
    mean, var = _moments(input, dims)
    if running_mean is not None:
        unbiased = var * (count / (count - 1)) if count > 1 else var * float("nan")
        _update_running(running_mean, running_var, mean.mean(0), unbiased.mean(0), momentum)
    out = (input - mean) / (var + eps).sqrt()
    channel = (-1, *[1] * (input.ndim - 2))
    if weight is not None:
        out = out * weight.reshape(channel)
    return out + bias.reshape(channel) if bias is not None else out


# --- more losses ---------------------------------------------------------------------------------


def binary_cross_entropy(input: Tensor, target: Tensor, weight=None, reduction: str = "mean"):
    """Binary cross entropy between probabilities and targets in [0, 1], the log clamped at
    -100 (``weight``, ``reduction`` as in ``nn.BCELoss``).

    Examples:
        >>> round(F.binary_cross_entropy(tg.tensor([0.5]), tg.tensor([1.0])).item(), 4)
        0.6931
    """
    target = as_tensor(target)
    _same_shape("binary_cross_entropy", input, target)
    # one op (a kernel, and a gradient op a sigmoid before it joins in a compiled step)
    loss = call("binary_cross_entropy", *promote_operands(input, target, floating=True))
    return _reduce(loss * weight if weight is not None else loss, reduction)


def binary_cross_entropy_with_logits(
    input: Tensor, target: Tensor, weight=None, reduction: str = "mean", pos_weight=None
) -> Tensor:
    """-[pos_weight * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))], from
    log(1 - sigmoid(x)) = -x - softplus(-x): (1 - t) * x + (1 + (pos_weight - 1) * t) *
    softplus(-x), stable for any x."""
    target = as_tensor(target)
    _same_shape("binary_cross_entropy_with_logits", input, target)
    scale = 1.0 if pos_weight is None else (as_tensor(pos_weight) - 1.0) * target + 1.0
    loss = (1.0 - target) * input + _softplus(-input) * scale
    return _reduce(loss * weight if weight is not None else loss, reduction)


def _same_shape(function: str, input: Tensor, target: Tensor) -> None:
    if tuple(input.shape) != tuple(target.shape):
        raise ShapeError(
            at_user_line(
                f"{function}: target of shape {tuple(target.shape)} must have the shape of "
                f"input {tuple(input.shape)}"
            )
        )


def smooth_l1_loss(input: Tensor, target: Tensor, reduction: str = "mean", beta: float = 1.0):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (|d| for beta = 0)."""
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    if beta == 0:  # 0.5 d^2 / 0 in the unused branch would make its gradient nan
        return l1_loss(input, target, reduction)
    return _reduce(_huber(input - target, beta) * (1.0 / beta), reduction)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta): smooth_l1_loss times delta."""
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    return _reduce(_huber(input - target, delta), reduction)


def _huber(diff: Tensor, delta: float) -> Tensor:
    size = diff.abs()
    return where(size < delta, diff * diff * 0.5, (size - 0.5 * delta) * delta)


def kl_div(
    input: Tensor, target: Tensor, reduction: str = "mean", log_target: bool = False
) -> Tensor:
    """target * (log target - input) for log-probabilities ``input`` (0 where target is 0),
    or exp(target) * (target - input) when the target is given as log-probabilities.
    'batchmean' divides the sum by the batch size, the true KL divergence per sample."""
    target = as_tensor(target)
    if log_target:
        loss = target.exp() * (target - input)
    else:
        # t log t as 0 at t = 0 with no nan in the gradient: t log(1) there
        loss = target * (where(target == 0, 1.0, target).log() - input)
    if reduction == "batchmean":
        return loss.sum() / (input.shape[0] if input.ndim else 1)
    if reduction == "mean":
        warnings.warn(
            "kl_div: reduction='mean' divides the sum by the number of elements, not the "
            "batch size; reduction='batchmean' gives the KL divergence",
            stacklevel=2,
        )
    return _reduce(loss, reduction)


# --- attention -----------------------------------------------------------------------------------


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """softmax(query @ key^T * scale + mask) @ value over (..., L, E), (..., S, E), (..., S, Ev)
    giving (..., L, Ev); ``scale`` defaults to 1 / sqrt(E).

    A bool ``attn_mask`` says which keys each query may attend to (True takes part), a float
    one is added to the scores; both broadcast to (..., L, S). ``is_causal`` lets query i see
    keys j <= i. As in PyTorch, ``dropout_p`` applies whatever the module's mode: pass 0.0 to
    evaluate. A query whose keys are all masked out gets nan, as in PyTorch's reference.
    With ``enable_gqa`` (grouped-query attention), key and value may have fewer heads (dim
    -3) than the query, a divisor of its count; each then serves consecutive query heads.
    """
    if enable_gqa:
        key, value = _shared_heads(query, key), _shared_heads(query, value)
    _check_attention_inputs(query, key, value)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        if attn_mask is not None:
            raise ValueError(
                "scaled_dot_product_attention: an explicit attn_mask should not be set when "
                "is_causal=True"
            )
        attn_mask = _causal_mask(query.shape[-2], key.shape[-2])
    if attn_mask is not None:
        scores = _masked_scores(scores, attn_mask)
    return dropout(scores.softmax(-1), dropout_p) @ value


def _causal_mask(query_length: int, key_length: int) -> Tensor:
    """The bool (L, S) mask letting query i attend to keys j <= i (PyTorch's tril of ones)."""
    return arange(query_length).unsqueeze(1) >= arange(key_length).unsqueeze(0)


def _shared_heads(query: Tensor, kv: Tensor) -> Tensor:
    """Key or value heads repeated to the query's count: head h serves query heads
    h * group ... (h + 1) * group - 1 (PyTorch's repeat_interleave over dim -3)."""
    if min(query.ndim, kv.ndim) < 3 or query.shape[-3] % kv.shape[-3]:
        raise ShapeError(
            at_user_line(
                f"scaled_dot_product_attention with enable_gqa needs key and value heads (dim "
                f"-3) dividing the query's, got query {tuple(query.shape)}, key or value "
                f"{tuple(kv.shape)}"
            )
        )
    group, heads = query.shape[-3] // kv.shape[-3], kv.shape[-3]
    shape = tuple(kv.shape)
    grouped = kv.unsqueeze(-3).expand(*shape[:-2], group, *shape[-2:])
    return grouped.reshape(*shape[:-3], heads * group, *shape[-2:])


def _check_attention_inputs(query: Tensor, key: Tensor, value: Tensor) -> None:
    shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
    if min(query.ndim, key.ndim, value.ndim) < 2:
        problem = "needs at least 2 dims (..., length, features) in"
    elif query.shape[-1] != key.shape[-1]:
        problem = "needs query and key with the same number of features, got"
    elif key.shape[-2] != value.shape[-2]:
        problem = "needs key and value of the same length, got"
    else:
        return
    raise ShapeError(at_user_line(f"scaled_dot_product_attention {problem} {shapes}"))


def _masked_scores(scores: Tensor, attn_mask: Tensor) -> Tensor:
    """Scores with a bool mask's False positions at -inf, or a float mask added."""
    attn_mask = as_tensor(attn_mask)
    if not _broadcasts_to(tuple(attn_mask.shape), tuple(scores.shape)):
        raise ShapeError(
            at_user_line(
                f"attention: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                f"the attention scores' shape {tuple(scores.shape)} (..., L, S)"
            )
        )
    if attn_mask.dtype is dtypes.bool_:
        return scores.masked_fill(~attn_mask, float("-inf"))
    if not attn_mask.dtype.is_floating_point:
        raise DTypeError(
            at_user_line(f"attention: attn_mask must be bool or floating, got {attn_mask.dtype}")
        )
    return scores + attn_mask


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    if len(shape) > len(target):
        return False
    return all(n in (1, m) for n, m in zip(reversed(shape), reversed(target), strict=False))


# --- convolution, pooling, padding and resampling: compositions of windows, matmuls and gathers --


def _single(value) -> int:
    return value if isinstance(value, int) else value[0]


def _spatial_error(function: str, message: str, input: Tensor):
    return ShapeError(
        at_user_line(f"{function}: {message}, got input of shape {tuple(input.shape)}")
    )


def conv1d(
    input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1
) -> Tensor:
    """1-D convolution of (N, C, L) or (C, L): conv2d over a height of 1."""
    if (
        input.ndim not in (2, 3)
        or weight.ndim != 3
        or input.shape[-2] != weight.shape[1] * groups
        or weight.shape[0] % groups
    ):
        raise ShapeError(
            at_user_line(
                f"conv1d: expected an input (N, C, L) or (C, L) and a weight (out_channels, "
                f"C / groups, kernel) with groups={groups}, got shapes {tuple(input.shape)} "
                f"and {tuple(weight.shape)}"
            )
        )
    padding = padding if isinstance(padding, str) else (0, _single(padding))
    out = conv2d(
        input.unsqueeze(-2),
        weight.unsqueeze(-2),
        bias,
        (1, _single(stride)),
        padding,
        (1, _single(dilation)),
        groups,
    )
    return out.squeeze(-2)


def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups: int = 1,
    dilation=1,
) -> Tensor:
    """The gradient of conv2d with respect to its input: each input pixel times the kernel
    (one matmul per group), the windows added into the output (fold). ``weight`` is
    (in_channels, out_channels / groups, kH, kW)."""
    if input.ndim == 3:
        args = (stride, padding, output_padding, groups, dilation)
        return conv_transpose2d(input.unsqueeze(0), weight, bias, *args)[0]
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    output_padding = _pair(output_padding)
    group_in, group_out, kh, kw = _check_conv_transpose(input, weight, groups)
    n, _, h, w = input.shape
    full = _transposed_size((h, w), (kh, kw), stride, dilation)
    size = tuple(f - 2 * p + o for f, p, o in zip(full, padding, output_padding, strict=True))
    _check_output_padding(output_padding, stride, dilation, size, input)
    x = input.reshape(n, groups, group_in, h * w)
    kernels = weight.reshape(groups, group_in, group_out * kh * kw).transpose(1, 2)
    cols = (kernels @ x).reshape(n, groups * group_out, kh, kw, h, w).permute(0, 1, 4, 5, 2, 3)
    windows = {"kernel": (kh, kw), "stride": stride, "dilation": dilation}
    if output_padding == (0, 0):  # the padding crops both sides evenly: fold does it
        out = call("fold", cols, size=size, padding=padding, **windows)
    else:  # crop the full result unevenly: (a negative pad crops)
        out = call("fold", cols, size=full, padding=(0, 0), **windows)
        (ph, pw), (oh, ow) = padding, output_padding
        out = pad(out, (-pw, ow - pw, -ph, oh - ph))
    return out + bias.reshape(1, -1, 1, 1) if bias is not None else out


def _transposed_size(size, kernel, stride, dilation) -> tuple[int, ...]:
    """The extent every window of a transposed convolution covers, before padding."""
    return tuple(
        (i - 1) * s + d * (k - 1) + 1 for i, k, s, d in zip(size, kernel, stride, dilation)
    )


def _check_conv_transpose(input: Tensor, weight: Tensor, groups: int):
    if input.ndim != 4 or weight.ndim != 4:
        raise ShapeError(
            at_user_line(
                f"conv_transpose2d: expected a 4-D input (N, C, H, W) and 4-D weight, got "
                f"shapes {tuple(input.shape)} and {tuple(weight.shape)}"
            )
        )
    in_channels, group_out, kh, kw = weight.shape
    if input.shape[1] != in_channels or in_channels % groups:
        raise ShapeError(
            at_user_line(
                f"conv_transpose2d: input of shape {tuple(input.shape)} has {input.shape[1]} "
                f"channels, but weight of shape {tuple(weight.shape)} with groups={groups} "
                f"expects {in_channels} (a multiple of groups)"
            )
        )
    return in_channels // groups, group_out, kh, kw


def _check_output_padding(output_padding, stride, dilation, size, input) -> None:
    for o, s, d in zip(output_padding, stride, dilation, strict=True):
        if not (o < s or o < d):
            raise ValueError(
                at_user_line(
                    f"conv_transpose2d: output_padding {output_padding} must be smaller than "
                    f"either stride {stride} or dilation {dilation}"
                )
            )
    if min(size) < 1:
        raise _spatial_error("conv_transpose2d", f"the output size {size} is too small", input)


def _batched(function, input: Tensor, spatial: int) -> tuple[Tensor, bool]:
    """``input`` with a batch dim (added if it has only channel and ``spatial`` dims), and
    whether one was added."""
    if input.ndim not in (spatial + 1, spatial + 2):
        raise _spatial_error(
            function, f"expected a {spatial + 1}-D or {spatial + 2}-D input", input
        )
    unbatched = input.ndim == spatial + 1
    return (input.unsqueeze(0) if unbatched else input), unbatched


def avg_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override=None,
) -> Tensor:
    """Mean over windows: the windows of the input padded with zeros, summed, divided by the
    window size (or by the count of unpadded elements, or by ``divisor_override``)."""
    if ceil_mode:
        raise NotImplementedError("avg_pool2d: ceil_mode is not supported")
    x, unbatched = _batched("avg_pool2d", input, 2)
    kernel = _pair(kernel_size)
    stride = _pair(stride) if stride is not None else kernel
    padding = _pair(padding)
    if any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
        raise ValueError(f"avg_pool2d: padding {padding} must be at most half the kernel {kernel}")
    windows = call(
        "unfold", x, kernel=kernel, stride=stride, padding=padding, dilation=(1, 1), pad_value=0.0
    )
    total = windows.sum((4, 5))
    if divisor_override is not None:
        out = total / divisor_override
    elif count_include_pad or padding == (0, 0):
        out = total / (kernel[0] * kernel[1])
    else:
        counts = [_window_counts(*args) for args in zip(x.shape[2:], kernel, stride, padding)]
        out = total / tensor(np.outer(*counts).astype(x.dtype.np))
    return out[0] if unbatched else out


def _window_counts(size, kernel, stride, padding) -> np.ndarray:
    """How many elements of the unpadded input each window along one dim holds."""
    starts = np.arange((size + 2 * padding - kernel) // stride + 1) * stride - padding
    return np.minimum(starts + kernel, size) - np.maximum(starts, 0)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Mean over PyTorch's adaptive bins: output i along a dim of size n averages
    [floor(i n / out), ceil((i + 1) n / out)). Bins that tile the input are a reshape and a
    mean; others (overlapping or uneven) are a matmul with the averaging matrix per dim."""
    x, unbatched = _batched("adaptive_avg_pool2d", input, 2)
    n, c, h, w = x.shape
    sizes = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    oh, ow = (s if s is not None else d for s, d in zip(sizes, (h, w), strict=True))
    if min(oh, ow) < 1:
        raise _spatial_error("adaptive_avg_pool2d", f"output_size {sizes} must be positive", x)
    if h % oh == 0 and w % ow == 0:
        out = x.reshape(n, c, oh, h // oh, ow, w // ow).mean((3, 5))
    else:
        out = _matrix_along(_matrix_along(x, 2, _bin_means(h, oh)), 3, _bin_means(w, ow))
    return out[0] if unbatched else out


def _bin_means(size: int, out: int) -> np.ndarray:
    """The (out, size) matrix whose row i averages adaptive bin i."""
    index = np.arange(out)
    starts, ends = index * size // out, -(-(index + 1) * size // out)
    inside = (np.arange(size) >= starts[:, None]) & (np.arange(size) < ends[:, None])
    return inside / (ends - starts)[:, None]


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero whole channels (dim 1) with probability ``p``, scaling the rest by 1 / (1 - p).
    As in PyTorch, a 3-D input is read as (N, C, L)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if input.ndim < 2:
        raise _spatial_error("dropout2d", "expected an input with a channel dim (N, C, ...)", input)
    if input.ndim not in (3, 4):
        warnings.warn(
            f"dropout2d: Received a {input.ndim}-D input to dropout2d; it exists for 3-D or "
            "4-D inputs (use dropout instead)",
            stacklevel=2,
        )
    if input.ndim == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D "
            "dropout behavior is desired - input is interpreted as shape (N, C, L)",
            stacklevel=2,
        )
    if not training or p == 0.0:
        return input
    shape = (*input.shape[:2], *[1] * (input.ndim - 2))
    mask = call("dropout_mask", shape=shape, p=float(p), dtype=input.dtype.name)
    return input * mask


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad(input: Tensor, pad, mode: str = "constant", value=None) -> Tensor:
    """Pad (or, with negative sizes, crop) the last len(pad) // 2 dims; ``pad`` lists
    (before, after) pairs from the last dim backwards, as in PyTorch."""
    pairs = _pad_pairs(input, pad, mode)
    out = input
    for dim, (before, after) in pairs:
        start, stop = max(-before, 0), out.shape[dim] - max(-after, 0)
        out = out.narrow(dim, start, stop - start)  # negative sizes crop first
        fill = 0.0 if value is None else value
        pieces = [_pad_edge(out, dim, before, mode, fill, leading=True), out]
        pieces.append(_pad_edge(out, dim, after, mode, fill, leading=False))
        out = cat([piece for piece in pieces if piece is not None], dim)
    return out


def _pad_pairs(input: Tensor, pad, mode) -> list[tuple[int, tuple[int, int]]]:
    """(dim, (before, after)) for each padded dim, after checking them."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {PAD_MODES}, got {mode!r}")
    pad, dims = tuple(pad), len(pad) // 2
    if len(pad) % 2 or dims > input.ndim:
        raise ValueError(
            at_user_line(
                f"pad: padding {pad} must hold (before, after) pairs for at most the "
                f"{input.ndim} dims of input of shape {tuple(input.shape)}"
            )
        )
    if mode != "constant" and input.ndim not in (dims + 1, dims + 2):
        raise _spatial_error(
            "pad",
            f"{mode} padding of {dims} dims needs a {dims + 1}-D or {dims + 2}-D input",
            input,
        )
    pairs = [(input.ndim - 1 - i, pad[2 * i : 2 * i + 2]) for i in range(dims)]
    for dim, (before, after) in pairs:
        size = input.shape[dim] + min(before, 0) + min(after, 0)  # after cropping
        if size + max(before, 0) + max(after, 0) < 0 or (mode != "constant" and size <= 0):
            raise _spatial_error("pad", f"padding {pad} leaves nothing of dim {dim}", input)
        limit = size - 1 if mode == "reflect" else size
        if mode in ("reflect", "circular") and max(before, after) > limit:
            raise _spatial_error(
                "pad", f"{mode} padding {pad} must be at most {limit} for dim {dim}", input
            )
    return pairs


def _pad_edge(x: Tensor, dim: int, size: int, mode: str, value, leading: bool):
    """What padding adds on one side of ``dim`` (None for nothing), made of slices of x, not
    gathers (whose gradient is a slow scatter): a block of ``value``; the positions next to
    the edge, mirrored (reflect); the edge repeated (replicate); the other end (circular)."""
    if size <= 0:
        return None
    length = x.shape[dim]
    if mode == "constant":
        shape = list(x.shape)
        shape[dim] = size
        return full(tuple(shape), value, dtype=x.dtype)
    if mode == "reflect":
        return x.narrow(dim, 1 if leading else length - 1 - size, size).flip(dim)
    if mode == "replicate":
        edge = x.narrow(dim, 0 if leading else length - 1, 1)
        return edge.expand(*x.shape[:dim], size, *x.shape[dim + 1 :])
    return x.narrow(dim, length - size if leading else 0, size)  # circular


INTERPOLATE_MODES = {"nearest": None, "linear": 1, "bilinear": 2}


def interpolate(
    input: Tensor,
    size=None,
    scale_factor=None,
    mode: str = "nearest",
    align_corners=None,
    recompute_scale_factor=None,
    antialias: bool = False,
) -> Tensor:
    """Resample the spatial dims (after N and C), one dim at a time: nearest picks a source
    index, linear blends the two neighbours; indices and weights follow PyTorch's."""
    spatial = _interpolate_spatial(input, mode, align_corners, antialias)
    sizes, scales = _interpolate_sizes(input, spatial, size, scale_factor, recompute_scale_factor)
    out = input
    for i, (out_size, scale) in enumerate(zip(sizes, scales, strict=True)):
        dim, in_size = 2 + i, input.shape[2 + i]
        if mode == "nearest":
            out = _pick_along(out, dim, _nearest_index(in_size, out_size, scale))
        else:
            out = _linear_along(out, dim, in_size, out_size, scale, bool(align_corners))
    return out


def _interpolate_spatial(input: Tensor, mode, align_corners, antialias) -> int:
    if mode not in INTERPOLATE_MODES:
        raise NotImplementedError(
            f"interpolate: mode {mode!r} is not supported (use one of {list(INTERPOLATE_MODES)})"
        )
    if antialias:
        raise NotImplementedError("interpolate: antialias is not supported")
    if mode == "nearest" and align_corners is not None:
        raise ValueError(
            "align_corners option can only be set with the interpolating modes: linear | "
            "bilinear | bicubic | trilinear"
        )
    spatial = input.ndim - 2
    if spatial < 1 or INTERPOLATE_MODES[mode] not in (None, spatial):
        raise _spatial_error("interpolate", f"mode {mode!r} does not fit the input", input)
    return spatial


def _interpolate_sizes(input, spatial, size, scale_factor, recompute_scale_factor):
    """Output sizes, and the scales (source per output step) PyTorch derives from
    ``scale_factor`` (None where the sizes set them)."""
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: exactly one of size or scale_factor should be defined")
    given = size if size is not None else scale_factor
    given = tuple(given) if isinstance(given, (tuple, list)) else (given,) * spatial
    if len(given) != spatial:
        raise _spatial_error(
            "interpolate", f"size or scale_factor {given} must have {spatial} entries", input
        )
    in_sizes = input.shape[2:]
    if size is not None:
        sizes, scales = tuple(int(s) for s in given), (None,) * spatial
    else:
        sizes = tuple(math.floor(n * s) for n, s in zip(in_sizes, given, strict=True))
        scales = (None,) * spatial if recompute_scale_factor else given
    if min(sizes) < 1:
        raise _spatial_error("interpolate", f"the output size {sizes} must be positive", input)
    return sizes, scales


def _nearest_index(in_size: int, out_size: int, scale_factor) -> np.ndarray:
    """floor(dst * scale), in float32 as PyTorch computes it."""
    scale = np.float32(1.0 / scale_factor if scale_factor else in_size / out_size)
    source = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(source, in_size - 1)


def _pick_along(x: Tensor, dim: int, index: np.ndarray) -> Tensor:
    """x.index_select(dim, index); an index repeating each position r times in order is a
    broadcast instead, whose gradient is a sum (a gather's is a slower scatter)."""
    repeats = len(index) // x.shape[dim]
    if repeats < 1 or not np.array_equal(index, np.arange(len(index)) // repeats):
        return x.index_select(dim, tensor(index))
    shape = list(x.shape)
    spread = x.unsqueeze(dim + 1).expand(*shape[: dim + 1], repeats, *shape[dim + 1 :])
    shape[dim] *= repeats
    return spread.reshape(shape)


def _linear_along(x: Tensor, dim, in_size, out_size, scale_factor, align_corners) -> Tensor:
    """Linear interpolation along ``dim``: a matmul with the (out, in) matrix whose row i
    weighs the two source positions around PyTorch's source coordinate of output i (BLAS
    beats two gathers, and their gradients' scatters, at the sizes images have)."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        source = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        scale = 1.0 / scale_factor if scale_factor else in_size / out_size
        source = np.maximum(scale * (dst + 0.5) - 0.5, 0.0)
    lo = np.minimum(source.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    weights = np.zeros((out_size, in_size))
    np.add.at(weights, (np.arange(out_size), lo), 1.0 - (source - lo))
    np.add.at(weights, (np.arange(out_size), hi), source - lo)
    return _matrix_along(x, dim, weights)


def _matrix_along(x: Tensor, dim: int, matrix: np.ndarray) -> Tensor:
    """Each line of x along ``dim`` (one of the last two) times the (out, in) ``matrix``."""
    weights = tensor(matrix.astype(x.dtype.np))
    return x @ weights.T if dim == x.ndim - 1 else weights @ x


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C r^2, H, W) -> (*, C, H r, W r): each group of r^2 channels becomes an r x r
    block of pixels."""
    r = upscale_factor
    if input.ndim < 3 or input.shape[-3] % (r * r):
        raise _spatial_error(
            "pixel_shuffle",
            f"expected at least 3 dims and channels divisible by upscale_factor^2 = {r * r}",
            input,
        )
    *batch, c, h, w = input.shape
    blocks = input.reshape(*batch, c // (r * r), r, r, h, w)
    lead = len(batch)
    order = (*range(lead), lead, lead + 3, lead + 1, lead + 4, lead + 2)
    return blocks.permute(*order).reshape(*batch, c // (r * r), h * r, w * r)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out=None):
    """input / max(||input||_p over ``dim``, eps)."""
    if out is not None:
        raise NotImplementedError("normalize: out= is not supported")
    return input / input.norm(p, dim, keepdim=True).clamp(min=eps)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim=False):
    """||x1 - x2 + eps||_p over the last dim."""
    return (x1 - x2 + eps).norm(p, -1, keepdim)


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    """PyTorch's reading of the deprecated size_average and reduce arguments."""
    if size_average is None and reduce is None:
        return reduction
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def cosine_embedding_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0.0,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """1 - cos(x1, x2) where target is 1, max(0, cos(x1, x2) - margin) where it is -1."""
    target = as_tensor(target)
    if target.ndim > 1 or input1.ndim != target.ndim + 1 or input2.shape != input1.shape:
        raise ShapeError(
            at_user_line(
                f"cosine_embedding_loss: a {target.ndim}-D target of shape "
                f"{tuple(target.shape)} needs two {target.ndim + 1}-D inputs of one shape, "
                f"got {tuple(input1.shape)} and {tuple(input2.shape)}"
            )
        )
    dim = target.ndim
    tiny = 1e-12  # PyTorch's EPSILON, kept off zero vectors
    squares = ((input1 * input1).sum(dim) + tiny) * ((input2 * input2).sum(dim) + tiny)
    cos = (input1 * input2).sum(dim) / squares.sqrt()
    loss = where(target == 1, 1.0 - cos, 0.0) + where(
        target == -1, (cos - margin).clamp(min=0.0), 0.0
    )
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-6,
    swap: bool = False,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """max(d(a, p) - d(a, n) + margin, 0) with d the pairwise p-norm distance; ``swap``
    uses d(p, n) when it is smaller than d(a, n)."""
    shapes = {tuple(t.shape) for t in (anchor, positive, negative)}
    if len(shapes) > 1 or anchor.ndim not in (1, 2):
        raise ShapeError(
            at_user_line(
                f"triplet_margin_loss: anchor, positive and negative must be 1-D or 2-D of "
                f"one shape, got {tuple(anchor.shape)}, {tuple(positive.shape)} and "
                f"{tuple(negative.shape)}"
            )
        )
    to_positive = pairwise_distance(anchor, positive, p, eps)
    to_negative = pairwise_distance(anchor, negative, p, eps)
    if swap:
        to_negative = to_negative.minimum(pairwise_distance(positive, negative, p, eps))
    loss = (to_positive - to_negative + margin).clamp(min=0.0)
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))
