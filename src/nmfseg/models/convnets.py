"""The CNN baselines of the Factorizer paper on its own skeleton: nnU-Net and Res-U-Net.

Ashtari et al., Medical Image Analysis 2023, §4.2 "Models" and Tables 1–2: both baselines
"follow the same overall architecture and setup as those of Factorizers except that each has a
different encoder/decoder block". So they are :class:`~nmfseg.models.unet.UNet` presets
(stem, widths 32…512, 2×2×2 down- and up-sampling, three deep-supervision heads) whose block
is ``"conv"`` (nnU-Net: two 3×3×3 convolutions, each followed by GroupNorm with groups of 8
channels and LeakyReLU) or ``"resconv"`` (Res-U-Net: the same with a residual connection
after the second GroupNorm), see :mod:`nmfseg.blocks.conv`. There is no position embedding
in the bridge ("CNNs already have some notion of position") and no dropout.

Where the paper is silent: a decoder block takes the ``2C``-channel concatenation of skip
and up-sampled features directly (``decoder_proj=False``: its first convolution is
``2C → C``, and Res-U-Net's shortcut there a bias-free 1×1 ``2C → C`` convolution) instead of
the Factorizer's bias-free pointwise ``2C → C`` projection before the block. The paper's
counts imply it (Tables 1–2: 28.7M / 28.9M parameters, 1152.8 / 1168.6 GFLOPs at 1×4×128³;
with the projection both baselines would have 26.5M and 950 GFLOPs), and the official code
does it.

Examples::

    >>> import torch
    >>> from nmfseg.models import create_model
    >>> net = create_model("resunet_isles", channels=(8, 16, 32, 64, 128)).eval()
    >>> net(torch.randn(1, 2, 9, 10, 11)).shape
    torch.Size([1, 1, 9, 10, 11])
"""

from __future__ import annotations

from nmfseg.blocks import conv as _conv  # noqa: F401  (registers "conv", "resconv")
from nmfseg.models._registry import register_paper_presets
from nmfseg.models.unet import UNet

__all__: list[str] = []

_SKELETON = dict(
    spatial_dims=3, channels=[32, 64, 128, 256, 512], dropout=0.0, pos_embed=False,
    deep_supervision=True, deep_supr_num=2, decoder_proj=False,
)  # fmt: skip
# name: (block, #params of Tables 1-2, GFLOPs of Table 1 (BraTS), of Table 2 (ISLES'22), text)
_VARIANTS = {
    "nnunet": ("conv", 28.7e6, 1152.8, 143.1, "nnU-Net baseline: (conv-GroupNorm-LeakyReLU) x 2"),
    "resunet": ("resconv", 28.9e6, 1168.6, 145.1, "Res-U-Net baseline: ResNet basic blocks"),
}

for _name, (_block, _params, _brats_gflops, _isles_gflops, _text) in _VARIANTS.items():
    register_paper_presets(
        _name,
        UNet,
        {**_SKELETON, "block": _block, "block_args": {"norm": "group", "act": "leakyrelu"}},
        paper={"brats": (_params, _brats_gflops), "isles": (_params, _isles_gflops)},
        description=f"{_text}, on the paper's U-Net skeleton",
    )
