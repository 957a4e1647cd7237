"""Greedy-rank NMF: nonnegative rank-one components added one at a time (paper §5).

§5 of the paper proposes choosing the rank automatically "by taking a greedy approach to
NMF, a.k.a. Nonnegative Matrix Underapproximation, where the components are constructed and
added one by one (sequentially) until some criteria are met. This can benefit especially Local
Factorizer as different regions happen to have different optimal ranks". :func:`greedy_nmf`
does that for a batch of matrices ``x (..., M, N) >= 0``, each matrix (each window of a Local
Factorizer) stopping at its own rank:

- component ``k`` is the nonnegative rank-one term ``u_k v_kᵀ`` fitted to the residual
  ``E_{k-1} = X - Σ_{l<k} u_l v_lᵀ`` by ``iters`` alternating exact minimizations, the HALS
  update of paper eq. 13 for one column, ``u ← [E v]₊ / ‖v‖²``, ``v ← [Eᵀ u]₊ / ‖u‖²``;
  earlier components are not revisited;
- a matrix stops when ``‖E_k‖ <= tol·‖X‖``, when ``k = max_rank``, or when its new component
  is zero (no nonnegative rank-one term found from the init lowers the residual: the next
  one would be the same); components after the stop are zeroed, and ``ranks`` counts the
  others. An all-zero matrix has rank 0.

The batch runs a fixed loop of ``max_rank`` components with a per-matrix mask, so it stays
batched and differentiable (unrolled like :func:`~nmfseg.nmf.nmf`, with the same truncated
gradient: with ``grad_iters``, only the last ``grad_iters`` iterations of each component are
differentiated). The stop is a step function of the input: its derivative is zero, as a
rank is not differentiated. The loop ends early once every matrix has stopped (not while
tracing or compiling).

Why this scheme and not NMU or a clipped deflation:

- NMU (Gillis & Glineur, 2010) asks ``u vᵀ <= R``, so each component must vanish wherever
  the residual does. The matrices of a Factorizer are ReLU'd projections with scattered
  zeros (about half of the entries), so an underapproximation is confined to all-positive
  rows x columns blocks: its components would follow the ReLU's zero pattern, not the
  window's content. Its Lagrangian solver also keeps an ``M x N`` multiplier per component
  and is feasible only in the limit: a fixed number of unrolled iterations needs a final
  rescaling by the smallest ratio ``R_ij / (u_i v_j)``, whose gradient flows through one
  entry per matrix.
- Deflation with clipping (rank-one NMF of ``R ≥ 0``, then ``R ← [R - u vᵀ]₊``) reuses the
  rank-one solver at every step, but the overshoot it clips away is never accounted for:
  ``X - Σ u_k v_kᵀ`` is not the residual it measures, so its stop would not measure the
  layer's output. It also keeps every clipped residual (``M x N`` each) for backward.
- Fitting the signed residual keeps the stop exact (the output's error is ``‖E_K‖``) and
  monotone: each ``v`` update is the exact minimizer over ``v >= 0`` for its ``u``, so
  ``‖E_k‖² = ‖E_{k-1}‖² - ‖u_k‖²‖v_k‖² <= ‖E_{k-1}‖²``, a closed form that costs nothing.
  The residual is never formed: ``E v = X v - U (Vᵀ v)``, so backward keeps ``X`` once and
  a few vectors, whatever the rank. The first residual is ``X >= 0`` itself, where the
  update needs no ``[·]₊`` and the exact rank-one fast path of :mod:`nmfseg.nmf.rank1`
  computes the same component: so the first component is the paper's rank-one NMF (same
  values and gradients), and ``max_rank=1`` is the rank-one Wrapped NMF.

No greedy nonnegative scheme recovers a general nonnegative rank-2 matrix in two
components (the first is a mixture of both parts); parts on disjoint rows and columns (a
window holding two different regions) are recovered, given iterations enough to separate
them.

Examples::

    >>> import torch
    >>> x = torch.rand(6, 8, 64)
    >>> u, v, ranks, residuals = greedy_nmf(x, max_rank=4, tol=0.4)
    >>> u.shape, v.shape, ranks.shape, residuals.shape
    (torch.Size([6, 8, 4]), torch.Size([6, 64, 4]), torch.Size([6]), torch.Size([6, 5]))
    >>> bool((residuals[:, 1:] <= residuals[:, :-1] + 1e-6).all())  # never increases
    True
    >>> greedy_nmf(torch.zeros(1, 8, 64)).ranks
    tensor([0])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nmfseg.nmf.rank1 import rank1_factors
from nmfseg.nmf.solvers import SOLVERS, _check_input
from nmfseg.nmf.steps import guard, no_grad_if, unroll, weyl
from nmfseg.routes import autocast_off, work_dtype

__all__ = ["GreedyFactors", "GreedyNMF", "greedy_flops", "greedy_nmf"]


class GreedyFactors(NamedTuple):
    """What :func:`greedy_nmf` returns.

    Attributes:
        u: Channel factors ``(..., M, max_rank)``; columns after a matrix's stop are zero.
        v: Spatial factors ``(..., N, max_rank)``, likewise.
        ranks: Components kept per matrix, ``(...)`` int64 (detached).
        residuals: ``‖E_k‖ / ‖X‖`` after ``k = 0 .. max_rank`` components, ``(..., max_rank
            + 1)`` (detached; 0 for an all-zero matrix; flat after the stop).
    """

    u: Tensor
    v: Tensor
    ranks: Tensor
    residuals: Tensor


def _check(max_rank: int, tol: float, iters: int, grad_iters: int | None) -> None:
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank should be a positive int, got {max_rank!r}.")
    if not isinstance(tol, int | float) or not 0 <= tol < 1:
        raise ValueError(f"tol should be a number in [0, 1), got {tol!r}.")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters should be a positive int, got {iters!r}.")
    if grad_iters is not None and (not isinstance(grad_iters, int) or grad_iters < 0):
        raise ValueError(f"grad_iters should be None or a non-negative int, got {grad_iters!r}.")


def _matvec(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``a (B, P, Q)`` and a batch of vectors ``b (B, Q)``."""
    return (a @ b.unsqueeze(-1)).squeeze(-1)


