"""Differentiable Nonnegative Matrix Factorization (paper §3.4.2, Algorithms 1 and 2).

The functional core :func:`nmf` factorizes a batch of nonnegative matrices
``x (..., M, N) ≈ u @ v.mT`` with ``u (..., M, R)`` and ``v (..., N, R)`` by a fixed
number of multiplicative-update (MU) or HALS iterations, so that autograd can
differentiate through the solver. :class:`NMF` wraps it as a module whose settings can
be changed after training (paper §4.5).

Examples::

    >>> import torch
    >>> from nmfseg.nmf import nmf
    >>> x = torch.rand(2, 8, 64)
    >>> u, v = nmf(x, rank=1, iters=5)
    >>> u.shape, v.shape
    (torch.Size([2, 8, 1]), torch.Size([2, 64, 1]))
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn

__all__ = ["NMF", "SOLVERS", "default_init", "nmf", "reconstruct"]

SOLVERS = ("hals", "mu")
EPS = 1e-8  # guards a division only where its denominator can be zero

# Irrational steps of a Kronecker (Weyl) sequence, one per rank component.
_WEYL = (0.6180339887498949, 0.7548776662466927, 0.5698402909980532, 0.4655712318767680)


def _weyl(n: int, rank: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Deterministic values in ``[0.1, 1)`` of shape ``(n, rank)`` (a Weyl sequence)."""
    idx = torch.arange(1, n + 1, device=device, dtype=torch.float64).unsqueeze(-1)
    alpha = torch.tensor(
        [_WEYL[r % len(_WEYL)] + math.sqrt(2.0) * (r // len(_WEYL)) for r in range(rank)],
        device=device,
        dtype=torch.float64,
    )
    frac = torch.frac(idx * alpha + 0.5 * torch.arange(rank, device=device) / max(rank, 1))
    return (0.1 + 0.9 * frac).to(dtype)


def default_init(x: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Deterministic nonnegative initial factors for ``x (..., M, N)``.

    The values depend only on the row/column index and the rank, never on a size fixed
    at construction, so a model runs on any input size and gives the same output for the
    same input in train and eval mode.
    """
    *batch, m, n = x.shape
    u0 = _weyl(m, rank, x.device, x.dtype).expand(*batch, m, rank)
    v0 = _weyl(n, rank, x.device, x.dtype).expand(*batch, n, rank)
    return u0, v0


def _mu_step(x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    u = u * (x @ v) / (u @ (v.mT @ v)).clamp_min(EPS)
    v = v * (x.mT @ u) / (v @ (u.mT @ u)).clamp_min(EPS)
    return u, v


def _hals_update(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    """One Gauss–Seidel sweep over the columns of ``f`` (Algorithm 2, lines 4–5)."""
    cols = list(f.unbind(-1))
    rank = len(cols)
    for r in range(rank):
        acc = a[..., r]
        for ell in range(rank):
            if ell != r:
                acc = acc - b[..., ell, r].unsqueeze(-1) * cols[ell]
        cols[r] = torch.relu(acc / b[..., r, r].unsqueeze(-1).clamp_min(EPS))
    return torch.stack(cols, dim=-1)


def _hals_step(x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    u = _hals_update(x @ v, v.mT @ v, u)
    v = _hals_update(x.mT @ u, u.mT @ u, v)
    return u, v


def nmf(
    x: Tensor,
    rank: int = 1,
    iters: int = 5,
    solver: str = "hals",
    init: tuple[Tensor, Tensor] | None = None,
    grad_iters: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Factorize nonnegative ``x (..., M, N)`` as ``u @ v.mT``.

    Args:
        x: Nonnegative tensor of shape ``(..., M, N)``; all leading dims are a batch.
        rank: Number of components ``R``.
        iters: Number of outer iterations ``T``.
        solver: ``"hals"`` (Algorithm 2, Gauss–Seidel over columns, ``u`` then ``v``)
            or ``"mu"`` (Algorithm 1, multiplicative updates).
        init: Initial factors ``(u0 (..., M, R), v0 (..., N, R))``; ``None`` uses
            :func:`default_init`.
        grad_iters: Backpropagate through all iterations (``None``, the paper) or only
            through the last ``grad_iters`` of them (truncated gradient).

    Returns:
        The factors ``(u, v)`` of shapes ``(..., M, R)`` and ``(..., N, R)``, in the
        input's dtype (computation is done in float32 for half-precision input).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
    if rank < 1 or iters < 0:
        raise ValueError(f"rank should be >= 1 and iters >= 0, got rank={rank}, iters={iters}.")
    if x.dim() < 2:
        raise ValueError(f"x should have shape (..., M, N), got {tuple(x.shape)}.")
    out_dtype = x.dtype
    work_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    autocast_off = (
        torch.autocast(device_type=x.device.type, enabled=False)
        if torch.is_autocast_enabled(x.device.type)
        else nullcontext()
    )
    with autocast_off:
        x = x.to(work_dtype)
        u, v = default_init(x, rank) if init is None else (init[0].to(work_dtype), init[1].to(work_dtype))
        step = _hals_step if solver == "hals" else _mu_step
        n_free = iters if grad_iters is None else max(iters - grad_iters, 0)
        with torch.no_grad() if n_free > 0 and grad_iters is not None else nullcontext():
            for _ in range(n_free if grad_iters is not None else 0):
                u, v = step(x, u, v)
        for _ in range(iters - (n_free if grad_iters is not None else 0)):
            u, v = step(x, u, v)
    return u.to(out_dtype), v.to(out_dtype)


def reconstruct(u: Tensor, v: Tensor) -> Tensor:
    """The low-rank approximation ``u @ v.mT``."""
    return u @ v.mT


class NMF(nn.Module):
    """NMF layer: returns the low-rank reconstruction of a batch of nonnegative matrices.

    ``rank``, ``iters``, ``solver`` and ``grad_iters`` are plain attributes and may be
    changed after training (paper §4.5). The module has no parameters or buffers.

    Args:
        rank: Number of components ``R``.
        iters: Number of outer iterations ``T``.
        solver: ``"hals"`` or ``"mu"``.
        grad_iters: Backpropagate only through the last ``grad_iters`` iterations.

    Examples::

        >>> import torch
        >>> layer = NMF(rank=1, iters=5)
        >>> layer(torch.rand(3, 8, 100)).shape
        torch.Size([3, 8, 100])
    """

    def __init__(
        self, rank: int = 1, iters: int = 5, solver: str = "hals", grad_iters: int | None = None
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
        self.rank = rank
        self.iters = iters
        self.solver = solver
        self.grad_iters = grad_iters

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The factors ``(u, v)`` of ``x`` with this layer's settings."""
        return nmf(x, self.rank, self.iters, self.solver, grad_iters=self.grad_iters)

    def forward(self, x: Tensor) -> Tensor:
        u, v = self.factorize(x)
        return reconstruct(u, v)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, iters={self.iters}, solver={self.solver!r}, grad_iters={self.grad_iters}"
