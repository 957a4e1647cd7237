"""The pre-norm mixer block of the Factorizer (paper eq. 4, Fig. 2a), for any token mixer.

``y = x + Mixer(LN(x)); z = y + MLP(LN(y))``: with the Wrapped NMF mixer this is the
Factorizer block, with FAVOR+ a Performer block, and with ``mixer="none"`` or ``mlp=False``
the paper's "no NMF" and "no MLP" ablations (the subblock and its norm are left out).

The fused CPU kernels of :mod:`nmfseg.layers.fused` are chosen here, once per call: with the
route ``cpu_fused`` allowed (the default, :mod:`nmfseg.routes`) and a float32/float64 CPU
input outside autocast, the LayerNorm is fused into the mixer's input projection, the
mixer's output projection, dropout and residual are one pass, and the whole MLP subblock is
one node; otherwise every module runs its own plain ``forward``. Both paths compute the same
function. Under CPU autocast a block whose mixer computes in float32 anyway (the NMF,
FAVOR+; or no mixer) leaves autocast and runs the fused float32 kernels: on the CPU they are
faster than its plain modules in bf16 (an attention mixer keeps bf16, where attention gains
from it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nmfseg.blocks._registry import register_block
from nmfseg.layers import MLP, LayerNorm, layer_norm_pointwise, norm_mlp_residual
from nmfseg.layers.fused import project_add_dropout
from nmfseg.mixers import create_mixer
from nmfseg.mixers.base import ProjectedMixer
from nmfseg.routes import FusedFlag, Route, allows, cpu_autocast_leaves, takes, work_dtype

__all__ = ["MixerBlock"]


class MixerBlock(FusedFlag, nn.Module):
    """``y = x + Mixer(LN(x)); z = y + MLP(LN(y))`` on ``(B, C, *spatial)`` feature maps.

    Args:
        channels: Number of channels ``C``.
        spatial_dims: 2 or 3.
        dropout: Dropout probability inside both subblocks.
        mixer: Registered token mixer (:func:`nmfseg.mixers.list_mixers`); ``"none"`` leaves
            the mixer subblock out.
        mixer_args: Keyword arguments of the mixer (e.g. ``matricize``, ``window_size``).
        mlp: Include the MLP subblock.
        mlp_ratio: Hidden width of the MLP as a multiple of ``C``.

    Examples::

        >>> import torch
        >>> block = MixerBlock(16, spatial_dims=2, mixer="nmf",
        ...                    mixer_args={"head_dim": 8, "window_size": 4})
        >>> block(torch.randn(1, 16, 9, 10)).shape
        torch.Size([1, 16, 9, 10])
    """

    ROUTES = frozenset({Route.CPU_FUSED})

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        dropout: float = 0.0,
        mixer: str = "nmf",
        mixer_args: dict[str, Any] | None = None,
        mlp: bool = True,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        mixer_module = create_mixer(
            mixer, channels, spatial_dims=spatial_dims, dropout=dropout, **(mixer_args or {})
        )
        self.norm1 = LayerNorm(channels) if mixer_module is not None else None
        self.mixer = mixer_module
        self.norm2 = LayerNorm(channels) if mlp else None
        self.mlp = MLP(channels, mlp_ratio=mlp_ratio, dropout=dropout) if mlp else None
        self.routes = self.ROUTES
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only the input of the mixer subblock for backward and recompute the rest
        there (its normalized projection, the mixer's output): two fewer feature maps per
        block at the top of a checkpointed stage's backward, for one more mixer forward."""
        self.grad_checkpointing = enable

    def _leaves_autocast(self, x: Tensor) -> bool:
        """Under CPU autocast, whether this block runs in float32 on its fused kernels: when
        its mixer computes in float32 anyway (or it has none), the fused float32 kernels are
        faster than the plain modules in bf16 (``benchmarks/bench_predict.py --bf16``)."""
        mixer = self.mixer
        return (
            allows(self, Route.CPU_FUSED)
            and cpu_autocast_leaves(x)
            and (mixer is None or getattr(mixer, "mixes_in_float32", False))
        )

    def _mix(self, x: Tensor) -> Tensor:
        mixer, norm = self.mixer, self.norm1
        if takes(self, Route.CPU_FUSED, x) and isinstance(mixer, ProjectedMixer):
            z = mixer.mix(layer_norm_pointwise(x, norm, mixer.in_proj))
            p = mixer.dropout.p if mixer.training else 0.0
            return project_add_dropout(x, z, mixer.out_proj, p)
        return x + mixer(norm(x))

    def forward(self, x: Tensor) -> Tensor:
        if self._leaves_autocast(x):
            with torch.autocast("cpu", enabled=False):
                return self._forward(x.to(work_dtype(x.dtype)))
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        if self.mixer is not None:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(self._mix, x, use_reentrant=False)
            else:
                x = self._mix(x)
        if self.mlp is not None:
            x = (
                norm_mlp_residual(x, self.norm2, self.mlp)
                if allows(self, Route.CPU_FUSED)
                else x + self.mlp(self.norm2(x))
            )
        return x


register_block("mixer")(MixerBlock)
