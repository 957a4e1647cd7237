"""FAVOR+ attention as a token mixer: the Performer baseline of the paper (§4.2).

FAVOR+ (Fast Attention Via positive Orthogonal Random features; Choromanski et al., 2020,
"Rethinking Attention with Performers", ICLR 2021) estimates softmax attention
``softmax(QKᵀ / √d) V`` (tokens as rows) in time and memory linear in the number of
tokens: with random vectors ``ω_1 .. ω_m`` and the positive features

    ``φ(x) = m^(-1/2) · [exp(ω_j·x − |x|²/2)]_j``,   ``E[φ(x)·φ(y)] = exp(x·y)``,

the attention of query ``q`` is ``Σ_l φ(q)·φ(k_l) v_l / Σ_l φ(q)·φ(k_l)``, computed as
``φ(q)ᵀ (Σ_l φ(k_l) v_lᵀ) / φ(q)ᵀ Σ_l φ(k_l)``. Queries and keys are scaled by ``d^(-1/4)``
each, as softmax attention divides ``q·k`` by ``√d``. The ``ω_j`` are orthogonal within
blocks of ``d`` (the Q of a QR of a Gaussian matrix, sign-corrected so that it is Haar
distributed) and rescaled by chi(d)-distributed norms, so that each is marginally
``N(0, I_d)`` (:func:`orthogonal_gaussian`). Only bidirectional (non-causal) attention.

:class:`FAVORAttention` is the mixer ``"favor"``: ``in_proj`` ``C → 3C`` (queries, keys,
values, no bias), multi-head FAVOR+ over **all** voxels of the feature map (global attention,
heads of ``head_dim`` channels), ``out_proj`` ``C → C`` with bias, dropout. A
:class:`~nmfseg.blocks.MixerBlock` with it is the paper's Performer block.

Where this departs from the reference implementation (``performer-pytorch``), and why:

- Tokens are columns, ``(..., d, N)``, like the NMF's matrices: the channels-first feature
  map is split into heads by a view, and the result is written back without a transpose.
- Numerical stabilisation subtracts the maximum of the whole exponent (``ω·x − |x|²/2``),
  per query over its features and per attention over all keys and features; the factors
  this takes out (and ``m^(-1/2)``) cancel between numerator and denominator, exactly. The
  reference subtracts the maximum of ``ω·x`` only, which lets ``exp(−|x|²/2)`` underflow
  for large queries.
- The reference adds ``eps`` to every feature so that no denominator vanishes. Here ``eps``
  is added to every *key* feature only, through the two small sums (``Σφ(k) vᵀ + eps·1 Σvᵀ``
  and ``Σφ(k) + eps·N``), which costs nothing and keeps every output a convex combination
  of the values.
- The features are drawn once, from the global CPU generator, at construction and kept as a
  buffer (in the ``state_dict``): ``torch.manual_seed`` fixes them, inference is
  deterministic, and a checkpoint reproduces its outputs. Redrawing them (the reference
  redraws every 1000 training steps) is optional and off by default (``redraw``).
- The attention runs in float32 (float64 for float64 input) with autocast disabled, as the
  NMF does: the exponentials lose too much in bfloat16.

Number of features: ``m = ⌊d·ln d⌋`` by default (16 for ``d = 8``, 5 for ``d = 4``), the
``Θ(d log d)`` of the Performer paper's analysis with constant 1 (the reference's default),
which also gives the paper's FLOPs for its Performer (Tables 1–2, within 1%; see
:mod:`nmfseg.models.performer`).

Examples::

    >>> import torch
    >>> mixer = FAVORAttention(16, spatial_dims=3, head_dim=8, num_features=16)
    >>> mixer.projection.shape
    torch.Size([16, 8])
    >>> mixer(torch.randn(1, 16, 5, 6, 7)).shape
    torch.Size([1, 16, 5, 6, 7])
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from nmfseg.layers import PointwiseConv
from nmfseg.mixers._registry import register_mixer
from nmfseg.mixers.base import ProjectedMixer
from nmfseg.routes.precision import autocast_off

__all__ = [
    "FAVORAttention",
    "default_num_features",
    "favor_attention",
    "orthogonal_gaussian",
    "positive_random_features",
]


def default_num_features(head_dim: int) -> int:
    """``⌊d·ln d⌋`` random features for heads of ``d`` channels (at least 1).

    Examples::

        >>> [default_num_features(d) for d in (1, 4, 8, 16)]
        [1, 5, 16, 44]
    """
    return max(1, int(head_dim * math.log(head_dim)))


def orthogonal_gaussian(
    num_features: int,
    dim: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``num_features`` random vectors of ``R^dim``, orthogonal within blocks of ``dim``.

    Each block is the transposed Q factor of the QR decomposition of a ``dim × dim`` Gaussian
    matrix (columns multiplied by the signs of R's diagonal, which makes Q Haar distributed);
    the last block is truncated. Each row is then rescaled by the norm of an independent
    Gaussian vector (chi-distributed with ``dim`` degrees of freedom), so every row is
    marginally ``N(0, I_dim)``. Drawn in float64 on the CPU from the global generator (so
    ``torch.manual_seed`` fixes them on every device), then converted.

    Args:
        num_features: Number of vectors ``m`` (rows).
        dim: Their dimension ``d``.
        dtype: Returned dtype (default: the default dtype).
        device: Returned device (default: the default device).

    Returns:
        ``(num_features, dim)``.

    Examples::

        >>> w = orthogonal_gaussian(5, 4)
        >>> w.shape, bool(abs(w[0] @ w[1]) < 1e-5)
        (torch.Size([5, 4]), True)
    """
    gaussian = torch.randn(
        math.ceil(num_features / dim), dim, dim, dtype=torch.float64, device="cpu"
    )
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    directions = q.mT.reshape(-1, dim)[:num_features]
    norms = torch.linalg.vector_norm(
        torch.randn(num_features, dim, dtype=torch.float64, device="cpu"), dim=1, keepdim=True
    )
    dtype = dtype or torch.get_default_dtype()
    return (directions * norms).to(device=device or torch.get_default_device(), dtype=dtype)


