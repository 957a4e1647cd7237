"""nnFormer (Zhou et al., 2021, "nnFormer: Interleaved Transformer for Volumetric
Segmentation", arXiv:2109.03201), written natively from the paper, for the Factorizer paper's
baseline (§4.2, Tables 1-2).

- **Embedding**: four 3×3×3 convolutions (widths ``C/2, C/2, C, C``; the first and third
  with stride 2), each but the last followed by GELU and LayerNorm, the last by LayerNorm:
  tokens at 1/4 of the input size in every dim, as in the paper's brain-tumour model;
- **encoder**: stage ``i`` (``C·2^i`` channels, 1/``4·2^i`` of the input) runs
  ``depths[i]`` Transformer layers, LV-MSA (window attention, shifted windows in every
  second layer) in the first ``local_stages`` stages and GV-MSA (attention over the whole
  stage) in the others (:mod:`~nmfseg.models.nnformer_blocks`); between stages,
  LayerNorm and a 3×3×3 stride-2 convolution doubling the width;
- **decoder**: mirrors the encoder below the bottleneck: LayerNorm and a 2×2×2 stride-2
  transposed convolution halving the width, then ``depths[i]`` layers of which the first is
  skip attention (queries from the decoder, keys and values from the LayerNorm-ed encoder
  output of the same stage, which the residual path also adds), the others self-attention;
- **heads**: 4×4×4 stride-4 transposed convolutions to ``out_channels`` region logits (no
  softmax), on the three highest decoder stages for deep supervision (full, 1/2 and 1/4 of
  the input).

Width: the official brain-tumour model (``feature_size=96``, heads 3-6-12-24; 37.4M
parameters here) is narrower than the paper's baseline (149.4M for BraTS, 149.2M for
ISLES'22). Parameters scale with the width squared, and the paper's figures are those of
``feature_size=192`` with the heads doubled (6-12-24-48, 32 channels per head, the width
of nnFormer's multi-organ model), deep-supervision heads included (they make the 0.2M
between the two counts): 149.36M / 149.18M and 492.1 / 60.6 GFLOPs here
(:mod:`~nmfseg.models.complexity`) against the paper's 149.4M / 149.2M and 489.9 / 60.6
GFLOPs. The presets use windows of 4³ in the two local stages and global attention at
1/16 and 1/32, which at the paper's 128³ BraTS input is the original's 8³ (4³) window
attention on the whole 8³ (4³) stage.

Departures from the original, and why: any input size (zero-padded to ``size_multiple``,
the smallest multiple of every stride and every stride × window, 32 for the presets, and
cropped back) instead of a fixed crop size; no relative position bias in GV-MSA (its
extent depends on the input size); no stochastic depth (a training regularizer that
changes neither the parameters nor the FLOPs); no BatchNorm anywhere (LayerNorm over
channels, as the original uses in the transformer and the embedding, is safe at batch
size 1). See :mod:`~nmfseg.models.nnformer_blocks` for the attention layers.

Examples::

    >>> import torch
    >>> net = NNFormer(3, in_channels=4, out_channels=3, feature_size=12, num_heads=(1, 2, 4, 8))
    >>> net.size_multiple
    32
    >>> _ = net.eval()
    >>> net(torch.randn(1, 4, 20, 18, 17)).shape
    torch.Size([1, 3, 20, 18, 17])
    >>> _ = net.train()
    >>> [tuple(o.shape[2:]) for o in net(torch.randn(1, 4, 20, 18, 17))]
    [(20, 18, 17), (10, 9, 9), (5, 5, 5)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks.layers import Conv
from torch import Tensor, nn

from nmfseg.blocks import MixerBlock
from nmfseg.layers import LayerNorm
from nmfseg.layers.args import check_deep_supervision, check_dropout, ntuple
from nmfseg.models._registry import register_paper_presets
from nmfseg.models.base import UShapedNetwork
from nmfseg.models.nnformer_blocks import SkipAttentionLayer

__all__ = ["NNFormer", "conv_embedding"]


def conv_embedding(spatial_dims: int, in_channels: int, feature_size: int) -> nn.Sequential:
    """nnFormer's convolutional embedding: ``(B, in_channels, *S) -> (B, feature_size, *S/4)``.

    Examples::

        >>> import torch
        >>> conv_embedding(3, 4, 8)(torch.randn(1, 4, 8, 12, 16)).shape
        torch.Size([1, 8, 2, 3, 4])
    """
    conv, half = Conv[Conv.CONV, spatial_dims], feature_size // 2
    return nn.Sequential(
        conv(in_channels, half, kernel_size=3, stride=2, padding=1), nn.GELU(), LayerNorm(half),
        conv(half, half, kernel_size=3, padding=1), nn.GELU(), LayerNorm(half),
        conv(half, feature_size, kernel_size=3, stride=2, padding=1), nn.GELU(),
        LayerNorm(feature_size),
        conv(feature_size, feature_size, kernel_size=3, padding=1), LayerNorm(feature_size),
    )  # fmt: skip


class _DecoderStage(nn.Module):
    def __init__(self, up: nn.Module, skip_layer: SkipAttentionLayer, layers: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.skip_layer = skip_layer
        self.layers = layers

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.layers(self.skip_layer(self.up(x), skip))


class NNFormer(UShapedNetwork):
    """nnFormer for 2D or 3D segmentation, on inputs of any spatial size.

    ``forward`` returns one logit tensor of the input's spatial size in ``eval()``; in
    ``train()``, with ``deep_supervision``, also the outputs of the ``deep_supr_num`` decoder
    stages below the highest (stride-4 transposed-convolution heads, ``[full, 1/2, 1/4]`` by
    default), else ``[full]``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (region logits).
        feature_size: Embedding width ``C`` (even); stage ``i`` has ``C·2^i`` channels.
        depths: Transformer layers per stage, highest resolution first; the last stage is
            the bottleneck, decoder stage ``i`` has ``depths[i]`` layers too.
        num_heads: Attention heads per stage (each dividing the stage's width).
        window_size: LV-MSA window (an int or one per spatial dim).
        local_stages: Number of stages, from the highest resolution, with LV-MSA; the others
            use GV-MSA.
        mlp_ratio: MLP hidden width as a multiple of the stage's width.
        qkv_bias: Add a bias to the query/key/value projections.
        dropout: Dropout probability after attention and inside and after the MLPs.
        deep_supervision: Return the lower-resolution outputs too in ``train()``.
        deep_supr_num: Number of lower-resolution outputs; at most ``len(depths) - 2``.

    Raises:
        ValueError: An argument is out of range (e.g. an odd ``feature_size``, or
            ``num_heads`` that do not divide their stage's width); the message names it.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        feature_size: int = 192,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (6, 12, 24, 48),
        window_size: int | Sequence[int] = 4,
        local_stages: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        deep_supervision: bool = True,
        deep_supr_num: int = 2,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) < 2 or not all(isinstance(d, int) and d > 0 for d in depths):
            raise ValueError(f"depths should be at least 2 positive ints, got {depths!r}.")
        if not isinstance(feature_size, int) or feature_size < 2 or feature_size % 2:
            raise ValueError(f"feature_size should be a positive even int, got {feature_size!r}.")
        widths = tuple(feature_size * 2**i for i in range(len(depths)))
        if len(num_heads) != len(depths) or any(
            not isinstance(h, int) or h < 1 or c % h
            for c, h in zip(widths, num_heads, strict=False)
        ):
            raise ValueError(
                f"num_heads should be {len(depths)} positive ints dividing the stage widths "
                f"{widths}, got {num_heads!r}."
            )
        if not isinstance(local_stages, int) or not 0 <= local_stages <= len(depths):
            raise ValueError(
                f"local_stages should be an int in [0, {len(depths)}], got {local_stages!r}."
            )
        window = ntuple(window_size, spatial_dims, "window_size")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio should be > 0, got {mlp_ratio!r}.")
        check_dropout(dropout=dropout)
        heads = check_deep_supervision(deep_supervision, deep_supr_num, len(depths), "stages")
        strides = [4 * 2**i for i in range(len(depths))]
        self.size_multiple = math.lcm(
            strides[-1], *(s * w for s in strides[:local_stages] for w in window)
        )
        self.feature_size = feature_size
        self.depths = depths
        self.window_size = window
        self.local_stages = local_stages
        self.deep_supervision = deep_supervision
        self.deep_supr_num = deep_supr_num

        def windows(i: int) -> tuple[int, ...] | None:
            return window if i < local_stages else None

        def layers(i: int, first: int) -> nn.Sequential:
            return nn.Sequential(*(
                MixerBlock(widths[i], spatial_dims, dropout, mixer="volume_attention",
                           mixer_args={"num_heads": num_heads[i], "window_size": windows(i),
                                       "shifted": j % 2 == 1, "qkv_bias": qkv_bias},
                           mlp_ratio=mlp_ratio)
                for j in range(first, depths[i])
            ))  # fmt: skip

        conv, tconv = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        last = len(depths) - 1
        self.embed = conv_embedding(spatial_dims, in_channels, feature_size)
        self.encoder = nn.ModuleList(layers(i, 0) for i in range(len(depths)))
        self.skip_norms = nn.ModuleList(LayerNorm(c) for c in widths)
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm(c), conv(c, 2 * c, kernel_size=3, stride=2, padding=1))
            for c in widths[:last]
        )
        self.decoder = nn.ModuleList(
            _DecoderStage(
                up=nn.Sequential(
                    LayerNorm(2 * widths[i]), tconv(2 * widths[i], widths[i], 2, stride=2)
                ),
                skip_layer=SkipAttentionLayer(
                    widths[i], num_heads[i], windows(i), mlp_ratio, qkv_bias, dropout
                ),
                layers=layers(i, 1),
            )
            for i in reversed(range(last))
        )
        self.heads = nn.ModuleList(
            tconv(widths[i], out_channels, kernel_size=4, stride=4) for i in range(heads)
        )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Decoder feature maps of a padded input, highest resolution first:
        ``len(depths) - 1`` tensors ``(B, feature_size·2^i, *size / (4·2^i))``."""
        out = self.embed(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            if i:
                out = self.downsample[i - 1](out)
            out = self.run_stage(stage, out)
            skips.append(self.skip_norms[i](out))
        return self.decode(skips.pop(), skips)


# --------------------------------------------------------------------------------------
# The Factorizer paper's nnFormer baseline (§4.2; Table 1 for BraTS at 1×4×128³, Table 2
# for ISLES'22 at 1×2×64³): the official tumour model at twice its width.
_NNFORMER = dict(
    spatial_dims=3, feature_size=192, depths=[2, 2, 2, 2], num_heads=[6, 12, 24, 48],
    window_size=4, local_stages=2, mlp_ratio=4, dropout=0.0,
)  # fmt: skip
register_paper_presets(
    "nnformer",
    NNFormer,
    _NNFORMER,
    paper={"brats": (149.4e6, 489.9), "isles": (149.2e6, 60.6)},
    description="nnFormer (C=192, heads 6-12-24-48, LV-MSA 4³ / GV-MSA)",
)
