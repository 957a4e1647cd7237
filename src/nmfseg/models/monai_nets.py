"""MONAI's UNETR and Swin UNETR under nmfseg's model contract: two Transformer baselines of
the Factorizer paper (Ashtari et al., Medical Image Analysis 2023, §4.2, Tables 1–2).

- UNETR (Hatamizadeh et al., WACV 2022): a 12-layer ViT on 16³ patches whose hidden states
  3, 6, 9 and 12 feed a convolutional decoder. The paper's counts (111.5M / 1124.9 GFLOPs on
  BraTS at 1×4×128³, 104.8M / 137.8 GFLOPs on ISLES'22 at 1×2×64³) are MONAI's defaults
  (hidden size 768, MLP 3072, 12 heads, instance norm, conv patch embedding) with
  ``feature_size=32`` and ``img_size`` the training patch (128³, 64³): the patch embedding
  (``in_channels × 16³ × 768``) and the position embedding (one vector per 16³ patch of
  ``img_size``) are what differ between the datasets.
- Swin UNETR (Hatamizadeh et al., BrainLes 2022): MONAI's defaults with ``feature_size=48``
  (62.2M, 1549.8 / 194.6 GFLOPs).

Where these wrappers depart from MONAI, and why:

- Any input size (:class:`~nmfseg.models.base.SegmentationNetwork`): the input is zero-padded
  to a multiple of 16 (UNETR's patch) or 32 (Swin UNETR's ``2**5``) and the logits are
  cropped back.
- UNETR's learned position embedding has one vector per patch of ``img_size``, so MONAI's
  UNETR runs at that size only. Here the embedding is resampled to the token grid of the
  padded input by (tri|bi)linear interpolation with ``align_corners=False`` when the grids
  differ (as the bridge embedding of the Factorizers is, :class:`~nmfseg.layers.PositionEmbedding`,
  and as ViTs are fine-tuned at new resolutions); at ``img_size`` the network is MONAI's,
  number for number. To do this the wrapper runs MONAI's submodules itself (patch embedding,
  Transformer blocks, encoders, decoders) instead of ``UNETR.forward``.
- Swin UNETR's constructor draws its stochastic-depth rates with ``Tensor.item()``, which
  the meta device refuses; the wrapper computes those few scalars on the CPU
  (:class:`_LinspaceOnCPU`), so both networks build under ``with torch.device("meta")``.
- Swin UNETR's bottleneck is 1/32 of the input; when that is a single voxel (inputs of at
  most 32 voxels along every dim), InstanceNorm (which always uses the input's statistics)
  cannot normalize it, so the input is zero-padded by 32 more voxels along the last dim
  then (and cropped back).
- MONAI's Transformer blocks build a cross-attention LayerNorm even without cross-attention
  (12 × 1,536 parameters that never get a gradient); UNETR drops it (an identity), so every
  parameter trains.
- One output: a one-element list in ``train()`` (neither has deep supervision), logits
  (MONAI applies no softmax either).

MONAI is imported when a network is built, not with this module (it is heavy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from nmfseg.layers.args import check_dropout, check_positive, ntuple
from nmfseg.models._registry import register_paper_presets
from nmfseg.models.base import SegmentationNetwork

__all__ = ["UNETR", "SwinUNETR"]

UNETR_PATCH = 16  # MONAI's UNETR patch size (fixed)
SWIN_MULTIPLE = 32  # Swin UNETR: patch 2, then four 2x merges


class _LinspaceOnCPU(TorchFunctionMode):
    """Inside, ``torch.linspace`` makes CPU tensors whatever the default device, so that a
    constructor calling ``.item()`` on one works under ``with torch.device("meta")``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = dict(kwargs or {})
        if func is torch.linspace:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


