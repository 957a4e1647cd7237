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
layer is :class:`~nmfseg.blocks.MixerBlock` with :class:`VolumeAttention` as its token mixer
(a :class:`~nmfseg.mixers.base.ProjectedMixer`), so it shares the block's fused CPU kernels.
Attention runs in ``torch.nn.functional.scaled_dot_product_attention``.

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
    >>> attn = VolumeAttention(16, num_heads=2, window_size=(4, 4, 4), shifted=True)
    >>> attn(torch.randn(1, 16, 8, 8, 4)).shape
    torch.Size([1, 16, 8, 8, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.blocks import MixerBlock
from nmfseg.layers import (
    MLP,
    LayerNorm,
    PointwiseConv,
    fusable,
    layer_norm_pointwise,
    norm_mlp_residual,
)
from nmfseg.layers.args import check_heads
from nmfseg.layers.fused import project_add_dropout
from nmfseg.mixers.base import ProjectedMixer

__all__ = [
    "SkipAttentionLayer",
    "TransformerLayer",
    "VolumeAttention",
    "from_windows",
    "relative_position_index",
    "shift_mask",
    "to_windows",
]


def to_windows(x: Tensor, window: Sequence[int], groups: int, num_heads: int) -> Tensor:
    """Split ``x (B, groups * num_heads * d, *S)`` into windows of attention heads.

    Returns:
        ``(groups, B * nW, num_heads, N, d)``: ``nW`` windows (row-major over the window
        grid) of ``N = prod(window)`` tokens (row-major inside the window).

    Examples::

        >>> to_windows(torch.zeros(2, 3 * 4 * 8, 8, 8, 4), (4, 4, 4), 3, 4).shape
        torch.Size([3, 8, 4, 64, 8])
    """
    b, c, *size = x.shape
    n = len(size)
    grid = [s // w for s, w in zip(size, window, strict=True)]
    x = x.view(b, groups, num_heads, c // (groups * num_heads),
               *(v for g, w in zip(grid, window, strict=True) for v in (g, w)))  # fmt: skip
    order = (1, 0, *(4 + 2 * i for i in range(n)), 2, *(5 + 2 * i for i in range(n)), 3)
    return x.permute(order).reshape(groups, b * math.prod(grid), num_heads, math.prod(window), -1)


def from_windows(x: Tensor, size: Sequence[int], window: Sequence[int]) -> Tensor:
    """Inverse of :func:`to_windows` for one group: ``(B * nW, heads, N, d) -> (B, heads * d,
    *size)``."""
    n = len(size)
    grid = [s // w for s, w in zip(size, window, strict=True)]
    bw, heads, _, d = x.shape
    x = x.view(bw // math.prod(grid), *grid, heads, *window, d)
    order = (0, n + 1, 2 * n + 2, *(v for i in range(n) for v in (1 + i, n + 2 + i)))
    return x.permute(order).reshape(bw // math.prod(grid), heads * d, *size)


def relative_position_index(window: Sequence[int]) -> Tensor:
    """``(N, N)`` index of the relative offset of every token pair of a window into a table of
    ``prod(2 * window - 1)`` entries.

    Examples::

        >>> relative_position_index((2, 2)).tolist()
        [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    """
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij"))
    coords = coords.flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :]  # (dims, N, N), in [1 - w, w - 1]
    index = torch.zeros_like(offsets[0])
    for offset, w in zip(offsets, window, strict=True):
        index = index * (2 * w - 1) + offset + (w - 1)
    return index


def shift_mask(
    size: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
) -> Tensor:
    """Additive attention mask ``(nW, N, N)`` of shifted windows: ``-inf`` between tokens that
    the cyclic roll by ``-shift`` brought together from different regions, 0 elsewhere.

    Examples::

        >>> mask = shift_mask((4,), (2,), (1,), torch.device("cpu"))
        >>> mask[1].isinf().tolist()  # the last window holds voxels 3 and 0 after the roll
        [[False, True], [True, False]]
    """
    region = torch.zeros((1,) * len(size), dtype=torch.long, device=device)
    for d, (s, w, sh) in enumerate(zip(size, window, shift, strict=True)):
        i = torch.arange(s, device=device)
        r = (i >= s - w).long() + (i >= s - sh).long() if sh else torch.zeros_like(i)
        region = region * 3 + r.view([s if e == d else 1 for e in range(len(size))])
    ids = to_windows(region.expand(*size)[None, None], window, 1, 1)[0, :, 0, :, 0]
    blocked = ids[:, :, None] != ids[:, None, :]
    return torch.zeros(blocked.shape, device=device).masked_fill_(blocked, float("-inf"))


class VolumeAttention(ProjectedMixer):
    """LV-MSA (``window_size`` given) or GV-MSA (``window_size=None``) as a token mixer.

    ``dropout(out_proj(attention(in_proj(x))))`` with ``in_proj`` the query/key/value
    projection ``C -> 3C`` (self-attention, :meth:`mix`); the skip attention calls
    :meth:`attention` with its own queries.

    Args:
        channels: Number of channels ``C`` (a multiple of ``num_heads``).
        num_heads: Number of attention heads.
        window_size: Window (one int per spatial dim) with relative position bias; ``None``
            attends over the whole input (GV-MSA, no bias).
        shifted: Shift the windows by half a window (ignored for GV-MSA).
        qkv_bias: Add a bias to the query/key/value projection.
        dropout: Dropout probability on the output.
        query_proj: ``in_proj`` projects queries, keys and values (``C -> 3C``); ``False``:
            keys and values only (``C -> 2C``, the skip attention's).

    Raises:
        ValueError: ``channels`` is not a multiple of ``num_heads``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        window_size: Sequence[int] | None = None,
        shifted: bool = False,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        query_proj: bool = True,
    ) -> None:
        super().__init__(dropout)
        check_heads(num_heads, channels)
        self.num_heads = num_heads
        self.window_size = None if window_size is None else tuple(window_size)
        self.shifted = shifted and window_size is not None
        self.in_proj = PointwiseConv(channels, (3 if query_proj else 2) * channels, bias=qkv_bias)
        self.out_proj = PointwiseConv(channels, channels)
        if self.window_size is None:
            self.relative_position_bias_table = None
        else:
            entries = math.prod(2 * w - 1 for w in self.window_size)
            self.relative_position_bias_table = nn.Parameter(torch.empty(entries, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            index = relative_position_index(self.window_size)
            self.register_buffer("relative_position_index", index, persistent=False)

    def geometry(self, size: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(window, shift)`` at a stage of spatial ``size``.

        Raises:
            ValueError: ``size`` is not a multiple of the window.
        """
        size = tuple(size)
        if self.window_size is None:
            return size, (0,) * len(size)
        if len(size) != len(self.window_size) or any(
            s % w for s, w in zip(size, self.window_size, strict=True)
        ):
            raise ValueError(
                f"LV-MSA stage of size {size} is not a multiple of window_size "
                f"{self.window_size}; pad the input to the network's size_multiple."
            )
        shift = tuple(
            w // 2 if self.shifted and s > w else 0
            for s, w in zip(size, self.window_size, strict=True)
        )
        return self.window_size, shift

    def attention(self, q: Tensor, kv: Tensor) -> Tensor:
        """Multi-head attention of queries ``q (B, C, *S)`` to keys and values ``kv (B, 2C,
        *S)`` (channels ``[keys, values]``), within windows; returns ``(B, C, *S)``."""
        size = q.shape[2:]
        window, shift = self.geometry(size)
        dims = tuple(range(2, q.dim()))
        if any(shift):
            q = torch.roll(q, [-s for s in shift], dims)
            kv = torch.roll(kv, [-s for s in shift], dims)
        queries = to_windows(q, window, 1, self.num_heads)[0]
        keys, values = to_windows(kv, window, 2, self.num_heads)
        mask = None
        if self.relative_position_bias_table is not None:
            n = queries.shape[2]
            bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
            mask = bias.view(n, n, -1).permute(2, 0, 1)  # (heads, N, N)
            if any(shift):
                windows = shift_mask(size, window, shift, q.device)
                mask = (mask + windows[:, None]).repeat(q.shape[0], 1, 1, 1)
            mask = mask.to(queries.dtype)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        out = from_windows(out, size, window)
        return torch.roll(out, list(shift), dims) if any(shift) else out

    def mix(self, z: Tensor) -> Tensor:
        c = z.shape[1] // 3
        return self.attention(z[:, :c], z[:, c:])

    def extra_repr(self) -> str:
        kind = "global" if self.window_size is None else f"window_size={self.window_size}"
        return f"num_heads={self.num_heads}, {kind}, shifted={self.shifted}"


class TransformerLayer(MixerBlock):
    """``y = x + VolumeAttention(LN(x)); z = y + MLP(LN(y))`` (a self-attention layer).

    Args:
        channels: Number of channels ``C``.
        num_heads: Number of attention heads.
        window_size: LV-MSA window (one int per spatial dim); ``None`` for GV-MSA.
        shifted: Shift the windows by half a window.
        mlp_ratio: MLP hidden width as a multiple of ``C``.
        qkv_bias: Add a bias to the query/key/value projection.
        dropout: Dropout probability after attention and inside and after the MLP.

    Examples::

        >>> layer = TransformerLayer(16, num_heads=2, window_size=None)
        >>> layer(torch.randn(2, 16, 3, 5)).shape
        torch.Size([2, 16, 3, 5])
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        window_size: Sequence[int] | None = None,
        shifted: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(channels, dropout=dropout, mixer="none", mlp_ratio=mlp_ratio)
        self.norm1 = LayerNorm(channels)
        self.mixer = VolumeAttention(channels, num_heads, window_size, shifted, qkv_bias, dropout)


class SkipAttentionLayer(nn.Module):
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

        >>> layer = SkipAttentionLayer(16, num_heads=2, window_size=(2, 2))
        >>> layer(torch.randn(1, 16, 4, 6), torch.randn(1, 16, 4, 6)).shape
        torch.Size([1, 16, 4, 6])
    """

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
        self.fused = True

    def forward(self, up: Tensor, skip: Tensor) -> Tensor:
        attn, x = self.attn, up + skip
        if self.fused and fusable(x):
            kv = layer_norm_pointwise(skip, self.norm1, attn.in_proj)
            z = attn.attention(self.norm1(up), kv)
            x = project_add_dropout(x, z, attn.out_proj, attn.dropout.p if self.training else 0.0)
            return norm_mlp_residual(x, self.norm2, self.mlp)
        z = attn.attention(self.norm1(up), attn.in_proj(self.norm1(skip)))
        x = x + attn.dropout(attn.out_proj(z))
        return x + self.mlp(self.norm2(x))
