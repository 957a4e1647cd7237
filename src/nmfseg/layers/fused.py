"""Fused, chunked CPU kernels for the per-voxel parts of a Factorizer block.

A Factorizer block is mostly per-voxel work: LayerNorm over channels followed by a pointwise
convolution (the NMF subblock's input projection), and the MLP
``fc2(dropout(gelu(fc1(LN(x)))))``. Written with separate PyTorch ops, every step writes a
full-size tensor to memory (a transposed copy for the LayerNorm, the normalized map, the
hidden map before and after GELU, the dropout mask...) and autograd keeps several of them
for backward. Here each of the two is one autograd node that runs over chunks of voxels:

- temporaries are chunk-sized (about ``CHUNK_ELEMENTS`` floats), so they are recycled by the
  allocator instead of being page-faulted in at every step (the chunk is a compromise:
  smaller chunks are kinder to caches, but every chunk is a dozen more operations, and on
  a machine whose cores are oversubscribed each parallel operation costs a thread wake-up;
  on the 2-core development VM a Swin block of 32 channels ran 17% faster forward at 96³ and
  20% faster forward+backward at 64³ with 2 MiB chunks than with 16 MiB, and no faster with
  1 MiB);
- backward recomputes the normalized input, the hidden map and the dropout mask (drawn from
  a private generator seeded from the global one, replayed in the same chunk order), so the
  only tensors kept are the input and the per-voxel LayerNorm statistics.

The algebra (``x̂ = (x − μ)·rstd``, LayerNorm weight ``γ`` and bias ``β``, conv ``W``, ``b``)::

    conv(LN(x)) = (W diag γ) x̂ + (W β + b)
    dW = (dy x̂ᵀ) diag γ + (dy 1) βᵀ,  dγ = diag(Wᵀ dy x̂ᵀ),  dβ = Wᵀ (dy 1),
    dx = rstd · (d − mean_c(d) − x̂ · mean_c(d ∘ x̂)),  d = diag(γ) Wᵀ dy.

Inputs are channels-first ``(B, C, N)`` float32/float64 CPU tensors (:func:`fusable`). The
blocks decide once per call whether to use these kernels: they are the route ``cpu_fused`` of
:mod:`nmfseg.routes`, which ``use_routes(model, {"plain"})`` switches off for a whole network,
e.g. to run every layer's plain ``forward`` for hooks or as a reference in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.layers.dropout import _drop_bits, _seed, _thresholds
from nmfseg.routes import Route, routable
from nmfseg.routes import cpu_fused_applies as fusable
from nmfseg.routes.precision import backward_without_autocast

__all__ = [
    "CHUNK_ELEMENTS",
    "LayerNormPointwiseFn",
    "MLPFn",
    "ProjectAddDropoutFn",
    "fusable",
    "fused_kernels",
    "project_add_dropout",
]

CHUNK_ELEMENTS = 2**19  # elements of the widest per-chunk temporary (2 MiB in float32)


def _chunks(batch: int, n: int, width: int) -> Iterator[tuple[int, int, int]]:
    step = max(256, CHUNK_ELEMENTS // max(width, 1))
    for b in range(batch):
        for n0 in range(0, n, step):
            yield b, n0, min(n0 + step, n)


def _normalize(xc: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(x̂, μ, rstd)`` of a chunk ``xc (C, n)``."""
    mu = xc.mean(0)
    xhat = torch.sub(xc, mu)
    rstd = xhat.square().mean(0).add_(eps).rsqrt_()
    return xhat.mul_(rstd), mu, rstd


def _effective(gamma, beta, weight, bias) -> tuple[Tensor, Tensor]:
    """``W diag γ`` and ``W β + b``."""
    b_eff = weight @ beta if bias is None else torch.addmv(bias, weight, beta)
    return weight * gamma, b_eff


