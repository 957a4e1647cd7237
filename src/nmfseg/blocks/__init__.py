"""U-Net blocks by name: what each encoder and decoder level of :class:`~nmfseg.models.UNet`
runs after its down- or up-sampling.

========= ==================================================================================
name      block
========= ==================================================================================
``mixer`` :class:`~nmfseg.blocks.mixer.MixerBlock`: pre-norm token mixer + MLP (eq. 4), the
          Factorizer block with ``mixer="nmf"`` (:mod:`nmfseg.mixers`)
========= ==================================================================================

A new block is one module file registering ``fn(channels, spatial_dims, dropout, **kwargs)``
with :func:`register_block`.

Examples::

    >>> from nmfseg.blocks import create_block, list_blocks
    >>> "mixer" in list_blocks()
    True
    >>> create_block("mixer", 8, mixer="none").mixer is None
    True
"""

from nmfseg.blocks import mixer  # noqa: F401  (registers "mixer")
from nmfseg.blocks._registry import (
    create_block,
    list_blocks,
    register_block,
    temporarily_registered_block,
)
from nmfseg.blocks.mixer import MixerBlock

__all__ = [
    "MixerBlock",
    "create_block",
    "list_blocks",
    "register_block",
    "temporarily_registered_block",
]
