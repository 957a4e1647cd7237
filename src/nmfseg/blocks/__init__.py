"""U-Net blocks by name: what each encoder and decoder level of :class:`~nmfseg.models.UNet`
runs after its down- or up-sampling.

=========== ================================================================================
name        block
=========== ================================================================================
``mixer``   :class:`~nmfseg.blocks.mixer.MixerBlock`: pre-norm token mixer + MLP (eq. 4), the
            Factorizer block with ``mixer="nmf"`` (:mod:`nmfseg.mixers`)
``conv``    :class:`~nmfseg.blocks.conv.ConvBlock`: nnU-Net's ``(conv → norm → act) × 2``
``resconv`` :class:`~nmfseg.blocks.conv.ResConvBlock`: Res-U-Net's residual block
=========== ================================================================================

A new block is one module file registering ``fn(channels, spatial_dims, dropout, **kwargs)``
with :func:`register_block`.

Examples::

    >>> from nmfseg.blocks import create_block, list_blocks
    >>> "mixer" in list_blocks()
    True
    >>> create_block("mixer", 8, mixer="none").mixer is None
    True
"""

from nmfseg.blocks import conv, mixer  # noqa: F401  (register "conv", "resconv", "mixer")
from nmfseg.blocks._registry import (
    create_block,
    list_blocks,
    register_block,
    temporarily_registered_block,
)
from nmfseg.blocks.conv import ConvBlock, ResConvBlock
from nmfseg.blocks.mixer import MixerBlock

__all__ = [
    "ConvBlock",
    "MixerBlock",
    "ResConvBlock",
    "create_block",
    "list_blocks",
    "register_block",
    "temporarily_registered_block",
]
