"""Learnable position embedding of the Factorizer bridge (paper §3.2).

The embedding is a parameter of shape ``(1, C, *grid)`` at the grid the network sees in its
bridge at the training patch size (``patch / 16``, e.g. 8³ for BraTS' 128³ patches), added
right after down-sampling. At any other bridge size it is resized by (tri|bi)linear
interpolation with ``align_corners=False``, so the network needs no ``spatial_size`` at
construction and runs on any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.layers.dropout import Dropout

__all__ = ["PositionEmbedding"]


class PositionEmbedding(nn.Module):
    """Add a learnable, resizable position embedding, then apply dropout.

    Args:
        channels: Number of channels ``C``.
        grid: Spatial size of the stored embedding (one int per spatial dim).
        dropout: Dropout probability after the addition.

    Examples::

        >>> import torch
        >>> pe = PositionEmbedding(16, grid=(4, 4, 4))
        >>> pe(torch.zeros(1, 16, 3, 5, 4)).shape
        torch.Size([1, 16, 3, 5, 4])
    """

    def __init__(self, channels: int, grid: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        grid = tuple(int(g) for g in grid)
        if len(grid) not in (2, 3) or min(grid) < 1:
            raise ValueError(f"grid should be 2 or 3 positive sizes, got {grid}.")
        self.grid = grid
        self.pos = nn.Parameter(torch.empty(1, channels, *grid))
        nn.init.normal_(self.pos, std=1.0)
        self.dropout = Dropout(dropout, inplace=True)  # on the fresh sum

    def embedding(self, spatial_size: Sequence[int]) -> Tensor:
        """The embedding at ``spatial_size`` (interpolated when it differs from the grid)."""
        if tuple(spatial_size) == self.grid:
            return self.pos
        mode = "trilinear" if len(self.grid) == 3 else "bilinear"
        return F.interpolate(self.pos, size=tuple(spatial_size), mode=mode, align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != len(self.grid) + 2:
            raise ValueError(
                f"expected a {len(self.grid)}D feature map (B, C, *spatial), got {tuple(x.shape)}."
            )
        return self.dropout(x + self.embedding(x.shape[2:]).to(x.dtype))

    def extra_repr(self) -> str:
        return f"channels={self.pos.shape[1]}, grid={self.grid}"
