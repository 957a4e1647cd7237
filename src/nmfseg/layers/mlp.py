"""The channel MLP of a Factorizer block (paper eq. 5).

``MLP(x) = Dropout(PointwiseConv(Dropout(GELU(PointwiseConv(x)))))`` with a hidden width of
``mlp_ratio × channels``; both convolutions have a bias, as in ViT's MLP and in the official
Factorizer code.

On CPU, a block's LayerNorm, the first convolution, GELU, dropout, the second convolution
and the residual connection run as one chunked autograd node (:func:`norm_mlp_residual`,
:class:`~nmfseg.layers.fused.MLPFn`) that keeps only its input and the per-voxel LayerNorm
statistics for backward: the hidden map, the largest tensor of a block (``mlp_ratio × C``
channels), and its dropout mask are recomputed chunk by chunk instead of being stored.
"""

from __future__ import annotations

from torch import Tensor, nn

from nmfseg.layers.dropout import Dropout
from nmfseg.layers.fused import MLPFn, fusable
from nmfseg.layers.norm import LayerNorm
from nmfseg.layers.pointwise import PointwiseConv

__all__ = ["MLP", "norm_mlp_residual"]


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

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def norm_mlp_residual(x: Tensor, norm: LayerNorm, mlp: MLP) -> Tensor:
    """``x + mlp(norm(x))``, as one fused node where it applies (:func:`fusable`).

    Examples::

        >>> import torch
        >>> norm, mlp = LayerNorm(8), MLP(8).eval()
        >>> x = torch.randn(1, 8, 3, 4, 5)
        >>> torch.allclose(norm_mlp_residual(x, norm, mlp), x + mlp(norm(x)), atol=1e-5)
        True
    """
    if not fusable(x):
        return x + mlp(norm(x))
    b, c, *spatial = x.shape
    p_hidden, p_out = (mlp.drop1.p, mlp.drop2.p) if mlp.training else (0.0, 0.0)
    y = MLPFn.apply(
        x.reshape(b, c, -1),
        norm.weight,
        norm.bias,
        mlp.fc1.weight,
        mlp.fc1.bias,
        mlp.fc2.weight,
        mlp.fc2.bias,
        norm.eps,
        p_hidden,
        p_out,
        True,
    )
    return y.view(b, c, *spatial)