class UNETR(SegmentationNetwork):
    """``monai.networks.nets.UNETR`` on inputs of any size (position embedding resampled).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (logits).
        img_size: Training patch size: the position embedding has one vector per 16³ patch
            of it (each entry a multiple of 16).
        feature_size: Width of the convolutional encoder/decoder (32 in the paper).
        hidden_size: ViT width.
        mlp_dim: ViT MLP width.
        num_heads: Attention heads (``hidden_size`` must be a multiple).
        norm: Norm of the convolutional blocks (MONAI's ``norm_name``).
        dropout: Dropout probability in the ViT.
        qkv_bias: Give the query/key/value projection a bias.

    Raises:
        ValueError: An argument is out of range; the message names it.

    Examples::

        >>> import torch
        >>> net = UNETR(3, in_channels=2, out_channels=1, img_size=32, feature_size=4,
        ...             hidden_size=24, mlp_dim=48, num_heads=2).eval()
        >>> net(torch.randn(1, 2, 20, 37, 16)).shape  # not img_size
        torch.Size([1, 1, 20, 37, 16])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        img_size: int | Sequence[int] = 128,
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        norm: str | Sequence[Any] = "instance",
        dropout: float = 0.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, UNETR_PATCH)
        from monai.networks.nets import UNETR as _MonaiUNETR  # heavy: only when built

        size = ntuple(img_size, spatial_dims, "img_size")
        if any(s % UNETR_PATCH for s in size):
            raise ValueError(f"img_size should be multiples of {UNETR_PATCH}, got {img_size!r}.")
        check_positive(
            feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads
        )
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size={hidden_size} should be divisible by num_heads={num_heads}."
            )
        check_dropout(dropout=dropout)
        self.img_size = size
        self.pos_grid = tuple(s // UNETR_PATCH for s in size)
        self.hidden_size = hidden_size
        self.net = _MonaiUNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            img_size=size,
            feature_size=feature_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            proj_type="conv",
            norm_name=tuple(norm) if not isinstance(norm, str) else norm,
            dropout_rate=dropout,
            spatial_dims=spatial_dims,
            qkv_bias=qkv_bias,
        )
        for block in self.net.vit.blocks:  # unused without cross-attention: no dead weights
            if hasattr(block, "norm_cross_attn") and not block.with_cross_attention:
                block.norm_cross_attn = nn.Identity()

    def position_embedding(self, grid: Sequence[int]) -> Tensor:
        """The position embedding ``(1, prod(grid), hidden_size)`` for a token grid:
        MONAI's parameter at ``img_size / 16``, interpolated for any other grid."""
        pos = self.net.vit.patch_embedding.position_embeddings
        grid = tuple(grid)
        if grid == self.pos_grid:
            return pos
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        pos = pos.transpose(1, 2).reshape(1, self.hidden_size, *self.pos_grid)
        pos = F.interpolate(pos, size=grid, mode=mode, align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward_logits(self, x: Tensor, size: tuple[int, ...]) -> list[Tensor]:
        net, embed = self.net, self.net.vit.patch_embedding
        tokens = embed.patch_embeddings(x)  # (B, hidden, *grid)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = embed.dropout(tokens + self.position_embedding(grid).to(tokens.dtype))
        hidden = []
        for block in net.vit.blocks:
            tokens = block(tokens)
            hidden.append(tokens)
        last = net.vit.norm(tokens)

        def feature_map(t: Tensor) -> Tensor:
            return t.transpose(1, 2).reshape(t.shape[0], self.hidden_size, *grid)

        enc1 = net.encoder1(x)
        enc2 = net.encoder2(feature_map(hidden[3]))
        enc3 = net.encoder3(feature_map(hidden[6]))
        enc4 = net.encoder4(feature_map(hidden[9]))
        dec3 = net.decoder5(feature_map(last), enc4)
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        return [net.out(net.decoder2(dec1, enc1))]


class SwinUNETR(SegmentationNetwork):
    """``monai.networks.nets.SwinUNETR`` on inputs of any size (padded to a multiple of 32).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (logits).
        feature_size: Embedding width (a multiple of 12; 48 in the paper).
        depths: Swin Transformer blocks in each of the 4 stages.
        num_heads: Attention heads in each of the 4 stages.
        window_size: Attention window (MONAI's default 7).
        norm: Norm of the convolutional blocks (MONAI's ``norm_name``).
        dropout: Dropout probability in the Swin Transformer.
        drop_path: Stochastic depth rate (MONAI's ``dropout_path_rate``).
        use_v2: Swin UNETR v2 (a residual convolution block before each stage).

    Raises:
        ValueError: An argument is out of range; the message names it.

    Examples::

        >>> import torch
        >>> net = SwinUNETR(3, in_channels=2, out_channels=1, feature_size=12,
        ...                 depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)).eval()
        >>> net(torch.randn(1, 2, 20, 17, 33)).shape
        torch.Size([1, 1, 20, 17, 33])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        norm: str | Sequence[Any] = "instance",
        dropout: float = 0.0,
        drop_path: float = 0.0,
        use_v2: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, SWIN_MULTIPLE)
        from monai.networks.nets import SwinUNETR as _MonaiSwinUNETR  # heavy: only when built

        if not isinstance(feature_size, int) or feature_size < 12 or feature_size % 12:
            raise ValueError(f"feature_size should be a multiple of 12, got {feature_size!r}.")
        depths = tuple(depths)
        num_heads = tuple(num_heads)
        for name, value in (("depths", depths), ("num_heads", num_heads)):
            if len(value) != 4 or not all(isinstance(v, int) and v > 0 for v in value):
                raise ValueError(f"{name} should be 4 positive ints (one per stage), got {value}.")
        for stage, heads in enumerate(num_heads):
            if (feature_size * 2**stage) % heads:
                raise ValueError(
                    f"num_heads[{stage}]={heads} should divide the stage width "
                    f"{feature_size * 2**stage} (feature_size * 2**{stage})."
                )
        window = ntuple(window_size, spatial_dims, "window_size")
        check_dropout(dropout=dropout, drop_path=drop_path)
        with _LinspaceOnCPU():
            self.net = _MonaiSwinUNETR(
                in_channels=in_channels,
                out_channels=out_channels,
                depths=depths,
                num_heads=num_heads,
                window_size=window,
                feature_size=feature_size,
                norm_name=tuple(norm) if not isinstance(norm, str) else norm,
                drop_rate=dropout,
                dropout_path_rate=drop_path,
                spatial_dims=spatial_dims,
                use_v2=use_v2,
            )

    def forward_logits(self, x: Tensor, size: tuple[int, ...]) -> list[Tensor]:
        last = x.shape[-1]
        if math.prod(s // SWIN_MULTIPLE for s in x.shape[2:]) == 1:
            # A 1-voxel bottleneck, which InstanceNorm refuses: pad one more block.
            return [self.net(F.pad(x, (0, SWIN_MULTIPLE)))[..., :last]]
        return [self.net(x)]


# --------------------------------------------------------------------------------------
# The paper's presets (Table 1 for BraTS at 1×4×128³, Table 2 for ISLES'22 at 1×2×64³)
register_paper_presets(
    "unetr",
    UNETR,
    dict(spatial_dims=3, feature_size=32),
    paper={"brats": (111.5e6, 1124.9), "isles": (104.8e6, 137.8)},
    description="MONAI UNETR (ViT-B/16, feature_size=32)",
    per_dataset={"brats": {"img_size": 128}, "isles": {"img_size": 64}},  # one int: 2D too
)
register_paper_presets(
    "swin_unetr",
    SwinUNETR,
    dict(spatial_dims=3, feature_size=48),
    paper={"brats": (62.2e6, 1549.8), "isles": (62.2e6, 194.6)},
    description="MONAI Swin UNETR (feature_size=48)",
)
