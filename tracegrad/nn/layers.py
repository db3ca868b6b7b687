"""Layers: Linear, Conv2d, MaxPool2d, normalization, Embedding, Dropout, activations, Flatten,
Unflatten and losses."""

from __future__ import annotations

import math

import numpy as np

from tracegrad import devices, dtypes
from tracegrad.creation import ones, zeros
from tracegrad.errors import ShapeError, at_user_line
from tracegrad.nn import functional as F
from tracegrad.nn import init
from tracegrad.nn.module import Module
from tracegrad.nn.parameter import Parameter
from tracegrad.tape import no_grad
from tracegrad.tensor import Tensor, tensor


def _empty(*shape, device=None, dtype=None) -> Parameter:
    devices.check(device)
    dtype = dtypes.to_dtype(dtype) if dtype is not None else dtypes.DEFAULT_FLOAT
    return Parameter(np.zeros(shape, dtype.np))


class Linear(Module):
    """An affine map ``y = x @ W^T + b``, with PyTorch's initialisation and parameter names.

    Args:
        in_features: the size of each input's last dimension.
        out_features: the size of each output's last dimension.
        bias: whether to add a learned bias.
        device: None or "cpu".
        dtype: the parameters' dtype (default float32).

    Shape:
        Input ``(*, in_features)``, output ``(*, out_features)``.

    Raises:
        ShapeError: on an input whose last dimension is not ``in_features``.

    Examples:
        >>> layer = nn.Linear(3, 2)
        >>> layer(tg.zeros(4, 3)).shape, layer.weight.shape
        (tracegrad.Size([4, 2]), tracegrad.Size([2, 3]))
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features, device=device, dtype=dtype)
        self.bias = _empty(out_features, device=device, dtype=dtype) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's default: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


class Conv2d(Module):
    """A 2-d convolution (cross-correlation) over ``(N, C, H, W)`` inputs, as PyTorch's.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: an int or a pair ``(kh, kw)``.
        stride: an int or a pair.
        padding: an int or a pair of zero padding on each side.
        dilation: an int or a pair.
        groups: split the channels into this many independent groups.
        bias: whether to add a learned bias per output channel.
        device: None or "cpu".
        dtype: the parameters' dtype (default float32).

    Raises:
        ShapeError: on an input that is not ``(N, in_channels, H, W)`` or smaller than the kernel.

    Examples:
        >>> conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        >>> conv(tg.zeros(2, 1, 8, 8)).shape
        tracegrad.Size([2, 4, 8, 8])
    """

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
        device=None,
        dtype=None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: channels {in_channels} -> {out_channels} not divisible by groups={groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = F._pair(kernel_size)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = _empty(
            out_channels, in_channels // groups, *self.kernel_size, device=device, dtype=dtype
        )
        self.bias = _empty(out_channels, device=device, dtype=dtype) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x) -> Tensor:
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        # PyTorch's text: settings at their defaults are left out, except the stride.
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        text += f", stride={F._pair(self.stride)}"
        padding = self.padding if isinstance(self.padding, str) else F._pair(self.padding)
        if padding != (0, 0):
            text += f", padding={padding}"
        if F._pair(self.dilation) != (1, 1):
            text += f", dilation={F._pair(self.dilation)}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text if self.bias is not None else text + ", bias=False"


class MaxPool2d(Module):
    """2-d max pooling over ``(N, C, H, W)`` inputs; tied maxima share the gradient.

    Args:
        kernel_size: an int or a pair.
        stride: an int or a pair (default: ``kernel_size``).
        padding: an int or a pair of implicit ``-inf`` padding.
        dilation: an int or a pair.

    Examples:
        >>> nn.MaxPool2d(2)(tg.zeros(1, 3, 8, 8)).shape
        tracegrad.Size([1, 3, 4, 4])
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = (
            kernel_size,
            stride,
            padding,
            dilation,
        )

    def forward(self, x) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, "
            f"padding={self.padding}, dilation={self.dilation}, ceil_mode=False"
        )


