"""Differentiable Nonnegative Matrix Factorization (paper §3.4.2, Algorithms 1 and 2).

The functional core :func:`nmf` factorizes a batch of nonnegative matrices
``x (..., M, N) ≈ u @ v.mT`` with ``u (..., M, R)`` and ``v (..., N, R)`` by a fixed
number of multiplicative-update (MU) or HALS iterations, so that autograd can
differentiate through the solver. :func:`nmf_reconstruct` returns the reconstruction
``u @ v.mT`` directly, and :class:`NMF` wraps it as a module whose settings can be
changed after training (paper §4.5).

Rank 1 (the paper's case) takes the exact fast path of :mod:`nmfseg.nmf.rank1` wherever it
computes what the general loop of :mod:`nmfseg.nmf.steps` computes.

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

import torch  # noqa: F401  (the examples of the docstrings use it)
from torch import Tensor, nn

from nmfseg.nmf.rank1 import Rank1Projection, rank1_factors
from nmfseg.nmf.steps import STEPS, default_init, no_grad_if, run_steps, weyl
from nmfseg.routes import Route, allows, autocast_off, work_dtype

__all__ = [
    "NMF",
    "SOLVERS",
    "nmf",
    "nmf_flops",
    "nmf_reconstruct",
]

SOLVERS = ("hals", "mu")


def _check(x: Tensor, rank: int, iters: int, solver: str, grad_iters: int | None) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
    if rank < 1 or iters < 0:
        raise ValueError(f"rank should be >= 1 and iters >= 0, got rank={rank}, iters={iters}.")
    if grad_iters is not None and grad_iters < 0:
        raise ValueError(f"grad_iters should be None or >= 0, got {grad_iters}.")
    if x.dim() < 2:
        raise ValueError(f"x should have shape (..., M, N), got {tuple(x.shape)}.")


def _check_input(x: Tensor, rank: int) -> None:
    """The documented precondition of the public functions: ``x >= 0`` (one ``amin``, no
    NaN) and a rank of at most ``min(M, N)``. The :class:`NMF` module, which the networks
    feed with ReLU'd matrices, skips it."""
    m, n = x.shape[-2:]
    if rank > min(m, n):
        raise ValueError(
            f"rank={rank} is above min(M, N) = {min(m, n)} of x's {m} x {n} matrices; a larger "
            "rank cannot describe a matrix better."
        )
    if x.numel():
        low = float(x.detach().amin())  # NaN if x holds one
        if math.isnan(low):
            raise ValueError("x holds NaN; NMF needs nonnegative numbers.")
        if low < 0:
            raise ValueError(
                f"x should be nonnegative (NMF's precondition), but its minimum is "
                f"{low:.4g}; apply torch.relu or shift it first."
            )


