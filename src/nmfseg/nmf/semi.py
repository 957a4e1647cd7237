"""Semi-NMF and Convex-NMF of mixed-sign matrices, differentiable like :mod:`~.solvers`.

Ding, Li & Jordan (2010), "Convex and Semi-Nonnegative Matrix Factorizations", IEEE TPAMI
32 (1), 45–55. Both factorize matrices of any sign, so a network can factorize its features
without the ReLU that NMF needs in front (the Factorizer paper's §5). In Ding et al.'s
notation the data ``X`` (p × n) holds one point per column, ``A⁺ = (|A| + A) / 2`` and
``A⁻ = (|A| − A) / 2``:

- Semi-NMF, ``X ≈ F Gᵀ`` with ``F`` mixed-sign and ``G ≥ 0``: ``F = X G (GᵀG)⁻¹`` (least
  squares), then ``G ← G ⊙ sqrt(((XᵀF)⁺ + G (FᵀF)⁻) / ((XᵀF)⁻ + G (FᵀF)⁺))``;
- Convex-NMF, ``X ≈ X W Gᵀ`` with ``W, G ≥ 0`` (every column of ``F = X W`` is a nonnegative
  combination of data points): with ``A = XᵀX``, ``G ← G ⊙ sqrt((A⁺W + G WᵀA⁻W) / (A⁻W +
  G WᵀA⁺W))``, then ``W ← W ⊙ sqrt((A⁺G + A⁻W GᵀG) / (A⁻G + A⁺W GᵀG))``.

Ding et al. prove that no update increases ``‖X − F Gᵀ‖``.

Orientation. nmfseg's matrices are ``x (..., M, N)``, ``M = head_dim`` channels as rows and
``N`` voxels as columns (:mod:`~.matricize`).

- :func:`semi_nmf` takes the voxels as the data points, Ding's orientation as it is:
  ``x ≈ f @ g.mT`` with ``f (..., M, R)`` a mixed-sign channel factor and ``g (..., N, R)``
  a nonnegative map over the voxels (NMF's ``u`` and ``v``). Every product is ``O(MNR)``.
- :func:`convex_nmf` takes the *channels* as the data points (Ding's ``X`` is ``xᵀ``).
  Ding's orientation would need ``xᵀx``, the N × N Gram matrix of the voxels (512² per 8³
  window: quadratic in the voxels); this one needs ``A = x xᵀ``, the M × M Gram matrix of
  the channels, one ``O(M²N)`` product, after which the iterations work on ``M × M`` and
  ``M × R`` matrices, whatever N. ``w, g (..., M, R) ≥ 0`` and ``x ≈ g @ (w.mT @ x)``:
  every voxel's channels are mapped by the same nonnegative rank-``R`` matrix ``g wᵀ``
  fitted to the window's Gram matrix (as the rank-1 NMF of :mod:`~.rank1` maps them by
  ``f fᵀ / ‖f‖²``); the spatial factor ``xᵀ w`` is mixed-sign, a nonnegative combination of
  the channels. Zero (padded) columns add nothing to ``A`` and are reconstructed as 0.

Iterations. One Semi-NMF iteration is Ding's pair: least-squares ``F`` from ``G``, then the
update of ``G``; the returned ``F`` is the least-squares one of the final ``G`` (one more
``X G``), so ``iters = 0`` gives that of ``G₀``. One Convex-NMF iteration updates ``G``,
then ``W``. The init is deterministic, from an index and the component only (NMF's Weyl
values, :func:`~.steps.weyl`): Semi-NMF's ``G₀`` is NMF's ``v₀``; Convex-NMF's ``G₀`` is
the values of the ``M`` rows and ``W₀ = G₀ D⁻¹``, ``D`` its column sums (Ding et al.'s
``W₀``, without their k-means).

Gradients. The iterations are unrolled by NMF's loop (:func:`~.steps.unroll`): ``grad_iters
= k`` runs the first ``T − k`` without autograd (as :func:`~.solvers.nmf`); Semi-NMF's final
least squares and Convex-NMF's ``A`` and reconstruction always carry the gradient, except
with ``grad_iters = 0`` (no autograd at all).

Numerical safety (float32 as float64; no fixed ``eps``, which would bias small inputs):

- a multiplicative factor is ``sqrt(clamp((num + τ) / (den + τ), ε², 1/ε²))``, ``ε`` the
  machine epsilon and ``τ`` the smallest normal number: ``num / den`` wherever either is
  normal, and ``0 / 0 = 1`` (an all-zero matrix leaves the factors as they are);
- no entry of an updated factor falls below ``ε`` times the largest entry of its column:
  an entry with a zero numerator shrinks to that floor (Ding's update would hold it at 0
  for good) and may grow back. Without the floor an entry underflows to 0 within a few
  updates, the derivative of each next one with respect to it is ``1/ε``, and the gradient
  overflows (measured: in float32 from 20 iterations on). It changes the result by ``ε``
  relative;
- :func:`mu_update` writes its backward out: 0 where the factor is clamped, elsewhere
  computed through ``G / den``, bounded since every denominator holds ``G`` times a
  nonnegative diagonal term (plain autograd of the clamped ``sqrt(num / den)`` multiplies a
  zero gradient by ``num / den²``, which overflows once an entry is small: NaN);
- Semi-NMF's least squares solve ``F (GᵀG + λI) = X G`` with ``λ = ε · mean(diag GᵀG) + τ``
  (``torch.linalg.solve``; a division at rank 1, which keeps a rank-1 layer exportable).

An all-zero matrix gives a zero reconstruction and finite gradients; inputs whose squares
underflow (``|x| < 1e-19`` in float32) are outside what the guards cover.

Examples::

    >>> import torch
    >>> x = torch.randn(2, 8, 64, dtype=torch.float64)
    >>> f, g = semi_nmf(x, rank=2, iters=20)
    >>> f.shape, g.shape, bool(g.min() >= 0), bool(f.min() < 0)
    (torch.Size([2, 8, 2]), torch.Size([2, 64, 2]), True, True)
    >>> w, g = convex_nmf(x, rank=2, iters=20)
    >>> w.shape, bool(w.min() >= 0 and g.min() >= 0)
    (torch.Size([2, 8, 2]), True)
    >>> y = convex_nmf_reconstruct(x, rank=2, iters=20)
    >>> torch.allclose(y, g @ (w.mT @ x))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nmfseg.nmf.steps import no_grad_if, unroll, weyl
from nmfseg.routes import autocast_off, backward_without_autocast, work_dtype

__all__ = [
    "ConvexNMF",
    "SemiNMF",
    "convex_nmf",
    "convex_nmf_reconstruct",
    "mu_update",
    "semi_nmf",
    "semi_nmf_reconstruct",
]


def _limits(dtype: torch.dtype) -> tuple[float, float, float]:
    """``(tiny, ε², 1/ε²)`` of a floating dtype."""
    info = torch.finfo(dtype)
    return info.tiny, info.eps**2, info.eps**-2


def _split(a: Tensor) -> tuple[Tensor, Tensor]:
    """``(A⁺, A⁻)``: the positive and negative parts, ``A = A⁺ − A⁻``."""
    return torch.relu(a), torch.relu(-a)


def _mu_forward(g: Tensor, num: Tensor, den: Tensor, rows: bool = True) -> tuple:
    """The guarded update (see :func:`mu_update`), and what its backward needs: the factor,
    where the result is not floored, and (``rows``) the row of each column's largest entry.
    ``(num + τ) / (den + τ)`` is ``num / den`` wherever either is a normal number (``τ`` is
    below their last bit), ``0 / 0 = 1``, and never a division by 0."""
    tiny, low, high = _limits(g.dtype)
    factor = ((num + tiny) / (den + tiny)).clamp(low, high).sqrt()
    raw = g * factor
    peak, row = raw.max(dim=-2, keepdim=True) if rows else (raw.amax(-2, keepdim=True), None)
    kept = raw >= peak * low**0.5
    return torch.where(kept, raw, peak * low**0.5), factor, kept, row


class _MUUpdate(torch.autograd.Function):
    """:func:`mu_update` with its backward written out (one node instead of about twenty)."""

    @staticmethod
    def forward(ctx, g: Tensor, num: Tensor, den: Tensor) -> Tensor:  # type: ignore[override]
        out, factor, kept, row = _mu_forward(g, num, den)
        ctx.save_for_backward(g, den + _limits(g.dtype)[0], factor, kept, row)
        return out

    @staticmethod
    @backward_without_autocast
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        g, den, factor, kept, row = ctx.saved_tensors
        tiny, low, _ = _limits(g.dtype)
        eps = low**0.5  # the clamp bounds of the factor, ε and 1/ε, are powers of 2: exact
        # A floored entry is ε times its column's largest: its gradient goes there.
        floored = torch.where(kept, 0.0, grad).sum(-2, keepdim=True) * eps
        grad = torch.where(kept, grad, 0.0).scatter_add(-2, row, floored)
        # Where the factor has a slope: not clamped, and den (here den + tiny) a normal number.
        free = (factor > eps) & (factor < 1 / eps) & (den >= 2 * tiny)
        # d/dnum = g / (2 factor den), d/dden = -g factor / (2 den): through g / den, which is
        # at most 1 / (the diagonal term of den), never through 1 / den alone.
        t = torch.where(free, grad * (g / den), 0.0)
        grad_g = grad * factor if ctx.needs_input_grad[0] else None
        grad_num = 0.5 * t / factor if ctx.needs_input_grad[1] else None
        grad_den = -0.5 * t * factor if ctx.needs_input_grad[2] else None
        return grad_g, grad_num, grad_den


def mu_update(g: Tensor, num: Tensor, den: Tensor) -> Tensor:
    """One multiplicative update ``g ⊙ sqrt(num / den)`` of Ding et al., guarded.

    The ratio is ``(num + τ) / (den + τ)`` (``τ`` the smallest normal number: ``0 / 0 = 1``)
    clamped to ``[ε², 1/ε²]`` (``ε`` the machine epsilon), and the result is floored at ``ε``
    times the largest entry of its column (see the module docstring). With autograd the
    backward is written out: zero where the ratio is clamped, and computed through
    ``g / den`` elsewhere. Every caller's ``den`` holds ``g`` times a nonnegative diagonal
    term (``G (FᵀF)⁺`` holds ``G (FᵀF)ₖₖ``), so ``g / den`` stays bounded.

    Args:
        g: The nonnegative factor ``(..., K, R)``.
        num: Numerator, nonnegative, ``g``'s shape.
        den: Denominator, nonnegative, ``g``'s shape.

    Returns:
        The updated factor, nonnegative.

    Examples::

        >>> g = torch.ones(3, 1)
        >>> num, den = torch.tensor([[4.0], [0.0], [0.0]]), torch.tensor([[1.0], [0.0], [1.0]])
        >>> mu_update(g, num, den)  # 0/0 leaves 1; 0/1 shrinks to the floor ε·2
        tensor([[2.0000e+00],
                [1.0000e+00],
                [2.3842e-07]])
    """
    if torch.is_grad_enabled() and (g.requires_grad or num.requires_grad or den.requires_grad):
        return _MUUpdate.apply(g, num, den)
    return _mu_forward(g, num, den, rows=False)[0]


def _least_squares(x: Tensor, g: Tensor) -> Tensor:
    """Semi-NMF's ``F = X G (GᵀG + λI)⁻¹`` (the ridge ``λ`` of the module docstring)."""
    tiny, eps2, _ = _limits(x.dtype)
    rank, eps = g.shape[-1], eps2**0.5
    if rank == 1:
        return (x @ g) / (g.square().sum(-2, keepdim=True) * (1 + eps) + tiny)
    b, gram = x @ g, g.mT @ g
    ridge = eps * gram.diagonal(dim1=-2, dim2=-1).mean(-1) + tiny
    eye = torch.eye(rank, dtype=x.dtype, device=x.device)
    return torch.linalg.solve(gram + ridge[..., None, None] * eye, b, left=False)