class Flatten(Module):
    """Merge dimensions ``start_dim`` to ``end_dim`` (by default all but the batch).

    Args:
        start_dim: the first dimension to merge.
        end_dim: the last dimension to merge.

    Examples:
        >>> nn.Flatten()(tg.zeros(2, 3, 4)).shape
        tracegrad.Size([2, 12])
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class ReLU(Module):
    """``max(x, 0)`` elementwise.

    Args:
        inplace: accepted for PyTorch's signature; the result is a new tensor.

    Examples:
        >>> nn.ReLU()(tg.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x) -> Tensor:
        return F.relu(x)


class GELU(Module):
    """The Gaussian error linear unit, ``x * Phi(x)``; ``approximate='tanh'`` uses the tanh form.

    Args:
        approximate: ``'none'`` (exact, with erf) or ``'tanh'``.

    Examples:
        >>> nn.GELU()(tg.tensor([0.0]))
        tensor([0.])
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Tanh(Module):
    """``tanh(x)`` elementwise.

    Examples:
        >>> nn.Tanh()(tg.tensor([0.0]))
        tensor([0.])
    """

    def forward(self, x) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise.

    Examples:
        >>> nn.Sigmoid()(tg.tensor([0.0]))
        tensor([0.5])
    """

    def forward(self, x) -> Tensor:
        return F.sigmoid(x)


class Identity(Module):
    """Returns its input; takes and ignores any arguments, as PyTorch's.

    Examples:
        >>> nn.Identity(54, unused=1)(tg.tensor([1.0]))
        tensor([1.])
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x) -> Tensor:
        return x


class Softmax(Module):
    """Softmax along ``dim``: the entries along it are positive and sum to 1.

    Args:
        dim: the dimension to normalize over.

    Examples:
        >>> nn.Softmax(dim=1)(tg.zeros(1, 4))
        tensor([[0.25, 0.25, 0.25, 0.25]])
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x) -> Tensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """``log(softmax(x))`` along ``dim``, computed stably.

    Args:
        dim: the dimension to normalize over.

    Examples:
        >>> nn.LogSoftmax(dim=0)(tg.zeros(2)).exp()
        tensor([0.5, 0.5])
    """

    def forward(self, x) -> Tensor:
        return F.log_softmax(x, self.dim)