def _ln_input_grad(dxhat: Tensor, xhat: Tensor, rstd: Tensor, out: Tensor) -> None:
    """``out = rstd · (d − mean_c d − x̂ · mean_c(d ∘ x̂))``; overwrites ``dxhat`` and ``xhat``."""
    m1 = dxhat.mean(0)
    m2 = torch.mul(dxhat, xhat).mean(0)
    dxhat.sub_(xhat.mul_(m2)).sub_(m1)
    torch.mul(dxhat, rstd, out=out)


def _param_grads(g_eff, d_sum, gamma, beta, weight):
    """``(dW, dγ, dβ)`` from ``g_eff = Σ dy x̂ᵀ`` and ``d_sum = Σ dy``."""
    return g_eff * gamma + torch.outer(d_sum, beta), (weight * g_eff).sum(0), weight.t() @ d_sum


class LayerNormPointwiseFn(torch.autograd.Function):
    """``W (γ ∘ x̂ + β) + b`` for ``x (B, C, N)``, ``W (O, C)``; ``b`` may be ``None``.

    Saves ``x`` and the statistics ``μ, rstd (B, N)``.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, eps):  # type: ignore[override]
        batch, _, n = x.shape
        w_eff, b_eff = _effective(gamma, beta, weight, bias)
        y = x.new_empty(batch, weight.shape[0], n)
        mu, rstd = x.new_empty(batch, n), x.new_empty(batch, n)
        for b, n0, n1 in _chunks(batch, n, max(x.shape[1], weight.shape[0])):
            xhat, mu[b, n0:n1], rstd[b, n0:n1] = _normalize(x[b, :, n0:n1], eps)
            torch.addmm(b_eff[:, None], w_eff, xhat, out=y[b, :, n0:n1])
        ctx.save_for_backward(x, mu, rstd, gamma, beta, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @backward_without_autocast
    def backward(ctx, dy):  # type: ignore[override]
        x, mu, rstd, gamma, beta, weight = ctx.saved_tensors
        batch, c, n = x.shape
        w_eff = weight * gamma
        dx = torch.empty_like(x)
        g_eff = x.new_zeros(weight.shape)
        d_sum = x.new_zeros(weight.shape[0])
        for b, n0, n1 in _chunks(batch, n, max(c, weight.shape[0])):
            r = rstd[b, n0:n1]
            xhat = torch.sub(x[b, :, n0:n1], mu[b, n0:n1]).mul_(r)
            dyc = dy[b, :, n0:n1]
            g_eff.addmm_(dyc, xhat.t())
            d_sum.add_(dyc.sum(1))
            _ln_input_grad(torch.mm(w_eff.t(), dyc), xhat, r, out=dx[b, :, n0:n1])
        d_weight, d_gamma, d_beta = _param_grads(g_eff, d_sum, gamma, beta, weight)
        return dx, d_gamma, d_beta, d_weight, d_sum if ctx.has_bias else None, None


def _mask(shape: tuple[int, int], thresholds: Tensor, gen: torch.Generator) -> Tensor:
    return _drop_bits(shape[0] * shape[1], thresholds, gen).view(shape)


def _drop_out(t: Tensor, p: float, gen: torch.Generator) -> Tensor | None:
    """Output dropout of a chunk ``t`` in place (scale then zero); returns the mask."""
    if p == 0:
        return None
    drop = _mask(t.shape, _thresholds(p), gen)
    t.mul_(1.0 / (1.0 - p)).masked_fill_(drop, 0)
    return drop


class MLPFn(torch.autograd.Function):
    """``[x +] dropout(fc2(dropout(gelu(fc1(LN(x))))))`` for ``x (B, C, N)``.

    fc1 is ``(H, C)``, fc2 ``(C, H)``, both with biases; ``p`` is the hidden dropout,
    ``p_out`` the output dropout, ``residual`` adds ``x``. Saves ``x``, ``μ, rstd (B, N)`` and
    the seed of the dropout masks.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, w1, b1, w2, b2, eps, p, p_out, residual):  # type: ignore[override]
        batch, _, n = x.shape
        hidden = w1.shape[0]
        w1_eff, b1_eff = _effective(gamma, beta, w1, b1)
        w2_eff = w2 * (1.0 / (1.0 - p))  # the hidden dropout's scale, folded into fc2
        seed = _seed() if p > 0 or p_out > 0 else 0
        gen = torch.Generator().manual_seed(seed)
        thresholds = _thresholds(p)
        y = x.new_empty(batch, w2.shape[0], n)
        mu, rstd = x.new_empty(batch, n), x.new_empty(batch, n)
        for b, n0, n1 in _chunks(batch, n, hidden):
            xhat, mu[b, n0:n1], rstd[b, n0:n1] = _normalize(x[b, :, n0:n1], eps)
            a = F.gelu(torch.addmm(b1_eff[:, None], w1_eff, xhat))
            if p > 0:
                a.masked_fill_(_mask(a.shape, thresholds, gen), 0)
            if not residual and p_out == 0:
                torch.addmm(b2[:, None], w2_eff, a, out=y[b, :, n0:n1])
                continue
            t = torch.addmm(b2[:, None], w2_eff, a)
            _drop_out(t, p_out, gen)
            if residual:
                torch.add(x[b, :, n0:n1], t, out=y[b, :, n0:n1])
            else:
                y[b, :, n0:n1] = t
        ctx.save_for_backward(x, mu, rstd, gamma, beta, w1, b1, w2)
        ctx.p, ctx.p_out, ctx.residual, ctx.seed = p, p_out, residual, seed
        return y

    @staticmethod
    @backward_without_autocast
    def backward(ctx, dy):  # type: ignore[override]
        x, mu, rstd, gamma, beta, w1, b1, w2 = ctx.saved_tensors
        p, p_out = ctx.p, ctx.p_out
        batch, _, n = x.shape
        hidden = w1.shape[0]
        w1_eff, b1_eff = _effective(gamma, beta, w1, b1)
        w2_eff = w2 * (1.0 / (1.0 - p))
        gen = torch.Generator().manual_seed(ctx.seed)
        thresholds = _thresholds(p)
        dx = torch.empty_like(x)
        g1 = x.new_zeros(w1.shape)
        d1 = x.new_zeros(hidden)
        g2 = x.new_zeros(w2.shape)
        d2 = x.new_zeros(w2.shape[0])
        for b, n0, n1 in _chunks(batch, n, hidden):
            r = rstd[b, n0:n1]
            xhat = torch.sub(x[b, :, n0:n1], mu[b, n0:n1]).mul_(r)
            h = torch.addmm(b1_eff[:, None], w1_eff, xhat)
            a = F.gelu(h)
            drop = _mask(a.shape, thresholds, gen) if p > 0 else None
            if drop is not None:
                a.masked_fill_(drop, 0)
            dyc = dy[b, :, n0:n1]
            dt = dyc if p_out == 0 else dyc.clone()
            _drop_out(dt, p_out, gen)
            g2.addmm_(dt, a.t())
            d2.add_(dt.sum(1))
            da = torch.mm(w2_eff.t(), dt)
            if drop is not None:
                da.masked_fill_(drop, 0)
            dh = torch.ops.aten.gelu_backward(da, h)
            g1.addmm_(dh, xhat.t())
            d1.add_(dh.sum(1))
            dxc = dx[b, :, n0:n1]
            _ln_input_grad(torch.mm(w1_eff.t(), dh), xhat, r, out=dxc)
            if ctx.residual:
                dxc.add_(dyc)
        d_w1, d_gamma, d_beta = _param_grads(g1, d1, gamma, beta, w1)
        d_w2 = g2.mul_(1.0 / (1.0 - p))
        return dx, d_gamma, d_beta, d_w1, d1, d_w2, d2, None, None, None, None


