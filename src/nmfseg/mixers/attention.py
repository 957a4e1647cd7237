"""Self-attention token mixers: TransBTS's global attention and nnFormer's volume attention.

========================= ==============================================================
name                      mixer
========================= ==============================================================
``"attention"``           :class:`SelfAttention`: multi-head self-attention over all the
                          voxels (TransBTS, Wang et al., 2021)
``"volume_attention"``    :class:`VolumeAttention`: nnFormer's (Zhou et al., 2021) LV-MSA
                          (attention inside windows of ``window_size`` voxels with a
                          relative position bias, every second layer shifted by half a
                          window) or GV-MSA (``window_size=None``: the whole stage)
========================= ==============================================================

Both are :class:`~nmfseg.mixers.base.ProjectedMixer` s (``in_proj`` to queries, keys and
values, the attention in ``torch.nn.functional.scaled_dot_product_attention``, ``out_proj``
and dropout), so a :class:`~nmfseg.blocks.MixerBlock` with them is a pre-norm Transformer
layer ``y = x + Attention(LN(x)); z = y + MLP(LN(y))`` that shares the block's fused CPU
kernels; under CPU autocast they compute in bf16. nnFormer's skip attention
(:class:`~nmfseg.models.nnformer_blocks.SkipAttentionLayer`) calls
:meth:`VolumeAttention.attention` with its own queries.

nnFormer's departures from the original are listed in :mod:`nmfseg.models.nnformer_blocks`
(GV-MSA has no relative position bias; a window that covers a whole stage dimension is not
shifted along it).

Examples::

    >>> import torch
    >>> from nmfseg.blocks import MixerBlock
    >>> layer = MixerBlock(16, mixer="attention", mixer_args={"num_heads": 2}, mlp_ratio=2)
    >>> layer(torch.randn(1, 16, 2, 3, 4)).shape
    torch.Size([1, 16, 2, 3, 4])
    >>> lv = MixerBlock(16, mixer="volume_attention", mlp_ratio=4,
    ...                 mixer_args={"num_heads": 2, "window_size": (4, 4, 4), "shifted": True})
    >>> lv(torch.randn(1, 16, 8, 8, 4)).shape
    torch.Size([1, 16, 8, 8, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.layers import PointwiseConv
from nmfseg.layers.args import check_heads
from nmfseg.mixers._registry import register_mixer
from nmfseg.mixers.base import ProjectedMixer

__all__ = [
    "SelfAttention",
    "VolumeAttention",
    "from_windows",
    "relative_position_index",
    "shift_mask",
    "to_windows",
]


class SelfAttention(ProjectedMixer):
    """Multi-head self-attention over the voxels of ``(B, C, *spatial)`` feature maps.

    ``in_proj`` (bias-free, as in TransBTS) gives queries, keys and values, the tokens are
    mixed by :func:`~torch.nn.functional.scaled_dot_product_attention` (scale
    ``head_dim**-0.5``), and ``out_proj`` and dropout follow (:class:`ProjectedMixer`, so
    :class:`~nmfseg.blocks.MixerBlock` fuses the projections with the norm and residual on
    CPU).

    Args:
        channels: Embedding width ``C``.
        num_heads: Number of heads; must divide ``channels``.
        dropout: Dropout probability on the output.
        attn_dropout: Dropout probability on the attention weights (``train()`` only).

    Examples::

        >>> import torch
        >>> attn = SelfAttention(16, num_heads=4)
        >>> attn(torch.randn(2, 16, 3, 4, 5)).shape
        torch.Size([2, 16, 3, 4, 5])
    """

    def __init__(
        self, channels: int, num_heads: int, dropout: float = 0.0, attn_dropout: float = 0.0
    ) -> None:
        super().__init__(dropout)
        check_heads(num_heads, channels)
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.in_proj = PointwiseConv(channels, 3 * channels, bias=False)
        self.out_proj = PointwiseConv(channels, channels)

    def mix(self, z: Tensor) -> Tensor:
        b, c3, *spatial = z.shape
        c = c3 // 3
        # (B, 3C, *S) → q, k, v of shape (B, heads, tokens, head_dim), head_dim contiguous
        # (the fused CUDA kernels want a unit stride there): one copy of the projection
        qkv = z.reshape(b, 3, self.num_heads, c // self.num_heads, -1).transpose(3, 4)
        q, k, v = qkv.contiguous().unbind(1)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return out.transpose(2, 3).reshape(b, c, *spatial)


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


@register_mixer("attention")
def _attention(
    channels: int,
    spatial_dims: int = 3,
    dropout: float = 0.0,
    num_heads: int = 8,
    attn_dropout: float = 0.0,
) -> SelfAttention:
    del spatial_dims  # any number of spatial dims
    return SelfAttention(channels, num_heads, dropout, attn_dropout)


@register_mixer("volume_attention")
def _volume_attention(
    channels: int,
    spatial_dims: int = 3,
    dropout: float = 0.0,
    num_heads: int = 8,
    window_size: Sequence[int] | None = None,
    shifted: bool = False,
    qkv_bias: bool = True,
) -> VolumeAttention:
    del spatial_dims  # the window has one size per spatial dim
    return VolumeAttention(channels, num_heads, window_size, shifted, qkv_bias, dropout)
