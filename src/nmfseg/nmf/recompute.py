"""Rank-1 NMF of matricized feature maps, a piece at a time, keeping only the input.

``dematricize(Rank1Projection(relu(matricize(z))))``, the core of a Swin (or Local) Wrapped
NMF layer (:class:`~nmfseg.mixers.nmf.WrappedNMF`), as one autograd node. Built from its
parts, it materializes both partitions of every voxel (twice the size of ``z``) and their
projection, and autograd keeps the ReLU'd matrices for backward. This node works on one
piece at a time: some heads of one partition, or a slab of windows of one head where a head
is larger than ``_PIECE_BYTES`` (every matrix is its own NMF problem; the output is the
partitions' average). It keeps ``z`` for backward and matricizes each piece again there,
writing the input gradient of a piece's matrices into the buffer of their output gradient.
So besides ``z``, the output and their gradients only two pieces are alive at once, and a
piece stays in the CPU's cache between its copy, its projection and its fold. Inference
takes the same route (without autograd nothing is kept). It computes the same function with
the same derivatives (the ReLU's derivative is 0 at 0, as ``torch.relu``'s);
``tests/test_routes.py`` checks it against the composition for every way of cutting
pieces.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import Tensor

from nmfseg.nmf.rank1 import (
    _grad_steps,
    projection_forward,
    projection_grads,
    projection_input_grad,
)
from nmfseg.nmf.steps import weyl
from nmfseg.nmf.windows import (
    MatricizeGeometry,
    fold_partition,
    partition_to_windows,
    windows_shape,
)
from nmfseg.routes.precision import backward_without_autocast

__all__ = ["MatricizedRank1", "matricized_rank1"]

_MASK_CHUNK = 1 << 10  # matrices per chunk of the ReLU's mask (a bool copy of the chunk)
_PIECE_BYTES = 8 << 20  # about the size of a piece (never less than one row of windows)


_Piece = tuple[int, slice, MatricizeGeometry, tuple[int, int] | None]


def _pieces(geom: MatricizeGeometry, z: Tensor) -> Iterator[_Piece]:
    """``(partition, channels, geometry, slab)`` of the pieces the node works on: of one
    partition, a run of whole heads (their channels of the input and the geometry of those
    channels alone) or, where one head is larger than ``_PIECE_BYTES``, a slab of one head's
    windows along the first spatial dim. Off the CPU a piece is a whole partition (fewer
    kernel launches)."""
    e, grid0 = geom.head_dim, geom.grid[0]
    head_bytes = math.prod(windows_shape(replace(geom, channels=e))) * z.element_size()
    budget = _PIECE_BYTES if z.device.type == "cpu" else head_bytes * geom.heads
    heads = max(1, budget // head_bytes)
    rows = grid0 if heads > 1 else max(1, budget // (head_bytes // grid0))
    for partition in range(geom.partitions):
        for h0 in range(0, geom.heads, heads):
            h1 = min(h0 + heads, geom.heads)
            sub = replace(geom, channels=(h1 - h0) * e)
            for a in range(0, grid0, rows):
                slab = None if rows == grid0 else (a, min(a + rows, grid0))
                yield partition, slice(h0 * e, h1 * e), sub, slab


def _buffers(pieces: list[_Piece], z: Tensor) -> tuple[Tensor, Tensor]:
    """Two flat buffers as large as the largest piece, which every piece of a pass reuses: two
    allocations per layer instead of two per piece, which the C allocator kept apart (with
    pieces of a few MiB, the process's training peak grew by a fifth)."""
    numel = max(math.prod(windows_shape(sub, slab)) for _, _, sub, slab in pieces)
    return z.new_empty(numel), z.new_empty(numel)


def _relu_grad_(dx: Tensor, x: Tensor) -> None:
    """``dx[x <= 0] = 0`` in place, the mask taken a chunk of matrices at a time."""
    for d, v in zip(dx.split(_MASK_CHUNK), x.split(_MASK_CHUNK), strict=True):
        d.masked_fill_(v <= 0, 0)


class MatricizedRank1(torch.autograd.Function):
    """``dematricize(Rank1Projection(relu(matricize(z))))``; saves ``z``, not the matrices."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, z: Tensor, g0: Tensor, geom: MatricizeGeometry, iters: int, grad_iters: int | None
    ) -> Tensor:
        out = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        saved: list[Tensor | None] = []
        pieces = list(_pieces(geom, z))
        buffers = _buffers(pieces, z)
        scale = 0.5 if geom.partitions == 2 else 1.0  # the partitions' average, while folding
        for partition, chans, sub, slab in pieces:
            x = partition_to_windows(z[:, chans], sub, partition, slab, buffers[0], relu=True)
            y = buffers[1][: x.numel()].view(x.shape)
            y, parts = projection_forward(x, g0, iters, grad_iters, out=y)
            fold_partition(out[:, chans], y, sub, partition, slab, scale)
            saved.extend(parts)
        ctx.save_for_backward(z, g0, *saved)
        ctx.geom, ctx.pieces, ctx.steps = geom, pieces, _grad_steps(iters, grad_iters)
        return out

    @staticmethod
    @backward_without_autocast
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        z, g0, *saved = ctx.saved_tensors
        need_z, need_g0 = ctx.needs_input_grad[:2]
        dz = torch.empty(z.shape, dtype=dout.dtype, device=dout.device) if need_z else None
        dg0 = None
        # The adjoint of the partitions' average: the gradients are linear in dY, so dY is
        # taken unscaled and the scale applied to dg0 at the end and to dX while folding
        # (exact: halving commutes with rounding).
        scale = 0.5 if ctx.geom.partitions == 2 else 1.0
        buffers = _buffers(ctx.pieces, z)
        for i, (partition, chans, sub, slab) in enumerate(ctx.pieces):
            parts = saved[4 * i : 4 * i + 4]
            dy = partition_to_windows(dout[:, chans], sub, partition, slab, buffers[0])
            x = partition_to_windows(z[:, chans], sub, partition, slab, buffers[1], relu=True)
            f, s, da, dg = projection_grads(x, g0, parts, ctx.steps, dy, need_g0)
            if dg is not None:
                dg0 = dg if dg0 is None else dg0 + dg
            if dz is not None:
                dx = projection_input_grad(x, g0, parts, f, s, da, dy, out=dy)  # over dY
                _relu_grad_(dx, x)
                # the adjoint of matricize: the partitions' sum
                fold_partition(dz[:, chans], dx, sub, partition, slab, scale)
        if dg0 is not None and scale != 1.0:
            dg0 = dg0 * scale
        return dz, dg0, None, None, None


def matricized_rank1(
    z: Tensor, geom: MatricizeGeometry, iters: int, grad_iters: int | None = None
) -> Tensor:
    """The rank-1 Wrapped NMF core of ``z (B, C, *S)`` with the default initialization
    (what ``NMF(rank=1)`` computes on ``relu(matricize(z))``, dematricized); ``iters >= 1``.

    Examples::

        >>> from nmfseg.nmf import build_matricize, nmf_reconstruct
        >>> mat = build_matricize("swin", head_dim=4, window_size=3, spatial_dims=3)
        >>> z = torch.randn(1, 8, 5, 6, 7, dtype=torch.float64)
        >>> geom = mat.geometry(z.shape)
        >>> reference = mat.inverse(nmf_reconstruct(torch.relu(mat(z)), iters=4), geom)
        >>> torch.allclose(matricized_rank1(z, geom, iters=4), reference)
        True
    """
    g0 = weyl(geom.window_numel, 1, z.device, z.dtype)[:, 0]
    return MatricizedRank1.apply(z, g0, geom, iters, grad_iters)
