"""The channel MLP of a Factorizer block (paper eq. 5).

``MLP(x) = Dropout(PointwiseConv(Dropout(GELU(PointwiseConv(x)))))`` with a hidden width of
``mlp_ratio × channels``; both convolutions have a bias, as in ViT's MLP and in the official
Factorizer code.
"""

from __future__ import annotations

from torch import Tensor, nn

from nmfseg.layers.pointwise import PointwiseConv

__all__ = ["MLP"]


class MLP(nn.Module):
    """Two pointwise convolutions with GELU and dropout in between.

    Args:
        channels: Number of input and output channels.
        mlp_ratio: Hidden channels as a multiple of ``channels``.
        dropout: Dropout probability after the activation and after the output conv.

    Examples::

        >>> import torch
        >>> mlp = MLP(8, mlp_ratio=2, dropout=0.1)
        >>> mlp(torch.randn(1, 8, 3, 4, 5)).shape
        torch.Size([1, 8, 3, 4, 5])
    """

    def __init__(self, channels: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * channels)
        if hidden < 1:
            raise ValueError(f"mlp_ratio should give at least one hidden channel, got {mlp_ratio}.")
        self.fc1 = PointwiseConv(channels, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = PointwiseConv(hidden, channels)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
