"""``SyncBatchNorm``: batch normalization whose training statistics are the global batch's,
over every process of ``tracegrad.distributed``, as PyTorch's.

In training mode with more than one process, each process sums its share of the batch per
channel (the values, their squares and their count) and one ``all_reduce`` node adds those
sums over the processes: every process then normalizes with the global batch's mean and
biased variance, and moves the running statistics by the global unbiased variance. The
backward goes through the same node, whose VJP all-reduces the cotangents of the two
per-channel sums (PyTorch's backward all-reduces the same two sums), so the gradient is the
global batch's too. In eval mode, and in a group of one process, it is ``BatchNorm``.
"""

from __future__ import annotations

from tracegrad import distributed
from tracegrad.creation import full
from tracegrad.nn import functional as F
from tracegrad.nn.layers import _BatchNorm
from tracegrad.nn.module import Module
from tracegrad.tensor import Tensor, call, cat

__all__ = ["SyncBatchNorm"]


def sync_batch_norm(input: Tensor, running_mean, running_var, weight, bias, momentum, eps):
    """Training-mode batch normalization with the statistics of the batch over every process
    (the running statistics, when given, move in place towards them, as ``F.batch_norm``'s)."""
    F._check_channels("sync_batch_norm", input, running_mean, weight)
    dims = (0, *range(2, input.ndim))
    channels = input.shape[1]
    count = full((1,), float(input.numel() // channels), dtype=input.dtype)
    local = cat([input.sum(dims), (input * input).sum(dims), count])
    total = call("all_reduce", local, reduce="sum", bucket_cap=None, order=None)
    sums, squares, n = total[:channels], total[channels : 2 * channels], total[2 * channels]
    mean = sums / n
    var = squares / n - mean * mean  # biased, as the normalization uses
    if running_mean is not None:
        F._update_running(running_mean, running_var, mean, var * (n / (n - 1)), momentum)
    return F._normalize(input, mean, var, weight, bias, eps, dims)


class SyncBatchNorm(_BatchNorm):
    """Batch normalization over the global batch of a data-parallel job, as PyTorch's: in
    training mode the statistics are those of every process's batch together (one
    ``all_reduce`` per call, forward and backward); in eval mode, or with one process, it is
    ``BatchNorm`` (the running statistics normalize).

    Args:
        num_features: the channels ``C`` of ``(N, C, ...)`` inputs.
        eps: added to the variance for numerical stability.
        momentum: the running statistics' update rate (None: a cumulative average).
        affine: learn a scale and shift per channel.
        track_running_stats: keep running statistics (in buffers).
        process_group: None, every process (tracegrad.distributed has no other group).
        device: None or "cpu".
        dtype: the parameters' and buffers' dtype.

    Raises:
        ValueError: on an input of fewer than 2 dims or without channels, or a process group.

    Examples:
        >>> bn = nn.SyncBatchNorm(3)
        >>> bn(tg.randn(4, 3, 2, 2)).shape, bn.running_var.shape
        (tracegrad.Size([4, 3, 2, 2]), tracegrad.Size([3]))
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum=0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
    ):
        if process_group is not None:
            raise ValueError(
                "SyncBatchNorm: tracegrad.distributed has one process group, every process; "
                f"pass process_group=None, got {process_group!r}"
            )
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, device)
        self.process_group = process_group

    def _check_input_dim(self, x) -> None:
        if x.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {x.ndim}D input)")
        if x.shape[1] == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, x) -> Tensor:
        if not (self.training and _world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = self._momentum()
        keeps = self.track_running_stats
        return sync_batch_norm(
            x,
            self.running_mean if keeps else None,
            self.running_var if keeps else None,
            self.weight,
            self.bias,
            momentum,
            self.eps,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """``module`` with every ``BatchNorm1d``/``BatchNorm2d`` in it replaced by a
        ``SyncBatchNorm`` holding the same parameters and buffers (the same tensors, so the
        state_dict keys and values stay), in the same training mode.

        Examples:
            >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
            >>> nn.SyncBatchNorm.convert_sync_batchnorm(model)[1]
            SyncBatchNorm(2, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
        """
        converted = module
        if isinstance(module, _BatchNorm):
            converted = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            if module.affine:
                converted.weight, converted.bias = module.weight, module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted


def _world_size() -> int:
    """The processes SyncBatchNorm synchronizes over (1 outside a process group)."""
    return distributed.get_world_size() if distributed.is_initialized() else 1
