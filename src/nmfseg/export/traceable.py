"""The export form of a network: the same function, with every size computed in the graph.

The networks compute their geometry in Python: the zero-padding to ``size_multiple``
(:class:`~nmfseg.models.SegmentationNetwork`), the windows of Local/Swin matricize (clamped
to the stage size, padded to a multiple, rolled by half a window: :mod:`nmfseg.nmf.windows`)
and the resizing of the bridge's position embedding. A trace (the ONNX exporter) records
Python integers as constants, so a graph traced at one size would only run at that size.
:func:`export_form` wraps a network so that every such size is computed with tensor
operations on the input's shape, which a trace records as graph operations:

- :class:`AnySizeNetwork`: pad to ``size_multiple`` and crop, around ``forward_logits``;
- :class:`TracedMatricize`: Global, Local and Swin matricize and their inverses as
  pad / reshape / permute / slices (the Swin roll), replacing the block copies;
- :class:`ResizedPositionEmbedding`: the embedding always resized (exact at its own grid);
- :class:`PointwiseAsConv`: the pointwise convolutions outside the blocks (decoder
  projections, heads) as the ``Conv`` a runtime runs in its own layout;
- :class:`~nmfseg.export.channels_last.ChannelsLastBlock`: a Factorizer block with a
  rank-1 NMF (the presets') channels last, its windows taken without 9-D permutes and its
  LayerNorms and pointwise convolutions as the standard ops runtimes fuse.

The export form computes what the network computes, to rounding, on sizes that clamp, pad
and shift the windows differently. It shares the network's weights and leaves the network
itself untouched. Everything else (the NMF iterations of other blocks, unrolled; the
convolutions) is traced as it is.

Examples::

    >>> import torch
    >>> from nmfseg.models import create_model
    >>> from nmfseg.routes import use_routes
    >>> net = create_model("swin_factorizer_isles", channels=(8, 16, 32), deep_supervision=False)
    >>> form = export_form(net.eval())
    >>> x = torch.randn(1, 2, 12, 9, 16)
    >>> with torch.no_grad(), use_routes(net, {"plain", "rank1"}):  # the export form's
    ...     torch.allclose(form(x), net(x), atol=1e-5)
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.blocks import MixerBlock
from nmfseg.export.channels_last import ChannelsLastBlock, Size, covers, roll, size_min
from nmfseg.layers import PointwiseConv, PositionEmbedding
from nmfseg.nmf.matricize import GlobalMatricize, LocalMatricize, SWMatricize
from nmfseg.nmf.windows import ntuple
from nmfseg.routes import Route, restrict_routes

__all__ = [
    "AnySizeNetwork",
    "PointwiseAsConv",
    "ResizedPositionEmbedding",
    "TracedMatricize",
    "export_form",
]


def _ceil_div(a: Size, b: Size) -> Size:
    return (a + b - 1) // b


class _Geometry:
    """What :meth:`TracedMatricize.inverse` (and a mixer that groups matrices by window)
    needs: the input's shape, the windows and the number of partitions."""

    def __init__(self, shape: tuple[Size, ...], window: tuple[Size, ...], partitions: int) -> None:
        self.shape = shape
        self.window = window
        self.partitions = partitions

    @property
    def num_windows(self) -> Size:
        """Windows per partition, batch element and head (1 for Global)."""
        return _numel(
            tuple(_ceil_div(s, w) for s, w in zip(self.shape[2:], self.window, strict=True))
        )


