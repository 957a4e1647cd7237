"""Layer normalization over the channel dimension of ``(B, C, *spatial)`` tensors.

The Factorizer block normalizes every voxel's channel vector (as ViT's LayerNorm does
for every token), not the whole feature map. PyTorch's ``layer_norm`` normalizes the
trailing dims, so the channel dim is moved last as a view; for a tensor stored
channels-last (``torch.channels_last_3d``) that view is contiguous and no copy is made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm"]


class LayerNorm(nn.Module):
    """LayerNorm over channels for channels-first tensors of any spatial rank.

    Args:
        num_channels: Number of channels ``C``.
        eps: Added to the variance for numerical stability.
        affine: Learn a per-channel scale and shift.

    Examples::

        >>> import torch
        >>> norm = LayerNorm(8)
        >>> y = norm(torch.randn(2, 8, 4, 5, 6))
        >>> y.shape, bool(y.mean(1).abs().max() < 1e-5)
        (torch.Size([2, 8, 4, 5, 6]), True)
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)
        return out.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.weight is not None}"