def _prepare(
    x: Tensor, rank: int, init: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` in the working dtype and the initial factors, broadcast to ``x``'s batch."""
    x = x.to(work_dtype(x.dtype))
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
        return weyl(n, 1, v0.device, v0.dtype)[:, 0]
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
        >>> nmf(x - 1)
        Traceback (most recent call last):
        ...
        ValueError: x should be nonnegative (NMF's precondition), but its minimum is ...

    Raises:
        ValueError: An argument out of range, ``rank > min(M, N)``, or ``x`` with a negative
            or NaN entry (checked with one ``amin``; the :class:`NMF` module skips it).
    """
    _check(x, rank, iters, solver, grad_iters)
    _check_input(x, rank)
    return _factorize(x, rank, iters, solver, init, grad_iters, fast)


def _factorize(
    x: Tensor,
    rank: int,
    iters: int,
    solver: str,
    init: tuple[Tensor, Tensor] | None,
    grad_iters: int | None,
    fast: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`nmf` without the check of ``x``'s values (what :class:`NMF` runs)."""
    _check(x, rank, iters, solver, grad_iters)
    out_dtype, shape = x.dtype, x.shape
    with autocast_off(x):
        x, u0, v0 = _prepare(x, rank, init)
        if _use_fast(rank, iters, solver, init, fast):
            with no_grad_if(grad_iters == 0):
                f, g = rank1_factors(
                    x.reshape(-1, *shape[-2:]), _flat_g0(v0, init), iters, grad_iters or None
                )
            u, v = f.view(*shape[:-1], 1), g.view(*shape[:-2], shape[-1], 1)
        else:
            u, v = run_steps(x, u0, v0, iters, grad_iters, STEPS[solver])
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

    Raises:
        ValueError: As :func:`nmf`.
    """
    _check(x, rank, iters, solver, grad_iters)
    _check_input(x, rank)
    return _reconstruct(x, rank, iters, solver, init, grad_iters, fast)


def _reconstruct(
    x: Tensor,
    rank: int,
    iters: int,
    solver: str,
    init: tuple[Tensor, Tensor] | None,
    grad_iters: int | None,
    fast: bool,
) -> Tensor:
    """:func:`nmf_reconstruct` without the check of ``x``'s values (what :class:`NMF` runs)."""
    _check(x, rank, iters, solver, grad_iters)
    if not _use_fast(rank, iters, solver, init, fast):
        u, v = _factorize(x, rank, iters, solver, init, grad_iters, fast)
        return u @ v.mT
    out_dtype, shape = x.dtype, x.shape
    with autocast_off(x):
        x, _, v0 = _prepare(x, rank, init)
        with no_grad_if(grad_iters == 0):
            y = Rank1Projection.apply(
                x.reshape(-1, *shape[-2:]), _flat_g0(v0, init), iters, grad_iters or None
            )
    return y.view(shape).to(out_dtype)


def nmf_flops(batch: int, m: int, n: int, rank: int, iters: int) -> int:
    """FLOPs of factorizing ``batch`` matrices ``M × N`` and reconstructing them, as the
    paper counts them: Algorithm 2, every iteration ``4MNR`` for ``XG`` and ``XᵀF`` and
    ``4(M + N)R²`` for ``GᵀG``, ``FᵀF`` and the column updates, then ``2MNR`` for ``FGᵀ``.

    Examples::

        >>> nmf_flops(1, 8, 512, rank=1, iters=5) == 5 * (4 * 8 * 512 + 4 * 520) + 2 * 8 * 512
        True
    """
    per_iter = 4 * m * n * rank + 4 * (m + n) * rank * rank
    return batch * (iters * per_iter + 2 * m * n * rank)


class NMF(nn.Module):
    """NMF layer: returns the low-rank reconstruction of a batch of nonnegative matrices.

    ``rank``, ``iters``, ``solver``, ``grad_iters`` and ``fast`` are plain attributes and
    may be changed after training (paper §4.5). The module has no parameters or buffers.
    Unlike :func:`nmf`, it does not check that its input is nonnegative (a network feeds it
    ReLU'd matrices, and the check would cost a pass over them in every forward).

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

    ROUTES = frozenset({Route.RANK1})

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
        self.routes = self.ROUTES if fast else frozenset()

    @property
    def fast(self) -> bool:
        """Whether the route ``rank1`` (the exact rank-1 fast path) is allowed."""
        return allows(self, Route.RANK1)

    @fast.setter
    def fast(self, value: bool) -> None:
        self.routes = self.ROUTES if value else frozenset()

    def uses_rank1_path(self) -> bool:
        """Whether :meth:`forward` takes the exact rank-1 fast path (default init)."""
        return _use_fast(self.rank, self.iters, self.solver, None, self.fast)

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The factors ``(u, v)`` of ``x`` with this layer's settings."""
        return _factorize(x, self.rank, self.iters, self.solver, None, self.grad_iters, self.fast)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``u @ v.mT`` of ``x (..., M, N)``, same shape as ``x``."""
        return _reconstruct(x, self.rank, self.iters, self.solver, None, self.grad_iters, self.fast)

    flops_category = "nmf"

    def flops(self, x: Tensor) -> int:
        """FLOPs of :meth:`forward` on ``x (..., M, N)``, the paper's count (:func:`nmf_flops`)."""
        *batch, m, n = x.shape
        return nmf_flops(math.prod(batch), m, n, self.rank, self.iters)

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, iters={self.iters}, solver={self.solver!r}, "
            f"grad_iters={self.grad_iters}, fast={self.fast}"
        )
