"""MONAI SegResNet (Myronenko, 2019) under nmfseg's model contract.

The baseline the paper's Res-U-Net resembles, used as the speed reference in
``benchmarks/bench_models.py``. The wrapper adds what the other registered networks do: any
input size (zero-padded at the end of each dim to a multiple of ``2**(len(blocks_down)-1)``
and cropped back), one tensor in ``eval()``, and a one-element list in ``train()`` (SegResNet
has no deep supervision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.models._registry import register_model

__all__ = ["SegResNet", "segresnet"]


class SegResNet(nn.Module):
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
        super().__init__()
        from monai.networks.nets import SegResNet as _MonaiSegResNet

        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims should be 2 or 3, got {spatial_dims!r}.")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("init_filters", init_filters),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} should be a positive int, got {value!r}.")
        if init_filters % 8:
            raise ValueError(
                f"init_filters should be a multiple of 8 (GroupNorm(8)), got {init_filters}."
            )
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(
                f"blocks_up should have len(blocks_down) - 1 = {len(blocks_down) - 1} entries, "
                f"got {tuple(blocks_up)}."
            )
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout should be None or in [0, 1), got {dropout!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = 2 ** (len(blocks_down) - 1)
        self.net = _MonaiSegResNet(
            spatial_dims=spatial_dims,
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=dropout,
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
        )

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (B, {self.in_channels}, *{self.spatial_dims} spatial "
                f"dims), got {tuple(x.shape)}."
            )
        size = x.shape[2:]
        pad = [(-s) % self.size_multiple for s in size]
        if any(pad):
            x = F.pad(x, [p for d in reversed(pad) for p in (0, d)])
        out = self.net(x)
        if any(pad):
            out = out[(..., *(slice(0, s) for s in size))]
        return [out] if self.training else out


@register_model(
    defaults=dict(
        spatial_dims=3, in_channels=4, out_channels=3, init_filters=32, blocks_down=(1, 2, 2, 4)
    ),
    dataset="BraTS",
    in_channels=4,
    out_channels=3,
    patch_size=(128, 128, 128),
    paper_params=None,
    paper_gflops=None,
)
def segresnet(**kwargs) -> SegResNet:
    """MONAI SegResNet(init_filters=32, blocks_down=(1, 2, 2, 4)), the speed baseline."""
    return SegResNet(**kwargs)
