"""Differentiable Nonnegative Matrix Factorization (paper §3.4.2, Algorithms 1 and 2).

The functional core :func:`nmf` factorizes a batch of nonnegative matrices
``x (..., M, N) ≈ u @ v.mT`` with ``u (..., M, R)`` and ``v (..., N, R)`` by a fixed
number of multiplicative-update (MU) or HALS iterations, so that autograd can
differentiate through the solver. :func:`nmf_reconstruct` returns the reconstruction
``u @ v.mT`` directly, and :class:`NMF` wraps it as a module whose settings can be
changed after training (paper §4.5).

Rank 1 (the paper's case) has a fast path. For ``R = 1`` both solvers reduce to the
alternating power iteration (eq. 14) ``f ← X g / ‖g‖²``, ``g ← Xᵀ f / ‖f‖²``. Eliminating
``g`` gives ``f ← K f ‖f‖² / (fᵀ K f)`` with the ``M × M`` Gram matrix ``K = X Xᵀ``, so all
``T`` iterations cost one pass over ``X`` for ``f₁ = X g₀ / ‖g₀‖²``, one for ``K`` and one
for the output: ``v = Xᵀ f / ‖f‖²``, or the reconstruction ``f vᵀ = (f fᵀ / ‖f‖²) X``, the
projection of the columns of ``X`` onto ``f``. The fast path computes the same function
as the loop (same values and the same derivatives, to rounding), including
``grad_iters``, and :func:`nmf_reconstruct` gives it a fused backward pass.

Divisions are guarded by clamping the denominator to the smallest normal number of the
dtype: this changes nothing unless a denominator is exactly zero, which only happens when
the numerator is zero too (an all-zero matrix, column or component), and then gives 0.
A fixed ``eps`` such as 1e-8 would not be harmless: ``fᵀ K f`` scales with the fourth
power of ``X``, so it would bias the result for inputs of magnitude 1e-3 or less.

Examples::

    >>> import torch
    >>> from nmfseg.nmf import nmf, nmf_reconstruct
    >>> x = torch.rand(2, 8, 64)
    >>> u, v = nmf(x, rank=1, iters=5)
    >>> u.shape, v.shape
    (torch.Size([2, 8, 1]), torch.Size([2, 64, 1]))
    >>> torch.allclose(nmf_reconstruct(x), u @ v.mT, atol=1e-6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

__all__ = ["NMF", "SOLVERS", "default_init", "nmf", "nmf_reconstruct", "reconstruct"]

SOLVERS = ("hals", "mu")

# Irrational steps of a Kronecker (Weyl) sequence, one per rank component.
_WEYL = (0.6180339887498949, 0.7548776662466927, 0.5698402909980532, 0.4655712318767680)

Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _guard(den: Tensor) -> Tensor:
    """Clamp a nonnegative denominator away from exactly zero (see the module docstring)."""
    return den.clamp_min(torch.finfo(den.dtype).tiny)


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
    u0 = _weyl(m, rank, x.device, x.dtype).expand(*batch, m, rank)
    v0 = _weyl(n, rank, x.device, x.dtype).expand(*batch, n, rank)
    return u0, v0


# ---------------------------------------------------------------------------------------
# The general solvers (any rank): Algorithms 1 and 2, one outer iteration per call.


def _mu_step(x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 1, lines 3–4."""
    u = u * (x @ v) / _guard(u @ (v.mT @ v))
    v = v * (x.mT @ u) / _guard(v @ (u.mT @ u))
    return u, v


