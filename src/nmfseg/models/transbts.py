"""TransBTS (Wang et al., "TransBTS: Multimodal Brain Tumor Segmentation Using Transformer",
MICCAI 2021), the Transformer baseline of the Factorizer paper (§4.2, Tables 1–2).

A 3D CNN encoder of pre-activation residual blocks (``norm → ReLU → conv3 → norm → ReLU →
conv3``, plus the input), with ``blocks_down = (1, 2, 2, 4)`` blocks at widths ``16, 32, 64,
128`` and 3×3×3 stride-2 convolutions in between (1/8 of the input at the deepest level);
``norm → ReLU →`` a 3×3×3 convolution to the embedding width ``hidden_size = 512``; every
voxel of that 1/8 grid is a token, plus a learnable position embedding; ``num_layers = 4``
pre-norm Transformer layers (8-head self-attention through
:func:`torch.nn.functional.scaled_dot_product_attention`, MLP 512 → 4096 → 512 with GELU)
and a final LayerNorm; "feature mapping" back to a volume (3×3×3 convolutions 512 → 128 →
128, each followed by norm and ReLU, then one post-activation residual block); and a
progressive decoder: per level a 1×1×1 convolution halving the width, a 2×2×2 stride-2
transposed convolution, concatenation with the encoder's skip, a 1×1×1 convolution back to
the level's width and a post-activation residual block (``conv3 → norm → ReLU → conv3 →
norm → ReLU``, plus the input); a 1×1×1 head. Widths, depths, the Transformer and the
dropouts (0.2 channel dropout after the first convolution, 0.1 in the Transformer) are the
paper's and its official code's; the presets reproduce Tables 1–2 (see the end of the file).

Where this departs from the original, and why:

- GroupNorm (8 groups) everywhere: the original uses it in the encoder but BatchNorm in the
  bridge, the feature mapping and the decoder, which is fragile at batch size 1 (our
  training setting); ``norm="batch"`` restores it. Same parameter count.
- Any input size (:class:`~nmfseg.models.base.SegmentationNetwork`): the original reshapes
  the tokens to a hard-coded 16³ grid. Here the tokens stay a channels-first feature map
  (pointwise projections are the original's ``Linear`` layers, applied per voxel), and the
  position embedding is stored at the training token grid (``patch_size / 8``:
  ``pos_embed_grid``) and resampled trilinearly (``align_corners=False``) at any other grid,
  exactly as :class:`~nmfseg.layers.PositionEmbedding` does for the Factorizer bridge.
  It starts at zero, as in the original.
- Region logits out: no softmax (the loss applies the sigmoid), ``out_channels`` regions.
- The decoder reads the Transformer output after its final LayerNorm (a standard pre-norm
  Transformer); the original builds that LayerNorm but decodes the last layer's raw output.
- Not built: the original's ``Linear(128 · in_channels, 512)`` "linear encoding", which its
  convolutional tokenizer never calls (it would have no gradient). The paper's #params
  count it: 262,656 of Table 1's 33.0M and 131,584 of Table 2's 31.0M.
- One dropout after the attention projection (the original applies two in a row) and
  dropout on the attention weights inside the fused attention kernel; the channel dropout
  after the first convolution is active in ``train()`` only (the original's also at
  inference).
- No deep supervision (none in the original): ``train()`` returns ``[full]``.
- ``spatial_dims=2`` builds the same network with 2D layers, so the registry-wide tests run.

Examples::

    >>> import torch
    >>> net = TransBTS(3, in_channels=4, out_channels=3, feature_size=8, hidden_size=32,
    ...                num_layers=1, num_heads=2, mlp_dim=64, pos_embed_grid=2).eval()
    >>> net(torch.randn(1, 4, 15, 16, 17)).shape
    torch.Size([1, 3, 15, 16, 17])
    >>> [tuple(o.shape) for o in net.train()(torch.randn(1, 4, 15, 16, 17))]
    [(1, 3, 15, 16, 17)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Dropout
from torch import Tensor, nn

from nmfseg.blocks import MixerBlock
from nmfseg.layers import LayerNorm, PointwiseConv, PositionEmbedding
from nmfseg.layers.args import check_dropout, check_positive, ntuple
from nmfseg.layers.factories import NormSpec, make_norm
from nmfseg.models._registry import register_paper_presets
from nmfseg.models.base import SegmentationNetwork

__all__ = ["TransBTS"]


def _conv3(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """3×3×3 (3×3) convolution with bias, padded to keep the size (halve it for stride 2)."""
    conv = Conv[Conv.CONV, spatial_dims]
    return conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


class _ResBlock(nn.Module):
    """``x + body(x)`` with two 3×3×3 convolutions, each with a norm and a ReLU.

    Args:
        channels: Number of input and output channels.
        spatial_dims: 2 or 3.
        norm: Norm spec (:func:`~nmfseg.layers.factories.make_norm`).
        pre_activation: ``norm → ReLU → conv`` twice (TransBTS' encoder); else
            ``conv → norm → ReLU`` twice (its feature mapping and decoder).
    """

    def __init__(
        self, channels: int, spatial_dims: int, norm: NormSpec, pre_activation: bool
    ) -> None:
        super().__init__()

        def unit() -> list[nn.Module]:
            parts = [make_norm(norm, channels, spatial_dims), nn.ReLU(inplace=True)]
            conv = _conv3(spatial_dims, channels, channels)
            return [*parts, conv] if pre_activation else [conv, *parts]

        self.body = nn.Sequential(*unit(), *unit())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _UpStage(nn.Module):
    """TransBTS' decoder level: ``1×1 conv (C_in → C) → 2×2 transposed conv → cat(skip) →
    1×1 conv (2C → C) →`` post-activation residual block."""

    def __init__(self, in_channels: int, channels: int, spatial_dims: int, norm: NormSpec) -> None:
        super().__init__()
        tconv = Conv[Conv.CONVTRANS, spatial_dims]
        self.reduce = PointwiseConv(in_channels, channels)
        self.up = tconv(channels, channels, kernel_size=2, stride=2)
        self.fuse = PointwiseConv(2 * channels, channels)
        self.block = _ResBlock(channels, spatial_dims, norm, pre_activation=False)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(self.fuse(torch.cat([skip, self.up(self.reduce(x))], dim=1)))


class TransBTS(SegmentationNetwork):
    """TransBTS for 3D (or 2D) segmentation, on inputs of any spatial size.

    ``forward`` returns one logit tensor of the input's spatial size in ``eval()`` and the
    one-element list ``[full]`` in ``train()``.

    Args:
        spatial_dims: 3 (the paper's) or 2.
        in_channels: Number of input channels.
        out_channels: Number of output channels (region logits).
        feature_size: Width of the first level; level ``i`` has ``feature_size * 2**i``.
        blocks_down: Residual blocks per encoder level (MONAI SegResNet's word); the input
            is down-sampled ``len(blocks_down) - 1`` times, so it is padded to a multiple
            of ``2**(len(blocks_down) - 1)``.
        hidden_size: Embedding width of the tokens (MONAI UNETR's word).
        num_layers: Number of Transformer layers.
        num_heads: Attention heads; must divide ``hidden_size``.
        mlp_dim: Hidden width of the Transformer MLP (a multiple of ``hidden_size``).
        pos_embed_grid: Token grid the position embedding is stored at (training patch
            size / 8); it is interpolated for other grids.
        norm: Norm spec (:func:`~nmfseg.layers.factories.make_norm`): the default is TransBTS'
            ``GroupNorm(8, C)``; ``"batch"`` is the original's outside the encoder.
        dropout: Dropout probability in the Transformer (after the position embedding, on
            the attention weights, after the attention, inside and after the MLP).
        stem_dropout: Channel dropout probability after the first convolution.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        feature_size: int = 16,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        hidden_size: int = 512,
        num_layers: int = 4,
        num_heads: int = 8,
        mlp_dim: int = 4096,
        pos_embed_grid: int | Sequence[int] = 16,
        norm: NormSpec = ("group", {"num_groups": 8}),
        dropout: float = 0.1,
        stem_dropout: float = 0.2,
    ) -> None:
        blocks_down = tuple(blocks_down)
        if len(blocks_down) < 2 or not all(isinstance(n, int) and n > 0 for n in blocks_down):
            raise ValueError(f"blocks_down should be at least 2 positive ints, got {blocks_down}.")
        super().__init__(spatial_dims, in_channels, out_channels, 2 ** (len(blocks_down) - 1))
        check_positive(feature_size=feature_size)
        make_norm(norm, feature_size, spatial_dims)  # a bad norm: ValueError naming it
        check_positive(hidden_size=hidden_size, num_layers=num_layers)
        check_dropout(dropout=dropout, stem_dropout=stem_dropout)
        if not isinstance(mlp_dim, int) or mlp_dim < 1 or mlp_dim % hidden_size:
            raise ValueError(
                f"mlp_dim should be a positive multiple of hidden_size {hidden_size}, got "
                f"{mlp_dim!r}."
            )
        grid = ntuple(pos_embed_grid, spatial_dims, "pos_embed_grid")
        widths = [feature_size * 2**i for i in range(len(blocks_down))]
        self.feature_size = feature_size
        self.hidden_size = hidden_size

        drop = Dropout[Dropout.DROPOUT, spatial_dims]
        self.stem = nn.Sequential(_conv3(spatial_dims, in_channels, widths[0]), drop(stem_dropout))
        self.encoder = nn.ModuleList(
            nn.Sequential(
                *([_conv3(spatial_dims, widths[i - 1], c, stride=2)] if i else []),
                *(_ResBlock(c, spatial_dims, norm, pre_activation=True) for _ in range(n)),
            )
            for i, (c, n) in enumerate(zip(widths, blocks_down, strict=True))
        )
        deep = widths[-1]
        self.embed = nn.Sequential(
            make_norm(norm, deep, spatial_dims),
            nn.ReLU(inplace=True),
            _conv3(spatial_dims, deep, hidden_size),
        )
        self.pos_embed = PositionEmbedding(hidden_size, grid, dropout)
        nn.init.zeros_(self.pos_embed.pos)
        self.transformer = nn.Sequential(
            *(
                MixerBlock(
                    hidden_size,
                    spatial_dims,
                    dropout,
                    mixer="attention",
                    mixer_args={"num_heads": num_heads, "attn_dropout": dropout},
                    mlp_ratio=mlp_dim // hidden_size,
                )
                for _ in range(num_layers)
            ),
            LayerNorm(hidden_size),
        )
        self.feature_mapping = nn.Sequential(
            _conv3(spatial_dims, hidden_size, deep),
            make_norm(norm, deep, spatial_dims),
            nn.ReLU(inplace=True),
            _conv3(spatial_dims, deep, deep),
            make_norm(norm, deep, spatial_dims),
            nn.ReLU(inplace=True),
            _ResBlock(deep, spatial_dims, norm, pre_activation=False),
        )
        self.decoder = nn.ModuleList(
            _UpStage(widths[i + 1], widths[i], spatial_dims, norm)
            for i in reversed(range(len(widths) - 1))
        )
        self.head = PointwiseConv(widths[0], out_channels)

    def forward_logits(self, x: Tensor, size: tuple[int, ...]) -> list[Tensor]:
        skips = []
        out = self.stem(x)
        for stage in self.encoder:
            out = stage(out)
            skips.append(out)
        out = self.pos_embed(self.embed(skips.pop()))  # tokens: the voxels of the 1/8 grid
        out = self.feature_mapping(self.transformer(out))
        for stage in self.decoder:
            out = stage(out, skips.pop())
        return [self.head(out)]


# --------------------------------------------------------------------------------------
# The paper's presets (§4.2; Table 1 for BraTS at 1×4×128³, Table 2 for ISLES'22 at
# 1×2×64³): TransBTS' own configuration (feature_size 16, blocks (1, 2, 2, 4), embedding 512,
# 4 layers, 8 heads, MLP 4096); only the input/output channels and the token grid of the
# position embedding (patch / 8) differ. Counted by nmfseg.models.complexity: BraTS
# 32,724,915 params (paper 33.0M: -0.8%; with the unbuilt linear encoding and the original's
# 4-class head, 32,987,588: TransBTS' own "32.99M") and 652.9 GFLOPs (paper 653.0); ISLES'22
# 30,889,009 params (paper 31.0M: -0.4%; +131,584 gives 31,020,593) and 66.1 GFLOPs (66.1).
_COMMON = dict(
    spatial_dims=3, feature_size=16, blocks_down=[1, 2, 2, 4], hidden_size=512,
    num_layers=4, num_heads=8, mlp_dim=4096,
)  # fmt: skip

register_paper_presets(
    "transbts",
    TransBTS,
    _COMMON,
    paper={"brats": (33.0e6, 653.0), "isles": (31.0e6, 66.1)},
    description="TransBTS (Wang et al., 2021)",
    per_dataset={"brats": {"pos_embed_grid": 16}, "isles": {"pos_embed_grid": 8}},
)
