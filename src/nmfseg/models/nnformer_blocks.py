"""The attention layers of nnFormer (Zhou et al., 2021, arXiv:2109.03201), written natively.

nnFormer interleaves two kinds of self-attention on ``(B, C, *spatial)`` feature maps:

- **LV-MSA** (local volume-based multi-head self-attention): attention inside
  non-overlapping windows of ``window_size`` voxels, with a learnable relative position
  bias (Swin Transformer's: one table of ``prod(2 * window_size - 1)`` entries per head);
  every second layer of a stage shifts the windows by half a window (cyclic roll, attention
  masked between the rolled-in regions);
- **GV-MSA** (global volume-based multi-head self-attention): attention over all the
  voxels of the stage;
- **skip attention** (first layer of every decoder stage): the up-sampled decoder features
  are the queries, the encoder features of the same stage give the keys and values.

A layer is pre-norm: ``y = x + Attention(LN(x)); z = y + MLP(LN(y))``. The self-attention
layer is a :class:`~nmfseg.blocks.MixerBlock` with the registered mixer
``"volume_attention"`` (:class:`~nmfseg.mixers.attention.VolumeAttention`, LV-MSA and
GV-MSA), so it shares the block's fused CPU kernels; this module holds the skip attention,
which has two inputs. Attention runs in ``torch.nn.functional.scaled_dot_product_attention``.

Departures from the original, and why:

- GV-MSA has **no relative position bias**: its extent is the whole stage, which changes with
  the input size, while a bias table is fixed at one size; the zero-padded convolutions
  of the embedding and of the down-sampling give the bottleneck its sense of position. At
  the paper's 128³ input GV-MSA is the original's 8³ (4³) window attention on the whole 8³
  (4³) stage, less that window's bias table.
- The skip-attention queries are the layer-normalized decoder features without a query
  projection (the keys' projection already gives the bilinear form ``LN(x)ᵀ W_k LN(skip)``).
  The paper's parameter counts (149.4M / 149.2M, Tables 1-2) are met only this way: a query
  projection would add 0.78M.
- A window that covers a whole stage dimension is not shifted along it (Swin's rule, per
  dimension); the network pads its input so that windows tile every local stage.

Examples::

    >>> import torch
    >>> layer = SkipAttentionLayer(16, num_heads=2, window_size=(4, 4, 4))
    >>> layer(torch.randn(1, 16, 8, 8, 4), torch.randn(1, 16, 8, 8, 4)).shape
    torch.Size([1, 16, 8, 8, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from nmfseg.layers import MLP, LayerNorm, layer_norm_pointwise, norm_mlp_residual
from nmfseg.layers.fused import project_add_dropout
from nmfseg.mixers.attention import VolumeAttention
from nmfseg.routes import FusedFlag, Route, takes

__all__ = ["SkipAttentionLayer"]


class SkipAttentionLayer(FusedFlag, nn.Module):
    """Skip attention: decoder queries attend to the encoder's keys and values.

    ``y = (up + skip) + Proj(Attention(q=LN(up), kv=W_kv LN(skip))); z = y + MLP(LN(y))``,
    ``up`` the up-sampled decoder features and ``skip`` the encoder features of the stage
    (one LayerNorm for both).

    Args:
        channels: Number of channels ``C``.
        num_heads: Number of attention heads.
        window_size: LV-MSA window (one int per spatial dim); ``None`` for GV-MSA.
        mlp_ratio: MLP hidden width as a multiple of ``C``.
        qkv_bias: Add a bias to the key/value projection.
        dropout: Dropout probability after attention and inside and after the MLP.

    Examples::

        >>> import torch
        >>> layer = SkipAttentionLayer(16, num_heads=2, window_size=(2, 2))
        >>> layer(torch.randn(1, 16, 4, 6), torch.randn(1, 16, 4, 6)).shape
        torch.Size([1, 16, 4, 6])
    """

    ROUTES = frozenset({Route.CPU_FUSED})

    def __init__(
        self,
        channels: int,
        num_heads: int,
        window_size: Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(channels)
        self.attn = VolumeAttention(
            channels, num_heads, window_size, False, qkv_bias, dropout, query_proj=False
        )
        self.norm2 = LayerNorm(channels)
        self.mlp = MLP(channels, mlp_ratio=mlp_ratio, dropout=dropout)
        self.routes = self.ROUTES

    def forward(self, up: Tensor, skip: Tensor) -> Tensor:
        attn, x = self.attn, up + skip
        if takes(self, Route.CPU_FUSED, x):
            kv = layer_norm_pointwise(skip, self.norm1, attn.in_proj)
            z = attn.attention(self.norm1(up), kv)
            x = project_add_dropout(x, z, attn.out_proj, attn.dropout.p if self.training else 0.0)
            return norm_mlp_residual(x, self.norm2, self.mlp)
        z = attn.attention(self.norm1(up), attn.in_proj(self.norm1(skip)))
        x = x + attn.dropout(attn.out_proj(z))
        return x + self.mlp(self.norm2(x))
