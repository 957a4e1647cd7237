"""The exact rank-1 fast path of both NMF solvers.

For ``R = 1`` both solvers reduce to the alternating power iteration (paper eq. 14)
``f ← X g / ‖g‖²``, ``g ← Xᵀ f / ‖f‖²``. Eliminating ``g`` gives
``f ← K f ‖f‖² / (fᵀ K f)`` with the ``M × M`` Gram matrix ``K = X Xᵀ``, so all ``T``
iterations cost one pass over ``X`` for ``f₁ = X g₀ / ‖g₀‖²``, one for ``K`` and one for the
output: ``v = Xᵀ f / ‖f‖²``, or the reconstruction ``f vᵀ = (f fᵀ / ‖f‖²) X``, the
projection of the columns of ``X`` onto ``f``. The fast path computes the same function as
the loop of :mod:`nmfseg.nmf.steps` (same values and the same derivatives, to rounding),
including ``grad_iters``, and :class:`Rank1Projection` gives the reconstruction a fused
backward pass.

Shapes: ``x (B, M, N)``; ``f, a (B, M)``; ``K (B, M, M)``; ``g0 (N,)`` when the initial ``g``
is shared by the batch, else ``(B, N)``; norms keep a trailing dim of 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmfseg.nmf.steps import guard
from nmfseg.routes.precision import backward_without_autocast

__all__ = [
    "Rank1Projection",
    "projection_forward",
    "projection_grads",
    "projection_input_grad",
    "rank1_factors",
]


def _sqnorm(f: Tensor) -> Tensor:
    return (f * f).sum(-1, keepdim=True)


def _gram_steps(f: Tensor, k: Tensor, steps: int) -> Tensor:
    """``steps`` power-iteration steps ``f ← K f ‖f‖² / (fᵀ K f)``, each one outer iteration."""
    for _ in range(steps):
        kf = (k @ f.unsqueeze(-1)).squeeze(-1)
        f = kf * (_sqnorm(f) / guard((f * kf).sum(-1, keepdim=True)))
    return f


def _projector(f: Tensor) -> Tensor:
    """``f fᵀ / ‖f‖²`` of shape ``(B, M, M)``: ``f vᵀ`` equals this times ``X``."""
    return f.unsqueeze(-1) * (f / guard(_sqnorm(f))).unsqueeze(-2)


def _matvec(x: Tensor, g: Tensor) -> Tensor:
    return x @ g if g.dim() == 1 else (x @ g.unsqueeze(-1)).squeeze(-1)


def _restart(x: Tensor, g0: Tensor, k: Tensor, free: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Where the differentiated iterations start: ``a = X ĝ``, ``‖ĝ‖²`` and ``f_free``.

    With ``free = 0``, ``ĝ = g0``. Otherwise ``ĝ = g_free = Xᵀ f / ‖f‖²`` after ``free``
    iterations, which the loop computes without autograd; then ``a = K f / ‖f‖²`` and
    ``‖ĝ‖² = fᵀ K f / ‖f‖⁴`` are free, and the derivative of ``a = X ĝ`` (``dX += da ĝᵀ``,
    with ``ĝ`` held constant) equals ``(da fᵀ / ‖f‖²) X``. The caller runs this without
    autograd for ``free > 0``.
    """
    a = _matvec(x, g0)
    gg = _sqnorm(g0)
    if free == 0:
        return a, gg, None
    f = _gram_steps(a / guard(gg), k, free - 1)
    ff = guard(_sqnorm(f))
    kf = (k @ f.unsqueeze(-1)).squeeze(-1)
    return kf / ff, (f * kf).sum(-1, keepdim=True) / (ff * ff), f


def _grad_steps(iters: int, grad_iters: int | None) -> int:
    return iters if grad_iters is None else min(grad_iters, iters)


def rank1_factors(
    x: Tensor, g0: Tensor, iters: int, grad_iters: int | None
) -> tuple[Tensor, Tensor]:
    """Fast rank-1 ``(f, g)`` of shapes ``(B, M)``, ``(B, N)``; plain autograd."""
    steps = _grad_steps(iters, grad_iters)
    k = x @ x.mT
    if steps < iters:
        with torch.no_grad():
            _, _, f = _restart(x, g0, k, iters - steps)
            g0 = (x.mT @ (f / guard(_sqnorm(f))).unsqueeze(-1)).squeeze(-1)
    f = _matvec(x, g0) / guard(_sqnorm(g0))
    f = _gram_steps(f, k, steps - 1)
    g = (x.mT @ (f / guard(_sqnorm(f))).unsqueeze(-1)).squeeze(-1)
    return f, g


