"""The contract every registered network keeps, in one place.

A :class:`SegmentationNetwork` takes ``(B, in_channels, *spatial)`` of **any** spatial size
and returns logits of the same spatial size: one tensor in ``eval()`` (what sliding-window
inference wants), and in ``train()`` a list of deep-supervision logits, full resolution
first (``[full, 1/2, 1/4]`` for the paper's Factorizers; one element for a network without
deep supervision), which the loss takes as it is.

Any size: the input is zero-padded at the end of each spatial dim to a multiple of
:attr:`~SegmentationNetwork.size_multiple` (``2**levels`` for a U-Net), the network runs on
the padded tensor (:meth:`~SegmentationNetwork.forward_logits`), and output ``i`` is cropped
to ``ceil(size / 2**i)``.

Subclasses (the skeleton :class:`~nmfseg.models.unet.UNet`, wrappers of MONAI networks)
implement :meth:`~SegmentationNetwork.forward_logits` only.

A framework that switches deep supervision with a flag of its own instead of the module's
mode (nnU-Net's ``set_deep_supervision_enabled``, whose validation runs in ``eval()`` and
wants the list) calls :meth:`~SegmentationNetwork.set_deep_supervision`: ``True`` returns
the list in both modes, ``False`` one tensor in both, ``None`` (the default) goes back to
the mode-driven contract. The heads stay in the network either way, so weights trained
with deep supervision load into a network that predicts without it.


Examples::

    >>> import torch
    >>> class Pointwise(SegmentationNetwork):
    ...     def __init__(self):
    ...         super().__init__(spatial_dims=3, in_channels=2, out_channels=1, size_multiple=4)
    ...         self.conv = torch.nn.Conv3d(2, 1, 1)
    ...     def forward_logits(self, x, size):
    ...         return [self.conv(x)]
    >>> net = Pointwise().eval()
    >>> net(torch.randn(1, 2, 5, 6, 7)).shape
    torch.Size([1, 1, 5, 6, 7])
    >>> [o.shape[2:] for o in net.train()(torch.randn(1, 2, 5, 6, 7))]
    [torch.Size([5, 6, 7])]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nmfseg.layers.args import check_positive

__all__ = ["SegmentationNetwork", "UShapedNetwork", "crop_to_size"]


class SegmentationNetwork(nn.Module):
    """Base class of the registered networks: any input size, a tensor in eval, a list in train.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (logits).
        size_multiple: The input is zero-padded to a multiple of this along every dim.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    model_config = None  # set by nmfseg.create_model (a ModelConfig)
    deep_supervision_override: bool | None = None  # set_deep_supervision; None: train()/eval()

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, size_multiple: int = 1
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims should be 2 or 3, got {spatial_dims!r}.")
        check_positive(in_channels=in_channels, out_channels=out_channels)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = int(size_multiple)

    def forward_logits(self, x: Tensor, size: tuple[int, ...]) -> list[Tensor]:
        """Logits of a padded input, full resolution first.

        Args:
            x: The input, zero-padded to a multiple of :attr:`size_multiple`.
            size: The spatial size before padding.

        Returns:
            In ``train()`` every deep-supervision output (output ``i`` at ``1 / 2**i`` of the
            padded size); in ``eval()`` at least the full-resolution one.
        """
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        """Outputs returned with deep supervision on (1 for a network without it)."""
        return 1

    @property
    def returns_list(self) -> bool:
        """Whether :meth:`forward` returns every deep-supervision output now (a list)."""
        override = self.deep_supervision_override
        return self.training if override is None else bool(override)

    def set_deep_supervision(self, enabled: bool | None) -> None:
        """Return every deep-supervision output (``True``), one tensor (``False``) in any
        mode, or follow ``train()``/``eval()`` again (``None``, the default).

        Examples::

            >>> import torch
            >>> from nmfseg.models import create_model
            >>> net = create_model("nnunet_isles", channels=(8, 16, 32, 64)).eval()
            >>> net.set_deep_supervision(True)
            >>> [o.shape[2] for o in net(torch.randn(1, 2, 8, 8, 8))]
            [8, 4, 2]
            >>> net.set_deep_supervision(None)
            >>> net(torch.randn(1, 2, 8, 8, 8)).shape
            torch.Size([1, 1, 8, 8, 8])
        """
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"set_deep_supervision takes True, False or None, got {enabled!r}.")
        self.deep_supervision_override = enabled

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` with the offending shape unless ``x`` is
        ``(B, in_channels, *spatial_dims sizes)``."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (B, {self.in_channels}, *{self.spatial_dims} spatial "
                f"dims), got {tuple(x.shape)}."
            )

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        self.check_input(x)
        size = tuple(int(s) for s in x.shape[2:])
        pad = [(-s) % self.size_multiple for s in size]
        if any(pad):
            x = F.pad(x, [p for d in reversed(pad) for p in (0, d)])
        outs = self.forward_logits(x, size)
        if any(pad):
            outs = [crop_to_size(o, size, 2**i) for i, o in enumerate(outs)]
        return outs if self.returns_list else outs[0]


class UShapedNetwork(SegmentationNetwork):
    """A :class:`SegmentationNetwork` with a U-shaped decoder and deep-supervision heads.

    Subclasses build ``self.decoder`` (stages called as ``stage(x, skip)``, deepest first) and
    ``self.heads`` (one per output, highest resolution first), and implement
    :meth:`forward_features` with :meth:`run_stage` and :meth:`decode`; the logits, the
    heads used in ``eval()`` and gradient checkpointing are here.
    """

    decoder: nn.ModuleList
    heads: nn.ModuleList
    grad_checkpointing = False

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Decoder feature maps of a padded input, highest resolution first."""
        raise NotImplementedError

    def run_stage(self, module: nn.Module, *args: Tensor) -> Tensor:
        """``module(*args)``, recomputed in backward when gradient checkpointing is on."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def decode(self, out: Tensor, skips: list[Tensor]) -> list[Tensor]:
        """Run the decoder from the bridge ``out`` over the ``skips`` (highest resolution
        first); returns the decoder's feature maps, highest resolution first."""
        feats = []
        for stage in self.decoder:
            out = self.run_stage(stage, out, skips.pop())
            feats.append(out)
        return feats[::-1]

    def forward_logits(self, x: Tensor, size: tuple[int, ...]) -> list[Tensor]:
        feats = self.forward_features(x)
        heads = self.heads if self.returns_list else self.heads[:1]
        return [head(f) for head, f in zip(heads, feats, strict=False)]

    @property
    def num_outputs(self) -> int:
        return len(self.heads)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward instead of storing its activations (timm API).

        Submodules with their own ``set_grad_checkpointing`` (a
        :class:`~nmfseg.blocks.mixer.MixerBlock` recomputes its mixer subblock) are switched
        too.
        """
        self.grad_checkpointing = enable
        for module in self.modules():
            if module is not self and hasattr(module, "set_grad_checkpointing"):
                module.set_grad_checkpointing(enable)


def crop_to_size(x: Tensor, size: Sequence[int], factor: int = 1) -> Tensor:
    """``x (B, C, *S)`` cropped to ``ceil(size / factor)`` from the start of every dim."""
    return x[(..., *(slice(0, math.ceil(s / factor)) for s in size))]
