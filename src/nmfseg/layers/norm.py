"""Layer normalization over the channel dimension of ``(B, C, *spatial)`` tensors.

The Factorizer block normalizes every voxel's channel vector (as ViT's LayerNorm does for
every token), not the whole feature map. :class:`LayerNorm` moves the channel dim last as a
view and calls ``layer_norm``.

In a Factorizer block a LayerNorm is always followed by a pointwise convolution (the NMF
subblock's input projection, the MLP's first layer). :func:`layer_norm_pointwise` computes
``conv(norm(x))`` in one autograd node on channels-first CPU tensors
(:class:`~nmfseg.layers.fused.LayerNormPointwiseFn`: no transposes, chunk-sized
temporaries, and only ``x`` and the per-voxel statistics kept for backward). The blocks that
use it decide when (the route ``cpu_fused``, see :mod:`nmfseg.routes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.layers.fused import LayerNormPointwiseFn, fusable

__all__ = ["LayerNorm", "layer_norm_pointwise"]


class LayerNorm(nn.Module):
    """LayerNorm over channels for channels-first tensors of any spatial rank.

    Args:
        num_channels: Number of channels ``C``.
        eps: Added to the variance for numerical stability.

    Examples::

        >>> import torch
        >>> norm = LayerNorm(8)
        >>> y = norm(torch.randn(2, 8, 4, 5, 6))
        >>> y.shape, bool(y.mean(1).abs().max() < 1e-5)
        (torch.Size([2, 8, 4, 5, 6]), True)
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)
        return out.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def layer_norm_pointwise(x: Tensor, norm: LayerNorm, conv: nn.Module) -> Tensor:
    """``conv(norm(x))`` for a :class:`LayerNorm` and a pointwise conv, fused on CPU.

    Args:
        x: Channels-first input ``(B, C, *spatial)``.
        norm: The LayerNorm over ``C`` channels.
        conv: A :class:`~nmfseg.layers.PointwiseConv` from ``C`` channels.

    Returns:
        ``(B, conv.out_channels, *spatial)``, channels-first; ``conv(norm(x))`` where the
        fused kernel does not apply (:func:`~nmfseg.layers.fused.fusable`).

    Examples::

        >>> import torch
        >>> from nmfseg.layers import PointwiseConv
        >>> norm, conv = LayerNorm(8), PointwiseConv(8, 16)
        >>> x = torch.randn(2, 8, 3, 4, 5)
        >>> torch.allclose(layer_norm_pointwise(x, norm, conv), conv(norm(x)), atol=1e-5)
        True
    """
    if not fusable(x):
        return conv(norm(x))
    b, c, *spatial = x.shape
    y = LayerNormPointwiseFn.apply(
        x.reshape(b, c, -1), norm.weight, norm.bias, conv.weight, conv.bias, norm.eps
    )
    return y.view(b, -1, *spatial)
