"""MONAI SegResNet (Myronenko, 2019) under nmfseg's model contract.

The speed reference of ``benchmarks/bench_models.py``. The wrapper adds what every registered
network does (:class:`~nmfseg.models.base.SegmentationNetwork`): any input size (zero-padded
at the end of each dim to a multiple of ``2**(len(blocks_down)-1)`` and cropped back), one
tensor in ``eval()``, and a one-element list in ``train()`` (SegResNet has no deep
supervision).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from nmfseg.models._registry import register_paper_presets
from nmfseg.models.base import SegmentationNetwork

__all__ = ["SegResNet"]


class SegResNet(SegmentationNetwork):
    """``monai.networks.nets.SegResNet`` that takes any input size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (logits).
        init_filters: Width of the first level.
        blocks_down: Residual blocks per encoder level.
        blocks_up: Residual blocks per decoder level.
        dropout: Dropout probability after the initial convolution (``None``: none).

    Examples::

        >>> import torch
        >>> net = SegResNet(3, in_channels=4, out_channels=3, init_filters=8).eval()
        >>> net(torch.randn(1, 4, 13, 17, 10)).shape
        torch.Size([1, 3, 13, 17, 10])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        dropout: float | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, 2 ** (len(blocks_down) - 1))
        from monai.networks.nets import SegResNet as _MonaiSegResNet  # heavy: only when built

        if not isinstance(init_filters, int) or init_filters < 8 or init_filters % 8:
            raise ValueError(
                f"init_filters should be a multiple of 8 (GroupNorm(8)), got {init_filters!r}."
            )
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(
                f"blocks_up should have len(blocks_down) - 1 = {len(blocks_down) - 1} entries, "
                f"got {tuple(blocks_up)}."
            )
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout should be None or in [0, 1), got {dropout!r}.")
        self.net = _MonaiSegResNet(
            spatial_dims=spatial_dims,
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=dropout,
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
        )

    def forward_logits(self, x: Tensor, size: tuple[int, ...]) -> list[Tensor]:
        return [self.net(x)]


register_paper_presets(
    "segresnet",
    SegResNet,
    dict(spatial_dims=3, init_filters=32, blocks_down=[1, 2, 2, 4]),
    paper={"brats": (None, None), "isles": (None, None)},  # not in the paper's tables
    description="MONAI SegResNet(init_filters=32, blocks_down=(1, 2, 2, 4))",
)
