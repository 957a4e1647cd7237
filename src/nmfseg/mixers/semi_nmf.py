"""Semi-NMF and Convex-NMF token mixers: Wrapped NMF for mixed-sign features, no ReLU (#24).

The paper's §5 proposes "other NMF variants, such as Semi-NMF and Convex-NMF, which work on
mixed-signed data matrices and relax the need for the ReLU activation function before
factorization". These mixers are :class:`~nmfseg.mixers.nmf.WrappedNMF` with the NMF
replaced and the ReLU taken out:

``Dropout(PointwiseConv(Dematricize(F(Matricize(PointwiseConv(x))))))``

with the same projections (the input one without bias, the output one with), the same
Global / Local / Swin matricize (:mod:`nmfseg.nmf.matricize`: heads of ``head_dim`` channels
as rows, the voxels of a window as columns), both built and checked by their shared base
:class:`~nmfseg.mixers.wrapped.WrappedMixer`, and, for ``F``, the reconstruction of
(:mod:`nmfseg.nmf.semi`, Ding, Li & Jordan, 2010):

- mixer ``"semi_nmf"`` (:class:`WrappedSemiNMF`): Semi-NMF ``x ≈ f gᵀ`` with the voxels as
  the data points; ``g ≥ 0`` is one nonnegative spatial map per component, as NMF's ``v``,
  and ``f`` a mixed-sign channel factor;
- mixer ``"convex_nmf"`` (:class:`WrappedConvexNMF`): Convex-NMF with the channels as the data
  points, ``x ≈ (g wᵀ) x`` with ``w, g ≥ 0``: every voxel's channels are mapped by the same
  rank-``R`` matrix, fitted to the window's ``head_dim × head_dim`` Gram matrix (linear in
  the voxels, where Ding's orientation would need the voxels' Gram matrix).

Zero padding (a size the window does not divide): Convex-NMF reconstructs padded voxels as 0,
and they change nothing for the others (they add nothing to the Gram matrix). In Semi-NMF
a padded voxel's ``g`` is driven toward 0 (to the floor of its component at the first update
at rank 1, gradually at rank > 1), but its initial value, and at rank > 1 what is left of
it, enters ``GᵀG`` in the least squares of ``f``: a window at the border is factorized a
little differently than it would be without its padding (as with Wrapped NMF at rank > 1,
where only the initial values enter).

The settings ``rank``, ``iters`` and ``grad_iters`` live on :attr:`factorization`
(:class:`~nmfseg.nmf.semi.SemiNMF` or :class:`~nmfseg.nmf.semi.ConvexNMF`) and can be
changed after training.

Examples::

    >>> import torch
    >>> from nmfseg.mixers import create_mixer
    >>> mixer = create_mixer("semi_nmf", 16, spatial_dims=3, head_dim=8, window_size=4)
    >>> mixer(torch.randn(1, 16, 5, 7, 9)).shape
    torch.Size([1, 16, 5, 7, 9])
    >>> create_mixer("convex_nmf", 16, spatial_dims=2, matricize="global").factorization
    ConvexNMF(rank=1, iters=5, grad_iters=None)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from nmfseg.mixers._registry import register_mixer
from nmfseg.mixers.wrapped import WrappedMixer
from nmfseg.nmf.semi import ConvexNMF, SemiNMF

__all__ = ["WrappedConvexNMF", "WrappedSemiNMF"]


class _WrappedFactorization(WrappedMixer):
    """Pointwise conv → matricize → factorization → dematricize → pointwise conv → dropout."""

    factorization_class: type[SemiNMF] | type[ConvexNMF] = SemiNMF

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        matricize: str = "swin",
        head_dim: int = 8,
        window_size: int | Sequence[int] = 8,
        rank: int = 1,
        iters: int = 5,
        grad_iters: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(channels, spatial_dims, matricize, head_dim, window_size, rank, dropout)
        self.factorization = self.factorization_class(rank, iters, grad_iters)

    def mix(self, z: Tensor) -> Tensor:
        """Matricize, reconstruct every matrix by the factorization, dematricize (no ReLU)."""
        geometry = self.matricize.geometry(z.shape)
        return self.matricize.inverse(self.factorization(self.matricize(z)), geometry)


class WrappedSemiNMF(_WrappedFactorization):
    """The Semi-NMF mixer ``"semi_nmf"``: Wrapped NMF with a Semi-NMF and no ReLU.

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: ``"global"``, ``"local"`` or ``"swin"`` (shifted window).
        head_dim: Channels per matrix (rows).
        window_size: Window of Local/Swin matricize (ignored by Global).
        rank: Number of components ``R``.
        iters: Iterations ``T`` (each: least-squares ``f``, then the update of ``g``).
        grad_iters: Backpropagate through the last ``grad_iters`` iterations only.
        dropout: Dropout probability on the output.

    Examples::

        >>> import torch
        >>> layer = WrappedSemiNMF(16, spatial_dims=2, matricize="local", window_size=4)
        >>> layer(torch.randn(2, 16, 10, 12)).shape
        torch.Size([2, 16, 10, 12])
    """

    factorization_class = SemiNMF


class WrappedConvexNMF(_WrappedFactorization):
    """The Convex-NMF mixer ``"convex_nmf"``: Wrapped NMF with a Convex-NMF (the channels as
    the data points) and no ReLU.

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: ``"global"``, ``"local"`` or ``"swin"`` (shifted window).
        head_dim: Channels per matrix (rows).
        window_size: Window of Local/Swin matricize (ignored by Global).
        rank: Number of components ``R``.
        iters: Iterations ``T`` (each: the update of ``g``, then of ``w``).
        grad_iters: Backpropagate through the last ``grad_iters`` iterations only.
        dropout: Dropout probability on the output.

    Examples::

        >>> import torch
        >>> layer = WrappedConvexNMF(16, spatial_dims=3, head_dim=8, window_size=4, rank=2)
        >>> layer(torch.randn(1, 16, 5, 7, 9)).shape
        torch.Size([1, 16, 5, 7, 9])
    """

    factorization_class = ConvexNMF


register_mixer("semi_nmf")(WrappedSemiNMF)
register_mixer("convex_nmf")(WrappedConvexNMF)
