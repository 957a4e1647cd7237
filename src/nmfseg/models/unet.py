"""The U-shaped skeleton of the Factorizer paper (§3.2, Fig. 1), for any registered block.

- stem: 3×3×3 convolution without bias to ``channels[0]`` (no norm, no activation);
- encoder level ``i > 0``: 2×2×2 stride-2 convolution without bias, then one block; the
  deepest level (the bridge) adds a learnable position embedding right after down-sampling;
- decoder level: 2×2×2 stride-2 transposed convolution (with bias), concatenation with the
  skip, a bias-free pointwise projection ``2C → C`` with dropout, then one block;
- heads: 1×1×1 convolutions at the highest decoder resolutions (deep supervision).

The block of every level is built by name (:mod:`nmfseg.blocks`): ``"mixer"`` with the NMF
mixer is the Factorizer, with FAVOR+ the Performer baseline, and so on; the baselines and
ablations of the paper differ only in the block. The any-size / eval-tensor / train-list
contract is :class:`~nmfseg.models.base.SegmentationNetwork`'s.

Examples::

    >>> import torch
    >>> net = UNet(3, in_channels=4, out_channels=3, channels=(8, 16, 32, 64),
    ...            block_args={"mixer": "none"})  # an MLP-only U-Net
    >>> _ = net.eval()
    >>> net(torch.randn(1, 4, 9, 10, 11)).shape
    torch.Size([1, 3, 9, 10, 11])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import Tensor, nn

from nmfseg.blocks import create_block
from nmfseg.layers import Dropout, PointwiseConv, PositionEmbedding
from nmfseg.layers.args import check_deep_supervision, check_dropout, ntuple
from nmfseg.models.base import UShapedNetwork
from nmfseg.routes import FusedFlag, Route, takes

__all__ = ["UNet"]


class _EncoderStage(nn.Module):
    def __init__(self, down: nn.Module | None, pos_embed: nn.Module | None, block: nn.Module):
        super().__init__()
        self.down = down
        self.pos_embed = pos_embed
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        if self.down is not None:
            x = self.down(x)
        if self.pos_embed is not None:
            x = self.pos_embed(x)
        return self.block(x)


class _DecoderStage(FusedFlag, nn.Module):
    ROUTES = frozenset({Route.CPU_FUSED})

    def __init__(
        self, up: nn.Module, channels: int, dropout: float, block: nn.Module, proj: bool = True
    ) -> None:
        super().__init__()
        self.up = up
        self.proj = PointwiseConv(2 * channels, channels, bias=False) if proj else None
        self.drop = Dropout(dropout, inplace=True)  # on the projection's fresh output
        self.block = block
        self.routes = self.ROUTES

    def _project(self, skip: Tensor, up: Tensor) -> Tensor:
        """``dropout(proj(cat([skip, up])))``; on CPU as ``W_skip · skip + W_up · up`` with
        no concatenated copy, and backward keeps only ``up`` (``skip`` is stored by the
        down-sampling conv anyway). Without a projection: ``cat([skip, up])``."""
        if self.proj is None:
            return torch.cat([skip, up], dim=1)
        if not takes(self, Route.CPU_FUSED, up) or up.shape[0] != 1:
            return self.drop(self.proj(torch.cat([skip, up], dim=1)))
        c = skip.shape[1]
        w = self.proj.weight
        out = torch.mm(w[:, :c], skip.reshape(c, -1)).addmm_(w[:, c:], up.reshape(c, -1))
        return self.drop(out).view(1, c, *up.shape[2:])  # in-place dropout on the GEMM output

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(self._project(skip, self.up(x)))


class UNet(UShapedNetwork):
    """The paper's U-Net skeleton with a block chosen by name, on inputs of any size.

    ``forward`` returns one logit tensor of the input's spatial size in ``eval()`` and, with
    ``deep_supervision``, the list ``[full, 1/2, ...]`` of ``1 + deep_supr_num`` outputs in
    ``train()`` (``[full]`` without).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (logits).
        channels: Widths of the levels, highest resolution first; the last is the bridge.
        block: Registered block (:func:`nmfseg.blocks.list_blocks`).
        block_args: Keyword arguments of the block (e.g. ``{"mixer": "nmf", "mixer_args":
            {...}, "mlp_ratio": 2}``).
        dropout: Dropout probability (inside the blocks, after the position embedding and
            after the decoder projections).
        pos_embed: Add the learnable position embedding in the bridge.
        pos_embed_grid: Bridge grid the embedding is stored at (training patch size / 16);
            it is interpolated for other bridge sizes.
        deep_supervision: Return the lower-resolution outputs too in ``train()``.
        deep_supr_num: Number of lower-resolution outputs (MONAI DynUNet's name); at most
            ``len(channels) - 2``.
        decoder_proj: Project the ``2C``-channel concatenation of skip and up-sampled
            features to ``C`` before the decoder block; ``False`` feeds the concatenation to
            the block (built with ``in_channels=2C``), as the paper's CNN baselines do.

    Raises:
        ValueError: An argument is out of range (e.g. fewer than two ``channels``, or
            ``deep_supr_num`` above ``len(channels) - 2``); the message names it.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        block: str = "mixer",
        block_args: dict[str, Any] | None = None,
        dropout: float = 0.0,
        pos_embed: bool = True,
        pos_embed_grid: int | Sequence[int] = 8,
        deep_supervision: bool = True,
        deep_supr_num: int = 2,
        decoder_proj: bool = True,
    ) -> None:
        channels = tuple(channels)
        if len(channels) < 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels should be at least 2 positive ints, got {channels!r}.")
        super().__init__(spatial_dims, in_channels, out_channels, 2 ** (len(channels) - 1))
        check_dropout(dropout=dropout)
        grid = ntuple(pos_embed_grid, spatial_dims, "pos_embed_grid")
        heads = check_deep_supervision(deep_supervision, deep_supr_num, len(channels))
        if not isinstance(decoder_proj, bool):
            raise ValueError(f"decoder_proj should be True or False, got {decoder_proj!r}.")
        self.channels = channels
        self.deep_supervision = deep_supervision
        self.deep_supr_num = deep_supr_num

        conv, tconv = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]

        def make_block(c: int, **extra: Any) -> nn.Module:
            return create_block(block, c, spatial_dims, dropout, **extra, **(block_args or {}))

        self.stem = conv(in_channels, channels[0], kernel_size=3, padding=1, bias=False)
        last = len(channels) - 1
        self.encoder = nn.ModuleList(
            _EncoderStage(
                down=conv(channels[i - 1], c, kernel_size=2, stride=2, bias=False) if i else None,
                pos_embed=PositionEmbedding(c, grid, dropout) if pos_embed and i == last else None,
                block=make_block(c),
            )
            for i, c in enumerate(channels)
        )
        self.decoder = nn.ModuleList(
            _DecoderStage(
                up=tconv(channels[i + 1], channels[i], kernel_size=2, stride=2),
                channels=channels[i],
                dropout=dropout,
                block=make_block(
                    channels[i], **({} if decoder_proj else {"in_channels": 2 * channels[i]})
                ),
                proj=decoder_proj,
            )
            for i in reversed(range(last))
        )
        self.heads = nn.ModuleList(PointwiseConv(channels[i], out_channels) for i in range(heads))

    def levels(self) -> list[tuple[int, nn.Module]]:
        """``(level, stage)`` of every stage in network order: encoder levels ``0 .. L``
        (``L`` the bridge), then decoder levels ``L - 1 .. 0``; level ``i`` runs at
        ``1 / 2**i`` of the input size."""
        last = len(self.channels) - 1
        return [*enumerate(self.encoder), *zip(reversed(range(last)), self.decoder, strict=True)]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Decoder feature maps of a padded input, highest resolution first:
        ``len(channels) - 1`` tensors ``(B, channels[i], *size / 2**i)``."""
        skips = []
        out = self.stem(x)
        for stage in self.encoder:
            out = self.run_stage(stage, out)
            skips.append(out)
        return self.decode(skips.pop(), skips)