def _sqnorm(f: Tensor) -> Tensor:
    return (f * f).sum(-1, keepdim=True)


def _residual_step(x: Tensor, us: Tensor, vs: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """One HALS iteration of a rank-one term on ``E = X - us @ vs.mT``, never formed."""
    ev = _matvec(x, v) - _matvec(us, _matvec(vs.mT, v))
    u = torch.relu(ev) / guard(_sqnorm(v))
    eu = _matvec(x.mT, u) - _matvec(vs, _matvec(us.mT, u))
    return u, torch.relu(eu) / guard(_sqnorm(u))


def _component(
    x: Tensor, us: Tensor, vs: Tensor, v0: Tensor, iters: int, grad_iters: int | None
) -> tuple[Tensor, Tensor]:
    """The next rank-one term: ``iters >= 1`` iterations, the last ``grad_iters`` with
    autograd."""
    u0 = v0.new_zeros(v0.shape[0], x.shape[-2])
    return unroll(lambda u, v: _residual_step(x, us, vs, v), (u0, v0), iters, grad_iters)


def _may_stop_early(x: Tensor) -> bool:
    """Whether the loop may look at the data to end early (not while tracing, compiling or
    running on the meta device, as :func:`~nmfseg.models.complexity.count_flops` does)."""
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    return not tracing and x.device.type != "meta"


def _greedy(
    x: Tensor, max_rank: int, tol: float, iters: int, grad_iters: int | None
) -> GreedyFactors:
    """:func:`greedy_nmf` on ``x (B, M, N)`` in the working dtype, autocast off."""
    b, m, n = x.shape
    g0 = weyl(n, 1, x.device, x.dtype)[:, 0]
    with torch.no_grad():
        r2 = (x * x).sum((-2, -1))  # ‖E_k‖², updated in closed form
        norm = r2.sqrt()
        floor = (tol * norm) ** 2
        active = r2 > floor
        history = [r2]
    us = x.new_zeros(b, m, 0)
    vs = x.new_zeros(b, n, 0)
    kept = x.new_zeros(b, dtype=torch.long)
    for k in range(max_rank):
        if k and _may_stop_early(x) and not bool(active.any()):
            pad = max_rank - k
            us = torch.cat([us, us.new_zeros(b, m, pad)], -1)
            vs = torch.cat([vs, vs.new_zeros(b, n, pad)], -1)
            history += [r2] * pad
            break
        if k == 0:  # X >= 0: the rank-one fast path, the paper's NMF
            u, v = rank1_factors(x, g0, iters, grad_iters)
        else:
            u, v = _component(x, us, vs, g0.expand(b, n), iters, grad_iters)
        with torch.no_grad():
            drop = (_sqnorm(u) * _sqnorm(v)).squeeze(-1)  # ‖E_{k-1}‖² - ‖E_k‖²
            keep = active & (drop > 0)
            r2 = torch.where(keep, (r2 - drop).clamp_min(0), r2)
            kept += keep.long()
            active = keep & (r2 > floor)
            history.append(r2)
        mask = keep.to(x.dtype).unsqueeze(-1)
        us = torch.cat([us, (u * mask).unsqueeze(-1)], -1)
        vs = torch.cat([vs, (v * mask).unsqueeze(-1)], -1)
    residuals = torch.stack(history, -1).sqrt() / guard(norm).unsqueeze(-1)
    return GreedyFactors(us, vs, kept, residuals)


def greedy_nmf(
    x: Tensor,
    max_rank: int = 4,
    tol: float = 0.1,
    iters: int = 5,
    grad_iters: int | None = None,
) -> GreedyFactors:
    """Greedy-rank NMF of nonnegative ``x (..., M, N)`` (see the module docstring).

    Args:
        x: Nonnegative tensor ``(..., M, N)``; all leading dims are a batch.
        max_rank: Most components per matrix (at most ``min(M, N)``).
        tol: A matrix stops once ``‖X - Σ u_k v_kᵀ‖ <= tol·‖X‖``; in ``[0, 1)``. In float32
            the closed-form residual resolves ``tol`` down to about ``1e-3``.
        iters: Iterations per component (``>= 1``).
        grad_iters: Backpropagate through the last ``grad_iters`` iterations of each
            component only (``None``: all).

    Returns:
        :class:`GreedyFactors` ``(u, v, ranks, residuals)``; ``x ≈ u @ v.mT``. ``u`` and
        ``v`` have the input's dtype; half precision is computed in float32.

    Raises:
        ValueError: An argument out of range, ``max_rank > min(M, N)``, or ``x`` with a
            negative or NaN entry.

    Examples::

        >>> a = torch.tensor([[1.0, 2.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0], [0, 0, 3.0, 1.0]])
        >>> u, v, ranks, residuals = greedy_nmf(a, max_rank=3, tol=1e-3, iters=20)
        >>> int(ranks), torch.allclose(u @ v.mT, a, atol=1e-4)
        (2, True)
    """
    _check(max_rank, tol, iters, grad_iters)
    if x.dim() < 2:
        raise ValueError(f"x should have shape (..., M, N), got {tuple(x.shape)}.")
    _check_input(x, max_rank)
    return _factorize(x, max_rank, tol, iters, grad_iters)


def _factorize(
    x: Tensor, max_rank: int, tol: float, iters: int, grad_iters: int | None
) -> GreedyFactors:
    """:func:`greedy_nmf` without the check of ``x``'s values (what :class:`GreedyNMF` runs)."""
    _check(max_rank, tol, iters, grad_iters)
    out_dtype, shape = x.dtype, x.shape
    with autocast_off(x), no_grad_if(grad_iters == 0):
        flat = x.to(work_dtype(x.dtype)).reshape(-1, *shape[-2:])
        u, v, ranks, residuals = _greedy(flat, max_rank, tol, iters, grad_iters)
    batch = shape[:-2]
    return GreedyFactors(
        u.view(*batch, shape[-2], max_rank).to(out_dtype),
        v.view(*batch, shape[-1], max_rank).to(out_dtype),
        ranks.view(batch),
        residuals.view(*batch, max_rank + 1),
    )


def greedy_flops(batch: int, m: int, n: int, max_rank: int, iters: int) -> int:
    """FLOPs of :func:`greedy_nmf` and the reconstruction when every matrix takes
    ``max_rank`` components (the bound; the ranks depend on the data): the first component
    as the paper counts rank-one HALS, each later one ``4MN + 4(M + N)k`` per iteration for
    ``E v`` and ``Eᵀ u`` with ``k`` earlier components, then ``2MNK`` for ``U Vᵀ``.

    Examples::

        >>> greedy_flops(1, 8, 512, 1, 5) == 5 * (4 * 8 * 512 + 4 * 520) + 2 * 8 * 512
        True
    """
    first = iters * (4 * m * n + 4 * (m + n))
    later = sum(iters * (4 * m * n + 4 * (m + n) * k) for k in range(1, max_rank))
    return batch * (first + later + 2 * m * n * max_rank)


class GreedyNMF(nn.Module):
    """Greedy-rank NMF layer: the reconstruction ``u @ v.mT`` of :func:`greedy_nmf`.

    Has the attributes :func:`~nmfseg.mixers.nmf.set_nmf` changes on an NMF layer:
    ``rank`` is the most components (``max_rank``), ``iters`` the iterations per component;
    ``solver`` is kept for those functions only: a component is always fitted by the
    rank-one HALS update (at rank one MU computes the same on the nonnegative first
    residual, and on a signed residual only the HALS update is defined). After each call,
    ``last_ranks`` holds the ranks chosen per matrix (detached), and ``rank_log``, when a
    list, gets them appended.

    Args:
        max_rank: Most components per matrix.
        tol: Relative residual at which a matrix stops.
        iters: Iterations per component.
        grad_iters: Backpropagate through the last ``grad_iters`` iterations of each
            component only.

    Examples::

        >>> layer = GreedyNMF(max_rank=3, tol=0.5)
        >>> layer(torch.rand(5, 8, 100)).shape
        torch.Size([5, 8, 100])
        >>> layer.last_ranks.shape, int(layer.last_ranks.max()) <= 3
        (torch.Size([5]), True)
    """

    flops_category = "nmf"

    def __init__(
        self, max_rank: int = 4, tol: float = 0.1, iters: int = 5, grad_iters: int | None = None
    ) -> None:
        super().__init__()
        _check(max_rank, tol, iters, grad_iters)
        self.rank = max_rank
        self.tol = tol
        self.iters = iters
        self.solver = SOLVERS[0]
        self.grad_iters = grad_iters
        self.last_ranks: Tensor | None = None
        self.rank_log: list[Tensor] | None = None

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The factors ``(u, v)`` of ``x (..., M, N)``, ``rank`` columns each."""
        u, v, ranks, _ = _factorize(x, self.rank, self.tol, self.iters, self.grad_iters)
        self.last_ranks = ranks
        if self.rank_log is not None:
            self.rank_log.append(ranks.cpu())
        return u, v

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x (..., M, N)``, same shape."""
        u, v = self.factorize(x)
        return u @ v.mT

    def flops(self, x: Tensor) -> int:
        """FLOPs of :meth:`forward` on ``x`` when every matrix takes ``rank`` components."""
        *batch, m, n = x.shape
        return greedy_flops(math.prod(batch), m, n, self.rank, self.iters)

    def extra_repr(self) -> str:
        return (
            f"max_rank={self.rank}, tol={self.tol}, iters={self.iters}, "
            f"grad_iters={self.grad_iters}"
        )