def _semi_step(x: Tensor, g: Tensor) -> Tensor:
    """One Semi-NMF iteration: least-squares ``F`` from ``G``, then the update of ``G``."""
    f = _least_squares(x, g)
    xtf_pos, xtf_neg = _split((f.mT @ x).mT)  # faster than x.mT @ f
    if g.shape[-1] == 1:  # FᵀF = ‖f‖² >= 0: (FᵀF)⁻ = 0
        return mu_update(g, xtf_pos, xtf_neg + g * f.square().sum(-2, keepdim=True))
    ftf_pos, ftf_neg = _split(f.mT @ f)
    return mu_update(g, xtf_pos + g @ ftf_neg, xtf_neg + g @ ftf_pos)


def _convex_step(a_pos: Tensor, a_neg: Tensor, w: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """One Convex-NMF iteration: ``G`` from ``W``, then ``W`` from the new ``G``."""
    ap_w, an_w = a_pos @ w, a_neg @ w
    g = mu_update(g, ap_w + g @ (w.mT @ an_w), an_w + g @ (w.mT @ ap_w))
    gtg = g.mT @ g
    w = mu_update(w, a_pos @ g + an_w @ gtg, a_neg @ g + ap_w @ gtg)
    return w, g


def _check(x: Tensor, rank: int, iters: int, grad_iters: int | None) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank should be a positive int, got {rank!r}.")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters should be a non-negative int, got {iters!r}.")
    if grad_iters is not None and (not isinstance(grad_iters, int) or grad_iters < 0):
        raise ValueError(f"grad_iters should be None or a non-negative int, got {grad_iters!r}.")
    if x.dim() < 2:
        raise ValueError(f"x should have shape (..., M, N), got {tuple(x.shape)}.")


