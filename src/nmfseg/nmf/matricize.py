"""Matricize and dematricize feature maps for NMF (paper §3.4.1, eq. 7–8, Algorithm 3).

A matricize operation turns a batch of ``C``-channel images ``x (B, C, *S)`` (2D or 3D)
into a batch of nonnegative-able matrices ``z (B', E, N)`` with ``E = head_dim`` rows
(one head of channels) and ``N`` columns (voxels):

- :class:`GlobalMatricize`: heads × all voxels, ``(B·C/E, E, prod(S))``.
- :class:`LocalMatricize`: heads × non-overlapping windows of ``window_size``, eq. 7:
  ``z[(b h g₁ … g_d), e, (p₁ … p_d)] = x[b, (h e), (g₁ p₁), …, (g_d p_d)]``.
- :class:`SWMatricize`: Local on ``x`` and on ``x`` rolled by half a window, concatenated
  along the batch (eq. 8); its inverse averages both after rolling back (Algorithm 3).

The modules are stateless: ``forward(x)`` returns only the matrices, and
``geometry(x.shape)`` returns a :class:`MatricizeGeometry` that says where every column
comes from (padded size, window grid, shifts). ``inverse(z, x.shape)`` (or
``inverse(z, geometry)``) folds matrices back, and ``dematricize_factor(v, x.shape)`` turns
an NMF factor of the voxel side, ``v (…, N, R)``, into ``R`` spatial maps per head (the
component maps of the paper's Fig. 6). The leading dim of the matrices is ordered
``(partition, b, head, g₁, …, g_d)`` (``MatricizeGeometry.batch_shape``), so a factor of the
channel side, ``u (…, E, R)``, reads as ``u.reshape(*geometry.batch_shape, E, R)``.

Sizes a window does not divide. The window is first clamped to the stage size along each
dim (``min(window, S)``), so a stage smaller than the window, such as the 4³ bridge of a
network at a 64³ input with ``window_size=8``, is one window rather than mostly padding;
this is what the official code computes at its native sizes, where the last stage is
exactly one window. The input is then zero-padded at the far end of each dim up to a
multiple of the window, and the inverse crops the padding. For SW, the roll by half a
window is applied to the unpadded input (the paper's ``Roll`` of the image) and the
padding comes after, in both partitions.

Padding and NMF. Padded voxels are columns of zeros, and stay zero through the ReLU
before NMF. A zero column gets a zero ``v`` row at the first update, contributes nothing
to ``X v`` or ``X Xᵀ`` and is reconstructed as exactly 0, then cropped. At rank 1 (the
paper's setting, both solvers) the only other trace of the padding is the norm of the
initial ``g₀``, which rescales ``f`` by a constant and ``g`` by its inverse: the real
voxels are reconstructed exactly as if they were factorized alone from the same initial
values (the default init depends on a voxel's position in its window). At rank > 1 the
padded part of ``v₀`` also enters the first update's ``v₀ᵀv₀``, which amounts to a
slightly different initialization.

Cost. Global matricize is a reshape (a view of the input's memory). Local and SW move every
voxel once per partition into the matrices' memory, with at most ``4^d`` strided block
copies per partition and no roll, pad or stack of the whole input; the inverse does the
same in reverse and accumulates the second SW partition in place. Both directions are
autograd functions whose backward is the other direction (the adjoint), so a training step
does no extra copies.

Examples::

    >>> import torch
    >>> sw = SWMatricize(head_dim=8, window_size=8)
    >>> x = torch.randn(2, 16, 20, 24, 8)
    >>> z = sw(x)
    >>> z.shape  # 2 partitions x 2 batch x 2 heads x (3*3*1) windows, 8 rows, 8*8*8 voxels
    torch.Size([72, 8, 512])
    >>> geom = sw.geometry(x.shape)
    >>> geom.padded_size, geom.grid, geom.shifts
    ((24, 24, 8), (3, 3, 1), (4, 4, 4))
    >>> torch.equal(sw.inverse(z, x.shape), x)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import Tensor, nn

from nmfseg.nmf.windows import MatricizeGeometry, dematricize, is_reshape, matricize, ntuple

__all__ = [
    "MATRICIZE_KINDS",
    "GlobalMatricize",
    "LocalMatricize",
    "MatricizeGeometry",
    "SWMatricize",
    "build_matricize",
]

MATRICIZE_KINDS = ("global", "local", "swin")


class _Matricize(nn.Module):
    """Shared machinery: windows of ``window`` voxels, ``partitions`` of the input."""

    kind = ""

    def __init__(
        self,
        head_dim: int,
        window_size: int | Sequence[int] | None = None,
        spatial_dims: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim should be a positive int, got {head_dim!r}.")
        if window_size is not None and not isinstance(window_size, int):
            if spatial_dims is not None and len(window_size) != spatial_dims:
                raise ValueError(
                    f"window_size {tuple(window_size)} should have spatial_dims={spatial_dims} "
                    "entries."
                )
            spatial_dims = len(window_size)
        if spatial_dims is not None and spatial_dims < 1:
            raise ValueError(f"spatial_dims should be >= 1, got {spatial_dims}.")
        if window_size is not None:
            ntuple(window_size, spatial_dims or 1, "window_size")  # validate early
        self.head_dim = head_dim
        self.window_size = window_size
        self.spatial_dims = spatial_dims

    # -- geometry --------------------------------------------------------------------

    def _window(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        window = ntuple(self.window_size, len(spatial), "window_size")
        return tuple(min(w, s) for w, s in zip(window, spatial, strict=True))

    def _shifts(self, window: tuple[int, ...]) -> tuple[int, ...]:
        return (0,) * len(window)

    def geometry(self, shape: Sequence[int]) -> MatricizeGeometry:
        """The :class:`MatricizeGeometry` of an input of shape ``(B, C, *S)``.

        Raises:
            ValueError: If the shape does not have ``spatial_dims`` spatial dims, or if
                ``head_dim`` does not divide the number of channels.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3 or (
            self.spatial_dims is not None and len(shape) != self.spatial_dims + 2
        ):
            want = "(B, C, *spatial)" if self.spatial_dims is None else f"{self.spatial_dims + 2}D"
            raise ValueError(f"{type(self).__name__} expects a {want} input, got shape {shape}.")
        batch, channels, *spatial = shape
        if channels % self.head_dim:
            raise ValueError(
                f"head_dim={self.head_dim} should divide the number of channels, got "
                f"{channels} channels in an input of shape {shape}."
            )
        spatial = tuple(spatial)
        window = self._window(spatial)
        padded = tuple(-(-s // w) * w for s, w in zip(spatial, window, strict=True))
        shifts = self._shifts(window)
        return MatricizeGeometry(
            kind=self.kind,
            batch_size=batch,
            channels=channels,
            head_dim=self.head_dim,
            spatial_size=spatial,
            window=window,
            padded_size=padded,
            shifts=shifts,
            partitions=2 if any(shifts) else 1,
        )

    def _as_geometry(self, like: MatricizeGeometry | Sequence[int]) -> MatricizeGeometry:
        return like if isinstance(like, MatricizeGeometry) else self.geometry(like)

    # -- the two directions --------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Matricize ``x (B, C, *S)`` into ``(num_matrices, head_dim, N)``."""
        geom = self.geometry(x.shape)
        if is_reshape(geom):
            return x.reshape(geom.matrix_shape)
        return matricize(x, geom)

    def _fold(self, z: Tensor, geom: MatricizeGeometry, rows: int) -> Tensor:
        if (
            z.dim() != 3
            or z.shape[0] != geom.num_matrices
            or z.shape[1:] != (rows, geom.window_numel)
        ):
            raise ValueError(
                f"expected matrices of shape {(geom.num_matrices, rows, geom.window_numel)} "
                f"for {geom}, got {tuple(z.shape)}."
            )
        if rows != geom.head_dim:
            geom = replace(geom, head_dim=rows, channels=geom.heads * rows)
        if is_reshape(geom):
            return z.reshape(geom.batch_size, geom.channels, *geom.spatial_size)
        return dematricize(z, geom)

    def inverse(self, z: Tensor, like: MatricizeGeometry | Sequence[int]) -> Tensor:
        """Dematricize ``z (num_matrices, head_dim, N)`` back to ``(B, C, *S)``.

        Args:
            z: Matrices as returned by ``forward`` (or an NMF reconstruction of them).
            like: The input's shape ``(B, C, *S)`` or its :class:`MatricizeGeometry`.
        """
        geom = self._as_geometry(like)
        return self._fold(z, geom, geom.head_dim)

    def dematricize_factor(self, v: Tensor, like: MatricizeGeometry | Sequence[int]) -> Tensor:
        """Spatial maps ``(B, heads, R, *S)`` of a voxel-side factor ``v (…, N, R)``.

        ``v`` is the NMF factor of the columns (``x ≈ u @ v.mT``), with leading dims that
        flatten to ``num_matrices``. Every window's values are placed at its voxels; for
        SW the two partitions are averaged after rolling back, as in :meth:`inverse`. The scale
        of ``v`` in each window is the solver's (``u`` carries the rest of the product).
        """
        geom = self._as_geometry(like)
        rank = v.shape[-1]
        maps = self._fold(v.reshape(-1, geom.window_numel, rank).mT, geom, rank)
        return maps.reshape(geom.batch_size, geom.heads, rank, *geom.spatial_size)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, window_size={self.window_size}"


class GlobalMatricize(_Matricize):
    """Global matricize: heads of ``head_dim`` channels × all voxels, ``(B·C/E, E, prod(S))``.

    No locality; the matrices are a view of a contiguous input.

    Args:
        head_dim: Channels per head ``E`` (rows of every matrix); must divide ``C``.
        spatial_dims: 2 or 3; inferred from the input when ``None``.

    Examples::

        >>> import torch
        >>> m = GlobalMatricize(head_dim=4)
        >>> x = torch.randn(2, 8, 5, 6)
        >>> m(x).shape
        torch.Size([4, 4, 30])
        >>> torch.equal(m.inverse(m(x), x.shape), x)
        True
    """

    kind = "global"

    def __init__(self, head_dim: int, spatial_dims: int | None = None) -> None:
        super().__init__(head_dim, None, spatial_dims)

    def _window(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return spatial

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}"


class LocalMatricize(_Matricize):
    """Local matricize (eq. 7): heads × non-overlapping windows of ``window_size`` voxels.

    Args:
        head_dim: Channels per head ``E``; must divide ``C``.
        window_size: Window size, an int or one per spatial dim; clamped to the input size
            and padded as described in the module docstring.
        spatial_dims: 2 or 3; inferred from ``window_size`` or the input when ``None``.

    Examples::

        >>> import torch
        >>> m = LocalMatricize(head_dim=4, window_size=4)
        >>> x = torch.randn(1, 8, 8, 10)  # 10 is padded to 12
        >>> m(x).shape, m.geometry(x.shape).grid
        (torch.Size([12, 4, 16]), (2, 3))
        >>> torch.equal(m.inverse(m(x), x.shape), x)
        True
    """

    kind = "local"

    def __init__(
        self, head_dim: int, window_size: int | Sequence[int] = 8, spatial_dims: int | None = None
    ) -> None:
        super().__init__(head_dim, window_size, spatial_dims)


class SWMatricize(_Matricize):
    """Shifted-window matricize (eq. 8): Local on ``x`` and on ``x`` rolled by half a window.

    The regular windows come first along the batch, then the shifted ones. The inverse
    folds both, rolls the second back and returns their average (Algorithm 3, with the
    roll back by ``-shift``). Along a dim whose window is 1 voxel there is no shift; if no
    dim can be shifted the operation equals :class:`LocalMatricize`.

    Args:
        head_dim: Channels per head ``E``; must divide ``C``.
        window_size: Window size, an int or one per spatial dim (clamped and padded as
            described in the module docstring); the shift is ``window // 2``.
        spatial_dims: 2 or 3; inferred from ``window_size`` or the input when ``None``.

    Examples::

        >>> import torch
        >>> m = SWMatricize(head_dim=2, window_size=4)
        >>> x = torch.randn(1, 4, 8, 8)
        >>> m(x).shape  # 2 partitions x 2 heads x 4 windows
        torch.Size([16, 2, 16])
        >>> torch.equal(m.inverse(m(x), x.shape), x)
        True
    """

    kind = "swin"

    def __init__(
        self, head_dim: int, window_size: int | Sequence[int] = 8, spatial_dims: int | None = None
    ) -> None:
        super().__init__(head_dim, window_size, spatial_dims)

    def _shifts(self, window: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(w // 2 for w in window)


def build_matricize(
    kind: str,
    head_dim: int,
    window_size: int | Sequence[int] = 8,
    spatial_dims: int | None = None,
) -> GlobalMatricize | LocalMatricize | SWMatricize:
    """Build a matricize module by name (``window_size`` is ignored for ``"global"``).

    Args:
        kind: ``"global"``, ``"local"`` or ``"swin"``.
        head_dim: Channels per head ``E``.
        window_size: Window size for ``"local"`` and ``"swin"``.
        spatial_dims: 2 or 3; inferred when ``None``.

    Examples::

        >>> build_matricize("swin", head_dim=8, window_size=8)
        SWMatricize(head_dim=8, window_size=8)
    """
    if kind == "global":
        return GlobalMatricize(head_dim, spatial_dims)
    if kind == "local":
        return LocalMatricize(head_dim, window_size, spatial_dims)
    if kind == "swin":
        return SWMatricize(head_dim, window_size, spatial_dims)
    raise ValueError(f"matricize should be one of {MATRICIZE_KINDS}, got {kind!r}.")