class ProjectAddDropoutFn(torch.autograd.Function):
    """``x + dropout(W z + b)`` for ``x, z (B, C, N)``, ``W (C, C)``; ``b`` may be ``None``.

    The output projection of the NMF subblock, its dropout and the residual connection in
    one pass; saves ``z`` and the seed of the dropout mask (``x`` is not needed).
    """

    @staticmethod
    def forward(ctx, x, z, weight, bias, p):  # type: ignore[override]
        batch, c, n = z.shape
        seed = _seed() if p > 0 else 0
        gen = torch.Generator().manual_seed(seed)
        y = torch.empty_like(x)
        for b, n0, n1 in _chunks(batch, n, max(c, weight.shape[0])):
            zc = z[b, :, n0:n1]
            t = torch.mm(weight, zc) if bias is None else torch.addmm(bias[:, None], weight, zc)
            _drop_out(t, p, gen)
            torch.add(x[b, :, n0:n1], t, out=y[b, :, n0:n1])
        ctx.save_for_backward(z, weight)
        ctx.p, ctx.seed, ctx.has_bias = p, seed, bias is not None
        return y

    @staticmethod
    @backward_without_autocast
    def backward(ctx, dy):  # type: ignore[override]
        z, weight = ctx.saved_tensors
        batch, c, n = z.shape
        gen = torch.Generator().manual_seed(ctx.seed)
        dz = torch.empty_like(z)
        g = z.new_zeros(weight.shape)
        d = z.new_zeros(weight.shape[0])
        for b, n0, n1 in _chunks(batch, n, max(c, weight.shape[0])):
            dt = dy[b, :, n0:n1]
            if ctx.p > 0:
                dt = dt.clone()
                _drop_out(dt, ctx.p, gen)
            g.addmm_(dt, z[b, :, n0:n1].t())
            d.add_(dt.sum(1))
            torch.mm(weight.t(), dt, out=dz[b, :, n0:n1])
        return dy, dz, g, d if ctx.has_bias else None, None