def _hals_sweep(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    """Gauss–Seidel sweep over the columns of ``f`` (Algorithm 2, lines 4–5 or 7–8)."""
    cols = list(f.unbind(-1))
    for r in range(len(cols)):
        num = a[..., r]
        for ell, col in enumerate(cols):
            if ell != r:
                num = num - b[..., ell, r, None] * col
        cols[r] = torch.relu(num / _guard(b[..., r, r, None]))
    return torch.stack(cols, dim=-1)


def _hals_step(x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 2, lines 3–8: all columns of ``u``, then all columns of ``v``."""
    u = _hals_sweep(x @ v, v.mT @ v, u)
    v = _hals_sweep(x.mT @ u, u.mT @ u, v)
    return u, v


_STEPS: dict[str, Step] = {"hals": _hals_step, "mu": _mu_step}


def _loop(
    x: Tensor, u: Tensor, v: Tensor, iters: int, grad_iters: int | None, step: Step
) -> tuple[Tensor, Tensor]:
    """``iters`` outer iterations; the first ``iters - grad_iters`` without autograd."""
    free = 0 if grad_iters is None else max(iters - grad_iters, 0)
    with torch.no_grad():
        for _ in range(free):
            u, v = step(x, u, v)
    for _ in range(iters - free):
        u, v = step(x, u, v)
    return u, v


# ---------------------------------------------------------------------------------------
# The rank-1 fast path. Shapes: x (B, M, N); f, a (B, M); K (B, M, M); g0 (N,) when the
# initial g is shared by the batch, else (B, N); norms keep a trailing dim of 1.


def _sqnorm(f: Tensor) -> Tensor:
    return (f * f).sum(-1, keepdim=True)


def _gram_steps(f: Tensor, k: Tensor, steps: int) -> Tensor:
    """``steps`` power-iteration steps ``f ← K f ‖f‖² / (fᵀ K f)``, each one outer iteration."""
    for _ in range(steps):
        kf = (k @ f.unsqueeze(-1)).squeeze(-1)
        f = kf * (_sqnorm(f) / _guard((f * kf).sum(-1, keepdim=True)))
    return f


def _projector(f: Tensor) -> Tensor:
    """``f fᵀ / ‖f‖²`` of shape ``(B, M, M)``: ``f vᵀ`` equals this times ``X``."""
    return f.unsqueeze(-1) * (f / _guard(_sqnorm(f))).unsqueeze(-2)


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
    f = _gram_steps(a / _guard(gg), k, free - 1)
    ff = _guard(_sqnorm(f))
    kf = (k @ f.unsqueeze(-1)).squeeze(-1)
    return kf / ff, (f * kf).sum(-1, keepdim=True) / (ff * ff), f


def _grad_steps(iters: int, grad_iters: int | None) -> int:
    return iters if grad_iters is None else min(grad_iters, iters)


def _rank1_factors(
    x: Tensor, g0: Tensor, iters: int, grad_iters: int | None
) -> tuple[Tensor, Tensor]:
    """Fast rank-1 ``(f, g)`` of shapes ``(B, M)``, ``(B, N)``; plain autograd."""
    steps = _grad_steps(iters, grad_iters)
    k = x @ x.mT
    if steps < iters:
        with torch.no_grad():
            _, _, f = _restart(x, g0, k, iters - steps)
            g0 = (x.mT @ (f / _guard(_sqnorm(f))).unsqueeze(-1)).squeeze(-1)
    f = _matvec(x, g0) / _guard(_sqnorm(g0))
    f = _gram_steps(f, k, steps - 1)
    g = (x.mT @ (f / _guard(_sqnorm(f))).unsqueeze(-1)).squeeze(-1)
    return f, g


class _Rank1Projection(torch.autograd.Function):
    """Rank-1 NMF reconstruction ``(f fᵀ / ‖f‖²) X`` with a fused backward pass.

    Only ``X`` (and ``g0`` if it requires grad) are differentiated. The backward pass
    recomputes the cheap ``M × M`` part with autograd and applies all contributions to
    ``dX`` in place: ``dX = P dY + (dK + dKᵀ + da f_freeᵀ/‖f_free‖²) X [+ da g0ᵀ]``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, g0: Tensor, iters: int, grad_iters: int | None) -> Tensor:  # type: ignore[override]
        steps = _grad_steps(iters, grad_iters)
        k = torch.bmm(x, x.mT)
        a, gg, f_free = _restart(x, g0, k, iters - steps)
        p = _projector(_gram_steps(a / _guard(gg), k, steps - 1))
        ctx.save_for_backward(x, g0, k, a, gg, f_free)
        ctx.steps = steps
        return torch.bmm(p, x)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        x, g0, k, a, gg, f_free = ctx.saved_tensors
        need_x, need_g0 = ctx.needs_input_grad[:2]
        need_g0 = need_g0 and f_free is None
        with torch.autocast(device_type=x.device.type, enabled=False), torch.enable_grad():
            a = a.detach().requires_grad_()
            k = k.detach().requires_grad_()
            gg = gg.detach().requires_grad_(need_g0)
            p = _projector(_gram_steps(a / _guard(gg), k, ctx.steps - 1))
            leaves = (a, k, gg) if need_g0 else (a, k)
            grads = torch.autograd.grad(p, leaves, torch.bmm(dy, x.mT), allow_unused=True)
        da, dk = grads[0], grads[1]
        dx = dg0 = None
        if need_x:
            s = torch.zeros_like(k) if dk is None else dk + dk.mT
            if f_free is not None:
                s = s + da.unsqueeze(-1) * (f_free / _guard(_sqnorm(f_free))).unsqueeze(-2)
            dx = torch.bmm(p.detach().mT, dy)
            dx.baddbmm_(s, x)
            if f_free is None:
                if g0.dim() == 1:
                    dx.view(-1, x.shape[-1]).addr_(da.reshape(-1), g0)
                else:
                    dx.baddbmm_(da.unsqueeze(-1), g0.unsqueeze(-2))
        if need_g0:
            dg0 = (x.mT @ da.unsqueeze(-1)).squeeze(-1)
            dg0 = (dg0.sum(0) if g0.dim() == 1 else dg0) + 2 * g0 * grads[2]
        return dx, dg0, None, None


# ---------------------------------------------------------------------------------------
# Public API.


def _check(x: Tensor, rank: int, iters: int, solver: str, grad_iters: int | None) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
    if rank < 1 or iters < 0:
        raise ValueError(f"rank should be >= 1 and iters >= 0, got rank={rank}, iters={iters}.")
    if grad_iters is not None and grad_iters < 0:
        raise ValueError(f"grad_iters should be None or >= 0, got {grad_iters}.")
    if x.dim() < 2:
        raise ValueError(f"x should have shape (..., M, N), got {tuple(x.shape)}.")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _autocast_off(x: Tensor):
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return nullcontext()


def _no_grad_if(cond: bool):
    # grad_iters=0: every iteration runs without autograd (same values as grad_iters=None).
    return torch.no_grad() if cond else nullcontext()


def _prepare(
    x: Tensor, rank: int, init: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` in the working dtype and the initial factors, broadcast to ``x``'s batch."""
    x = x.to(_work_dtype(x.dtype))
    if init is None:
        u0, v0 = default_init(x, rank)
    else:
        *batch, m, n = x.shape
        u0 = init[0].to(x.dtype).expand(*batch, m, rank)
        v0 = init[1].to(x.dtype).expand(*batch, n, rank)
    return x, u0, v0


def _use_fast(rank: int, iters: int, solver: str, init, fast: bool) -> bool:
    """Whether the rank-1 fast path computes exactly what the loop computes.

    HALS ignores ``u0`` at rank 1. MU keeps a zero entry of a factor at zero forever, so
    with a user ``init`` the fast path is exact only when every initial entry is positive
    (the default init always is).
    """
    if not fast or rank != 1 or iters == 0:
        return False
    if solver == "mu" and init is not None:
        return bool((init[0] > 0).all()) and bool((init[1] > 0).all())
    return True


def _flat_g0(v0: Tensor, init) -> Tensor:
    """The initial ``g``: ``(N,)`` when shared by the whole batch, else ``(B, N)``."""
    n = v0.shape[-2]
    if init is None:
        return _weyl(n, 1, v0.device, v0.dtype)[:, 0]
    if v0.numel() > 0 and all(s == 0 for s in v0.stride()[:-2]):
        return v0.reshape(-1, n, 1)[0, :, 0] if v0.dim() > 2 else v0[:, 0]
    return v0.reshape(-1, n)


def nmf(
    x: Tensor,
    rank: int = 1,
    iters: int = 5,
    solver: str = "hals",
    init: tuple[Tensor, Tensor] | None = None,
    grad_iters: int | None = None,
    *,
    fast: bool = True,
) -> tuple[Tensor, Tensor]:
    """Factorize nonnegative ``x (..., M, N)`` as ``u @ v.mT``.

    Args:
        x: Nonnegative tensor of shape ``(..., M, N)``; all leading dims are a batch.
        rank: Number of components ``R``.
        iters: Number of outer iterations ``T``.
        solver: ``"hals"`` (Algorithm 2, Gauss–Seidel over columns, ``u`` then ``v``)
            or ``"mu"`` (Algorithm 1, multiplicative updates).
        init: Initial factors ``(u0 (..., M, R), v0 (..., N, R))``, broadcast over the
            batch; ``None`` uses :func:`default_init`.
        grad_iters: Backpropagate through all iterations (``None``, the paper) or only
            through the last ``grad_iters`` of them (truncated gradient, as in Hamburger):
            the first ``T - grad_iters`` run without autograd.
        fast: Use the rank-1 fast path where it is exact (``rank == 1``); ``False``
            forces the general loop, a reference for tests and benchmarks.

    Returns:
        The factors ``(u, v)`` of shapes ``(..., M, R)`` and ``(..., N, R)``, in the
        input's dtype. Half-precision input is computed in float32, always with
        autocast disabled.

    Examples::

        >>> x = torch.rand(3, 4, 8, 50)
        >>> u, v = nmf(x, rank=2, iters=10, solver="mu")
        >>> u.shape, v.shape, bool(u.min() >= 0)
        (torch.Size([3, 4, 8, 2]), torch.Size([3, 4, 50, 2]), True)
    """
    _check(x, rank, iters, solver, grad_iters)
    out_dtype, shape = x.dtype, x.shape
    with _autocast_off(x):
        x, u0, v0 = _prepare(x, rank, init)
        if _use_fast(rank, iters, solver, init, fast):
            with _no_grad_if(grad_iters == 0):
                f, g = _rank1_factors(
                    x.reshape(-1, *shape[-2:]), _flat_g0(v0, init), iters, grad_iters or None
                )
            u, v = f.view(*shape[:-1], 1), g.view(*shape[:-2], shape[-1], 1)
        else:
            u, v = _loop(x, u0, v0, iters, grad_iters, _STEPS[solver])
    return u.to(out_dtype), v.to(out_dtype)


def nmf_reconstruct(
    x: Tensor,
    rank: int = 1,
    iters: int = 5,
    solver: str = "hals",
    init: tuple[Tensor, Tensor] | None = None,
    grad_iters: int | None = None,
    *,
    fast: bool = True,
) -> Tensor:
    """The NMF reconstruction ``u @ v.mT`` of ``x (..., M, N)``, by the cheapest exact formula.

    Same arguments and semantics as :func:`nmf`. At rank 1 the reconstruction is computed
    as the projection ``(f fᵀ / ‖f‖²) X`` without forming ``v``, with a fused backward pass
    (one ``(..., M, N)`` gradient buffer, updated in place).

    Examples::

        >>> x = torch.rand(2, 8, 40, dtype=torch.float64)
        >>> u, v = nmf(x, fast=False)
        >>> torch.allclose(nmf_reconstruct(x), u @ v.mT)
        True
    """
    _check(x, rank, iters, solver, grad_iters)
    if not _use_fast(rank, iters, solver, init, fast):
        return reconstruct(*nmf(x, rank, iters, solver, init, grad_iters, fast=fast))
    out_dtype, shape = x.dtype, x.shape
    with _autocast_off(x):
        x, _, v0 = _prepare(x, rank, init)
        with _no_grad_if(grad_iters == 0):
            y = _Rank1Projection.apply(
                x.reshape(-1, *shape[-2:]), _flat_g0(v0, init), iters, grad_iters or None
            )
    return y.view(shape).to(out_dtype)


def reconstruct(u: Tensor, v: Tensor) -> Tensor:
    """The low-rank approximation ``u @ v.mT``."""
    return u @ v.mT


class NMF(nn.Module):
    """NMF layer: returns the low-rank reconstruction of a batch of nonnegative matrices.

    ``rank``, ``iters``, ``solver``, ``grad_iters`` and ``fast`` are plain attributes and
    may be changed after training (paper §4.5). The module has no parameters or buffers.

    Args:
        rank: Number of components ``R``.
        iters: Number of outer iterations ``T``.
        solver: ``"hals"`` or ``"mu"``.
        grad_iters: Backpropagate only through the last ``grad_iters`` iterations.
        fast: Use the rank-1 fast path (see :func:`nmf`).

    Examples::

        >>> layer = NMF(rank=1, iters=5)
        >>> layer(torch.rand(3, 8, 100)).shape
        torch.Size([3, 8, 100])
        >>> layer.iters = 2  # fewer iterations at inference, no retraining
        >>> u, v = layer.factorize(torch.rand(3, 8, 100))
    """

    def __init__(
        self,
        rank: int = 1,
        iters: int = 5,
        solver: str = "hals",
        grad_iters: int | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
        self.rank = rank
        self.iters = iters
        self.solver = solver
        self.grad_iters = grad_iters
        self.fast = fast

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The factors ``(u, v)`` of ``x`` with this layer's settings."""
        return nmf(
            x, self.rank, self.iters, self.solver, grad_iters=self.grad_iters, fast=self.fast
        )

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``u @ v.mT`` of ``x (..., M, N)``, same shape as ``x``."""
        return nmf_reconstruct(
            x, self.rank, self.iters, self.solver, grad_iters=self.grad_iters, fast=self.fast
        )

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, iters={self.iters}, solver={self.solver!r}, "
            f"grad_iters={self.grad_iters}, fast={self.fast}"
        )