def _check_all(x: Tensor, rank: int, iters: int, grad_iters: int | None) -> None:
    """:func:`_check`, and a rank of at most ``min(M, N)`` (the public functions)."""
    _check(x, rank, iters, grad_iters)
    m, n = x.shape[-2:]
    if rank > min(m, n):
        raise ValueError(
            f"rank={rank} is above min(M, N) = {min(m, n)} of x's {m} x {n} matrices; a larger "
            "rank cannot describe a matrix better."
        )


def _init(x: Tensor, rows: int, rank: int, given: Tensor | None) -> Tensor:
    """An initial factor ``(rows, R)``, or ``(..., rows, R)`` if ``given`` has a batch: the
    matrix products broadcast a shared one (one GEMM for the whole batch)."""
    return weyl(rows, rank, x.device, x.dtype) if given is None else given.to(x.dtype)


def _batched(x: Tensor, factor: Tensor) -> Tensor:
    """``factor`` broadcast to ``x``'s batch (after 0 iterations it is still the shared init)."""
    return factor.expand(*x.shape[:-2], *factor.shape[-2:])


def _semi(x: Tensor, rank: int, iters: int, init: Tensor | None, grad_iters: int | None):
    """``(f, g)`` of :func:`semi_nmf` for ``x`` in the working dtype."""
    g0 = _init(x, x.shape[-1], rank, init)
    with no_grad_if(grad_iters == 0):
        (g,) = unroll(lambda g: (_semi_step(x, g),), (g0,), iters, grad_iters)
        return _least_squares(x, g), _batched(x, g)


