"""Rank-1 NMF of Swin-matricized feature maps that keeps only the feature map for backward.

``dematricize(Rank1Projection(relu(matricize(z))))``, the core of a Swin Wrapped NMF layer
(:class:`~nmfseg.mixers.nmf.WrappedNMF`), as one autograd node. Built from its parts,
autograd keeps the ReLU'd matrices for backward: two views of every voxel, twice the size of
``z``. This node keeps ``z`` and matricizes it again in backward, and its backward writes the
input gradient of the matrices into the buffer of their output gradient (its own copy), so
that at most two matrix-sized tensors are alive at once instead of three. It computes the
same function with the same derivatives (the ReLU's derivative is 0 at 0, as
``torch.relu``'s); ``tests/test_matricize.py`` checks it against the composition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmfseg.nmf.rank1 import (
    _grad_steps,
    projection_forward,
    projection_grads,
    projection_input_grad,
)
from nmfseg.nmf.steps import weyl
from nmfseg.nmf.windows import MatricizeGeometry, _from_windows, _to_windows

__all__ = ["MatricizedRank1", "matricized_rank1"]


class MatricizedRank1(torch.autograd.Function):
    """``dematricize(Rank1Projection(relu(matricize(z))))``; saves ``z``, not the matrices."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, z: Tensor, g0: Tensor, geom: MatricizeGeometry, iters: int, grad_iters: int | None
    ) -> Tensor:
        x = torch.relu_(_to_windows(z, geom))
        y, saved = projection_forward(x, g0, iters, grad_iters)
        del x
        ctx.save_for_backward(z, g0, *saved)
        ctx.geom, ctx.steps = geom, _grad_steps(iters, grad_iters)
        return _from_windows(y, geom, average=True)

    @staticmethod
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        z, g0, *saved = ctx.saved_tensors
        geom = ctx.geom
        need_z, need_g0 = ctx.needs_input_grad[:2]
        dy = _to_windows(dout, geom)  # the adjoint of the views' average
        if geom.views == 2:
            dy.mul_(0.5)
        x = torch.relu_(_to_windows(z, geom))
        f, s, da, dg0 = projection_grads(x, g0, saved, ctx.steps, dy, need_g0)
        if not need_z:
            return None, dg0, None, None, None
        dx = projection_input_grad(x, g0, saved, f, s, da, dy, out=dy)  # over dY: its own copy
        dx.masked_fill_(x <= 0, 0)  # the ReLU
        del x
        return _from_windows(dx, geom, average=False), dg0, None, None, None


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
