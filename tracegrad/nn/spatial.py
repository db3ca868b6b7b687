"""Layers over spatial dims, with PyTorch's names, arguments and parameters: Conv1d,
ConvTranspose2d, AvgPool2d, AdaptiveAvgPool2d, Dropout2d, the padding layers (ZeroPad2d,
ConstantPad2d, ReflectionPad2d, ReplicationPad2d), Upsample, PixelShuffle, and the losses over
embeddings CosineEmbeddingLoss and TripletMarginLoss. Each forwards to its functional form."""

from __future__ import annotations

from tracegrad.nn import functional as F
from tracegrad.nn.layers import Conv2d, _DropoutNd, _empty
from tracegrad.nn.module import Module
from tracegrad.tensor import Tensor

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvNd(Module):
    """What every convolution shares: checked channels and groups, a weight of
    ``weight_shape`` and a bias, and PyTorch's initialization (as Conv2d's)."""

    SHOWN_AFTER_BIAS: tuple[tuple[str, object], ...] = ()

    reset_parameters = Conv2d.reset_parameters

    def __init__(self, in_channels, out_channels, kernel_size, groups, bias, padding_mode, **kw):
        super().__init__()
        name = type(self).__name__
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: channels {in_channels} -> {out_channels} not divisible by groups={groups}"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {PADDING_MODES}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.groups, self.padding_mode = kernel_size, groups, padding_mode
        self.weight = _empty(*self.weight_shape(), **kw)
        self.bias = _empty(out_channels, **kw) if bias else None
        self.reset_parameters()

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        text += self._changed(self.SHOWN_UNLESS)
        text += "" if self.bias is not None else ", bias=False"
        return text + self._changed(self.SHOWN_AFTER_BIAS)

    def _changed(self, defaults) -> str:
        """ ", name=value" for each setting off its default, as PyTorch's repr shows them."""
        values = ((name, getattr(self, name), default) for name, default in defaults)
        return "".join(f", {name}={value}" for name, value, default in values if value != default)


class Conv1d(_ConvNd):
    """(N, C_in, L) -> (N, C_out, L_out), weight (out_channels, in_channels / groups, k)."""

    SHOWN_UNLESS = (("padding", (0,)), ("dilation", (1,)), ("groups", 1))
    SHOWN_AFTER_BIAS = (("padding_mode", "zeros"),)

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
    ):
        if padding_mode != "zeros" and isinstance(padding, str):
            raise ValueError(f"Conv1d: padding={padding!r} needs padding_mode='zeros'")
        super().__init__(
            in_channels,
            out_channels,
            _one(kernel_size),
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.stride, self.dilation = _one(stride), _one(dilation)
        self.padding = padding if isinstance(padding, str) else _one(padding)

    def weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, input) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # pad first, as PyTorch does, then convolve unpadded
            input = F.pad(input, padding * 2, self.padding_mode)
            padding = 0
        return F.conv1d(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups
        )


def _one(value) -> tuple[int]:
    return (value,) if isinstance(value, int) else tuple(value)


class ConvTranspose2d(_ConvNd):
    """(N, C_in, H, W) -> (N, C_out, H_out, W_out), weight (in_channels, out_channels / groups,
    kH, kW). ``forward(input, output_size)`` picks the output_padding giving that size."""

    SHOWN_UNLESS = (
        ("padding", (0, 0)),
        ("output_padding", (0, 0)),
        ("dilation", (1, 1)),
        ("groups", 1),
    )

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        padding_mode="zeros",
        device=None,
        dtype=None,
    ):
        if padding_mode != "zeros":
            raise ValueError('Only "zeros" padding mode is supported for ConvTranspose2d')
        super().__init__(
            in_channels,
            out_channels,
            F._pair(kernel_size),
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.stride, self.padding = F._pair(stride), F._pair(padding)
        self.output_padding, self.dilation = F._pair(output_padding), F._pair(dilation)

    def weight_shape(self):
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    def forward(self, input, output_size=None) -> Tensor:
        output_padding = self.output_padding
        if output_size is not None:
            output_padding = self._output_padding(input, tuple(output_size)[-2:])
        return F.conv_transpose2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
        )

    def _output_padding(self, input, output_size) -> tuple[int, int]:
        """The output_padding that makes the output ``output_size``, which must lie within a
        stride of the smallest output."""
        spatial = tuple(input.shape[-2:])
        full = F._transposed_size(spatial, self.kernel_size, self.stride, self.dilation)
        smallest = tuple(f - 2 * p for f, p in zip(full, self.padding, strict=True))
        extra = tuple(o - s for o, s in zip(output_size, smallest, strict=True))
        if any(not 0 <= e < s for e, s in zip(extra, self.stride, strict=True)):
            raise ValueError(
                f"ConvTranspose2d: requested an output size of {output_size}, but valid sizes "
                f"for input of shape {tuple(input.shape)} range from {smallest} to "
                f"{tuple(s + st - 1 for s, st in zip(smallest, self.stride, strict=True))}"
            )
        return extra