def _semi_recon(x: Tensor, rank: int, iters: int, init, grad_iters: int | None) -> Tensor:
    f, g = _semi(x, rank, iters, init, grad_iters)
    return f * g.mT if rank == 1 else f @ g.mT  # the same numbers; a product is faster


def _convex(x: Tensor, rank: int, iters: int, init, grad_iters: int | None):
    """``(w, g)`` of :func:`convex_nmf` for ``x`` in the working dtype."""
    rows = x.shape[-2]
    if init is None:
        g0 = weyl(rows, rank, x.device, x.dtype)
        init = (g0 / g0.sum(0), g0)
    w0, g0 = (_init(x, rows, rank, t) for t in init)
    with no_grad_if(grad_iters == 0):
        a_pos, a_neg = _split(x @ x.mT)
        w, g = unroll(lambda w, g: _convex_step(a_pos, a_neg, w, g), (w0, g0), iters, grad_iters)
        return _batched(x, w), _batched(x, g)


def _convex_recon(x: Tensor, rank: int, iters: int, init, grad_iters: int | None) -> Tensor:
    w, g = _convex(x, rank, iters, init, grad_iters)
    with no_grad_if(grad_iters == 0):
        return g @ (w.mT @ x)


def _compute(solve: Callable, x: Tensor, *args):
    """``solve(x, *args)`` in float32 or float64 with autocast off, returned in ``x``'s dtype."""
    out_dtype = x.dtype
    with autocast_off(x):
        out = solve(x.to(work_dtype(x.dtype)), *args)
    if isinstance(out, Tensor):
        return out.to(out_dtype)
    return tuple(t.to(out_dtype) for t in out)


