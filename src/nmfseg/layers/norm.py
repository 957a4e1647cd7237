"""Layer normalization over the channel dimension of ``(B, C, *spatial)`` tensors.

The Factorizer block normalizes every voxel's channel vector (as ViT's LayerNorm does for
every token), not the whole feature map. :class:`LayerNorm` moves the channel dim last as a
view and calls ``layer_norm``.

In a Factorizer block a LayerNorm is always followed by a pointwise convolution (the NMF
subblock's input projection, the MLP's first layer). :func:`layer_norm_pointwise` computes
``conv(norm(x))`` in one autograd node on channels-first CPU tensors::

    conv(norm(x)) = (W·diag(γ)) x̂ + (W β + b),   x̂ = (x − μ) · rstd

with no transposes, and saves only ``x`` and the per-voxel ``μ`` and ``rstd`` for backward
(``x̂`` is recomputed), instead of a transposed copy of ``x``, the normalized map and the
projection's input. Backward uses the same algebra: ``dW = (dy x̂ᵀ) diag(γ) + (dy 1) βᵀ``,
``dγ = diag(Wᵀ dy x̂ᵀ)``, ``dβ = Wᵀ (dy 1)``, and the usual LayerNorm input gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.layers.pointwise import channel_mm, channel_wgrad

__all__ = ["LayerNorm", "layer_norm_pointwise", "unfused"]

_FUSION = {"enabled": True}


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


def ln_pointwise_forward(
    x: Tensor, gamma: Tensor, beta: Tensor, weight: Tensor, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``W (γ ∘ x̂ + β) + b`` for ``x (B, C, N)``, ``W (O, C)``; returns ``(y, μ, rstd)``."""
    mu = x.mean(1, keepdim=True)
    xhat = torch.sub(x, mu)
    rstd = xhat.square().mean(1, keepdim=True).add_(eps).rsqrt_()
    xhat.mul_(rstd)
    b_eff = weight @ beta if bias is None else torch.addmv(bias, weight, beta)
    return channel_mm(weight * gamma, xhat, b_eff), mu, rstd


def ln_pointwise_backward(
    dy: Tensor,
    xhat: Tensor,
    rstd: Tensor,
    gamma: Tensor,
    beta: Tensor,
    weight: Tensor,
    has_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients ``(dx, dγ, dβ, dW, db)`` of :func:`ln_pointwise_forward`.

    ``xhat`` (the normalized input, recomputed by the caller) is overwritten.
    """
    g_eff = channel_wgrad(dy, xhat)  # dL/d(W diag γ), (O, C)
    dy_sum = dy.sum((0, 2))  # (O,)
    d_weight = g_eff * gamma + torch.outer(dy_sum, beta)
    d_gamma = (weight * g_eff).sum(0)
    d_beta = weight.t() @ dy_sum
    dxhat = channel_mm((weight * gamma).t(), dy)  # (B, C, N)
    m1 = dxhat.mean(1, keepdim=True)
    m2 = torch.mul(dxhat, xhat).mean(1, keepdim=True)
    dx = dxhat.sub_(xhat.mul_(m2)).sub_(m1).mul_(rstd)
    return dx, d_gamma, d_beta, d_weight, dy_sum if has_bias else None


def normalize(x: Tensor, mu: Tensor, rstd: Tensor) -> Tensor:
    """``(x − μ) · rstd`` (a new tensor)."""
    return torch.sub(x, mu).mul_(rstd)


class _LayerNormPointwise(torch.autograd.Function):
    """``W (γ ∘ x̂ + β) + b`` for ``x (B, C, N)``; ``W (O, C)``; ``b`` may be ``None``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, eps):  # type: ignore[override]
        y, mu, rstd = ln_pointwise_forward(x, gamma, beta, weight, bias, eps)
        ctx.save_for_backward(x, mu, rstd, gamma, beta, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, mu, rstd, gamma, beta, weight = ctx.saved_tensors
        xhat = normalize(x, mu, rstd)
        dx, d_gamma, d_beta, d_weight, d_bias = ln_pointwise_backward(
            dy, xhat, rstd, gamma, beta, weight, ctx.has_bias
        )
        return dx, d_gamma, d_beta, d_weight, d_bias, None


@contextmanager
def unfused() -> Iterator[None]:
    """Run the plain module-by-module path inside (e.g. for forward hooks on every layer)."""
    previous = _FUSION["enabled"]
    _FUSION["enabled"] = False
    try:
        yield
    finally:
        _FUSION["enabled"] = previous


def fusable(x: Tensor) -> bool:
    """Whether the fused CPU kernels of this package apply to ``x``."""
    return (
        _FUSION["enabled"]
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
    )


def layer_norm_pointwise(x: Tensor, norm: LayerNorm, conv: nn.Module) -> Tensor:
    """``conv(norm(x))`` for a :class:`LayerNorm` and a pointwise conv, fused on CPU.

    Args:
        x: Channels-first input ``(B, C, *spatial)``.
        norm: The LayerNorm over ``C`` channels.
        conv: A :class:`~nmfseg.layers.PointwiseConv` from ``C`` channels.

    Returns:
        ``(B, conv.out_channels, *spatial)``, channels-first. On other devices, dtypes or
        under autocast this is ``conv(norm(x))``.

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
    y = _LayerNormPointwise.apply(
        x.reshape(b, c, -1), norm.weight, norm.bias, conv.weight, conv.bias, norm.eps
    )
    return y.view(b, -1, *spatial)