class AvgPool2d(Module):
    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override=None,
    ):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input) -> Tensor:
        return F.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input) -> Tensor:
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Dropout2d(_DropoutNd):
    """Zeroes whole channels in training; the identity in eval mode (arguments as Dropout's:
    ``p``, ``inplace``)."""

    def forward(self, input) -> Tensor:
        return F.dropout2d(input, self.p, self.training)


class _Pad2d(Module):
    """Pads the last two dims: ``padding`` is one size for all four sides or (left, right,
    top, bottom)."""

    mode = "constant"

    def __init__(self, padding, value: float = 0.0):
        super().__init__()
        self.padding = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
        if len(self.padding) != 4:
            raise ValueError(
                f"{type(self).__name__}: padding must be an int or 4 sizes (left, right, top, "
                f"bottom), got {padding}"
            )
        self.value = value

    def forward(self, input) -> Tensor:
        return F.pad(input, self.padding, self.mode, self.value)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ZeroPad2d(_Pad2d):
    def __init__(self, padding):
        super().__init__(padding)


class ConstantPad2d(_Pad2d):
    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ReflectionPad2d(ZeroPad2d):
    mode = "reflect"


class ReplicationPad2d(ZeroPad2d):
    mode = "replicate"


class Upsample(Module):
    def __init__(
        self,
        size=None,
        scale_factor=None,
        mode: str = "nearest",
        align_corners=None,
        recompute_scale_factor=None,
    ):
        super().__init__()
        self.size, self.mode, self.align_corners = size, mode, align_corners
        self.scale_factor = float(scale_factor) if isinstance(scale_factor, int) else scale_factor
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, input) -> Tensor:
        return F.interpolate(
            input,
            self.size,
            self.scale_factor,
            self.mode,
            self.align_corners,
            self.recompute_scale_factor,
        )

    def extra_repr(self) -> str:
        if self.size is not None:
            return f"size={self.size}, mode={self.mode!r}"
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


class PixelShuffle(Module):
    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, input) -> Tensor:
        return F.pixel_shuffle(input, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class _EmbeddingLoss(Module):
    """A loss keeping PyTorch's deprecated size_average and reduce, read into ``reduction``."""

    def __init__(self, size_average, reduce, reduction: str):
        super().__init__()
        self.reduction = F._legacy_reduction(size_average, reduce, reduction)


class CosineEmbeddingLoss(_EmbeddingLoss):
    def __init__(self, margin: float = 0.0, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.margin = margin

    def forward(self, input1, input2, target) -> Tensor:
        return F.cosine_embedding_loss(
            input1, input2, target, self.margin, reduction=self.reduction
        )


class TripletMarginLoss(_EmbeddingLoss):
    def __init__(
        self,
        margin: float = 1.0,
        p: float = 2.0,
        eps: float = 1e-6,
        swap: bool = False,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
    ):
        super().__init__(size_average, reduce, reduction)
        self.margin, self.p, self.eps, self.swap = margin, p, eps, swap

    def forward(self, anchor, positive, negative) -> Tensor:
        return F.triplet_margin_loss(
            anchor,
            positive,
            negative,
            self.margin,
            self.p,
            self.eps,
            self.swap,
            reduction=self.reduction,
        )