class LayerNorm(Module):
    """Layer normalization over the last ``len(normalized_shape)`` dimensions, with a learned
    elementwise scale and shift, as PyTorch's.

    Args:
        normalized_shape: an int or the trailing shape to normalize over.
        eps: added to the variance for numerical stability.
        elementwise_affine: learn ``weight`` (ones) and ``bias`` (zeros).
        bias: learn a bias too (with ``elementwise_affine``).
        device: None or "cpu".
        dtype: the parameters' dtype.

    Raises:
        ShapeError: if the input's trailing shape is not ``normalized_shape``.

    Examples:
        >>> y = nn.LayerNorm(4)(tg.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> round(y.mean().item(), 6), round(y.var(unbiased=False).item(), 3)
        (0.0, 1.0)
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        self.normalized_shape, self.eps = shape, eps
        self.weight = self.bias = None
        if elementwise_affine:
            self.weight = _empty(*shape, device=device, dtype=dtype)
            init.ones_(self.weight)
            if bias:
                self.bias = _empty(*shape, device=device, dtype=dtype)

    def forward(self, x) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        affine, bias = self.weight is not None, self.bias is not None
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={affine}, bias={bias}"


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim``, initialised from
    N(0, 1); row ``padding_idx`` is zero and gets no gradient.

    Args:
        num_embeddings: the number of rows.
        embedding_dim: the size of each vector.
        padding_idx: a row kept at zero, or None.
        device: None or "cpu".
        dtype: the table's dtype.

    Raises:
        ValueError: if ``padding_idx`` is out of range.

    Examples:
        >>> table = nn.Embedding(10, 3)
        >>> table(tg.tensor([[1, 2], [3, 4]])).shape
        tracegrad.Size([2, 2, 3])
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx=None, device=None, dtype=None
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx {padding_idx} is out of range for {num_embeddings} rows")
        self.padding_idx = padding_idx
        self.weight = _empty(num_embeddings, embedding_dim, device=device, dtype=dtype)
        init.normal_(self.weight)
        if padding_idx is not None:
            self.weight.array[padding_idx] = 0  # PyTorch starts the padding row at zero

    def forward(self, indices) -> Tensor:
        return F.embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class _DropoutNd(Module):
    """What the dropout layers share (PyTorch's ``_DropoutNd``): ``p`` checked, the repr."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace=False"


class Dropout(_DropoutNd):
    """In training mode, zero each element with probability ``p`` and scale the rest by
    ``1 / (1 - p)``; in eval mode, the identity. Draws come from tracegrad's generator, so compiled
    and eager runs agree under ``tg.manual_seed``.

    Args:
        p: the probability of zeroing an element.
        inplace: accepted for PyTorch's signature; the result is a new tensor.

    Raises:
        ValueError: if ``p`` is not in [0, 1].

    Examples:
        >>> drop = nn.Dropout(0.5).eval()
        >>> drop(tg.ones(3))
        tensor([1., 1., 1.])
    """

    def forward(self, x) -> Tensor:
        return F.dropout(x, self.p, self.training)


class MSELoss(Module):
    """The mean squared error between input and target.

    Args:
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per element).

    Examples:
        >>> nn.MSELoss()(tg.tensor([1.0, 3.0]), tg.tensor([0.0, 0.0]))
        tensor(5.)
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target) -> Tensor:
        return F.mse_loss(input, target, self.reduction)


class CrossEntropyLoss(Module):
    """Cross entropy between logits ``(N, C)`` (or ``(N, C, d...)``) and class indices or
    probabilities, as PyTorch's: ``log_softmax`` then negative log-likelihood.

    Args:
        weight: a weight per class, or None.
        ignore_index: a target index that contributes neither loss nor gradient.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``.
        label_smoothing: the amount of smoothing in [0, 1].

    Raises:
        ShapeError: if the target's shape does not fit the input's.

    Examples:
        >>> loss = nn.CrossEntropyLoss()(tg.zeros(2, 4), tg.tensor([0, 3]))
        >>> round(loss.item(), 4)
        1.3863
    """

    def __init__(
        self,
        weight=None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.weight, self.ignore_index = weight, ignore_index
        self.reduction, self.label_smoothing = reduction, label_smoothing

    def forward(self, input, target) -> Tensor:
        return F.cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing
        )


# --- more activations ----------------------------------------------------------------------------


class LeakyReLU(Module):
    """``x`` where positive, ``negative_slope * x`` elsewhere.

    Args:
        negative_slope: the slope for negative inputs.
        inplace: accepted for PyTorch's signature.

    Examples:
        >>> nn.LeakyReLU(0.1)(tg.tensor([-1.0, 2.0]))
        tensor([-0.1,  2. ])
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere.

    Args:
        alpha: the scale of the negative part.
        inplace: accepted for PyTorch's signature.

    Examples:
        >>> nn.ELU()(tg.tensor([0.0, 2.0]))
        tensor([0., 2.])
    """

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha = alpha

    def forward(self, x) -> Tensor:
        return F.elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SiLU(Module):
    """``x * sigmoid(x)`` elementwise (swish).

    Examples:
        >>> nn.SiLU()(tg.tensor([0.0]))
        tensor([0.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x) -> Tensor:
        return F.silu(x)


class Softplus(Module):
    """``log(1 + exp(beta * x)) / beta``, linear above ``threshold``.

    Args:
        beta: the sharpness.
        threshold: above ``beta * x > threshold`` the result is ``x``.

    Examples:
        >>> nn.Softplus()(tg.tensor([0.0]))
        tensor([0.6931472])
    """

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x) -> Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class Mish(Module):
    """``x * tanh(softplus(x))`` elementwise.

    Examples:
        >>> nn.Mish()(tg.tensor([0.0]))
        tensor([0.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x) -> Tensor:
        return F.mish(x)


class Hardtanh(Module):
    """``x`` clamped to ``[min_val, max_val]``.

    Args:
        min_val: the lower bound.
        max_val: the upper bound.
        inplace: accepted for PyTorch's signature.

    Examples:
        >>> nn.Hardtanh()(tg.tensor([-2.0, 0.5, 2.0]))
        tensor([-1. ,  0.5,  1. ])
    """

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        super().__init__()
        if min_val > max_val:
            raise ValueError(f"Hardtanh: min_val {min_val} must not exceed max_val {max_val}")
        self.min_val, self.max_val = min_val, max_val

    def forward(self, x) -> Tensor:
        return F.hardtanh(x, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


class ReLU6(Hardtanh):
    """``min(max(x, 0), 6)`` elementwise.

    Examples:
        >>> nn.ReLU6()(tg.tensor([-1.0, 8.0]))
        tensor([0., 6.])
    """

    def __init__(self, inplace: bool = False):
        super().__init__(0.0, 6.0)


class PReLU(Module):
    """``x`` where positive, ``a * x`` elsewhere, with ``a`` learned (one, or one per channel).

    Args:
        num_parameters: 1, or the number of channels (dimension 1 of the input).
        init: the initial slope.
        dtype: the parameter's dtype.
        device: None or "cpu".

    Examples:
        >>> nn.PReLU()(tg.tensor([-1.0, 2.0]))
        tensor([-0.25,  2.  ], grad_fn=<...>)
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25, dtype=None, device=None):
        super().__init__()
        self.num_parameters = num_parameters
        self.init = init
        self.weight = _empty(num_parameters, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.constant_(self.weight, self.init)

    def forward(self, x) -> Tensor:
        return F.prelu(x, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class Softsign(Module):
    """``x / (1 + |x|)`` elementwise.

    Examples:
        >>> nn.Softsign()(tg.tensor([1.0]))
        tensor([0.5])
    """

    def forward(self, x) -> Tensor:
        return F.softsign(x)


class LogSigmoid(Module):
    """``log(sigmoid(x))`` elementwise, computed stably.

    Examples:
        >>> nn.LogSigmoid()(tg.tensor([0.0])).exp()
        tensor([0.5])
    """

    def forward(self, x) -> Tensor:
        return F.logsigmoid(x)


class Unflatten(Module):
    """Split dimension ``dim`` into ``unflattened_size``.

    Args:
        dim: the dimension to split.
        unflattened_size: the sizes it becomes.

    Examples:
        >>> nn.Unflatten(1, (3, 4))(tg.zeros(2, 12)).shape
        tracegrad.Size([2, 3, 4])
    """

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, x) -> Tensor:
        return x.unflatten(self.dim, self.unflattened_size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


# --- normalization -------------------------------------------------------------------------------


class _NormBase(Module):
    """Affine weight and bias per feature, and running statistics kept in buffers."""

    def __init__(
        self, num_features, eps, momentum, affine, track_running_stats, dtype=None, device=None
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = _empty(num_features, dtype=dtype) if affine else None
        self.bias = _empty(num_features, dtype=dtype) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", tensor(0))  # int64
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class _BatchNorm(_NormBase):
    dims: tuple[int, ...]  # the numbers of dims an input may have

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum=0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype=None,
        device=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)

    def _momentum(self):
        """The factor the running statistics move by in a training call, counting the call:
        ``momentum``, or for ``momentum=None`` 1 / (calls so far), a cumulative average. The
        count stays a tensor (a compiled forward reads it on every call, not once)."""
        if not (self.training and self.track_running_stats):
            return self.momentum or 0.0
        with no_grad():
            self.num_batches_tracked.add_(1)
        if self.momentum is not None:
            return self.momentum
        return 1.0 / self.num_batches_tracked.to(self.running_mean.dtype)

    def _check_input_dim(self, x) -> None:
        if x.ndim not in self.dims:
            expected = " or ".join(f"{d}D" for d in self.dims)
            raise ShapeError(
                at_user_line(
                    f"{type(self).__name__}: expected {expected} input, got input of shape "
                    f"{tuple(x.shape)}"
                )
            )

    def forward(self, x) -> Tensor:
        self._check_input_dim(x)
        momentum = self._momentum()
        # running statistics normalize in eval mode; without them, the batch's always do
        use_batch = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            use_batch,
            momentum,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization over ``(N, C)`` or ``(N, C, L)`` inputs, as PyTorch's: in training mode
    the batch's statistics normalize and update the running ones in place; in eval mode the
    running statistics normalize.

    Args:
        num_features: the channels ``C``.
        eps: added to the variance for numerical stability.
        momentum: the running statistics' update rate (None: a cumulative average).
        affine: learn a scale and shift per channel.
        track_running_stats: keep running statistics (in buffers).
        dtype: the parameters' and buffers' dtype.
        device: None or "cpu".

    Raises:
        ShapeError: on an input of another rank or channel count.

    Examples:
        >>> bn = nn.BatchNorm1d(3)
        >>> bn(tg.randn(8, 3)).shape, bn.running_mean.shape
        (tracegrad.Size([8, 3]), tracegrad.Size([3]))
    """

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over ``(N, C, H, W)`` inputs (see ``BatchNorm1d`` for the arguments).

    Examples:
        >>> nn.BatchNorm2d(3)(tg.randn(2, 3, 4, 4)).shape
        tracegrad.Size([2, 3, 4, 4])
    """

    dims = (4,)


class InstanceNorm2d(_NormBase):
    """Normalization of each sample's channel over ``(H, W)``, as PyTorch's (no affine and
    no running statistics by default).

    Args:
        num_features: the channels ``C``.
        eps: added to the variance for numerical stability.
        momentum: the running statistics' update rate.
        affine: learn a scale and shift per channel.
        track_running_stats: keep running statistics.
        dtype: the parameters' dtype.
        device: None or "cpu".

    Examples:
        >>> nn.InstanceNorm2d(3)(tg.randn(2, 3, 4, 4)).shape
        tracegrad.Size([2, 3, 4, 4])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum=0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        dtype=None,
        device=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)

    def forward(self, x) -> Tensor:
        if x.ndim not in (3, 4):
            raise ShapeError(
                at_user_line(f"InstanceNorm2d: expected 3D or 4D input, got shape {tuple(x.shape)}")
            )
        if x.ndim == 3:  # one unbatched sample (C, H, W)
            return self.forward(x.unsqueeze(0))[0]
        # as in PyTorch, no count of batches here: momentum=None leaves the statistics be
        momentum = self.momentum if self.momentum is not None else 0.0
        return F.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            momentum,
            self.eps,
        )


class GroupNorm(Module):
    """Normalization over groups of channels of each sample, as PyTorch's.

    Args:
        num_groups: the number of groups (dividing ``num_channels``).
        num_channels: the channels ``C``.
        eps: added to the variance for numerical stability.
        affine: learn a scale and shift per channel.
        dtype: the parameters' dtype.
        device: None or "cpu".

    Raises:
        ValueError: if ``num_groups`` does not divide ``num_channels``.

    Examples:
        >>> nn.GroupNorm(2, 4)(tg.randn(3, 4, 5)).shape
        tracegrad.Size([3, 4, 5])
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        dtype=None,
        device=None,
    ):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(
                f"GroupNorm: num_channels {num_channels} must be divisible by num_groups "
                f"{num_groups}"
            )
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps, self.affine = eps, affine
        self.weight = _empty(num_channels, dtype=dtype) if affine else None
        self.bias = _empty(num_channels, dtype=dtype) if affine else None
        if self.weight is not None:
            init.ones_(self.weight)

    def forward(self, x) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


# --- more losses ---------------------------------------------------------------------------------


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        # a buffer as in PyTorch: it follows .double() and state_dict
        self.register_buffer("weight", weight)


class NLLLoss(_WeightedLoss):
    """The negative log-likelihood of class indices under log-probabilities ``(N, C)``.

    Args:
        weight: a weight per class, or None.
        ignore_index: a target index that contributes nothing.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per element).

    Examples:
        >>> nn.NLLLoss()(tg.tensor([[-1.0, -2.0]]), tg.tensor([1]))
        tensor(2.)
    """

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(weight, reduction)
        self.ignore_index = ignore_index

    def forward(self, input, target) -> Tensor:
        return F.nll_loss(input, target, self.weight, self.ignore_index, self.reduction)


class BCELoss(_WeightedLoss):
    """Binary cross entropy between probabilities and targets in [0, 1] (the log clamped at -100).

    Args:
        weight: a weight per element (broadcast), or None.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per element).

    Examples:
        >>> round(nn.BCELoss()(tg.tensor([0.5]), tg.tensor([1.0])).item(), 4)
        0.6931
    """

    def forward(self, input, target) -> Tensor:
        return F.binary_cross_entropy(input, target, self.weight, self.reduction)


class BCEWithLogitsLoss(_WeightedLoss):
    """``sigmoid`` then binary cross entropy, computed stably from logits.

    Args:
        weight: a weight per element (broadcast), or None.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per element).
        pos_weight: a weight of the positive term per class, or None.

    Examples:
        >>> round(nn.BCEWithLogitsLoss()(tg.tensor([0.0]), tg.tensor([1.0])).item(), 4)
        0.6931
    """

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__(weight, reduction)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            input, target, self.weight, self.reduction, self.pos_weight
        )


