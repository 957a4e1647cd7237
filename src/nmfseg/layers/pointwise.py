"""Pointwise (1×1×1) convolution as one matrix product per batch element.

A kernel-size-1 convolution is a linear map of the channel vector of every voxel. On CPU,
``nn.Conv3d(kernel_size=1)`` goes through the generic convolution path and is several
times slower than a single GEMM, so :class:`PointwiseConv` computes it as ``W @ x`` on the
``(C, voxels)`` view of a channels-first tensor, or as ``x @ Wᵀ`` when the tensor is stored
channels-last (``torch.channels_last_3d``): no copy in either case, and the output keeps
the input's memory layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.routes.precision import autocast_on

__all__ = ["PointwiseConv", "channel_mm", "is_channels_last"]


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x (B, C, *spatial)`` is stored with channels innermost (and not also
    channels-first contiguous, as a tensor with one voxel or one channel is)."""
    return x.dim() > 2 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def channel_mm(weight: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """``weight @ x[b] (+ bias)`` for every ``b``: ``(O, C) × (B, C, N) → (B, O, N)``.

    Uses 2-D GEMMs (``addmm``), which take transposed operands without copying them. Without
    autograd (inside custom autograd Functions) the result is written into a fresh 3-D tensor,
    so that it is not a view. A trace (ONNX export) takes the batched product, whatever the
    example's batch: ``out=`` writes are not recorded, and a batch of one is not fixed.
    """
    if x.shape[0] == 1 and not torch.jit.is_tracing():
        # ``out=`` is not allowed to change dtype, which autocast would need (bf16 inference).
        if not torch.is_grad_enabled() and not autocast_on(x):
            out = x.new_empty(1, weight.shape[0], x.shape[2])
            if bias is None:
                torch.mm(weight, x[0], out=out[0])
            else:
                torch.addmm(bias[:, None], weight, x[0], out=out[0])
            return out
        out = torch.mm(weight, x[0]) if bias is None else torch.addmm(bias[:, None], weight, x[0])
        return out.unsqueeze(0)
    out = torch.matmul(weight, x)
    return out if bias is None else out.add_(bias[:, None])


class PointwiseConv(nn.Module):
    """Kernel-size-1 convolution for any number of spatial dims.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels.
        bias: Whether to add a learnable bias.

    Examples::

        >>> import torch
        >>> conv = PointwiseConv(8, 16, bias=False)
        >>> conv(torch.randn(2, 8, 5, 6, 7)).shape
        torch.Size([2, 16, 5, 6, 7])
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Conv3d(kernel_size=1)`` (Kaiming uniform, a=√5)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if is_channels_last(x):
            return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1)
        b, _, *spatial = x.shape
        flat = x.reshape(b, self.in_channels, -1)
        if b == 1:
            out = channel_mm(self.weight, flat, self.bias)
        elif self.bias is None:
            out = torch.matmul(self.weight, flat)
        else:
            out = torch.baddbmm(self.bias.view(1, -1, 1), self.weight.expand(b, -1, -1), flat)
        return out.view(b, self.out_channels, *spatial)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"
