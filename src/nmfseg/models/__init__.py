"""Networks and their registry.

Importing this package registers every preset: the paper's Factorizers
(``{global,local,swin}_factorizer_{brats,isles}``) and its baselines (``nnunet_*``,
``resunet_*``, ``performer_*``, ``transbts_*``, ``unetr_*``, ``swin_unetr_*``,
``nnformer_*``) and MONAI's ``segresnet_*``, each for BraTS and ISLES'22.

========================= ==================================================================
module                    what it holds
========================= ==================================================================
:mod:`~._registry`        :class:`ModelConfig`, :func:`create_model`, :func:`load_model`, ...
:mod:`~.base`             :class:`SegmentationNetwork`: the any-size / eval / train contract
:mod:`~.unet`             :class:`UNet`: the paper's skeleton, blocks chosen by name
:mod:`~.factorizer`       :class:`Factorizer` and the paper's presets
:mod:`~.performer`        the Performer baseline: the skeleton with the FAVOR+ mixer
:mod:`~.convnets`         the nnU-Net and Res-U-Net baselines: the skeleton with conv blocks
:mod:`~.transbts`         TransBTS (Wang et al., 2021), written natively
:mod:`~.monai_nets`       MONAI's UNETR and Swin UNETR under the contract
:mod:`~.nnformer`         nnFormer (Zhou et al., 2021), written natively (and its blocks)
:mod:`~.segresnet`        MONAI SegResNet under the contract
:mod:`~.checkpoint`       finding, reading and upgrading checkpoint files
:mod:`~.complexity`       #params and FLOPs of any network (paper Tables 1-2)
========================= ==================================================================
"""

from nmfseg.models import convnets, factorizer_variants, performer  # noqa: F401  (register presets)
from nmfseg.models._registry import (
    ModelConfig,
    create_model,
    list_models,
    load_model,
    model_info,
    register_model,
    temporarily_registered_model,
)
from nmfseg.models.base import SegmentationNetwork
from nmfseg.models.factorizer import Factorizer
from nmfseg.models.monai_nets import UNETR, SwinUNETR
from nmfseg.models.nnformer import NNFormer
from nmfseg.models.segresnet import SegResNet
from nmfseg.models.transbts import TransBTS
from nmfseg.models.unet import UNet

__all__ = [
    "UNETR",
    "Factorizer",
    "ModelConfig",
    "NNFormer",
    "SegResNet",
    "SegmentationNetwork",
    "SwinUNETR",
    "TransBTS",
    "UNet",
    "create_model",
    "list_models",
    "load_model",
    "model_info",
    "register_model",
    "temporarily_registered_model",
]
