"""What every token mixer of this package is: a pointwise projection in, a mixing of the
tokens (voxels), a pointwise projection out, and dropout.

Self-attention, the Wrapped NMF of the paper and FAVOR+ all have this shape, so a block can
treat them alike: :class:`~nmfseg.blocks.MixerBlock` computes ``x + mixer(norm(x))``, and on
CPU fuses the norm into ``in_proj`` and the residual and dropout into ``out_proj``
(:mod:`nmfseg.layers.fused`), calling only :meth:`ProjectedMixer.mix` in between. A mixer
that is not a :class:`ProjectedMixer` still works in a block, through its own ``forward``.
"""

from __future__ import annotations

from torch import Tensor, nn

from nmfseg.layers import Dropout, PointwiseConv

__all__ = ["ProjectedMixer"]


class ProjectedMixer(nn.Module):
    """``dropout(out_proj(mix(in_proj(x))))`` for ``x (B, C, *spatial)``.

    Subclasses build ``in_proj`` and ``out_proj`` (:class:`~nmfseg.layers.PointwiseConv`) and
    implement :meth:`mix`.

    Args:
        dropout: Dropout probability on the output.
    """

    in_proj: PointwiseConv
    out_proj: PointwiseConv
    #: :meth:`mix` computes in float32 whatever autocast says (the NMF, FAVOR+): under CPU
    #: autocast the block then runs in float32 too, on its fused kernels.
    mixes_in_float32: bool = False

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)

    def mix(self, z: Tensor) -> Tensor:
        """Mix the tokens of the projected input ``z (B, in_proj.out_channels, *spatial)``;
        returns ``(B, out_proj.in_channels, *spatial)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.out_proj(self.mix(self.in_proj(x))))
