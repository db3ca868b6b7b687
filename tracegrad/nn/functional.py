"""Functional forms of layers and losses: ``import tracegrad.nn.functional as F``."""

from __future__ import annotations

import contextlib
import math
import warnings

from tracegrad import dtypes
from tracegrad.errors import DTypeError, ShapeError, at_user_line
from tracegrad.tensor import Tensor, as_tensor, call, where


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
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
    return input.relu()


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return call("gelu", input, approximate=approximate)


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def softmax(input: Tensor, dim: int) -> Tensor:
    return input.softmax(dim)


def log_softmax(input: Tensor, dim: int) -> Tensor:
    return input.log_softmax(dim)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
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
    """Cross entropy between logits (N, C, ...) and int64 class indices (N, ...)."""
    if weight is not None:
        raise NotImplementedError("cross_entropy: per-class weight is not supported yet")
    return _class_loss("cross_entropy", input, target, ignore_index, label_smoothing, reduction)


def nll_loss(input: Tensor, target: Tensor, ignore_index: int = -100, reduction="mean") -> Tensor:
    """The loss of log-probabilities (N, C, ...) against int64 class indices (N, ...)."""
    return _class_loss("nll_loss", input, target, ignore_index, 0.0, reduction)


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
    return _reduce((input - target).abs(), reduction)


def conv2d(
    input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1
) -> Tensor:
    """2-D convolution as windows (a strided view) times the weight, one matmul per group."""
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
    """Max over windows: windows of the input padded with -inf, then amax."""
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
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    # The mask is an op (not data) so a compiled step draws a fresh one every run.
    mask = call("dropout_mask", shape=tuple(input.shape), p=float(p), dtype=input.dtype.name)
    return input * mask
