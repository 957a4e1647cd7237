"""Where the columns of matricized feature maps come from, and the data movement.

:class:`MatricizeGeometry` describes one matricized input: its shape, the window actually
used along each dim, the padded size and the shift of the second (Swin) partition. The
functions below move voxels between ``(B, C, *S)`` feature maps and ``(num_matrices, rows,
N)`` matrices for a geometry, as autograd functions whose backward is the other direction
(the adjoint); :mod:`nmfseg.nmf.matricize` wraps them as modules.

A *partition* is one way of cutting the input into windows, as in Swin's "window
partitioning": Global and Local matricize have one, Shifted-Window matricize two (the regular
windows, then the windows of the input rolled by half a window). Older names called it a
"view" (``views``, ``view_to_windows``, ``fold_view``), which in PyTorch is a tensor sharing
another's memory; ``is_view`` (now :func:`is_reshape`) meant that sense. The old names work
for one release, with a ``DeprecationWarning``.

Windows are stored as ``(partitions, B, heads, *grid, rows, *window)``, which is the
matrices' memory layout. One partition of the input is moved with a few strided block copies
(no roll, pad or stack): along each dim, the voxels of the (rolled) input that land in the
windows form at most four blocks that are rectangular in (window, offset) coordinates, so a
whole partition takes at most ``4^d`` copies, whatever the number of windows.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MatricizeGeometry",
    "dematricize",
    "fold_partition",
    "is_reshape",
    "matricize",
    "ntuple",
    "partition_to_windows",
    "windows_shape",
]


@dataclass(frozen=True)
class MatricizeGeometry:
    """Where every matrix and column of a matricized input comes from.

    Attributes:
        kind: ``"global"``, ``"local"`` or ``"swin"``.
        batch_size: ``B`` of the input.
        channels: ``C`` of the input.
        head_dim: ``E``, the rows of every matrix.
        spatial_size: The input's spatial size ``S``.
        window: The window actually used along each dim (``window_size`` clamped to ``S``;
            ``S`` itself for global).
        padded_size: ``S`` rounded up to a multiple of ``window``.
        shifts: The roll of the second (shifted) partition; zeros when there is none.
        partitions: 1, or 2 for SW (regular windows first, then shifted windows).
    """

    kind: str
    batch_size: int
    channels: int
    head_dim: int
    spatial_size: tuple[int, ...]
    window: tuple[int, ...]
    padded_size: tuple[int, ...]
    shifts: tuple[int, ...]
    partitions: int

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_size)

    @property
    def heads(self) -> int:
        """Number of heads ``C / E``."""
        return self.channels // self.head_dim

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of windows along each spatial dim."""
        return tuple(p // w for p, w in zip(self.padded_size, self.window, strict=True))

    @property
    def num_windows(self) -> int:
        return math.prod(self.grid)

    @property
    def window_numel(self) -> int:
        """Columns ``N`` of every matrix."""
        return math.prod(self.window)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The matrices' leading dim unflattened: ``(partitions, B, heads, *grid)``."""
        return (self.partitions, self.batch_size, self.heads, *self.grid)

    @property
    def num_matrices(self) -> int:
        return math.prod(self.batch_shape)

    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        """Shape of the matricized tensor ``(num_matrices, E, N)``."""
        return (self.num_matrices, self.head_dim, self.window_numel)

    @property
    def padded(self) -> bool:
        return self.padded_size != self.spatial_size

    @property
    def views(self) -> int:
        """Deprecated name of :attr:`partitions`."""
        _deprecated("MatricizeGeometry.views", "MatricizeGeometry.partitions")
        return self.partitions


def ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``value`` as ``n`` positive ints (one int is repeated); ``ValueError`` naming ``name``.

    Examples::

        >>> ntuple(8, 3, "window_size"), ntuple([4, 4, 2], 3, "window_size")
        ((8, 8, 8), (4, 4, 2))
    """
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n or any(v < 1 for v in out):
        raise ValueError(f"{name} should be a positive int or {n} positive ints, got {value!r}.")
    return out


def is_reshape(geom: MatricizeGeometry) -> bool:
    """Global-like geometry: one window per head, no padding, no shift: a pure reshape."""
    return geom.partitions == 1 and not geom.padded and all(g == 1 for g in geom.grid)


def _segments(size: int, window: int, shift: int) -> list[tuple[int, int, int, int, int]]:
    """Blocks ``(src, g0, ng, o0, nw)`` of one dim: input voxels ``src ... src + ng·nw`` go
    to windows ``g0 ... g0 + ng``, offsets ``o0 ... o0 + nw``, for the input rolled by
    ``shift`` (position ``p`` of the rolled input holds voxel ``(p - shift) mod size``)."""
    ranges = [(0, size)] if shift == 0 else [(size - shift, size), (0, size - shift)]
    out, dst = [], 0
    for src, stop in ranges:
        a, b = dst, dst + stop - src
        while a < b:
            g, o = divmod(a, window)
            if o or b - a < window:  # a partial window
                nw = min(window - o, b - a)
                out.append((src, g, 1, o, nw))
            else:  # whole windows
                nw = window
                out.append((src, g, (b - a) // window, 0, window))
            step = out[-1][2] * nw
            a, src = a + step, src + step
        dst = b
    return out


def _blocks(geom: MatricizeGeometry, partition: int, slab: tuple[int, int] | None = None):
    """All blocks of one partition: per dim, one segment, as a tuple over the spatial dims.
    With ``slab = (a, b)``, only windows ``a ... b`` along the first dim, renumbered from 0."""
    shifts = geom.shifts if partition == 1 else (0,) * geom.spatial_dims
    per_dim = [
        _segments(s, w, sh) for s, w, sh in zip(geom.spatial_size, geom.window, shifts, strict=True)
    ]
    if slab is not None:
        a, b = slab
        per_dim[0] = [
            (src + (lo - g0) * nw, lo - a, hi - lo, o0, nw)
            for src, g0, ng, o0, nw in per_dim[0]
            for lo, hi in [(max(g0, a), min(g0 + ng, b))]
            if lo < hi
        ]
    return itertools.product(*per_dim)


def _spatial_block(x: Tensor, geom: MatricizeGeometry, block) -> Tensor:
    """View of ``x (B, C, *S)`` as ``(B, heads, *ng, rows, *nw)`` for one block."""
    d = geom.spatial_dims
    for i, (src, _, ng, _, nw) in enumerate(block):
        x = x.narrow(2 + 2 * i, src, ng * nw).unflatten(2 + 2 * i, (ng, nw))
    x = x.unflatten(1, (geom.heads, geom.head_dim))
    return x.permute(0, 1, *range(3, 3 + 2 * d, 2), 2, *range(4, 4 + 2 * d, 2))


def _window_block(w: Tensor, geom: MatricizeGeometry, block) -> Tensor:
    """View of one partition's windows ``(B, heads, *grid, rows, *window)`` for one block."""
    d = geom.spatial_dims
    for i, (_, g0, ng, o0, nw) in enumerate(block):
        w = w.narrow(2 + i, g0, ng).narrow(3 + d + i, o0, nw)
    return w


def windows_shape(geom: MatricizeGeometry, slab: tuple[int, int] | None = None) -> tuple[int, ...]:
    """Shape ``(B, heads, *grid, rows, *window)`` of one partition's windows, or of the windows
    ``a ... b`` along the first spatial dim for ``slab = (a, b)``."""
    grid = geom.grid if slab is None else (slab[1] - slab[0], *geom.grid[1:])
    return (geom.batch_size, geom.heads, *grid, geom.head_dim, *geom.window)


def partition_to_windows(
    x: Tensor,
    geom: MatricizeGeometry,
    partition: int,
    slab: tuple[int, int] | None = None,
    buffer: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """One partition of ``x (B, C, *S)`` as matrices ``(num_matrices // partitions, rows,
    N)``, zeros at padding: the part of :func:`matricize`'s output that belongs to
    ``partition``. With ``slab = (a, b)``, only the windows ``a ... b`` along the first
    spatial dim; with a 1-D ``buffer``, the matrices are written into its first elements;
    with ``relu``, ``relu(x)``'s matrices, the ReLU applied as the voxels are copied (one
    pass over the matrices instead of two)."""
    shape = windows_shape(geom, slab)
    if buffer is None:
        out = (torch.zeros if geom.padded else torch.empty)(shape, dtype=x.dtype, device=x.device)
    else:
        out = buffer[: math.prod(shape)].view(shape)
        if geom.padded:
            out.zero_()
    _fill_partition(out, x, geom, partition, slab, relu)
    return out.view(-1, geom.head_dim, geom.window_numel)


def fold_partition(
    out: Tensor,
    z: Tensor,
    geom: MatricizeGeometry,
    partition: int,
    slab: tuple[int, int] | None = None,
    scale: float = 1.0,
) -> None:
    """Fold one partition's matrices ``z`` (from :func:`partition_to_windows`) back into
    ``out (B, C, *S)``: partition 0 writes its voxels (all of them over its slabs, so ``out``
    may be uninitialized), the others add to them; padding is dropped. With ``scale``,
    ``scale * z`` is folded, in the same pass (0.5: the average of two partitions, exactly
    ``0.5 * (a + b)``, since halving commutes with rounding)."""
    z = z.reshape(windows_shape(geom, slab))
    for block in _blocks(geom, partition, slab):
        dst, src = _spatial_block(out, geom, block), _window_block(z, geom, block)
        if partition == 0:
            dst.copy_(src) if scale == 1.0 else torch.mul(src, scale, out=dst)
        else:
            dst.add_(src, alpha=scale)


def _fill_partition(
    windows: Tensor,
    x: Tensor,
    geom: MatricizeGeometry,
    partition: int,
    slab: tuple[int, int] | None = None,
    relu: bool = False,
) -> None:
    """Copy one partition of ``x`` (of ``relu(x)`` with ``relu``) into ``windows (B, heads,
    *grid, rows, *window)``."""
    for block in _blocks(geom, partition, slab):
        dst, src = _window_block(windows, geom, block), _spatial_block(x, geom, block)
        torch.clamp_min(src, 0, out=dst) if relu else dst.copy_(src)


def _to_windows(x: Tensor, geom: MatricizeGeometry) -> Tensor:
    """``x (B, C, *S)`` -> matrices ``(num_matrices, rows, N)``, zeros at padding."""
    shape = (*geom.batch_shape, geom.head_dim, *geom.window)
    out = (torch.zeros if geom.padded else torch.empty)(shape, dtype=x.dtype, device=x.device)
    for partition in range(geom.partitions):
        _fill_partition(out[partition], x, geom, partition)
    return out.view(geom.matrix_shape)


def _from_windows(z: Tensor, geom: MatricizeGeometry, average: bool) -> Tensor:
    """Matrices -> ``(B, C, *S)``: the sum (or the average) of the partitions, padding
    dropped."""
    z = z.reshape(geom.partitions, -1, *z.shape[1:])
    shape = (geom.batch_size, geom.channels, *geom.spatial_size)
    out = torch.empty(shape, dtype=z.dtype, device=z.device)
    for partition in range(geom.partitions):
        fold_partition(out, z[partition], geom, partition)
    if geom.partitions == 2 and average:
        out.mul_(0.5)  # (a + b) * 0.5 is exact for a == b: the round trip is exact
    return out


class _MatricizeFn(torch.autograd.Function):
    """Matricize; its adjoint is the sum of the partitions folded back."""

    @staticmethod
    def forward(ctx, x: Tensor, geom: MatricizeGeometry) -> Tensor:  # type: ignore[override]
        ctx.geom = geom
        return _to_windows(x, geom)

    @staticmethod
    def backward(ctx, dz: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _FoldFn.apply(dz, ctx.geom, False), None


class _FoldFn(torch.autograd.Function):
    """The partitions folded back: their average (dematricize, Algorithm 3) or, with
    ``average=False``, their sum (the adjoint of matricize)."""

    @staticmethod
    def forward(ctx, z: Tensor, geom: MatricizeGeometry, average: bool) -> Tensor:  # type: ignore[override]
        ctx.geom, ctx.average = geom, average
        return _from_windows(z, geom, average=average)

    @staticmethod
    def backward(ctx, dx: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        dz = _MatricizeFn.apply(dx, ctx.geom)
        return (dz * 0.5 if ctx.average and ctx.geom.partitions == 2 else dz), None, None


def matricize(x: Tensor, geom: MatricizeGeometry) -> Tensor:
    """``x (B, C, *S)`` as matrices ``(num_matrices, head_dim, N)`` (zeros at padding)."""
    return _MatricizeFn.apply(x, geom)


def dematricize(z: Tensor, geom: MatricizeGeometry) -> Tensor:
    """Matrices back to ``(B, C, *S)``: the partitions folded back and averaged (Algorithm 3)."""
    return _FoldFn.apply(z, geom, True)


#: Old name -> new name, kept one release (the Swin "view" is a partition).
_RENAMED = {
    "view_to_windows": "partition_to_windows",
    "fold_view": "fold_partition",
    "is_view": "is_reshape",
}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        _deprecated(f"nmfseg.nmf.windows.{name}", _RENAMED[name])
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
