"""Factorizer networks (Ashtari et al., Medical Image Analysis 2023, §3.2–3.4, Fig. 1–2).

A U-Net whose blocks replace the self-attention of a ViT block with a Wrapped NMF subblock:

- stem: 3×3×3 convolution without bias to ``channels[0]`` (no norm, no activation);
- encoder level ``i > 0``: 2×2×2 stride-2 convolution without bias, then one block; the
  deepest level (the bridge) adds a learnable position embedding right after down-sampling;
- decoder level: 2×2×2 stride-2 transposed convolution (with bias), concatenation with the
  skip, a bias-free pointwise projection ``2C → C`` with dropout, then one block;
- heads: 1×1×1 convolutions at the ``deep_supervision`` highest decoder resolutions.

Block: ``y = WrappedNMF(LN(x)) + x; z = MLP(LN(y)) + y`` (eq. 4). Where the paper is silent
(the biases of the MLP convs, of the NMF output conv and of the transposed convs, dropout
after the position embedding and the decoder projection, a plain stem) this follows the
official code, which reproduces the paper's parameter counts (Table 1: 5.9M, Table 2: 7.4M).

Any input size: the input is zero-padded at the end of each spatial dim to a multiple of
``2**(len(channels) - 1)`` and the outputs are cropped back (the 1/2 and 1/4 outputs to
``ceil(size / 2)`` and ``ceil(size / 4)``).

Examples::

    >>> import torch
    >>> from nmfseg.models.factorizer import Factorizer
    >>> net = Factorizer(3, in_channels=4, out_channels=3, channels=(8, 16, 32, 64, 128))
    >>> _ = net.eval()
    >>> net(torch.randn(1, 4, 20, 24, 28)).shape
    torch.Size([1, 3, 20, 24, 28])
    >>> _ = net.train()
    >>> [tuple(o.shape[2:]) for o in net(torch.randn(1, 4, 20, 24, 28))]
    [(20, 24, 28), (10, 12, 14), (5, 6, 7)]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nmfseg.layers import (
    MATRICIZE_KINDS,
    MLP,
    Dropout,
    LayerNorm,
    NMFRecord,
    PointwiseConv,
    PositionEmbedding,
    WrappedNMF,
)
from nmfseg.layers.norm import fusable
from nmfseg.models._registry import register_model
from nmfseg.nmf import SOLVERS

__all__ = [
    "Factorizer",
    "FactorizerBlock",
    "global_factorizer_brats",
    "global_factorizer_isles",
    "local_factorizer_brats",
    "local_factorizer_isles",
    "swin_factorizer_brats",
    "swin_factorizer_isles",
]


def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n or min(out) < 1:
        raise ValueError(f"{name} should be a positive int or {n} positive ints, got {value!r}.")
    return out


class FactorizerBlock(nn.Module):
    """``y = WrappedNMF(LN(x)) + x; z = MLP(LN(y)) + y`` (paper eq. 4, Fig. 2a).

    Args:
        channels: Number of channels ``C``.
        spatial_dims: 2 or 3.
        nmf: Include the NMF subblock (``False``: the "MLP only" ablation).
        mlp: Include the MLP subblock (``False``: the "NMF only" ablation).
        mlp_ratio: Hidden width of the MLP as a multiple of ``C``.
        dropout: Dropout probability inside both subblocks.
        **nmf_kwargs: ``matricize``, ``head_dim``, ``patch_size``, ``rank``, ``iters``,
            ``solver``, ``grad_iters`` of :class:`~nmfseg.layers.WrappedNMF`.

    Examples::

        >>> import torch
        >>> block = FactorizerBlock(16, spatial_dims=2, head_dim=8, patch_size=4)
        >>> block(torch.randn(1, 16, 9, 10)).shape
        torch.Size([1, 16, 9, 10])
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        nmf: bool = True,
        mlp: bool = True,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        **nmf_kwargs,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(channels) if nmf else None
        self.nmf = (
            WrappedNMF(channels, spatial_dims=spatial_dims, dropout=dropout, **nmf_kwargs)
            if nmf
            else None
        )
        self.norm2 = LayerNorm(channels) if mlp else None
        self.mlp = MLP(channels, mlp_ratio=mlp_ratio, dropout=dropout) if mlp else None

    def forward(self, x: Tensor) -> Tensor:
        if self.nmf is not None:
            x = self.nmf(x, norm=self.norm1, residual=True)
        if self.mlp is not None:
            x = self.mlp(x, norm=self.norm2, residual=True)
        return x