def projection_forward(
    x: Tensor, g0: Tensor, iters: int, grad_iters: int | None, out: Tensor | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """``(f fᵀ / ‖f‖²) X`` (written into ``out`` if given) and what its backward needs
    besides ``x`` and ``g0``: ``(K, a, ‖ĝ‖², f_free)``."""
    steps = _grad_steps(iters, grad_iters)
    k = torch.bmm(x, x.mT)
    a, gg, f_free = _restart(x, g0, k, iters - steps)
    p = _projector(_gram_steps(a / guard(gg), k, steps - 1))
    return torch.bmm(p, x, out=out), (k, a, gg, f_free)


def projection_grads(
    x: Tensor, g0: Tensor, saved, steps: int, dy: Tensor, need_g0: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The small part of :func:`projection_forward`'s backward: ``f`` (the final factor),
    ``S`` and ``da`` for :func:`projection_input_grad`, and ``dg0`` (``None`` unless needed)."""
    k, a, gg, f_free = saved
    need_g0 = need_g0 and f_free is None
    with torch.autocast(device_type=x.device.type, enabled=False), torch.enable_grad():
        a = a.detach().requires_grad_()
        k = k.detach().requires_grad_()
        gg = gg.detach().requires_grad_(need_g0)
        f = _gram_steps(a / guard(gg), k, steps - 1)
        leaves = (a, k, gg) if need_g0 else (a, k)
        grads = torch.autograd.grad(_projector(f), leaves, torch.bmm(dy, x.mT), allow_unused=True)
    da, dk = grads[0], grads[1]
    s = torch.zeros_like(k) if dk is None else dk + dk.mT
    if f_free is not None:
        s = s + da.unsqueeze(-1) * (f_free / guard(_sqnorm(f_free))).unsqueeze(-2)
    dg0 = None
    if need_g0:
        dg0 = (x.mT @ da.unsqueeze(-1)).squeeze(-1)
        dg0 = (dg0.sum(0) if g0.dim() == 1 else dg0) + 2 * g0 * grads[2]
    return f.detach(), s, da, dg0


def projection_input_grad(
    x: Tensor, g0: Tensor, saved, f: Tensor, s: Tensor, da: Tensor, dy: Tensor, out: Tensor
) -> Tensor:
    """``dX = P dY + S X [+ da g0ᵀ]`` with ``P = f fᵀ / ‖f‖²``, written into ``out``.

    ``P dY`` is taken as ``f (fᵀ dY / ‖f‖²)`` before ``out`` is written, so ``out`` may be
    ``dy`` itself. The ``da g0ᵀ`` term is there when the differentiated iterations start
    from ``g0`` (no ``f_free`` in ``saved``).
    """
    h = torch.bmm((f / guard(_sqnorm(f))).unsqueeze(-2), dy)
    dx = torch.bmm(s, x, out=out).baddbmm_(f.unsqueeze(-1), h)
    if saved[3] is None:  # the restart is a = X g0
        if g0.dim() == 1:
            dx.view(-1, dx.shape[-1]).addr_(da.reshape(-1), g0)
        else:
            dx.baddbmm_(da.unsqueeze(-1), g0.unsqueeze(-2))
    return dx


class Rank1Projection(torch.autograd.Function):
    """Rank-1 NMF reconstruction ``(f fᵀ / ‖f‖²) X`` with a fused backward pass.

    Only ``X`` (and ``g0`` if it requires grad) are differentiated. The backward pass
    recomputes the cheap ``M × M`` part with autograd and applies all contributions to
    ``dX`` in place: ``dX = P dY + (dK + dKᵀ + da f_freeᵀ/‖f_free‖²) X [+ da g0ᵀ]``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, g0: Tensor, iters: int, grad_iters: int | None) -> Tensor:  # type: ignore[override]
        y, saved = projection_forward(x, g0, iters, grad_iters)
        ctx.save_for_backward(x, g0, *saved)
        ctx.steps = _grad_steps(iters, grad_iters)
        return y

    @staticmethod
    @backward_without_autocast
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        x, g0, *saved = ctx.saved_tensors
        need_x, need_g0 = ctx.needs_input_grad[:2]
        f, s, da, dg0 = projection_grads(x, g0, saved, ctx.steps, dy, need_g0)
        dx = None
        if need_x:
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            dx = projection_input_grad(x, g0, saved, f, s, da, dy, out)
        return dx, dg0, None, None
