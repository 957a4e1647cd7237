"""The channel MLP of a Factorizer block (paper eq. 5).

``MLP(x) = Dropout(PointwiseConv(Dropout(GELU(PointwiseConv(x)))))`` with a hidden width of
``mlp_ratio × channels``; both convolutions have a bias, as in ViT's MLP and in the official
Factorizer code.

On CPU, the block's LayerNorm, the first convolution, GELU, dropout and the second
convolution run as one chunked autograd node (:class:`~nmfseg.layers.fused.MLPFn`) that keeps
only its input and the per-voxel LayerNorm statistics for backward: the hidden map, the
largest tensor of a block (``mlp_ratio × C`` channels), and its dropout mask are recomputed
chunk by chunk instead of being stored.
"""

from __future__ import annotations

from torch import Tensor, nn

from nmfseg.layers.dropout import Dropout
from nmfseg.layers.fused import MLPFn
from nmfseg.layers.norm import LayerNorm, fusable
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
        self.drop1 = Dropout(dropout)
        self.fc2 = PointwiseConv(hidden, channels)
        self.drop2 = Dropout(dropout)

    def forward(self, x: Tensor, norm: LayerNorm | None = None, residual: bool = False) -> Tensor:
        """``MLP(norm(x))`` (``MLP(x)`` without ``norm``), plus ``x`` if ``residual``."""
        if norm is None or not fusable(x):
            h = self.fc1(x if norm is None else norm(x))
            out = self.drop2(self.fc2(self.drop1(self.act(h))))
            return x + out if residual else out
        b, c, *spatial = x.shape
        y = MLPFn.apply(
            x.reshape(b, c, -1),
            norm.weight,
            norm.bias,
            self.fc1.weight,
            self.fc1.bias,
            self.fc2.weight,
            self.fc2.bias,
            norm.eps,
            self.drop1.p if self.training else 0.0,
            self.drop2.p if self.training else 0.0,
            residual,
        )
        return y.view(b, c, *spatial)
