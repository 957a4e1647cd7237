"""The local + global Wrapped NMF token mixer: one NMF objective over both contexts (paper §5).

§5 of the paper: "One possible extension of this work is to customize the NMF objective to
simultaneously exploit both local and global contexts." This mixer does exactly that. For
every head (of every image and, for Swin, every partition), with ``X_w`` the ReLU'd matrix of
window ``w`` (``E`` rows, the window's voxels as columns), it solves

    ``min Σ_w ‖X_w - g h_wᵀ - A_w B_wᵀ‖²`` over the windows ``w``, all factors ``>= 0``:

a *global* rank-one term whose channel profile ``g`` is shared by every window of the head
(its spatial factor ``h`` spans the whole stage: the Global Factorizer's component) plus
*local* terms ``A_w B_wᵀ`` of rank ``rank - 1`` (default 1) per window (the Local
Factorizer's component). The layer outputs ``g h_wᵀ + A_w B_wᵀ`` and is registered as mixer
``"local_global_nmf"``.

Why this formulation, rather than two Wrapped NMFs (one over windows and one over the whole
stage, on split heads or on the same input) combined by a learned gate or sum:

- it is one model of each matrix, the paper's "customized objective": the two terms compete
  for the same data, so where the global component explains a window the local one is
  left to model what it misses. Two independent NMFs of the same input each reconstruct all
  of it, and their sum counts it twice unless a gate learns to halve it; split heads give
  every head one context only;
- it adds no parameters (the projections are a Wrapped NMF's), so a preset differs from the
  Local Factorizer only in what its NMF computes;
- it is solved by block-coordinate descent with closed-form HALS updates (paper eq. 13, one
  column at a time: ``g``, ``h``, then the columns of every ``A_w``, ``B_w``), each the
  exact minimizer of its block, so the objective never increases; the first update of
  ``g, h`` (with the local terms at zero) is a HALS step of the rank-one NMF of the head;
- everything stays in the window layout: ``X`` is matricized once and the result folded
  back once, as in a Local Wrapped NMF, and ``X_w [h_w, B_w]`` is one pass over the windows
  (three passes per iteration in all). Backward keeps the matrices once and a few vectors.

Like the paper's NMF it is unrolled for ``iters`` iterations (with ``grad_iters``, only the
last ones are differentiated). As an NMF layer of its network (a
:class:`~nmfseg.mixers.nmf.WrappedNMF`), it records its factors as a rank-``rank``
factorization of every window: component 0 is the global term (the same ``g`` in every
window, so its maps are seamless), the others the local ones; ``nmfseg explain`` shows
them all. :func:`~nmfseg.mixers.nmf.set_nmf` may change ``rank`` after training: ``rank=1``
keeps the global term alone.

Examples::

    >>> import torch
    >>> from nmfseg.mixers import create_mixer
    >>> mixer = create_mixer("local_global_nmf", 16, spatial_dims=3, head_dim=8, window_size=4)
    >>> mixer(torch.randn(1, 16, 8, 8, 6)).shape
    torch.Size([1, 16, 8, 8, 6])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nmfseg.mixers._registry import register_mixer
from nmfseg.mixers.nmf import NMFRecord, WrappedNMF
from nmfseg.nmf import nmf_flops
from nmfseg.nmf.steps import _hals_sweep as hals_sweep
from nmfseg.nmf.steps import guard, no_grad_if, unroll, weyl
from nmfseg.routes import autocast_off, work_dtype

__all__ = ["JointFactors", "LocalGlobalNMF", "joint_factorize", "joint_objective"]

_WINDOWED = ("local", "swin")


class JointFactors(NamedTuple):
    """The factors of :func:`joint_factorize` for ``x (P, W, E, N)``, ``r`` local components.

    Attributes:
        g: Global channel factor ``(P, E)``, shared by the ``W`` windows of a group.
        h: Global spatial factor ``(P, W, N)`` (in the windows' layout).
        a: Local channel factors ``(P, W, E, r)``.
        b: Local spatial factors ``(P, W, N, r)``.
    """

    g: Tensor
    h: Tensor
    a: Tensor
    b: Tensor

    def as_factors(self) -> tuple[Tensor, Tensor]:
        """Every window's ``(u (P, W, E, 1 + r), v (P, W, N, 1 + r))``: global, then local."""
        g = self.g[:, None, :, None].expand(*self.a.shape[:-1], 1)
        return torch.cat([g, self.a], -1), torch.cat([self.h.unsqueeze(-1), self.b], -1)

    def reconstruct(self) -> Tensor:
        """``g h_wᵀ + A_w B_wᵀ`` for every window, ``(P, W, E, N)``."""
        u, v = self.as_factors()
        return u @ v.mT


def _sq(f: Tensor) -> Tensor:
    return (f * f).sum(-1, keepdim=True)


def _iteration(x: Tensor, f: JointFactors) -> JointFactors:
    """One block-coordinate sweep: ``g``, ``h`` on ``X - L``, then the columns of ``A``, ``B``
    on ``X - G`` (HALS's column sweep, :func:`~nmfseg.nmf.steps.hals_step`'s)."""
    g, h, a, b = f
    xhb = x @ torch.cat([h.unsqueeze(-1), b], -1)  # X_w [h_w, B_w], one pass
    bh = (b * h.unsqueeze(-1)).sum(-2, keepdim=True)  # h_wᵀ B_w, (P, W, 1, r)
    g = torch.relu((xhb[..., 0] - (a * bh).sum(-1)).sum(1)) / guard((h * h).sum((1, 2))[:, None])
    gw = g[:, None, :, None]  # (P, 1, E, 1)
    ag = (a * gw).sum(-2, keepdim=True)  # gᵀ A_w, (P, W, 1, r)
    h = torch.relu((x.mT @ gw).squeeze(-1) - (b * ag).sum(-1)) / guard(_sq(g)[:, None])
    if a.shape[-1]:
        bh = (b * h.unsqueeze(-1)).sum(-2, keepdim=True)
        a = hals_sweep(xhb[..., 1:] - gw * bh, b.mT @ b, a)  # (X - G) B, BᵀB
        ag = (a * gw).sum(-2, keepdim=True)
        b = hals_sweep(x.mT @ a - h.unsqueeze(-1) * ag, a.mT @ a, b)  # (X - G)ᵀ A, AᵀA
    return JointFactors(g, h, a, b)


def _init(x: Tensor, local_rank: int) -> JointFactors:
    """Deterministic, size-agnostic start: the local terms at zero (``A = 0``), the spatial
    factors the Weyl values of a window's positions (as :func:`~nmfseg.nmf.default_init`)."""
    p, w, e, n = x.shape
    v0 = weyl(n, 1 + local_rank, x.device, x.dtype).expand(p, w, n, 1 + local_rank)
    return JointFactors(
        x.new_zeros(p, e), v0[..., 0], x.new_zeros(p, w, e, local_rank), v0[..., 1:]
    )


def joint_factorize(
    x: Tensor, rank: int = 2, iters: int = 5, grad_iters: int | None = None
) -> JointFactors:
    """Factorize groups of window matrices ``x (P, W, E, N) >= 0`` as global + local terms.

    Args:
        x: ``P`` groups (one head of one image) of ``W`` windows, ``E x N`` each.
        rank: Components per window: the global one and ``rank - 1`` local ones (``1``: the
            global term alone).
        iters: Block-coordinate sweeps (``>= 1``).
        grad_iters: Backpropagate through the last ``grad_iters`` sweeps only (``None``: all).

    Returns:
        :class:`JointFactors`, in the input's dtype (half precision is computed in float32).

    Examples::

        >>> x = torch.rand(2, 3, 4, 16)
        >>> f = joint_factorize(x, iters=10)
        >>> f.g.shape, f.h.shape, f.a.shape
        (torch.Size([2, 4]), torch.Size([2, 3, 16]), torch.Size([2, 3, 4, 1]))
        >>> bool((joint_objective(x, f) < joint_objective(x, joint_factorize(x, iters=1))).all())
        True
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank should be a positive int, got {rank!r}.")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters should be a positive int, got {iters!r}.")
    if grad_iters is not None and (not isinstance(grad_iters, int) or grad_iters < 0):
        raise ValueError(f"grad_iters should be None or a non-negative int, got {grad_iters!r}.")
    if x.dim() != 4:
        raise ValueError(f"x should have shape (P, W, E, N), got {tuple(x.shape)}.")
    out_dtype = x.dtype
    with autocast_off(x):
        x = x.to(work_dtype(x.dtype))
        with no_grad_if(grad_iters == 0):
            f = unroll(
                lambda *f: _iteration(x, JointFactors(*f)), _init(x, rank - 1), iters, grad_iters
            )
    return JointFactors(*(t.to(out_dtype) for t in f))


def joint_objective(x: Tensor, f: JointFactors) -> Tensor:
    """``Σ_w ‖X_w - g h_wᵀ - A_w B_wᵀ‖²`` per group, ``(P,)``."""
    return ((x - f.reconstruct()) ** 2).sum((1, 2, 3))


class JointNMF(nn.Module):
    """The NMF layer of :class:`LocalGlobalNMF`: ``forward(x (P, W, E, N))`` returns the
    reconstruction. ``rank`` (components per window: 1 global + ``rank - 1`` local),
    ``iters`` and ``grad_iters`` may change after training (paper §4.5); ``solver`` is
    ``"hals"`` (the block updates are HALS's) and kept for
    :func:`~nmfseg.mixers.nmf.set_nmf`, which may set ``"mu"`` (the same updates run)."""

    flops_category = "nmf"

    def __init__(self, rank: int = 2, iters: int = 5, grad_iters: int | None = None) -> None:
        super().__init__()
        self.rank = rank
        self.iters = iters
        self.grad_iters = grad_iters
        self.solver = "hals"

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every window's factors ``(u (P, W, E, rank), v (P, W, N, rank))``, global first."""
        return joint_factorize(x, self.rank, self.iters, self.grad_iters).as_factors()

    def forward(self, x: Tensor) -> Tensor:
        return joint_factorize(x, self.rank, self.iters, self.grad_iters).reconstruct()

    def flops(self, x: Tensor) -> int:
        """Counted as a rank-``rank`` HALS of every window (:func:`~nmfseg.nmf.nmf_flops`):
        a sweep's matrix products are the same, the global column being shared."""
        *batch, e, n = x.shape
        return nmf_flops(math.prod(batch), e, n, self.rank, self.iters)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, iters={self.iters}, grad_iters={self.grad_iters}"


class LocalGlobalNMF(WrappedNMF):
    """Wrapped NMF with a global rank-one term and local terms per window (see the module).

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: The windows of the local terms, ``"local"`` (the default) or ``"swin"``
            (each of Swin's two partitions has its own global term; the two reconstructions
            are averaged as Swin's are).
        head_dim: Channels per matrix (rows ``E``).
        window_size: Window of the local terms.
        rank: Components per window: the global one and ``rank - 1`` local ones.
        iters: Block-coordinate sweeps.
        grad_iters: Backpropagate through the last ``grad_iters`` sweeps only.
        dropout: Dropout probability on the output.

    Examples::

        >>> layer = LocalGlobalNMF(8, spatial_dims=2, head_dim=4, window_size=4)
        >>> layer.recorder = []
        >>> layer(torch.randn(1, 8, 9, 7)).shape
        torch.Size([1, 8, 9, 7])
        >>> layer.recorder[0].u.shape, layer.recorder[0].v.shape  # 2 heads x 3 x 2 windows
        (torch.Size([12, 4, 2]), torch.Size([12, 16, 2]))
    """

    ROUTES = frozenset()

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        matricize: str = "local",
        head_dim: int = 8,
        window_size: int | Sequence[int] = 8,
        rank: int = 2,
        iters: int = 5,
        grad_iters: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        if matricize not in _WINDOWED:
            raise ValueError(
                f"matricize should be one of {_WINDOWED} (the windows of the local terms), got "
                f"{matricize!r}; the global term is the layer's own."
            )
        super().__init__(
            channels, spatial_dims, matricize, head_dim, window_size, rank, iters, "hals",
            grad_iters, dropout,
        )  # fmt: skip
        self.nmf = JointNMF(rank, iters, grad_iters)
        self.routes = self.ROUTES

    def mix(self, z: Tensor) -> Tensor:
        """ReLU, matricize, the joint NMF's reconstruction, dematricize (or only the ReLU)."""
        if not self.enabled:
            return torch.relu(z)
        geometry = self.matricize.geometry(z.shape)
        if torch.is_grad_enabled():
            m = torch.relu(self.matricize(z))
        else:
            m = self.matricize(torch.relu(z))
        groups = m.reshape(-1, geometry.num_windows, *m.shape[-2:])
        if self.recorder is None:
            y = self.nmf(groups)
        else:
            u, v = self.nmf.factorize(groups)
            y = u @ v.mT
            u, v = u.flatten(0, 1).detach(), v.flatten(0, 1).detach()
            record = NMFRecord(self.layer_index, u, v, geometry, self.matricize, self.level)
            self.recorder.append(record)
        return self.matricize.inverse(y.reshape(m.shape), geometry)


register_mixer("local_global_nmf")(LocalGlobalNMF)