def semi_nmf(
    x: Tensor,
    rank: int = 1,
    iters: int = 5,
    init: Tensor | None = None,
    grad_iters: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Semi-NMF of ``x (..., M, N)``: ``x ≈ f @ g.mT`` with ``g ≥ 0`` (Ding et al., 2010).

    The voxels (columns) are the data points: ``f (..., M, R)`` is mixed-sign, ``g (..., N,
    R)`` nonnegative (see the module docstring for the iterations and the guards).

    Args:
        x: Tensor of any sign, ``(..., M, N)``; all leading dims are a batch.
        rank: Number of components ``R``.
        iters: Number of iterations ``T`` (each: least-squares ``f``, then the update of
            ``g``; the returned ``f`` is the least-squares one of the returned ``g``).
        init: Initial ``g₀ (..., N, R)``, positive, broadcast over the batch; ``None`` uses
            NMF's default ``v₀`` (:func:`~nmfseg.nmf.default_init`).
        grad_iters: Backpropagate through all iterations (``None``) or only the last
            ``grad_iters`` (and the final least squares); ``0``: no autograd at all.

    Returns:
        ``(f, g)`` in ``x``'s dtype (half precision is computed in float32, autocast off).

    Raises:
        ValueError: An argument out of range, or ``rank > min(M, N)``.

    Examples::

        >>> x = torch.randn(3, 8, 50)
        >>> f, g = semi_nmf(x, rank=2)
        >>> f.shape, g.shape, bool(g.min() >= 0)
        (torch.Size([3, 8, 2]), torch.Size([3, 50, 2]), True)
    """
    _check_all(x, rank, iters, grad_iters)
    return _compute(_semi, x, rank, iters, init, grad_iters)


def semi_nmf_reconstruct(
    x: Tensor,
    rank: int = 1,
    iters: int = 5,
    init: Tensor | None = None,
    grad_iters: int | None = None,
) -> Tensor:
    """The Semi-NMF reconstruction ``f @ g.mT`` of ``x (..., M, N)`` (:func:`semi_nmf`).

    Examples::

        >>> x = torch.randn(2, 4, 30, dtype=torch.float64)
        >>> f, g = semi_nmf(x, rank=2)
        >>> torch.allclose(semi_nmf_reconstruct(x, rank=2), f @ g.mT)
        True
    """
    _check_all(x, rank, iters, grad_iters)
    return _compute(_semi_recon, x, rank, iters, init, grad_iters)


def convex_nmf(
    x: Tensor,
    rank: int = 1,
    iters: int = 5,
    init: tuple[Tensor, Tensor] | None = None,
    grad_iters: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Convex-NMF of ``x (..., M, N)`` with the channels (rows) as the data points.

    Ding et al.'s ``X ≈ X W Gᵀ`` for ``X = xᵀ``: ``x ≈ g @ (w.mT @ x)`` with ``w, g (..., M,
    R) ≥ 0``, computed from the ``M × M`` Gram matrix ``x @ x.mT`` only (linear in ``N``; see
    the module docstring).

    Args:
        x: Tensor of any sign, ``(..., M, N)``; all leading dims are a batch.
        rank: Number of components ``R``.
        iters: Number of iterations ``T`` (each: the update of ``g``, then of ``w``).
        init: Initial ``(w₀, g₀)``, each ``(..., M, R)`` and positive, broadcast over the
            batch; ``None``: ``g₀`` the Weyl values of the rows, ``w₀ = g₀`` over its column
            sums.
        grad_iters: Backpropagate through all iterations (``None``) or only the last
            ``grad_iters``; ``0``: no autograd at all.

    Returns:
        ``(w, g)`` in ``x``'s dtype (half precision is computed in float32, autocast off).

    Raises:
        ValueError: An argument out of range, or ``rank > min(M, N)``.

    Examples::

        >>> x = torch.randn(3, 8, 50)
        >>> w, g = convex_nmf(x, rank=2)
        >>> w.shape, g.shape, bool(w.min() >= 0 and g.min() >= 0)
        (torch.Size([3, 8, 2]), torch.Size([3, 8, 2]), True)
    """
    _check_all(x, rank, iters, grad_iters)
    return _compute(_convex, x, rank, iters, init, grad_iters)


def convex_nmf_reconstruct(
    x: Tensor,
    rank: int = 1,
    iters: int = 5,
    init: tuple[Tensor, Tensor] | None = None,
    grad_iters: int | None = None,
) -> Tensor:
    """The Convex-NMF reconstruction ``g @ (w.mT @ x)`` of ``x (..., M, N)``
    (:func:`convex_nmf`).

    Examples::

        >>> x = torch.randn(2, 4, 30)
        >>> x[0] = 0.0
        >>> y = convex_nmf_reconstruct(x, rank=2)
        >>> bool((y[0] == 0).all()), bool(torch.isfinite(y).all())
        (True, True)
    """
    _check_all(x, rank, iters, grad_iters)
    return _compute(_convex_recon, x, rank, iters, init, grad_iters)


class _Factorization(nn.Module):
    """A factorization layer: ``rank``, ``iters`` and ``grad_iters`` are plain attributes
    (changeable after training), no parameters; the rank is not checked per call."""

    _factors: Callable = staticmethod(_semi)
    _reconstruction: Callable = staticmethod(_semi_recon)

    def __init__(self, rank: int = 1, iters: int = 5, grad_iters: int | None = None) -> None:
        super().__init__()
        _check(torch.empty(1, 1), rank, iters, grad_iters)
        self.rank, self.iters, self.grad_iters = rank, iters, grad_iters

    def factorize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The factors of ``x (..., M, N)`` with this layer's settings."""
        _check(x, self.rank, self.iters, self.grad_iters)
        return _compute(self._factors, x, self.rank, self.iters, None, self.grad_iters)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x (..., M, N)``, same shape."""
        return _compute(self._reconstruction, x, self.rank, self.iters, None, self.grad_iters)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, iters={self.iters}, grad_iters={self.grad_iters}"


class SemiNMF(_Factorization):
    """Semi-NMF layer: the reconstruction ``f @ g.mT`` of a batch of mixed-sign matrices
    (:func:`semi_nmf`; :meth:`factorize` returns ``(f, g)``).

    Args:
        rank: Number of components ``R``.
        iters: Number of iterations ``T``.
        grad_iters: Backpropagate only through the last ``grad_iters`` iterations.

    Examples::

        >>> layer = SemiNMF(rank=1, iters=5)
        >>> layer(torch.randn(3, 8, 100)).shape
        torch.Size([3, 8, 100])
        >>> layer.iters = 2  # fewer iterations at inference, no retraining
        >>> f, g = layer.factorize(torch.randn(3, 8, 100))
    """


class ConvexNMF(_Factorization):
    """Convex-NMF layer: the reconstruction ``g @ (w.mT @ x)`` of a batch of matrices
    (:func:`convex_nmf`, the channels as the data points; :meth:`factorize` returns
    ``(w, g)``).

    Args:
        rank: Number of components ``R``.
        iters: Number of iterations ``T``.
        grad_iters: Backpropagate only through the last ``grad_iters`` iterations.

    Examples::

        >>> layer = ConvexNMF(rank=2, iters=5)
        >>> layer(torch.randn(3, 8, 100)).shape
        torch.Size([3, 8, 100])
    """

    _factors = staticmethod(_convex)
    _reconstruction = staticmethod(_convex_recon)
