"""Factorizer networks (Ashtari et al., Medical Image Analysis 2023, §3.2–3.4, Fig. 1–2).

A :class:`~nmfseg.models.unet.UNet` whose blocks are ``y = WrappedNMF(LN(x)) + x;
z = MLP(LN(y)) + y`` (eq. 4; :class:`~nmfseg.blocks.MixerBlock` with the ``"nmf"`` mixer).
Where the paper is silent (the biases of the MLP convs, of the NMF output conv and of the
transposed convs, dropout after the position embedding and the decoder projection, a plain
stem) this follows the official code, which reproduces the paper's parameter counts
(Table 1: 5.9M, Table 2: 7.4M).

The presets of the paper (§4.2; Table 1 for BraTS at 1×4×128³, Table 2 for ISLES'22 at
1×2×64³), its BraTS ablations (Tables 3–4: ``{global,local,swin}_factorizer_brats_no_mlp``,
``..._no_pos`` and the MLP-only ``factorizer_brats_no_nmf``) and the 2D presets for
high-resolution images (``{global,local,swin}_factorizer_2d``, 512×512 patches, not in the
paper) are registered as data at the end of this file.

Examples::

    >>> import torch
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
from typing import Any, Literal

from torch import Tensor

from nmfseg.layers.args import check_positive
from nmfseg.mixers.nmf import NMFRecord, WrappedNMF, nmf_layers, set_nmf
from nmfseg.models._registry import (
    PAPER_DATASETS,
    ModelConfig,
    register_model,
    register_paper_presets,
)
from nmfseg.models.unet import UNet

__all__ = ["Factorizer"]


class Factorizer(UNet):
    """Factorizer U-Net for 2D or 3D segmentation, on inputs of any spatial size.

    ``forward`` returns one logit tensor of the input's spatial size in ``eval()`` and the
    list ``[full, 1/2, 1/4]`` (``1 + deep_supr_num`` entries) in ``train()``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (logits).
        channels: Widths of the encoder levels; the last one is the bridge.
        matricize: ``"global"``, ``"local"`` or ``"swin"`` (Global/Local/Swin Factorizer).
        head_dim: Channels per NMF matrix ``E`` (every width must be a multiple of it).
        window_size: Window of Local/Swin matricize (MONAI SwinUNETR's word).
        rank: NMF rank ``R``.
        iters: NMF outer iterations ``T``.
        solver: ``"hals"`` or ``"mu"``.
        mlp_ratio: MLP hidden width as a multiple of the level's width.
        dropout: Dropout probability (after the NMF and MLP subblocks, inside the MLP, after
            the position embedding and the decoder projections).
        pos_embed: Add the learnable position embedding in the bridge.
        pos_embed_grid: Bridge grid the embedding is stored at (training patch size / 16).
        deep_supervision: Return the lower-resolution outputs too in ``train()``.
        deep_supr_num: Number of lower-resolution outputs (2: the paper's 1/2 and 1/4).
        nmf: Build the NMF subblocks (``False`` is the paper's "no NMF" ablation).
        mlp: Build the MLP subblocks (``False`` is the paper's "no MLP" ablation).
        grad_iters: Backpropagate through the last ``grad_iters`` NMF iterations only
            (``None``: all of them, as in the paper).
        mixer: The registered token mixer of the NMF subblocks (:mod:`nmfseg.mixers`):
            ``"nmf"``, the paper's Wrapped NMF, or another factorization that takes
            ``matricize``, ``head_dim``, ``window_size``, ``rank``, ``iters`` and
            ``grad_iters`` (the §5 variants: ``"semi_nmf"``, ``"convex_nmf"``,
            ``"greedy_nmf"``, ``"local_global_nmf"``; ``solver`` is the ``"nmf"`` mixer's).
        mixer_args: The mixer's other keyword arguments (e.g. ``{"max_rank": 4}``).

    Raises:
        ValueError: An argument is out of range (e.g. a width that is not a multiple of
            ``head_dim``); the message names it.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        matricize: str = "swin",
        head_dim: int = 8,
        window_size: int | Sequence[int] = 8,
        rank: int = 1,
        iters: int = 5,
        solver: str = "hals",
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        pos_embed: bool = True,
        pos_embed_grid: int | Sequence[int] = 8,
        deep_supervision: bool = True,
        deep_supr_num: int = 2,
        nmf: bool = True,
        mlp: bool = True,
        grad_iters: int | None = None,
        mixer: str = "nmf",
        mixer_args: dict[str, Any] | None = None,
    ) -> None:
        channels = tuple(channels)
        if mixer != "nmf" and solver != "hals":
            raise ValueError(f"solver={solver!r} is the 'nmf' mixer's; mixer={mixer!r} has none.")
        if nmf:
            check_positive(head_dim=head_dim)
            if any(isinstance(c, int) and c % head_dim for c in channels):
                raise ValueError(
                    f"every width in channels={channels} should be divisible by "
                    f"head_dim={head_dim}."
                )
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio should be > 0, got {mlp_ratio!r}.")
        mixer_args = {
            "matricize": matricize,
            "head_dim": head_dim,
            "window_size": window_size,
            "rank": rank,
            "iters": iters,
            "grad_iters": grad_iters,
            **({"solver": solver} if mixer == "nmf" else {}),
            **(mixer_args or {}),
        }
        block_args = dict(
            mixer=mixer if nmf else "none",
            mixer_args=mixer_args if nmf else {},
            mlp=mlp,
            mlp_ratio=mlp_ratio,
        )
        super().__init__(
            spatial_dims, in_channels, out_channels, channels, "mixer", block_args, dropout,
            pos_embed, pos_embed_grid, deep_supervision, deep_supr_num,
        )  # fmt: skip
        for level, stage in self.levels():
            for layer in nmf_layers(stage.block):
                layer.level = level
        for index, layer in enumerate(self.nmf_layers()):
            layer.layer_index = index
        self._records: list[NMFRecord] | None = None

    def forward_logits(self, x: Tensor, size: tuple[int, ...]) -> list[Tensor]:
        start = 0 if self._records is None else len(self._records)
        outs = super().forward_logits(x, size)
        for record in (self._records or [])[start:]:
            record.size = tuple(math.ceil(s / 2**record.level) for s in size)
        return outs

    # ----------------------------------------------------------------------------------
    # NMF controls (paper §4.5) and factors (paper Fig. 6)
    def nmf_layers(self) -> list[WrappedNMF]:
        """The Wrapped NMF subblocks in network order: encoder 0..L-1 (the last one is the
        bridge), then decoder from the deepest level up. Empty when built with ``nmf=False``."""
        return nmf_layers(self)

    def set_nmf(
        self,
        iters: int | None = None,
        rank: int | None = None,
        solver: str | None = None,
        enabled: Sequence[int] | Literal["all"] | None = None,
    ) -> None:
        """Change every NMF layer at inference time (:func:`nmfseg.mixers.nmf.set_nmf`).

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
        set_nmf(self, iters=iters, rank=rank, solver=solver, enabled=enabled)

    @contextmanager
    def record_factors(self) -> Iterator[list[NMFRecord]]:
        """Record the factors of every enabled NMF layer during the forward passes inside.

        Yields a list that each forward appends one :class:`~nmfseg.mixers.nmf.NMFRecord`
        per NMF layer to, in network order, with ``size`` set to the unpadded stage size;
        turn a record into spatial maps with :func:`nmfseg.mixers.nmf.factor_maps`.
        Gradient checkpointing is off inside (a recomputed stage would record twice).

        Examples::

            >>> import torch
            >>> from nmfseg.mixers.nmf import factor_maps
            >>> net = Factorizer(3, 4, 3, channels=(8, 16, 32, 64, 128)).eval()
            >>> with net.record_factors() as records, torch.no_grad():
            ...     _ = net(torch.randn(1, 4, 20, 18, 17))
            >>> len(records), tuple(factor_maps(records[0]).shape)
            (9, (1, 20, 18, 17))
        """
        records: list[NMFRecord] = []
        layers = self.nmf_layers()
        checkpointing = self.grad_checkpointing
        self.set_grad_checkpointing(False)  # a recomputed layer would record twice
        self._records = records
        for layer in layers:
            layer.recorder = records
        try:
            yield records
        finally:
            self._records = None
            self.set_grad_checkpointing(checkpointing)
            for layer in layers:
                layer.recorder = None


# --------------------------------------------------------------------------------------
# The paper's presets (§4.2; Table 1 for BraTS at 1×4×128³, Table 2 for ISLES'22 at 1×2×64³)
_BRATS = dict(
    spatial_dims=3, in_channels=4, out_channels=3, channels=[32, 64, 128, 256, 512],
    head_dim=8, window_size=8, mlp_ratio=2, pos_embed_grid=8,
)  # fmt: skip
_ISLES = dict(
    spatial_dims=3, in_channels=2, out_channels=1, channels=[32, 64, 128, 256, 512],
    head_dim=4, window_size=4, mlp_ratio=4, pos_embed_grid=4,
)  # fmt: skip
# (matricize: GFLOPs of Table 1 for BraTS, of Table 2 for ISLES'22, description)
_VARIANTS = {
    "global": (170.0, 28.5, "Global Factorizer (heads x all voxels)"),
    "local": (170.0, 28.5, "Local Factorizer (non-overlapping windows)"),
    "swin": (174.2, 29.1, "Swin Factorizer (shifted windows)"),
}
for _kind, (_brats_gflops, _isles_gflops, _text) in _VARIANTS.items():
    register_paper_presets(
        f"{_kind}_factorizer",
        Factorizer,
        {"matricize": _kind},
        paper={"brats": (5.9e6, _brats_gflops), "isles": (7.4e6, _isles_gflops)},
        description=_text,
        per_dataset={"brats": _BRATS, "isles": _ISLES},
    )

# The ablations of Tables 3 (subblocks) and 4 (position embedding), BraTS: the full preset with
# one part left out. Without NMF the matricize no longer matters, so Table 3's "MLP only" row is
# one network for the three variants.
_ABLATIONS = {
    "no_mlp": (dict(mlp=False), "without MLP subblocks (NMF only), Table 3"),
    "no_pos": (dict(pos_embed=False), "without the bridge position embedding, Table 4"),
}
for _kind, (_, _, _text) in _VARIANTS.items():
    for _suffix, (_overrides, _what) in _ABLATIONS.items():
        register_model(
            ModelConfig(
                name=f"{_kind}_factorizer_brats_{_suffix}",
                builder=Factorizer,
                kwargs={**_BRATS, "matricize": _kind, **_overrides},
                description=f"{_text} {_what}",
                **PAPER_DATASETS["brats"],
            )
        )
register_model(
    ModelConfig(
        name="factorizer_brats_no_nmf",
        builder=Factorizer,
        kwargs={**_BRATS, "nmf": False},
        description="Factorizer without NMF subblocks (MLP only), Table 3",
        **PAPER_DATASETS["brats"],
    )
)

# 2D presets for high-resolution images (not in the paper): the BraTS preset's widths, heads
# and MLP in 2D, five levels on 512×512 patches (a 32×32 bridge, where the position embedding
# is stored), 16×16 windows (256 pixels a window, between the paper's 4³ and 8³ voxels), four
# channels -> three regions (BraTS slices: `nmfseg synth brats2d`) unless the data say otherwise.
_2D = dict(
    spatial_dims=2, in_channels=4, out_channels=3, channels=[32, 64, 128, 256, 512],
    head_dim=8, window_size=16, mlp_ratio=2, pos_embed_grid=32,
)  # fmt: skip
for _kind, (_, _, _text) in _VARIANTS.items():
    register_model(
        ModelConfig(
            name=f"{_kind}_factorizer_2d",
            builder=Factorizer,
            kwargs={**_2D, "matricize": _kind},
            description=f"{_text}, 2D (spatial_dims=2) for high-resolution slices",
            dataset="BraTS-2D",
            in_channels=4,
            out_channels=3,
            patch_size=(512, 512),
        )
    )