class L1Loss(_Loss):
    """The mean absolute error between input and target.

    Args:
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per element).

    Examples:
        >>> nn.L1Loss()(tg.tensor([1.0, -3.0]), tg.zeros(2))
        tensor(2.)
    """

    def forward(self, input, target) -> Tensor:
        return F.l1_loss(input, target, self.reduction)


class SmoothL1Loss(_Loss):
    """Squared error ``0.5 d^2 / beta`` below ``beta``, absolute error ``|d| - 0.5 beta`` above.

    Args:
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per element).
        beta: where the loss turns from squared to absolute.

    Examples:
        >>> nn.SmoothL1Loss()(tg.tensor([0.5, 3.0]), tg.zeros(2))
        tensor(1.3125)
    """

    def __init__(self, reduction: str = "mean", beta: float = 1.0):
        super().__init__(reduction)
        self.beta = beta

    def forward(self, input, target) -> Tensor:
        return F.smooth_l1_loss(input, target, self.reduction, self.beta)


class HuberLoss(_Loss):
    """Squared error ``0.5 d^2`` below ``delta``, ``delta (|d| - 0.5 delta)`` above.

    Args:
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one loss per element).
        delta: where the loss turns from squared to linear.

    Examples:
        >>> nn.HuberLoss(delta=1.0)(tg.tensor([0.5, 3.0]), tg.zeros(2))
        tensor(1.3125)
    """

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction)
        self.delta = delta

    def forward(self, input, target) -> Tensor:
        return F.huber_loss(input, target, self.reduction, self.delta)


class KLDivLoss(_Loss):
    """The Kullback-Leibler divergence ``target * (log(target) - input)``, ``input`` being
    log-probabilities.

    Args:
        reduction: ``'mean'`` (warns, as PyTorch), ``'batchmean'`` (the true KL divergence),
            ``'sum'`` or ``'none'``.
        log_target: the target is given as log-probabilities.

    Examples:
        >>> p = tg.tensor([[0.5, 0.5]])
        >>> nn.KLDivLoss(reduction="batchmean")(p.log(), p)
        tensor(0.)
    """

    def __init__(self, reduction: str = "mean", log_target: bool = False):
        super().__init__(reduction)
        self.log_target = log_target

    def forward(self, input, target) -> Tensor:
        return F.kl_div(input, target, self.reduction, self.log_target)
