"""The Wrapped NMF subblock of a Factorizer block (paper §3.4, eq. 6, Fig. 2b).

``WrappedNMF(x) = Dropout(PointwiseConv(Dematricize(NMF(ReLU(Matricize(PointwiseConv(x)))))))``:
the input projection has no bias, the output projection has one (as in the official code).

Two inference-time controls (paper §4.5) live here:

- ``enabled = False`` short-circuits the NMF layer: its output is replaced by its input, the
  ReLU'd matrices. Dematricize is the exact inverse of Matricize (for Swin, the average of
  two exact inverses of the same values), so the short-circuited subblock is computed as
  ``PointwiseConv(ReLU(PointwiseConv(x)))`` without building the matrices at all.
- ``recorder``: when a list, every forward appends an :class:`NMFRecord` with the factors
  ``(u, v)`` and what is needed to dematricize them; :func:`factor_maps` turns a record into
  spatial maps (paper Fig. 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nmfseg.layers.dropout import Dropout, add_dropout
from nmfseg.layers.fused import ProjectAddDropoutFn
from nmfseg.layers.norm import LayerNorm, fusable, layer_norm_pointwise
from nmfseg.layers.pointwise import PointwiseConv
from nmfseg.nmf import MATRICIZE_KINDS, NMF, SOLVERS, MatricizeGeometry, build_matricize

__all__ = ["MATRICIZE_KINDS", "NMFRecord", "WrappedNMF", "factor_maps"]


@dataclass
class NMFRecord:
    """The factors one NMF layer computed in one forward pass.

    Attributes:
        layer: Index of the layer in ``Factorizer.nmf_layers()`` (``-1`` if standalone).
        u: Channel factor ``(B', head_dim, R)``.
        v: Spatial factor ``(B', N, R)``.
        geometry: Where every matrix and column came from
            (:class:`~nmfseg.nmf.MatricizeGeometry`: kind, input shape, windows).
        matricize: The matricize module that produced the matrices (used to dematricize).
        size: Spatial size to crop dematricized maps to (the unpadded stage size), or
            ``None`` to keep the matricized feature map's size.
    """

    layer: int
    u: Tensor
    v: Tensor
    geometry: MatricizeGeometry
    matricize: nn.Module
    size: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(B, C, *spatial)`` of the feature map that was matricized."""
        g = self.geometry
        return (g.batch_size, g.channels, *g.spatial_size)

    @property
    def head_dim(self) -> int:
        return self.geometry.head_dim

    @property
    def heads(self) -> int:
        return self.geometry.heads

    @property
    def rank(self) -> int:
        return self.u.shape[-1]


def factor_maps(record: NMFRecord, batch_index: int = 0) -> Tensor:
    """Dematricize the spatial factor of a record into maps of shape ``(heads·R, *spatial)``.

    Component ``r`` of head ``h`` is map ``h·R + r``. Each component is scaled by the norm of
    its channel factor (``u v^T = (u/‖u‖)(‖u‖ v)^T``), so maps from different windows of
    Local/Swin matricize share one scale. For Swin matricize the regular and shifted-window
    maps are averaged, as the SW dematricize does with features.

    Args:
        record: One entry recorded by ``Factorizer.record_factors()``.
        batch_index: Which sample of the batch.

    Returns:
        A float tensor ``(heads·R, *spatial)`` with ``spatial = record.size`` (or the
        matricized feature map's size when ``size`` is ``None``).

    Examples::

        >>> import torch
        >>> layer = WrappedNMF(8, spatial_dims=2, matricize="local", head_dim=4, patch_size=4)
        >>> layer.recorder = []
        >>> _ = layer(torch.randn(1, 8, 10, 12))
        >>> factor_maps(layer.recorder[0]).shape
        torch.Size([2, 10, 12])
    """
    b = record.geometry.batch_size
    if not 0 <= batch_index < b:
        raise ValueError(f"batch_index should be in [0, {b}), got {batch_index}.")
    u, v = record.u.float(), record.v.float()
    scaled = v * torch.linalg.vector_norm(u, dim=-2, keepdim=True)  # (B', N, R)
    maps = record.matricize.dematricize_factor(scaled, record.geometry)  # (B, heads, R, *S)
    out = maps[batch_index].flatten(0, 1)  # (heads·R, *S), head-major
    if record.size is not None:
        out = out[(slice(None), *(slice(0, s) for s in record.size))]
    return out


class WrappedNMF(nn.Module):
    """Pointwise conv → matricize → ReLU → NMF → dematricize → pointwise conv → dropout.

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: ``"global"``, ``"local"`` or ``"swin"`` (shifted window).
        head_dim: Channels per matrix (rows ``E``).
        patch_size: Window size of Local/Swin matricize (ignored by Global).
        rank: NMF rank ``R``.
        iters: NMF outer iterations ``T``.
        solver: ``"hals"`` or ``"mu"``.
        grad_iters: Backpropagate through the last ``grad_iters`` iterations only.
        dropout: Dropout probability on the output.

    Examples::

        >>> import torch
        >>> layer = WrappedNMF(16, spatial_dims=3, matricize="swin", head_dim=8, patch_size=4)
        >>> layer(torch.randn(1, 16, 8, 8, 8)).shape
        torch.Size([1, 16, 8, 8, 8])
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        matricize: str = "swin",
        head_dim: int = 8,
        patch_size: int | Sequence[int] = 8,
        rank: int = 1,
        iters: int = 5,
        solver: str = "hals",
        grad_iters: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if matricize not in MATRICIZE_KINDS:
            raise ValueError(f"matricize should be one of {MATRICIZE_KINDS}, got {matricize!r}.")
        if head_dim < 1 or channels % head_dim:
            raise ValueError(
                f"channels ({channels}) should be a positive multiple of head_dim ({head_dim})."
            )
        if solver not in SOLVERS:
            raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.kind = matricize
        self.head_dim = head_dim
        self.in_proj = PointwiseConv(channels, channels, bias=False)
        self.matricize = build_matricize(matricize, head_dim, patch_size, spatial_dims)
        self.nmf = NMF(rank=rank, iters=iters, solver=solver, grad_iters=grad_iters)
        self.out_proj = PointwiseConv(channels, channels, bias=True)
        self.dropout = Dropout(dropout)
        self.enabled = True
        self.layer_index = -1
        self.recorder: list[NMFRecord] | None = None

    def forward(self, x: Tensor, norm: LayerNorm | None = None, residual: bool = False) -> Tensor:
        """``WrappedNMF(norm(x))`` (``WrappedNMF(x)`` without ``norm``), plus ``x`` if
        ``residual``."""
        z = self.in_proj(x) if norm is None else layer_norm_pointwise(x, norm, self.in_proj)
        if not self.enabled:
            z = torch.relu(z)
        else:
            geometry = self.matricize.geometry(z.shape)
            m = torch.relu(self.matricize(z))
            if self.recorder is None:
                m = self.nmf(m)
            else:
                u, v = self.nmf.factorize(m)
                m = u @ v.mT
                self.recorder.append(
                    NMFRecord(self.layer_index, u.detach(), v.detach(), geometry, self.matricize)
                )
            z = self.matricize.inverse(m, geometry)
        if not residual:
            return self.dropout(self.out_proj(z))
        if fusable(z):
            b, c = x.shape[:2]
            p = self.dropout.p if self.training else 0.0
            w, bias = self.out_proj.weight, self.out_proj.bias
            y = ProjectAddDropoutFn.apply(x.reshape(b, c, -1), z.reshape(b, c, -1), w, bias, p)
            return y.view(x.shape)
        return add_dropout(x, self.out_proj(z), self.dropout.p, self.training)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, matricize={self.kind!r}, enabled={self.enabled}"