class _EncoderStage(nn.Module):
    def __init__(
        self, down: nn.Module | None, pos_embed: nn.Module | None, block: FactorizerBlock
    ) -> None:
        super().__init__()
        self.down = down
        self.pos_embed = pos_embed
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        if self.down is not None:
            x = self.down(x)
        if self.pos_embed is not None:
            x = self.pos_embed(x)
        return self.block(x)


class _DecoderStage(nn.Module):
    def __init__(self, up: nn.Module, channels: int, dropout: float, block: FactorizerBlock):
        super().__init__()
        self.up = up
        self.proj = PointwiseConv(2 * channels, channels, bias=False)
        self.drop = Dropout(dropout, inplace=True)  # on the projection's fresh output
        self.block = block

    def _project(self, skip: Tensor, up: Tensor) -> Tensor:
        """``dropout(proj(cat([skip, up])))``; on CPU as ``W_skip · skip + W_up · up`` with
        no concatenated copy, and backward keeps only ``up`` (``skip`` is stored by the
        down-sampling conv anyway)."""
        if not fusable(up) or up.shape[0] != 1:
            return self.drop(self.proj(torch.cat([skip, up], dim=1)))
        c = skip.shape[1]
        w = self.proj.weight
        out = torch.mm(w[:, :c], skip.reshape(c, -1)).addmm_(w[:, c:], up.reshape(c, -1))
        return self.drop(out).view(1, c, *up.shape[2:])  # in-place dropout on the GEMM output

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(self._project(skip, self.up(x)))


