"""The export form of a Factorizer block: channels last, windows by two block swaps, no permutes.

A Factorizer block on a channels-first map ``(B, C, *S)`` normalizes every voxel's channel
vector (a LayerNorm needs the channels last), projects it (a pointwise convolution), and
matricizes it into ``head_dim × window`` matrices. Traced as it runs in PyTorch, that is two
full-map transposes per LayerNorm and a 9-dimensional permute per matricize and per inverse,
with 8-element inner runs: in OpenVINO's per-node profile of the Swin Factorizer (bf16,
``PERF_COUNT``; ``benchmarks/profile_engines.py``) generic ``Transpose`` kernels took 55 % of
the time and the GEMMs under 10 %.

:class:`ChannelsLastBlock` computes the same block with the channels last throughout:

- one permute in and one out per block (``(B, C, *S) ↔ (B, *S, C)``), which OpenVINO
  folds into the channels-last layouts of the convolutions around the block (as a
  ``(B, C, N)`` transpose it ran them in its reference kernel beside two reorders), the
  LayerNorms as ``LayerNormalization`` over the last axis, the pointwise convolutions as
  ``MatMul`` (fully-connected layers a runtime fuses with its neighbours);
- the windows of Local and Swin matricize taken one spatial axis at a time, as a reshape and
  a swap of two middle axes whose inner runs are a whole ``window × rest`` slab, then
  ``window_W × C`` elements (two cheap 4-D transposes instead of one 9-D permute);
- the rank-1 NMF (paper eq. 14, :mod:`nmfseg.nmf.rank1`) of all heads of a window at once:
  ``f₁ = X g₀ / ‖g₀‖²`` as a product and a sum with the shared ``g₀``, the Gram matrices as one
  ``C × C`` product per window masked to its ``head_dim × head_dim`` diagonal blocks, the
  power iteration on them, and the reconstruction ``(f fᵀ / ‖f‖²) X`` as one product with
  the block-diagonal projector. The full ``C × C`` products spend ``C / head_dim`` times
  the multiply-adds of per-head ones, but run as dense GEMMs; the per-head layout would
  need the transposes this form exists to remove;
- the Swin shift (a cyclic roll of the map and back) as one gather of the flattened voxels
  (:func:`roll`).

The function is the network's (same windows, same shifts, same ``g₀``, the same number of
power-iteration steps), equal to rounding. Blocks it does not cover (another mixer, a rank
above 1, a user init, an NMF layer switched off) keep their own forward.

Examples::

    >>> import torch
    >>> from nmfseg.blocks import MixerBlock
    >>> block = MixerBlock(16, mixer="nmf", mixer_args={"head_dim": 4, "window_size": 4,
    ...                    "matricize": "swin"}).eval()
    >>> x = torch.randn(1, 16, 6, 9, 8)
    >>> with torch.no_grad():
    ...     torch.allclose(ChannelsLastBlock(block)(x), block(x), atol=1e-5)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.mixers.nmf import WrappedNMF
from nmfseg.nmf.solvers import NMF
from nmfseg.nmf.steps import guard, weyl
from nmfseg.nmf.windows import ntuple

__all__ = ["ChannelsLastBlock", "Size", "covers", "roll", "size_min"]

Size = Any  # an int in eager mode, a 0-d tensor while tracing


def covers(block: nn.Module) -> bool:
    """Whether :class:`ChannelsLastBlock` computes ``block`` (a
    :class:`~nmfseg.blocks.MixerBlock` whose mixer, if any, is the paper's Wrapped NMF, not a
    subclass, with the rank-1 NMF and the default init, or switched off)."""
    mixer = getattr(block, "mixer", None)
    if not hasattr(block, "norm2"):
        return False
    if mixer is None:
        return True
    if type(mixer) is not WrappedNMF or not isinstance(mixer.nmf, NMF):  # a §5 variant, ...
        return False
    return not mixer.enabled or mixer.nmf.uses_rank1_path()


def size_min(a: Size, b: int) -> Size:
    """``min(a, b)`` of a size that may be traced (a 0-d tensor while tracing)."""
    return torch.clamp(a, max=b) if isinstance(a, Tensor) else min(a, b)


def roll(x: Tensor, shifts: list[Size], dims: list[int]) -> Tensor:
    """``torch.roll(x, shifts, dims)`` over consecutive axes ``dims`` as one gather of the
    flattened axes (sizes may be traced).

    The index is computed from the shape, so a runtime that compiles for a fixed shape folds
    it into a constant: one copy of the map, where a roll per axis as two slices and a
    concatenation (the form PyTorch exports) ran in OpenVINO's reference split and
    concatenation, one pass over the map per axis.
    """
    if not dims or list(dims) != list(range(dims[0], dims[0] + len(dims))):
        raise ValueError(f"roll: dims={dims} should be consecutive axes.")
    index = torch.zeros((), dtype=torch.long, device=x.device)
    for shift, dim in zip(shifts, dims, strict=True):
        n = x.shape[dim]
        i = torch.remainder(torch.arange(n, device=x.device) - shift, n)
        index = index[..., None] * n + i  # row-major over dims
    flat = x.flatten(dims[0], dims[-1])
    return flat.index_select(dims[0], index.reshape(-1)).reshape(x.shape)


def to_windows(x: Tensor, window: tuple[Size, ...]) -> Tensor:
    """``(B, *S, C)`` (``S`` a multiple of ``window``) to ``(windows, N, C)``, windows in
    ``(b, *grid)`` order and voxels in window order, one spatial axis at a time."""
    b, *spatial, c = x.shape
    lead, done = b, 1  # lead: (b, grid so far); done: voxels of the window so far
    for i, (s, w) in enumerate(zip(spatial, window, strict=True)):
        rest = c
        for t in spatial[i + 1 :]:
            rest = rest * t
        x = x.reshape(lead, done, s // w, w * rest).transpose(1, 2)
        lead, done = lead * (s // w), done * w
    return x.reshape(lead, done, c)


def from_windows(z: Tensor, shape: tuple[Size, ...], window: tuple[Size, ...]) -> Tensor:
    """The inverse of :func:`to_windows`: ``(windows, N, C)`` back to ``shape (B, *S, C)``."""
    b, *spatial, c = shape
    d = len(spatial)
    grids = [s // w for s, w in zip(spatial, window, strict=True)]
    for i in reversed(range(d)):
        lead = b
        for g in grids[:i]:
            lead = lead * g
        done = 1
        for w in window[:i]:
            done = done * w
        rest = c
        for t in spatial[i + 1 :]:
            rest = rest * t
        z = z.reshape(lead, grids[i], done, window[i] * rest).transpose(1, 2)
    return z.reshape(shape)


def rank1_windows(y: Tensor, head_dim: int, iters: int, channels: int) -> Tensor:
    """The rank-1 NMF reconstruction of every head of every window ``y (W, N, C)``.

    ``channels`` is ``C`` as a Python int (the block's width): the head mask is then a
    constant of the graph and every per-head sum one product with it, where sums over
    reshaped heads of traced sizes made most of the exported graph's nodes (shape
    arithmetic a runtime folds while compiling: OpenVINO took seconds per window shape).

    Head ``h`` of window ``w`` is the matrix ``X = y[w, :, h·E:(h+1)·E]ᵀ`` (``E × N``); the
    result holds ``(f fᵀ / ‖f‖²) X`` in its place (paper eq. 14, after ``iters`` outer
    iterations from the default ``g₀``; see :mod:`nmfseg.nmf.rank1`).
    """
    n = y.shape[1]
    g0 = weyl(n, 1, y.device, y.dtype)[:, 0]  # the default init of every matrix
    # (W, C): X g₀ / ‖g₀‖², all heads; a product and a sum, which runtimes keep in the
    # network's precision (as a vector-times-batch MatMul OpenVINO ran it in float32, after a
    # float32 copy of every window)
    f = (y * g0[:, None]).sum(1) / guard((g0 * g0).sum())
    heads = torch.arange(channels, device=y.device) // head_dim
    mask = (heads[:, None] == heads[None, :]).to(y.dtype)  # the diagonal head blocks
    k = torch.matmul(y.transpose(1, 2), y) * mask  # (W, C, C): each head's K = X Xᵀ
    for _ in range(iters - 1):  # f ← K f ‖f‖² / (fᵀ K f), per head
        kf = torch.matmul(k, f.unsqueeze(-1)).squeeze(-1)
        # (v @ mask)[c] is the sum of v over the head of channel c
        f = kf * (torch.matmul(f * f, mask) / guard(torch.matmul(f * kf, mask)))
    p = f.unsqueeze(-1) * (f / guard(torch.matmul(f * f, mask))).unsqueeze(-2) * mask
    return torch.matmul(y, p)  # rows of y times the symmetric projector: (P X)ᵀ


class ChannelsLastBlock(nn.Module):
    """A :class:`~nmfseg.blocks.MixerBlock` in eval mode, computed channels last (see the
    module docstring); its parameters are the block's own.

    Args:
        block: The block (:func:`covers` must be true).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if not covers(block):
            raise TypeError(f"ChannelsLastBlock does not cover this {type(block).__name__}")
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        block = self.block
        b, _, *spatial = x.shape
        norms = [n for n in (block.norm1, block.norm2) if n is not None]
        c = norms[0].num_channels if norms else x.shape[1]  # an int: a constant of the graph
        d = len(spatial)
        y = x.permute(0, *range(2, 2 + d), 1).reshape(b, -1, c)  # (B, N, C)
        if block.mixer is not None:
            mixer = block.mixer
            z = F.linear(_norm(block.norm1, y), mixer.in_proj.weight)
            z = self._mix(torch.relu(z).reshape(b, *spatial, c), mixer, c)
            y = y + F.linear(z.reshape(b, -1, c), mixer.out_proj.weight, mixer.out_proj.bias)
        if block.mlp is not None:
            mlp = block.mlp
            h = F.linear(_norm(block.norm2, y), mlp.fc1.weight, mlp.fc1.bias)
            y = y + F.linear(mlp.act(h), mlp.fc2.weight, mlp.fc2.bias)
        return y.reshape(b, *spatial, c).permute(0, 1 + d, *range(1, 1 + d))

    @staticmethod
    def _mix(z: Tensor, mixer: WrappedNMF, c: int) -> Tensor:
        if not mixer.enabled:
            return z
        e, iters = mixer.head_dim, mixer.nmf.iters
        b, *spatial, _ = z.shape
        spatial_dims = len(spatial)
        if mixer.kind == "global":
            return rank1_windows(z.reshape(b, -1, c), e, iters, c).reshape(z.shape)
        window = ntuple(mixer.matricize.window_size, spatial_dims, "window_size")
        window = tuple(size_min(s, w) for s, w in zip(spatial, window, strict=True))
        padded = [(s + w - 1) // w * w for s, w in zip(spatial, window, strict=True)]
        pad: list[Size] = [0, 0]
        for s, p in zip(reversed(spatial), reversed(padded), strict=True):
            pad += [0, p - s]
        crop = (slice(None), *(slice(0, s) for s in spatial))

        def partition(v: Tensor) -> Tensor:
            windows = to_windows(F.pad(v, pad), window)
            y = rank1_windows(windows, e, iters, c)
            return from_windows(y, (b, *padded, c), window)[crop]

        out = partition(z)
        if mixer.kind == "swin":  # the shifted partition, rolled back; Algorithm 3's average
            dims = list(range(1, 1 + spatial_dims))
            shifted = partition(roll(z, [w // 2 for w in window], dims))
            back = [s - w // 2 for s, w in zip(spatial, window, strict=True)]
            out = (out + roll(shifted, back, dims)) * 0.5
        return out


def _norm(norm: nn.Module, y: Tensor) -> Tensor:
    """The block's LayerNorm over the last axis of a channels-last ``y (B, N, C)``."""
    return F.layer_norm(y, (norm.num_channels,), norm.weight, norm.bias, norm.eps)
