"""The channel MLP of a Factorizer block (paper eq. 5).

``MLP(x) = Dropout(PointwiseConv(Dropout(GELU(PointwiseConv(x)))))`` with a hidden width of
``mlp_ratio × channels``; both convolutions have a bias, as in ViT's MLP and in the official
Factorizer code.

On CPU, the block's LayerNorm, the first convolution, GELU, dropout and the second
convolution run as one autograd node that saves only its input, the per-voxel LayerNorm
statistics and the dropout mask (one byte per hidden element). The hidden map, the largest
tensor of a block (``mlp_ratio × C`` channels at the block's resolution), is recomputed in
backward (one GEMM) instead of being stored twice (before and after GELU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.layers.dropout import Dropout, dropout_mask
from nmfseg.layers.norm import (
    LayerNorm,
    fusable,
    ln_pointwise_backward,
    ln_pointwise_forward,
    normalize,
)
from nmfseg.layers.pointwise import PointwiseConv, channel_mm, channel_wgrad

__all__ = ["MLP"]


def _hidden(x, mu, rstd, gamma, beta, w1, b1) -> tuple[Tensor, Tensor]:
    """Recompute ``(x̂, h = fc1(LN(x)))`` from the saved statistics."""
    xhat = normalize(x, mu, rstd)
    b_eff = torch.addmv(b1, w1, beta)
    return xhat, channel_mm(w1 * gamma, xhat, b_eff)


class _FusedMLP(torch.autograd.Function):
    """``fc2(dropout(gelu(fc1(LN(x)))))`` for ``x (B, C, N)``; fc1 and fc2 have biases."""

    @staticmethod
    def forward(ctx, x, gamma, beta, w1, b1, w2, b2, eps, p):  # type: ignore[override]
        h, mu, rstd = ln_pointwise_forward(x, gamma, beta, w1, b1, eps)
        a = F.gelu(h)
        del h
        drop = None
        if p > 0:
            drop = dropout_mask(a.shape, p, a.device)
            a.masked_fill_(drop, 0).mul_(1.0 / (1.0 - p))
        y = channel_mm(w2, a, b2)
        ctx.save_for_backward(x, mu, rstd, gamma, beta, w1, b1, w2, drop)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, mu, rstd, gamma, beta, w1, b1, w2, drop = ctx.saved_tensors
        scale = 1.0 / (1.0 - ctx.p)
        xhat, h = _hidden(x, mu, rstd, gamma, beta, w1, b1)
        a = F.gelu(h)
        if drop is not None:
            a.masked_fill_(drop, 0).mul_(scale)
        d_w2 = channel_wgrad(dy, a)
        del a
        d_b2 = dy.sum((0, 2))
        da = channel_mm(w2.t(), dy)
        if drop is not None:
            da.masked_fill_(drop, 0).mul_(scale)
        dh = torch.ops.aten.gelu_backward(da, h)
        del da, h
        dx, d_gamma, d_beta, d_w1, d_b1 = ln_pointwise_backward(
            dh, xhat, rstd, gamma, beta, w1, True
        )
        return dx, d_gamma, d_beta, d_w1, d_b1, d_w2, d_b2, None, None


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

    def forward(self, x: Tensor, norm: LayerNorm | None = None) -> Tensor:
        """``MLP(norm(x))`` (``MLP(x)`` without ``norm``)."""
        if norm is None or not fusable(x):
            h = self.fc1(x if norm is None else norm(x))
            return self.drop2(self.fc2(self.drop1(self.act(h))))
        b, c, *spatial = x.shape
        y = _FusedMLP.apply(
            x.reshape(b, c, -1),
            norm.weight,
            norm.bias,
            self.fc1.weight,
            self.fc1.bias,
            self.fc2.weight,
            self.fc2.bias,
            norm.eps,
            self.drop1.p if self.training else 0.0,
        )
        return self.drop2(y.view(b, c, *spatial))