class Factorizer(nn.Module):
    """Factorizer U-Net for 2D or 3D segmentation, on inputs of any spatial size.

    ``forward`` returns one logit tensor of the input's spatial size in ``eval()`` and the
    list ``[full, 1/2, 1/4]`` (``deep_supervision`` entries) in ``train()``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (logits).
        channels: Widths of the encoder levels; the last one is the bridge.
        matricize: ``"global"``, ``"local"`` or ``"swin"`` (Global/Local/Swin Factorizer).
        head_dim: Channels per NMF matrix ``E`` (every width must be a multiple of it).
        patch_size: Window size of Local/Swin matricize.
        rank: NMF rank ``R``.
        iters: NMF outer iterations ``T``.
        solver: ``"hals"`` or ``"mu"``.
        mlp_ratio: MLP hidden width as a multiple of the level's width.
        dropout: Dropout probability (after the NMF and MLP subblocks, inside the MLP, after
            the position embedding and the decoder projections).
        pos_embed: Add the learnable position embedding in the bridge.
        pos_embed_grid: Bridge grid the embedding is stored at (training patch size / 16);
            it is interpolated for other bridge sizes.
        deep_supervision: Number of output heads (1 = full resolution only).
        nmf: Build the NMF subblocks (``False`` is the paper's "no NMF" ablation).
        mlp: Build the MLP subblocks (``False`` is the paper's "no MLP" ablation).
        grad_iters: Backpropagate through the last ``grad_iters`` NMF iterations only
            (``None``: all of them, as in the paper).

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        matricize: str = "swin",
        head_dim: int = 8,
        patch_size: int | Sequence[int] = 8,
        rank: int = 1,
        iters: int = 5,
        solver: str = "hals",
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        pos_embed: bool = True,
        pos_embed_grid: int | Sequence[int] = 8,
        deep_supervision: int = 3,
        nmf: bool = True,
        mlp: bool = True,
        grad_iters: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims should be 2 or 3, got {spatial_dims!r}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} should be a positive int, got {value!r}.")
        channels = tuple(channels)
        if len(channels) < 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels should be at least 2 positive ints, got {channels!r}.")
        if nmf:
            if not isinstance(head_dim, int) or head_dim < 1:
                raise ValueError(f"head_dim should be a positive int, got {head_dim!r}.")
            if any(c % head_dim for c in channels):
                raise ValueError(
                    f"every width in channels={channels} should be divisible by "
                    f"head_dim={head_dim}."
                )
        if matricize not in MATRICIZE_KINDS:
            raise ValueError(f"matricize should be one of {MATRICIZE_KINDS}, got {matricize!r}.")
        patch_size = _tuple(patch_size, spatial_dims, "patch_size")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank should be a positive int, got {rank!r}.")
        if not isinstance(iters, int) or iters < 0:
            raise ValueError(f"iters should be a non-negative int, got {iters!r}.")
        if grad_iters is not None and (not isinstance(grad_iters, int) or grad_iters < 0):
            raise ValueError(
                f"grad_iters should be None or a non-negative int, got {grad_iters!r}."
            )
        if solver not in SOLVERS:
            raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio should be > 0, got {mlp_ratio!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout should be in [0, 1), got {dropout!r}.")
        grid = _tuple(pos_embed_grid, spatial_dims, "pos_embed_grid")
        if not isinstance(deep_supervision, int) or not 1 <= deep_supervision < len(channels):
            raise ValueError(
                f"deep_supervision should be an int in [1, {len(channels) - 1}] for "
                f"{len(channels)} levels, got {deep_supervision!r}."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.deep_supervision = deep_supervision
        self.size_multiple = 2 ** (len(channels) - 1)
        self.grad_checkpointing = False
        self._records: list[NMFRecord] | None = None

        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        tconv = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
        block_kwargs = dict(
            spatial_dims=spatial_dims, nmf=nmf, mlp=mlp, mlp_ratio=mlp_ratio, dropout=dropout,
            matricize=matricize, head_dim=head_dim, patch_size=patch_size, rank=rank,
            iters=iters, solver=solver, grad_iters=grad_iters,
        )  # fmt: skip
        if not nmf:
            for key in ("matricize", "head_dim", "patch_size", "rank", "iters", "solver"):
                del block_kwargs[key]
            del block_kwargs["grad_iters"]

        self.stem = conv(in_channels, channels[0], kernel_size=3, padding=1, bias=False)
        last = len(channels) - 1
        self.encoder = nn.ModuleList(
            _EncoderStage(
                down=conv(channels[i - 1], c, kernel_size=2, stride=2, bias=False) if i else None,
                pos_embed=PositionEmbedding(c, grid, dropout) if pos_embed and i == last else None,
                block=FactorizerBlock(c, **block_kwargs),
            )
            for i, c in enumerate(channels)
        )
        self.decoder = nn.ModuleList(
            _DecoderStage(
                up=tconv(channels[i + 1], channels[i], kernel_size=2, stride=2),
                channels=channels[i],
                dropout=dropout,
                block=FactorizerBlock(channels[i], **block_kwargs),
            )
            for i in reversed(range(last))
        )
        self.heads = nn.ModuleList(
            PointwiseConv(channels[i], out_channels) for i in range(deep_supervision)
        )
        for index, layer in enumerate(self.nmf_layers()):
            layer.layer_index = index

    # ----------------------------------------------------------------------------------
    # forward
    def _stage_sizes(self, size: Sequence[int]) -> list[tuple[int, ...]]:
        return [tuple(math.ceil(s / 2**i) for s in size) for i in range(len(self.channels))]

    def _run(self, module: nn.Module, *args: Tensor) -> Tensor:
        if (
            self.grad_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and self._records is None  # a recomputed stage would record twice
        ):
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Decoder feature maps, highest resolution first, cropped to the input's stage sizes.

        Returns ``len(channels) - 1`` tensors: ``(B, channels[i], *ceil(size / 2**i))``.
        """
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (B, {self.in_channels}, *{self.spatial_dims} spatial "
                f"dims), got {tuple(x.shape)}."
            )
        size = tuple(x.shape[2:])
        pad = [(-s) % self.size_multiple for s in size]
        if any(pad):
            x = F.pad(x, [p for d in reversed(pad) for p in (0, d)])
        n_records = 0 if self._records is None else len(self._records)

        skips = []
        out = self.stem(x)
        for stage in self.encoder:
            out = self._run(stage, out)
            skips.append(out)
        out = skips.pop()
        feats = []
        for stage in self.decoder:
            out = self._run(stage, out, skips.pop())
            feats.append(out)
        feats.reverse()

        sizes = self._stage_sizes(size)
        if self._records is not None:
            for record in self._records[n_records:]:
                record.size = sizes[self._layer_level(record.layer)]
        if any(pad):
            feats = [f[(..., *(slice(0, s) for s in sizes[i]))] for i, f in enumerate(feats)]
        return feats

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        feats = self.forward_features(x)
        if not self.training:
            return self.heads[0](feats[0])
        return [head(f) for head, f in zip(self.heads, feats, strict=False)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward instead of storing its activations (timm API)."""
        self.grad_checkpointing = enable

    # ----------------------------------------------------------------------------------
    # NMF controls (paper §4.5) and factors (paper Fig. 6)
    def nmf_layers(self) -> list[WrappedNMF]:
        """The Wrapped NMF subblocks in network order: encoder 0..L-1 (the last one is the
        bridge), then decoder from the deepest level up. Empty when built with ``nmf=False``."""
        stages = [*self.encoder, *self.decoder]
        return [s.block.nmf for s in stages if s.block.nmf is not None]

    def _layer_level(self, index: int) -> int:
        n_enc = len(self.encoder)
        return index if index < n_enc else 2 * n_enc - 2 - index

    def set_nmf(
        self,
        iters: int | None = None,
        rank: int | None = None,
        solver: str | None = None,
        enabled: Sequence[int] | Literal["all"] | None = None,
    ) -> None:
        """Change every NMF layer at inference time, without retraining.

        Args:
            iters: New number of outer iterations (``None``: unchanged).
            rank: New rank (``None``: unchanged).
            solver: New solver, ``"hals"`` or ``"mu"`` (``None``: unchanged).
            enabled: Indices (into :meth:`nmf_layers`) of the layers to keep; every other
                layer is short-circuited (its output replaced by its input). ``"all"``
                enables every layer again; ``None`` leaves the choice unchanged.

        Examples::

            >>> net = Factorizer(3, 4, 3, channels=(8, 16, 32, 64, 128))
            >>> net.set_nmf(enabled=[0, 1, 2, 3, 4])
            >>> net.set_nmf(iters=2)  # the short-circuited layers stay short-circuited
            >>> [layer.enabled for layer in net.nmf_layers()][3:6]
            [True, True, False]
            >>> net.set_nmf(enabled="all")
            >>> all(layer.enabled for layer in net.nmf_layers())
            True
        """
        layers = self.nmf_layers()
        if iters is not None and (not isinstance(iters, int) or iters < 0):
            raise ValueError(f"iters should be a non-negative int, got {iters!r}.")
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank should be a positive int, got {rank!r}.")
        if solver is not None and solver not in SOLVERS:
            raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
        if isinstance(enabled, str) and enabled != "all":
            raise ValueError(f"enabled should be 'all' or a list of indices, got {enabled!r}.")
        if enabled is None:
            keep = {i for i, layer in enumerate(layers) if layer.enabled}
        elif enabled == "all":
            keep = set(range(len(layers)))
        else:
            keep = set(enabled)
        bad = sorted(i for i in keep if not (isinstance(i, int) and 0 <= i < len(layers)))
        if bad:
            raise ValueError(
                f"enabled should hold NMF layer indices in [0, {len(layers) - 1}], got {bad}."
            )
        for index, layer in enumerate(layers):
            if iters is not None:
                layer.nmf.iters = iters
            if rank is not None:
                layer.nmf.rank = rank
            if solver is not None:
                layer.nmf.solver = solver
            layer.enabled = index in keep

    @contextmanager
    def record_factors(self) -> Iterator[list[NMFRecord]]:
        """Record the factors of every enabled NMF layer during the forward passes inside.

        Yields a list that each forward appends one :class:`~nmfseg.layers.NMFRecord` per
        NMF layer to, in network order, with ``size`` set to the unpadded stage size; turn
        a record into spatial maps with :func:`nmfseg.layers.factor_maps`.

        Examples::

            >>> import torch
            >>> from nmfseg.layers import factor_maps
            >>> net = Factorizer(3, 4, 3, channels=(8, 16, 32, 64, 128)).eval()
            >>> with net.record_factors() as records, torch.no_grad():
            ...     _ = net(torch.randn(1, 4, 20, 18, 17))
            >>> len(records), tuple(factor_maps(records[0]).shape)
            (9, (1, 20, 18, 17))
        """
        records: list[NMFRecord] = []
        layers = self.nmf_layers()
        self._records = records
        for layer in layers:
            layer.recorder = records
        try:
            yield records
        finally:
            self._records = None
            for layer in layers:
                layer.recorder = None


# --------------------------------------------------------------------------------------
# The paper's presets (§4.2; Table 1 for BraTS at 1×4×128³, Table 2 for ISLES'22 at 1×2×64³)
_BRATS = dict(
    spatial_dims=3, in_channels=4, out_channels=3, channels=(32, 64, 128, 256, 512),
    head_dim=8, patch_size=8, mlp_ratio=2, pos_embed_grid=8,
)  # fmt: skip
_ISLES = dict(
    spatial_dims=3, in_channels=2, out_channels=1, channels=(32, 64, 128, 256, 512),
    head_dim=4, patch_size=4, mlp_ratio=4, pos_embed_grid=4,
)  # fmt: skip
_BRATS_INFO = dict(
    dataset="BraTS", in_channels=4, out_channels=3, patch_size=(128, 128, 128), paper_params=5.9e6
)
_ISLES_INFO = dict(
    dataset="ISLES22", in_channels=2, out_channels=1, patch_size=(64, 64, 64), paper_params=7.4e6
)


@register_model(defaults={**_BRATS, "matricize": "global"}, **_BRATS_INFO, paper_gflops=170.0)
def global_factorizer_brats(**kwargs) -> Factorizer:
    """Global Factorizer for BraTS (4 MRI sequences → ET/TC/WT), paper Table 1."""
    return Factorizer(**kwargs)


@register_model(defaults={**_BRATS, "matricize": "local"}, **_BRATS_INFO, paper_gflops=170.0)
def local_factorizer_brats(**kwargs) -> Factorizer:
    """Local Factorizer for BraTS (8³ windows), paper Table 1."""
    return Factorizer(**kwargs)


@register_model(defaults={**_BRATS, "matricize": "swin"}, **_BRATS_INFO, paper_gflops=174.2)
def swin_factorizer_brats(**kwargs) -> Factorizer:
    """Swin Factorizer for BraTS (shifted 8³ windows), paper Table 1."""
    return Factorizer(**kwargs)


@register_model(defaults={**_ISLES, "matricize": "global"}, **_ISLES_INFO, paper_gflops=28.5)
def global_factorizer_isles(**kwargs) -> Factorizer:
    """Global Factorizer for ISLES'22 (DWI + ADC → lesion), paper Table 2."""
    return Factorizer(**kwargs)


@register_model(defaults={**_ISLES, "matricize": "local"}, **_ISLES_INFO, paper_gflops=28.5)
def local_factorizer_isles(**kwargs) -> Factorizer:
    """Local Factorizer for ISLES'22 (4³ windows), paper Table 2."""
    return Factorizer(**kwargs)


@register_model(defaults={**_ISLES, "matricize": "swin"}, **_ISLES_INFO, paper_gflops=29.1)
def swin_factorizer_isles(**kwargs) -> Factorizer:
    """Swin Factorizer for ISLES'22 (shifted 4³ windows), paper Table 2."""
    return Factorizer(**kwargs)