def positive_random_features(
    x: Tensor,
    projection: Tensor,
    scale: float = 1.0,
    stabilize: Literal["query", "key"] | None = None,
) -> Tensor:
    """Positive random features of the softmax kernel for ``scale · x``.

    ``φ(x)_j = m^(-1/2) exp(ω_j·x − |x|²/2)``, so ``φ(x)·φ(y)`` is an unbiased estimate of
    ``exp(x·y)`` when the ``ω_j`` are ``N(0, I)``. With ``stabilize`` the largest exponent is
    subtracted first (detached from autograd): over the features of each token
    (``"query"``), or over all features and tokens (``"key"``); the features are then off by
    a factor per token (per matrix for keys), which cancels in :func:`favor_attention`.

    Args:
        x: Tokens as columns, ``(..., d, N)``.
        projection: The random vectors ``ω`` as rows, ``(m, d)``.
        scale: Features of ``scale · x`` (applied to ``projection``: no copy of ``x``).
        stabilize: ``None``, ``"query"`` or ``"key"``.

    Returns:
        ``(..., m, N)``, positive.

    Examples::

        >>> _ = torch.manual_seed(0)
        >>> x, y = 0.3 * torch.randn(2, 4, 1)
        >>> w = orthogonal_gaussian(4000, 4)
        >>> estimate = positive_random_features(x, w).T @ positive_random_features(y, w)
        >>> bool(abs(estimate / torch.exp(x.T @ y) - 1) < 0.05)
        True
    """
    m = projection.shape[0]
    exponent = torch.matmul(projection * scale, x)  # (..., m, N)
    offset = x.square().sum(-2, keepdim=True).mul_(scale**2 / 2).add_(0.5 * math.log(m))
    exponent.sub_(offset)
    if stabilize == "query":
        exponent.sub_(exponent.detach().amax(-2, keepdim=True))
    elif stabilize == "key":
        exponent.sub_(exponent.detach().amax((-2, -1), keepdim=True))
    elif stabilize is not None:
        raise ValueError(f"stabilize should be None, 'query' or 'key', got {stabilize!r}.")
    return exponent.exp_()


