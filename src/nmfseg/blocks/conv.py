"""Convolutional U-Net blocks: the nnU-Net and Res-U-Net baselines of the Factorizer paper.

Ashtari et al., Medical Image Analysis 2023, §4.2 "Models": the two CNN baselines keep the
paper's skeleton (:class:`~nmfseg.models.unet.UNet`) and change only the block.

=========== ==============================================================================
name        block
=========== ==============================================================================
``conv``    :class:`ConvBlock`, nnU-Net's: ``(conv 3×3×3 → norm → act) × 2``
``resconv`` :class:`ResConvBlock`, Res-U-Net's: a ResNet basic block (He et al., 2016),
            ``act(norm(conv(act(norm(conv(x))))) + shortcut(x))``
=========== ==============================================================================

Where the paper is silent:

- The norm is GroupNorm with groups of 8 channels (``num_groups = C / 8``; the paper's
  "group size of 8"). GroupNorm and InstanceNorm do not depend on the batch, which is 1 or 2
  here, where BatchNorm statistics would be fragile; ``norm=("group", {"num_groups": 8})``
  gives 8 groups per layer instead (what the official code's ``GroupNorm(8, C)`` does), and
  ``"instance"`` / ``"batch"`` are available. Parameter and FLOP counts are the same.
- The activation is LeakyReLU with slope 0.01 (nnU-Net's).
- The convolutions have a bias (as in nnU-Net and the official code), though a norm follows.
- Dropout (the skeleton's ``dropout``) comes right after each norm, before the activation
  (MONAI's default norm-dropout-activation order); the paper's baselines use none.
- The residual connection is added after the second norm (and its dropout), and the
  activation comes after the sum, as in He et al. (2016). The shortcut is the identity when
  the block keeps its width, else a bias-free 1×1 convolution (He et al.'s option B), with no
  norm. In the skeleton every block keeps its width unless its decoder blocks are fed the
  ``2C``-channel concatenation directly (``in_channels=2 * channels``).

Examples::

    >>> import torch
    >>> block = ConvBlock(16, spatial_dims=3)
    >>> block(torch.randn(1, 16, 5, 6, 7)).shape
    torch.Size([1, 16, 5, 6, 7])
    >>> block.norm1.num_groups
    2
"""

from __future__ import annotations

from typing import Any

from monai.networks.layers import Conv
from torch import Tensor, nn

from nmfseg.blocks._registry import register_block
from nmfseg.layers import Dropout, PointwiseConv
from nmfseg.layers.args import check_dropout, check_positive
from nmfseg.layers.factories import ActSpec, NormSpec, make_act, make_norm

__all__ = ["ConvBlock", "ResConvBlock"]


class ConvBlock(nn.Module):
    """nnU-Net's block: ``(conv → norm → dropout → act) × 2`` with ``k×k×k`` convolutions.

    Args:
        channels: Output channels ``C``.
        spatial_dims: 2 or 3.
        dropout: Dropout probability after each norm.
        in_channels: Input channels (default ``C``; ``2C`` for a decoder block fed the
            concatenation of the skip and the up-sampled features).
        kernel_size: Odd kernel size of both convolutions.
        norm: Norm spec (:func:`~nmfseg.layers.factories.make_norm`); default GroupNorm with
            groups of 8 channels.
        act: Activation spec (:func:`~nmfseg.layers.factories.make_act`); default
            LeakyReLU(0.01).
        bias: Give the convolutions a bias.

    Raises:
        ValueError: An argument is out of range; the message names it.

    Examples::

        >>> import torch
        >>> block = ConvBlock(8, spatial_dims=2, in_channels=16, norm="instance")
        >>> block(torch.randn(2, 16, 9, 10)).shape
        torch.Size([2, 8, 9, 10])
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        dropout: float = 0.0,
        in_channels: int | None = None,
        kernel_size: int = 3,
        norm: NormSpec = "group",
        act: ActSpec = "leakyrelu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        in_channels = channels if in_channels is None else in_channels
        check_positive(channels=channels, in_channels=in_channels)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims should be 2 or 3, got {spatial_dims!r}.")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size should be a positive odd int, got {kernel_size!r}.")
        check_dropout(dropout=dropout)
        conv = Conv[Conv.CONV, spatial_dims]
        pad = kernel_size // 2
        self.in_channels = in_channels
        self.channels = channels
        self.conv1 = conv(in_channels, channels, kernel_size, padding=pad, bias=bias)
        self.norm1 = make_norm(norm, channels, spatial_dims)
        self.drop1 = Dropout(dropout, inplace=True)  # on the norm's fresh output
        self.act1 = make_act(act)
        self.conv2 = conv(channels, channels, kernel_size, padding=pad, bias=bias)
        self.norm2 = make_norm(norm, channels, spatial_dims)
        self.drop2 = Dropout(dropout, inplace=True)
        self.act2 = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.drop1(self.norm1(self.conv1(x))))
        return self.act2(self.drop2(self.norm2(self.conv2(x))))


class ResConvBlock(ConvBlock):
    """Res-U-Net's block, a ResNet basic block:
    ``act(dropout(norm(conv(act(dropout(norm(conv(x))))))) + shortcut(x))``.

    Same arguments as :class:`ConvBlock`. ``shortcut`` is the identity when ``in_channels ==
    channels``, else a bias-free 1×1 convolution.

    Examples::

        >>> import torch
        >>> block = ResConvBlock(8, in_channels=16)
        >>> block(torch.randn(1, 16, 4, 5, 6)).shape, type(block.shortcut).__name__
        (torch.Size([1, 8, 4, 5, 6]), 'PointwiseConv')
        >>> type(ResConvBlock(8).shortcut).__name__
        'Identity'
    """

    def __init__(self, channels: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(channels, *args, **kwargs)
        self.shortcut: nn.Module = (
            nn.Identity()
            if self.in_channels == channels
            else PointwiseConv(self.in_channels, channels, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.drop1(self.norm1(self.conv1(x))))
        out = self.drop2(self.norm2(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


register_block("conv")(ConvBlock)
register_block("resconv")(ResConvBlock)
