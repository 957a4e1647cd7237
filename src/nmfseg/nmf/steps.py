"""The general NMF solvers, any rank (paper §3.4.2, Algorithms 1 and 2), and their init.

One call of :func:`mu_step` or :func:`hals_step` is one outer iteration of Algorithm 1
(multiplicative updates) or Algorithm 2 (HALS: a Gauss–Seidel sweep over the columns of
``u``, then of ``v``); :func:`run_steps` runs ``T`` of them, the first ``T - grad_iters``
without autograd, by :func:`unroll`, the loop every unrolled factorization of :mod:`nmfseg.nmf`
runs (also Semi- and Convex-NMF's, :mod:`~nmfseg.nmf.semi`).

Divisions are guarded by clamping the denominator to the smallest normal number of the
dtype (:func:`guard`): this changes nothing unless a denominator is exactly zero, which only
happens when the numerator is zero too (an all-zero matrix, column or component), and then
gives 0. A fixed ``eps`` such as 1e-8 would not be harmless: ``fᵀ K f`` in the rank-1 path
scales with the fourth power of ``X``, so it would bias the result for inputs of magnitude
1e-3 or less.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

__all__ = [
    "STEPS",
    "default_init",
    "guard",
    "hals_step",
    "mu_step",
    "no_grad_if",
    "run_steps",
    "unroll",
    "weyl",
]
# Irrational steps of a Kronecker (Weyl) sequence, one per rank component.
_WEYL = (0.6180339887498949, 0.7548776662466927, 0.5698402909980532, 0.4655712318767680)

Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def guard(den: Tensor) -> Tensor:
    """Clamp a nonnegative denominator away from exactly zero (see the module docstring)."""
    return den.clamp_min(torch.finfo(den.dtype).tiny)


def weyl(n: int, rank: int, device: torch.device, dtype: torch.dtype) -> Tensor:
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
    """Deterministic positive initial factors for ``x (..., M, N)``.

    Entry ``(i, r)`` depends only on the row/column index ``i`` and the component ``r``,
    never on a size fixed at construction, so a model runs on any input size and gives
    the same output for the same input in train and eval mode. The factors are expanded
    (not copied) over the leading dims of ``x``.

    Examples::

        >>> u0, v0 = default_init(torch.rand(4, 8, 100), rank=2)
        >>> u0.shape, v0.shape, bool(v0.min() > 0)
        (torch.Size([4, 8, 2]), torch.Size([4, 100, 2]), True)
    """
    *batch, m, n = x.shape
    u0 = weyl(m, rank, x.device, x.dtype).expand(*batch, m, rank)
    v0 = weyl(n, rank, x.device, x.dtype).expand(*batch, n, rank)
    return u0, v0


def mu_step(x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 1, lines 3–4."""
    u = u * (x @ v) / guard(u @ (v.mT @ v))
    v = v * (x.mT @ u) / guard(v @ (u.mT @ u))
    return u, v


def _hals_sweep(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    """Gauss–Seidel sweep over the columns of ``f`` (Algorithm 2, lines 4–5 or 7–8)."""
    cols = list(f.unbind(-1))
    for r in range(len(cols)):
        num = a[..., r]
        for ell, col in enumerate(cols):
            if ell != r:
                num = num - b[..., ell, r, None] * col
        cols[r] = torch.relu(num / guard(b[..., r, r, None]))
    return torch.stack(cols, dim=-1)


def hals_step(x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 2, lines 3–8: all columns of ``u``, then all columns of ``v``."""
    u = _hals_sweep(x @ v, v.mT @ v, u)
    v = _hals_sweep(x.mT @ u, u.mT @ u, v)
    return u, v


STEPS: dict[str, Step] = {"hals": hals_step, "mu": mu_step}


def unroll(step: Callable[..., tuple], state: tuple, iters: int, grad_iters: int | None) -> tuple:
    """``iters`` times ``state = step(*state)``; the first ``iters - grad_iters`` without
    autograd (``grad_iters=None``: all with autograd).

    Examples::

        >>> unroll(lambda a, b: (b, a + b), (0, 1), iters=5, grad_iters=None)
        (5, 8)
    """
    free = 0 if grad_iters is None else max(iters - grad_iters, 0)
    with torch.no_grad():
        for _ in range(free):
            state = step(*state)
    for _ in range(iters - free):
        state = step(*state)
    return state


def no_grad_if(cond: bool) -> AbstractContextManager:
    """``torch.no_grad()`` if ``cond``, else a context that changes nothing (``grad_iters=0``:
    no autograd at all, the same values as ``grad_iters=None``)."""
    return torch.no_grad() if cond else nullcontext()


def run_steps(
    x: Tensor, u: Tensor, v: Tensor, iters: int, grad_iters: int | None, step: Step
) -> tuple[Tensor, Tensor]:
    """``iters`` outer iterations; the first ``iters - grad_iters`` without autograd."""
    return unroll(lambda u, v: step(x, u, v), (u, v), iters, grad_iters)