def favor_attention(
    q: Tensor, k: Tensor, v: Tensor, projection: Tensor, eps: float = 1e-6
) -> Tensor:
    """FAVOR+ estimate of bidirectional softmax attention ``V softmax(KᵀQ / √d)``.

    Output column ``n`` estimates ``Σ_l softmax_l(q_n·k_l / √d) v_l``, in time and memory
    linear in the number of tokens.

    Args:
        q: Queries as columns, ``(..., d, N)``.
        k: Keys, ``(..., d, L)``.
        v: Values, ``(..., e, L)``.
        projection: The random vectors ``ω`` as rows, ``(m, d)`` (:func:`orthogonal_gaussian`).
        eps: Added to every (stabilized, at most 1) key feature, so that no denominator
            vanishes; applied to the sums over keys, at no cost.

    Returns:
        ``(..., e, N)``.

    Examples::

        >>> q, k, v = torch.randn(3, 2, 8, 10)
        >>> favor_attention(q, k, v, orthogonal_gaussian(16, 8)).shape
        torch.Size([2, 8, 10])
    """
    scale = q.shape[-2] ** -0.25
    projection = projection.to(q.dtype)
    phi_k = positive_random_features(k, projection, scale, "key")  # (..., m, L)
    context = torch.matmul(phi_k, v.mT)  # Σ_l φ(k_l) v_lᵀ, (..., m, e)
    normalizer = phi_k.sum(-1, keepdim=True)  # Σ_l φ(k_l), (..., m, 1)
    del phi_k
    if eps:
        context = context + eps * v.sum(-1, keepdim=True).mT
        normalizer = normalizer + eps * k.shape[-1]
    phi_q = positive_random_features(q, projection, scale, "query")  # (..., m, N)
    return torch.matmul(context.mT, phi_q).div_(torch.matmul(normalizer.mT, phi_q))


class FAVORAttention(ProjectedMixer):
    """Multi-head FAVOR+ attention over all voxels: ``in_proj`` (q, k, v) → FAVOR+ →
    ``out_proj`` → dropout.

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3 (the attention is over all voxels, whatever their layout).
        head_dim: Channels per head ``d``.
        num_features: Random features ``m`` per head (default ``⌊d·ln d⌋``).
        redraw: Draw new features (from the global generator) at every forward pass in
            ``train()``; in ``eval()`` they never change. Off by default, so that a trained
            network is the function it was validated as. Under gradient checkpointing the
            recomputation draws the same features (``torch.utils.checkpoint`` restores the
            generator).
        eps: Added to every key feature (:func:`favor_attention`).
        dropout: Dropout probability on the output.

    Raises:
        ValueError: An argument is out of range; the message names it.

    Examples::

        >>> mixer = FAVORAttention(16, spatial_dims=2, head_dim=4)
        >>> mixer.heads, mixer.num_features
        (4, 5)
        >>> mixer(torch.randn(2, 16, 9, 11)).shape
        torch.Size([2, 16, 9, 11])
    """

    projection: Tensor

    mixes_in_float32 = True

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        head_dim: int = 8,
        num_features: int | None = None,
        redraw: bool = False,
        eps: float = 1e-6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dropout)
        if not isinstance(head_dim, int) or head_dim < 1 or channels % head_dim:
            raise ValueError(
                f"channels ({channels}) should be a positive multiple of head_dim ({head_dim})."
            )
        if num_features is None:
            num_features = default_num_features(head_dim)
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(
                f"num_features should be None or a positive int, got {num_features!r}."
            )
        if not isinstance(redraw, bool):
            raise ValueError(f"redraw should be True or False, got {redraw!r}.")
        if not eps >= 0:
            raise ValueError(f"eps should be >= 0, got {eps!r}.")
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.head_dim = head_dim
        self.heads = channels // head_dim
        self.num_features = num_features
        self.redraw = redraw
        self.eps = eps
        self.in_proj = PointwiseConv(channels, 3 * channels, bias=False)
        self.out_proj = PointwiseConv(channels, channels, bias=True)
        self.register_buffer("projection", orthogonal_gaussian(num_features, head_dim))

    def redraw_features(self) -> None:
        """Replace the random features by new ones from the global generator."""
        self.projection = orthogonal_gaussian(
            self.num_features, self.head_dim, self.projection.dtype, self.projection.device
        )

    def mix(self, z: Tensor) -> Tensor:
        """FAVOR+ of every head over all voxels of ``z (B, 3C, *spatial)`` (queries, keys,
        values); returns ``(B, C, *spatial)``."""
        if self.redraw and self.training:
            self.redraw_features()
        b, _, *spatial = z.shape
        dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
        with autocast_off(z):
            q, k, v = z.to(dtype).reshape(b, 3, self.heads, self.head_dim, -1).unbind(1)
            out = favor_attention(q, k, v, self.projection, self.eps)
        return out.to(z.dtype).reshape(b, self.channels, *spatial)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, head_dim={self.head_dim}, "
            f"num_features={self.num_features}, redraw={self.redraw}"
        )


register_mixer("favor")(FAVORAttention)