class TracedMatricize(nn.Module):
    """Global, Local or Swin matricize with its geometry computed from the input's shape.

    Same matrices, in the same order, as the module it replaces
    (:class:`~nmfseg.nmf.matricize.GlobalMatricize`, ``LocalMatricize``, ``SWMatricize``):
    leading dim ``(partition, b, head, *grid)``, columns in window order. A Swin matricize always
    has two partitions, also along dims whose window is one voxel: the shifted one then equals
    the regular one, and the inverse's average of two equal reconstructions is the one
    the original computes from a single partition.

    Args:
        like: The matricize module to replace.

    Examples::

        >>> sw = SWMatricize(head_dim=2, window_size=4)
        >>> x = torch.randn(1, 4, 6, 9)
        >>> traced = TracedMatricize(sw)
        >>> torch.equal(traced(x), sw(x))
        True
        >>> torch.equal(traced.inverse(traced(x), traced.geometry(x.shape)), x)
        True
    """

    def __init__(self, like: nn.Module) -> None:
        super().__init__()
        if not isinstance(like, GlobalMatricize | LocalMatricize | SWMatricize):
            raise TypeError(f"cannot trace {type(like).__name__}")
        self.kind = like.kind
        self.head_dim = like.head_dim
        self.window_size = like.window_size

    def geometry(self, shape: tuple[Size, ...]) -> _Geometry:
        """The windows of an input of shape ``(B, C, *S)`` (sizes may be traced)."""
        spatial = tuple(shape[2:])
        if self.kind == "global":
            return _Geometry(tuple(shape), spatial, 1)
        window = ntuple(self.window_size, len(spatial), "window_size")
        clamped = tuple(size_min(s, w) for s, w in zip(spatial, window, strict=True))
        return _Geometry(tuple(shape), clamped, 2 if self.kind == "swin" else 1)

    def forward(self, x: Tensor) -> Tensor:
        """Matrices ``(num_matrices, head_dim, N)`` of ``x (B, C, *S)``."""
        geom = self.geometry(x.shape)
        if self.kind == "global":
            return x.reshape(-1, self.head_dim, _numel(geom.window))
        parts = [self._windows(x, geom.window)]
        if geom.partitions == 2:
            shifted = roll(x, [w // 2 for w in geom.window], list(range(2, x.dim())))
            parts.append(self._windows(shifted, geom.window))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _windows(self, x: Tensor, window: tuple[Size, ...]) -> Tensor:
        b, c, *spatial = x.shape
        d, e = len(spatial), self.head_dim
        grid = [_ceil_div(s, w) for s, w in zip(spatial, window, strict=True)]
        pad: list[Size] = []
        for s, w, g in zip(reversed(spatial), reversed(window), reversed(grid), strict=True):
            pad += [0, g * w - s]
        x = F.pad(x, pad)
        x = x.reshape(b, c // e, e, *[n for g, w in zip(grid, window, strict=True) for n in (g, w)])
        order = [0, 1, *range(3, 3 + 2 * d, 2), 2, *range(4, 4 + 2 * d, 2)]
        return x.permute(*order).reshape(-1, e, _numel(window))

    def inverse(self, z: Tensor, geom: _Geometry) -> Tensor:
        """Fold matrices back to ``(B, C, *S)``; Swin averages its two partitions (Algorithm 3)."""
        b, c, *spatial = geom.shape
        if self.kind == "global":
            return z.reshape(b, c, *spatial)
        d, e, window = len(spatial), self.head_dim, geom.window
        grid = [_ceil_div(s, w) for s, w in zip(spatial, window, strict=True)]
        z = z.reshape(geom.partitions, b, c // e, *grid, e, *window)
        order = [0, 1, 2, 3 + d, *(p for i in range(d) for p in (3 + i, 4 + d + i))]
        padded = [g * w for g, w in zip(grid, window, strict=True)]
        z = z.permute(*order).reshape(geom.partitions, b, c, *padded)
        z = z[(slice(None), slice(None), slice(None), *(slice(0, s) for s in spatial))]
        if geom.partitions == 1:
            return z[0]
        back = [n - w // 2 for n, w in zip(spatial, window, strict=True)]  # -w//2, cyclic
        return (z[0] + roll(z[1], back, list(range(2, 2 + d)))) * 0.5

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, head_dim={self.head_dim}, window_size={self.window_size}"


def _numel(sizes: tuple[Size, ...]) -> Size:
    out: Size = 1
    for s in sizes:
        out = out * s
    return out


class ResizedPositionEmbedding(nn.Module):
    """A :class:`~nmfseg.layers.PositionEmbedding` resized at every size (in eval mode).

    At the stored grid the (tri|bi)linear resize with ``align_corners=False`` is the
    identity, so this is the original's value at every size, with no branch on the size.

    Args:
        like: The position embedding to replace (its parameter is shared).
    """

    def __init__(self, like: PositionEmbedding) -> None:
        super().__init__()
        self.pos = like.pos

    def forward(self, x: Tensor) -> Tensor:
        mode = "trilinear" if self.pos.dim() == 5 else "bilinear"
        pos = F.interpolate(self.pos, size=x.shape[2:], mode=mode, align_corners=False)
        return x + pos.to(x.dtype)


class PointwiseAsConv(nn.Module):
    """A :class:`~nmfseg.layers.PointwiseConv` traced as a kernel-size-1 ``Conv``.

    In PyTorch a GEMM on the ``(C, voxels)`` view is the fast form; traced, that is a
    ``MatMul`` with the weight on the left, which OpenVINO runs in float32 outside its
    blocked layouts. A runtime's convolution of kernel 1 runs in its own layout and
    precision. Same function (parameters shared).

    Args:
        like: The pointwise convolution to replace.
    """

    def __init__(self, like: PointwiseConv) -> None:
        super().__init__()
        self.weight = like.weight
        self.bias = like.bias

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.weight.reshape(*self.weight.shape, *([1] * (x.dim() - 2)))
        conv = F.conv3d if x.dim() == 5 else F.conv2d
        return conv(x, kernel, self.bias)


class AnySizeNetwork(nn.Module):
    """A registered network in eval mode: pad to ``size_multiple``, logits, crop.

    What :meth:`~nmfseg.models.SegmentationNetwork.forward` does in ``eval()``, with the
    padding computed from the input's shape (so a trace keeps it).

    Args:
        network: A :class:`~nmfseg.models.SegmentationNetwork` (whose modules are used).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.size_multiple = int(getattr(network, "size_multiple", 1))

    def forward(self, x: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        m = self.size_multiple
        pad: list[Size] = []
        for s in reversed(spatial):
            pad += [0, (m - s % m) % m]
        if m > 1:
            x = F.pad(x, pad)
        out = self.network.forward_logits(x, spatial)[0]
        return out[(..., *(slice(0, s) for s in spatial))]


def export_form(network: nn.Module) -> nn.Module:
    """The traceable eval-mode form of a registered network (see the module docstring).

    The module tree is copied (the weights are shared, not copied), the route ``traced``: its
    routes ``cpu_fused`` and ``recompute`` are switched off (their chunk loops depend on the
    size) and the modules that compute sizes in Python are replaced; ``network`` itself is
    not changed. A module that is not a :class:`~nmfseg.models.SegmentationNetwork` is
    returned in eval mode as it is.
    """
    if not hasattr(network, "forward_logits"):
        return network.eval()
    form = _copy_modules(network)
    restrict_routes(form, {Route.TRACED, Route.RANK1})  # chunk loops depend on the size
    for module in list(form.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MixerBlock) and covers(child):
                setattr(module, name, ChannelsLastBlock(child))
            elif isinstance(child, GlobalMatricize | LocalMatricize | SWMatricize):
                setattr(module, name, TracedMatricize(child))
            elif isinstance(child, PositionEmbedding):
                setattr(module, name, ResizedPositionEmbedding(child))
            elif isinstance(child, PointwiseConv):
                setattr(module, name, PointwiseAsConv(child))
    return AnySizeNetwork(form).eval()


def _copy_modules(network: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with ``network``."""
    memo: dict[int, Any] = {}
    for tensor in [*network.parameters(), *network.buffers()]:
        memo[id(tensor)] = tensor
    return copy.deepcopy(network, memo).eval()
