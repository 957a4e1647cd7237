"""The greedy-rank Wrapped NMF token mixer (paper §5: "automated selection of the rank").

A :class:`~nmfseg.mixers.nmf.WrappedNMF` whose NMF layer is
:class:`~nmfseg.nmf.greedy.GreedyNMF`: ``PointwiseConv → matricize → ReLU → greedy NMF →
dematricize → PointwiseConv → dropout``, where every matrix (every head of every window
for Local and Swin matricize, every head for Global) takes rank-one components until its
relative residual is at most ``tol`` or it has ``max_rank`` of them. So a Local Factorizer
window uses the rank its content needs. Registered as mixer ``"greedy_nmf"``.

Being a :class:`~nmfseg.mixers.nmf.WrappedNMF`, the layer is one of the network's NMF
layers for everything that acts on them: :func:`~nmfseg.mixers.nmf.set_nmf` (``rank`` is
the most components, ``iters`` the iterations per component), ``enabled``, the recorder
of ``Factorizer.record_factors`` and ``nmfseg explain`` (``max_rank`` maps per head,
components in the order they were taken, the first being the rank-one NMF of the window,
those after the stop zero), ``nmfseg ablate``. It never takes the rank-one ``recompute``
route (:func:`~nmfseg.nmf.matricized_rank1`); with ``max_rank=1`` it computes what the
rank-one Wrapped NMF computes.

The ranks chosen in the last forward pass are in :attr:`GreedyWrappedNMF.last_ranks`,
shaped ``(partitions, B, heads, *grid)`` like the matrices (:attr:`MatricizeGeometry.batch_shape
<nmfseg.nmf.MatricizeGeometry.batch_shape>`); :mod:`nmfseg.analysis.ranks` collects them
over a whole image for ``nmfseg explain``.

Examples::

    >>> import torch
    >>> from nmfseg.mixers import create_mixer
    >>> mixer = create_mixer("greedy_nmf", 16, spatial_dims=3, head_dim=8, window_size=4)
    >>> mixer(torch.randn(1, 16, 8, 8, 6)).shape
    torch.Size([1, 16, 8, 8, 6])
    >>> mixer.last_ranks.shape  # 1 partition, batch 1, 2 heads, 2 x 2 x 2 windows
    torch.Size([1, 1, 2, 2, 2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nmfseg.mixers._registry import register_mixer
from nmfseg.mixers.nmf import WrappedNMF
from nmfseg.nmf.greedy import GreedyNMF

__all__ = ["GreedyWrappedNMF"]


class GreedyWrappedNMF(WrappedNMF):
    """Wrapped NMF whose every matrix chooses its own rank, greedily (see the module).

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: ``"local"`` (the default: the Local Factorizer's windows), ``"swin"`` or
            ``"global"``.
        head_dim: Channels per matrix (rows ``E``).
        window_size: Window of Local/Swin matricize (ignored by Global).
        max_rank: Most components per matrix (at most :attr:`WrappedNMF.max_rank`,
            ``min(rows, columns)``).
        tol: A matrix stops once its relative residual ``‖X - U Vᵀ‖ / ‖X‖`` is at most
            ``tol``, in ``[0, 1)``.
        iters: Iterations per component.
        grad_iters: Backpropagate through the last ``grad_iters`` iterations of each
            component only (``None``: all, as the paper's NMF).
        dropout: Dropout probability on the output.
        rank: Not used: accepted so that the arguments every NMF mixer is given (those of
            the Wrapped NMF, as ``benchmarks/bench_mixers.py`` passes them) build this one;
            the rank is chosen per matrix, at most ``max_rank``.

    Examples::

        >>> import torch
        >>> layer = GreedyWrappedNMF(8, spatial_dims=2, head_dim=4, window_size=4, tol=0.3)
        >>> y = layer(torch.randn(2, 8, 9, 7))
        >>> layer.last_ranks.shape, layer.nmf.rank
        (torch.Size([1, 2, 2, 3, 2]), 4)
    """

    ROUTES = frozenset()

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        matricize: str = "local",
        head_dim: int = 8,
        window_size: int | Sequence[int] = 8,
        max_rank: int = 4,
        tol: float = 0.5,
        iters: int = 5,
        grad_iters: int | None = None,
        dropout: float = 0.0,
        rank: int | None = None,
    ) -> None:
        del rank  # chosen per matrix
        super().__init__(
            channels, spatial_dims, matricize, head_dim, window_size, max_rank, iters,
            "hals", grad_iters, dropout,
        )  # fmt: skip
        self.nmf = GreedyNMF(max_rank, tol, iters, grad_iters)
        self.routes = self.ROUTES
        self.last_ranks: Tensor | None = None

    def mix(self, z: Tensor) -> Tensor:
        """As :meth:`WrappedNMF.mix`, keeping the ranks chosen in :attr:`last_ranks`."""
        self.last_ranks = None
        out = super().mix(z)
        ranks = self.nmf.last_ranks
        if self.enabled and ranks is not None and not torch.jit.is_tracing():  # explain's
            self.last_ranks = ranks.view(self.matricize.geometry(z.shape).batch_shape)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_rank={self.nmf.rank}, tol={self.nmf.tol}"


register_mixer("greedy_nmf")(GreedyWrappedNMF)
