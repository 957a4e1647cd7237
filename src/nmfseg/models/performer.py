"""The Performer baseline of the Factorizer paper (Ashtari et al., 2023, §4.2; Tables 1–2).

"The encoder and decoder blocks of this model are based on ViT ... we replace original
attention layers of a ViT block with FAVOR+ ... except for the attention layers, the rest of
the components of this baseline are the same as those of Factorizer." So a Performer is the
paper's :class:`~nmfseg.models.unet.UNet` skeleton with :class:`~nmfseg.blocks.MixerBlock`
blocks whose mixer is FAVOR+ over all voxels of the stage (:mod:`nmfseg.mixers.favor`):
``y = x + FAVOR(LN(x)); z = y + MLP(LN(y))``, with the same stem, down/up-sampling,
position embedding, MLP, dropout (0.1) and deep supervision as the Factorizer presets of the
same dataset (:mod:`nmfseg.models.factorizer`), and heads of ``head_dim`` channels (8 for
BraTS, 4 for ISLES'22, the Factorizers' ``E``). Only presets live here: the network is a
:class:`~nmfseg.models.unet.UNet` built from data.

Choices the paper leaves open, and why:

- queries, keys and values come from one bias-free pointwise projection ``C → 3C`` and the
  output projection ``C → C`` has a bias (ViT's and the reference Performer's layout, the
  Factorizer's NMF projections otherwise); this is what the paper's #params need:
  the Factorizer's 5,855,241 (7,371,523) plus ``2·ΣC²`` over the nine blocks
  (872,448) is 6,727,689 for BraTS (6.7M in Table 1) and 8,243,971 for ISLES'22 (8.2M in
  Table 2). The random features are a buffer, not parameters.
- ``m = ⌊d·ln d⌋`` random features per head (16 for BraTS, 5 for ISLES'22), the Performer
  paper's ``Θ(d log d)`` with constant 1 and the reference implementation's default.
  Counted as :mod:`nmfseg.models.complexity` counts everything (2 per multiply-add of the
  matmuls, 1 per element of tensor additions, subtractions, multiplications and divisions,
  exponentials 0), this gives 223.1 GFLOPs at 1×4×128³ (Table 1: 222.7) and 33.1 GFLOPs at
  1×2×64³ (Table 2: 33.0); ``m = 4`` would give 32.9 for ISLES'22, equally close, so the
  counts confirm the rule rather than pin ``m`` exactly.

Examples::

    >>> import torch, nmfseg
    >>> net = nmfseg.create_model("performer_isles", channels=(8, 16, 32, 64, 128)).eval()
    >>> net(torch.randn(1, 2, 17, 20, 23)).shape
    torch.Size([1, 1, 17, 20, 23])
    >>> net.encoder[0].block.mixer.num_features
    5
"""

from __future__ import annotations

from nmfseg.mixers import favor  # noqa: F401  (registers the "favor" mixer)
from nmfseg.models._registry import register_paper_presets
from nmfseg.models.unet import UNet

__all__: list[str] = []

# The skeleton of the Factorizer presets of the same dataset (models/factorizer.py); only the
# mixer differs.
_SKELETON = dict(spatial_dims=3, channels=[32, 64, 128, 256, 512], block="mixer", dropout=0.1)


def _favor(head_dim: int, num_features: int, mlp_ratio: int, grid: int) -> dict:
    mixer = {"mixer": "favor", "mixer_args": {"head_dim": head_dim, "num_features": num_features}}
    return {"block_args": {**mixer, "mlp_ratio": mlp_ratio}, "pos_embed_grid": grid}


register_paper_presets(
    "performer",
    UNet,
    _SKELETON,
    paper={"brats": (6.7e6, 222.7), "isles": (8.2e6, 33.0)},
    description="Performer (Factorizer skeleton, FAVOR+ over all voxels)",
    per_dataset={"brats": _favor(8, 16, 2, 8), "isles": _favor(4, 5, 4, 4)},
)