def project_add_dropout(x: Tensor, z: Tensor, conv: nn.Module, p: float) -> Tensor:
    """``x + dropout(conv(z))`` for a pointwise ``conv`` (:class:`ProjectAddDropoutFn`).

    Args:
        x: The residual ``(B, C, *spatial)``.
        z: The projection's input ``(B, C_in, *spatial)``.
        conv: A :class:`~nmfseg.layers.PointwiseConv` from ``C_in`` to ``C`` channels.
        p: Dropout probability (0 in eval mode).
    """
    b, c = x.shape[:2]
    y = ProjectAddDropoutFn.apply(
        x.reshape(b, c, -1), z.reshape(b, z.shape[1], -1), conv.weight, conv.bias, p
    )
    return y.view(x.shape)


_FUSED = frozenset({Route.CPU_FUSED, Route.RECOMPUTE})


@contextmanager
def fused_kernels(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Deprecated: :func:`nmfseg.routes.use_routes`. Allow or forbid the routes
    ``cpu_fused`` and ``recompute`` on every module of ``model`` inside the block (the
    others, ``rank1``, as they were).

    Examples::

        >>> import nmfseg
        >>> from nmfseg.routes import Route
        >>> net = nmfseg.create_model("swin_factorizer_isles", channels=(8, 16, 32, 64, 128))
        >>> with fused_kernels(net, False):  # the plain module-by-module path
        ...     any(r in m.routes for m in net.modules() if hasattr(m, "routes") for r in _FUSED)
        False
    """
    modules = routable(model)
    previous = [m.routes for m in modules]
    for m in modules:
        m.routes = (m.routes - _FUSED) | (type(m).ROUTES & _FUSED if enabled else frozenset())
    try:
        yield
    finally:
        for m, routes in zip(modules, previous, strict=True):
            m.routes = routes
