"""The wrapping every NMF-family token mixer shares: projections, matricize, checks, rank bound.

Wrapped NMF (paper §3.4, eq. 6) and its §5 variants all compute

``Dropout(PointwiseConv(Dematricize(F(Matricize(PointwiseConv(x))))))``

and differ only in ``F`` (and whether a ReLU comes before it). :class:`WrappedMixer` builds
what they share: the input projection (no bias) and the output one (with a bias, as in the
official code), the Global / Local / Swin matricize (:mod:`nmfseg.nmf.matricize`: heads of
``head_dim`` channels as rows, the voxels of a window as columns), the checks of these
arguments, and the bound on the rank those matrices allow (:attr:`WrappedMixer.max_rank`).
A subclass assigns its factorization and implements
:meth:`~nmfseg.mixers.base.ProjectedMixer.mix`: :class:`~nmfseg.mixers.nmf.WrappedNMF`
(and through it the greedy and local + global mixers) and the Semi-/Convex-NMF mixers of
:mod:`nmfseg.mixers.semi_nmf`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nmfseg.layers import PointwiseConv
from nmfseg.layers.args import check_positive
from nmfseg.mixers.base import ProjectedMixer
from nmfseg.nmf import MATRICIZE_KINDS, build_matricize
from nmfseg.nmf.windows import ntuple

__all__ = ["WrappedMixer"]

NO_BETTER_RANK = "a rank above min(rows, columns) of a matrix cannot describe it better"


class WrappedMixer(ProjectedMixer):
    """Pointwise conv → matricize → (the subclass's factorization) → dematricize → pointwise
    conv → dropout: the parts and checks every NMF-family mixer shares.

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: ``"global"``, ``"local"`` or ``"swin"`` (shifted window).
        head_dim: Channels per matrix (rows).
        window_size: Window of Local/Swin matricize (ignored by Global).
        rank: Number of components ``R``, checked against :attr:`max_rank`.
        dropout: Dropout probability on the output.

    Raises:
        ValueError: ``matricize`` is not a kind, ``channels`` not a positive multiple of
            ``head_dim``, or ``rank`` not a positive int or above :attr:`max_rank`.
    """

    mixes_in_float32 = True  # every factorization runs in float32 with autocast off

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        matricize: str = "swin",
        head_dim: int = 8,
        window_size: int | Sequence[int] = 8,
        rank: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dropout)
        if matricize not in MATRICIZE_KINDS:
            raise ValueError(f"matricize should be one of {MATRICIZE_KINDS}, got {matricize!r}.")
        check_positive(channels=channels, head_dim=head_dim, rank=rank)
        if channels % head_dim:
            raise ValueError(
                f"channels ({channels}) should be a positive multiple of head_dim ({head_dim})."
            )
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.kind = matricize
        self.head_dim = head_dim
        self.in_proj = PointwiseConv(channels, channels, bias=False)
        self.matricize = build_matricize(matricize, head_dim, window_size, spatial_dims)
        if rank > self.max_rank:
            raise ValueError(f"rank={rank} is above {self.max_rank}: {self.rank_limit()}.")
        self.out_proj = PointwiseConv(channels, channels, bias=True)

    @property
    def window(self) -> tuple[int, ...] | None:
        """The matricize window (Local and Swin; ``None`` for Global)."""
        if self.kind == "global":
            return None
        return ntuple(self.matricize.window_size, self.spatial_dims, "window_size")

    @property
    def max_rank(self) -> int:
        """The largest meaningful rank: ``min(M, N)`` of the layer's matrices, with
        ``M = head_dim`` rows and, for Local and Swin, ``N`` = the voxels of a window (a stage
        smaller than the window has fewer; Global's ``N``, a whole stage, is not bounded).

        Examples::

            >>> WrappedMixer(16, head_dim=8, window_size=2).max_rank  # 2x2x2 = 8 voxels
            8
            >>> WrappedMixer(16, matricize="local", head_dim=8, window_size=(2, 1, 2)).max_rank
            4
        """
        window = self.window
        return self.head_dim if window is None else min(self.head_dim, math.prod(window))

    def rank_limit(self) -> str:
        """Why :attr:`max_rank` is what it is, for error messages."""
        window = self.window
        rows = f"head_dim={self.head_dim} rows"
        if window is None:
            return f"its matrices have {rows}, and {NO_BETTER_RANK}"
        voxels = f"{math.prod(window)} columns (a {'x'.join(map(str, window))} window)"
        return f"its matrices have {rows} and {voxels}, and {NO_BETTER_RANK}"

    def extra_repr(self) -> str:
        return f"channels={self.channels}, matricize={self.kind!r}"
