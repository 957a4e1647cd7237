"""The local + global Wrapped NMF token mixer: one NMF objective over both contexts (paper §5).

§5 of the paper: "One possible extension of this work is to customize the NMF objective to
simultaneously exploit both local and global contexts." This mixer does exactly that. For
every head (of every image and, for Swin, every view), with ``X_w`` the ReLU'd matrix of
window ``w`` (``E`` rows, the window's voxels as columns), it solves

    ``min ‖X_w - g h_wᵀ - a_w b_wᵀ‖²`` summed over the windows ``w``, all factors ``>= 0``,

a *global* rank-one term whose channel profile ``g`` is shared by every window of the head
(its spatial factor ``h`` spans the whole stage: the Global Factorizer's component) plus a
*local* rank-one term ``a_w b_wᵀ`` per window (the Local Factorizer's component). The layer
outputs ``g h_wᵀ + a_w b_wᵀ`` and is registered as mixer ``"local_global_nmf"``.

Why this formulation, rather than two Wrapped NMFs (a window view and the global view, on
split heads or on the same input) combined by a learned gate or sum:

- it is one model of each matrix, the paper's "customized objective": the two terms compete
  for the same data, so where the global component explains a window the local one is
  left to model what it misses. Two independent NMFs of the same input each reconstruct all
  of it, and their sum counts it twice unless a gate learns to halve it; split heads give
  every head one context only;
- it adds no parameters (the projections are a Wrapped NMF's), so a preset differs from the
  Local Factorizer only in what its NMF computes;
- it is solved by block-coordinate descent with closed-form HALS updates (paper eq. 13, one
  column at a time: ``g``, ``h``, then every ``a_w``, ``b_w``), each the exact minimizer of
  its block, so the objective never increases; the first update of ``g, h`` (with the local
  terms at zero) is the rank-one NMF of the whole head;
- everything stays in the window layout: ``X`` is matricized once and the result folded
  back once, as in a Local Wrapped NMF, and ``X_w [h_w, b_w]`` is one pass over the windows
  (three passes per iteration in all). Backward keeps the matrices once and a few vectors.

Like the paper's NMF it is unrolled for ``iters`` iterations (with ``grad_iters``, only the
last ones are differentiated). As an NMF layer of its network (a
:class:`~nmfseg.mixers.nmf.WrappedNMF`), it records its factors as a rank-2 factorization
of every window: component 0 is the global term (the same ``g`` in every window, so its
maps are seamless), component 1 the local one; ``nmfseg explain`` shows both.

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
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nmfseg.mixers._registry import register_mixer
from nmfseg.mixers.nmf import NMFRecord, WrappedNMF
from nmfseg.nmf import nmf_flops
from nmfseg.nmf.steps import guard, weyl
from nmfseg.routes import autocast_off, work_dtype

__all__ = ["JointFactors", "LocalGlobalNMF", "joint_factorize", "joint_objective"]

_VIEWS = ("local", "swin")


class JointFactors(NamedTuple):
    """The factors of :func:`joint_factorize` for ``x (P, W, E, N)``.

    Attributes:
        g: Global channel factor ``(P, E)``, shared by the ``W`` windows of a group.
        h: Global spatial factor ``(P, W, N)`` (in the windows' layout).
        a: Local channel factors ``(P, W, E)``.
        b: Local spatial factors ``(P, W, N)``.
    """

    g: Tensor
    h: Tensor
    a: Tensor
    b: Tensor

    def as_rank2(self) -> tuple[Tensor, Tensor]:
        """Every window's ``(u (P, W, E, 2), v (P, W, N, 2))``: global term, then local."""
        u = torch.stack([self.g.unsqueeze(1).expand_as(self.a), self.a], -1)
        return u, torch.stack([self.h, self.b], -1)

    def reconstruct(self) -> Tensor:
        """``g h_wᵀ + a_w b_wᵀ`` for every window, ``(P, W, E, N)``."""
        u, v = self.as_rank2()
        return u @ v.mT


def _sq(f: Tensor) -> Tensor:
    return (f * f).sum(-1, keepdim=True)


def _iteration(x: Tensor, f: JointFactors) -> JointFactors:
    """One block-coordinate sweep: ``g``, ``h`` on ``X - L``, then ``a``, ``b`` on ``X - G``."""
    g, h, a, b = f
    xhb = x @ torch.stack([h, b], -1)  # (P, W, E, 2): X_w h_w and X_w b_w, one pass
    own = a * (b * h).sum(-1, keepdim=True)  # L_w h_w
    g = torch.relu((xhb[..., 0] - own).sum(1)) / guard((h * h).sum((1, 2)).unsqueeze(-1))
    xg = (x.mT @ g[:, None, :, None]).squeeze(-1)  # X_wᵀ g, (P, W, N)
    h = torch.relu(xg - b * (a * g.unsqueeze(1)).sum(-1, keepdim=True)) / guard(_sq(g)[:, None])
    a = torch.relu(xhb[..., 1] - g.unsqueeze(1) * (h * b).sum(-1, keepdim=True)) / guard(_sq(b))
    xa = (x.mT @ a.unsqueeze(-1)).squeeze(-1)  # X_wᵀ a_w
    b = torch.relu(xa - h * (g.unsqueeze(1) * a).sum(-1, keepdim=True)) / guard(_sq(a))
    return JointFactors(g, h, a, b)


def _init(x: Tensor) -> JointFactors:
    """Deterministic, size-agnostic start: the local terms at zero (``a = 0``), both spatial
    factors the Weyl values of a window's positions (as :func:`~nmfseg.nmf.default_init`)."""
    p, w, e, n = x.shape
    v0 = weyl(n, 1, x.device, x.dtype)[:, 0].expand(p, w, n)
    return JointFactors(x.new_zeros(p, e), v0, x.new_zeros(p, w, e), v0)


def joint_factorize(x: Tensor, iters: int = 5, grad_iters: int | None = None) -> JointFactors:
    """Factorize groups of window matrices ``x (P, W, E, N) >= 0`` as global + local terms.

    Args:
        x: ``P`` groups (one head of one image) of ``W`` windows, ``E x N`` each.
        iters: Block-coordinate sweeps (``>= 1``).
        grad_iters: Backpropagate through the last ``grad_iters`` sweeps only (``None``: all).

    Returns:
        :class:`JointFactors`, in the input's dtype (half precision is computed in float32).

    Examples::

        >>> x = torch.rand(2, 3, 4, 16)
        >>> f = joint_factorize(x, iters=10)
        >>> f.g.shape, f.h.shape, f.reconstruct().shape
        (torch.Size([2, 4]), torch.Size([2, 3, 16]), torch.Size([2, 3, 4, 16]))
        >>> bool((joint_objective(x, f) < joint_objective(x, joint_factorize(x, iters=1))).all())
        True
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters should be a positive int, got {iters!r}.")
    if grad_iters is not None and (not isinstance(grad_iters, int) or grad_iters < 0):
        raise ValueError(f"grad_iters should be None or a non-negative int, got {grad_iters!r}.")
    if x.dim() != 4:
        raise ValueError(f"x should have shape (P, W, E, N), got {tuple(x.shape)}.")
    out_dtype = x.dtype
    steps = iters if grad_iters is None else min(grad_iters, iters)
    with autocast_off(x):
        x = x.to(work_dtype(x.dtype))
        f = _init(x)
        with torch.no_grad():
            for _ in range(iters - steps):
                f = _iteration(x, f)
        with torch.no_grad() if steps == 0 else nullcontext():
            for _ in range(steps):
                f = _iteration(x, f)
    return JointFactors(*(t.to(out_dtype) for t in f))


def joint_objective(x: Tensor, f: JointFactors) -> Tensor:
    """``Σ_w ‖X_w - g h_wᵀ - a_w b_wᵀ‖²`` per group, ``(P,)``."""
    return ((x - f.reconstruct()) ** 2).sum((1, 2, 3))


class JointNMF(nn.Module):
    """The NMF layer of :class:`LocalGlobalNMF`: ``forward(x (P, W, E, N))`` returns the
    reconstruction. ``iters`` and ``grad_iters`` may change after training; ``rank`` is 2
    (one global and one local component per window) and ``solver`` is ``"hals"`` (the
    block updates are HALS's), both kept for :func:`~nmfseg.mixers.nmf.set_nmf`."""

    flops_category = "nmf"

    def __init__(self, iters: int = 5, grad_iters: int | None = None) -> None:
        super().__init__()
        self.iters = iters
        self.grad_iters = grad_iters
        self.solver = "hals"

    @property
    def rank(self) -> int:
        return 2

    @rank.setter
    def rank(self, value: int) -> None:
        if value != 2:
            raise ValueError(
                f"rank={value}: a local + global NMF layer has rank 2 (one global and one "
                "local component per window)."
            )

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every window's factors ``(u (P, W, E, 2), v (P, W, N, 2))``."""
        return joint_factorize(x, self.iters, self.grad_iters).as_rank2()

    def forward(self, x: Tensor) -> Tensor:
        return joint_factorize(x, self.iters, self.grad_iters).reconstruct()

    def flops(self, x: Tensor) -> int:
        """Counted as a rank-2 HALS of every window (:func:`~nmfseg.nmf.nmf_flops`): the
        sweep's matrix products are the same, the global column being shared."""
        *batch, e, n = x.shape
        return nmf_flops(math.prod(batch), e, n, 2, self.iters)

    def extra_repr(self) -> str:
        return f"iters={self.iters}, grad_iters={self.grad_iters}"


class LocalGlobalNMF(WrappedNMF):
    """Wrapped NMF with a global and a local rank-one term per window (see the module).

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: The window view, ``"local"`` (the default) or ``"swin"`` (each view has
            its own global term; the two reconstructions are averaged as Swin's are).
        head_dim: Channels per matrix (rows ``E``).
        window_size: Window of the local view.
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
        iters: int = 5,
        grad_iters: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        if matricize not in _VIEWS:
            raise ValueError(
                f"matricize should be one of {_VIEWS} (the window view), got {matricize!r}; "
                "the global view is the layer's other term."
            )
        super().__init__(
            channels, spatial_dims, matricize, head_dim, window_size, 2, iters, "hals",
            grad_iters, dropout,
        )  # fmt: skip
        self.nmf = JointNMF(iters, grad_iters)
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
