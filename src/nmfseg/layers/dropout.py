"""Dropout with cheap, replayed masks on CPU.

``nn.Dropout`` on CPU draws one float per element with ``bernoulli_``, multiplies by a float
mask and keeps the mask for backward, which makes dropout one of the most expensive parts of
a Factorizer step (32 dropout layers, most of them on full-resolution feature maps). Here:

- the mask costs 16 random bits per element (the four int16 lanes of a random int64, one
  of which has 15 random bits), compared with ``round(p·2¹⁶)`` (``round(p·2¹⁵)`` for the
  15-bit lane): an element is dropped with probability ``p`` to within 3e-5;
- the bits come from a private generator seeded from the global one, in chunks of
  ``2**22`` elements, and backward replays them instead of keeping the mask: dropout stores
  nothing but a seed and never builds a full-size mask. Results are reproducible under
  ``torch.manual_seed``, and ``torch.utils.checkpoint`` (which restores the global
  generator) recomputes the same masks (the fused kernels of :mod:`nmfseg.layers.fused`
  draw theirs the same way, through ``_drop_bits``).

On other devices (and under CPU autocast) ``torch.nn.functional.dropout`` is used.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "dropout"]

_CHUNK = 2**22  # elements per mask chunk: the masks never exist at full size
_HIGH_LANE = 3 if sys.byteorder == "little" else 0


def _seed() -> int:
    return int(torch.randint(0, 2**62, (1,)).item())


def _thresholds(p: float) -> Tensor:
    """Per-lane thresholds for the four int16 lanes of a random int64 in ``[0, 2⁶³)``: three
    lanes are uniform on ``[-2¹⁵, 2¹⁵)``, the high one on ``[0, 2¹⁵)``."""
    values = [round(p * 2**16) - 2**15] * 4
    values[_HIGH_LANE] = round(p * 2**15)
    return torch.tensor(values, dtype=torch.int16)


def _drop_bits(n: int, thresholds: Tensor, gen: torch.Generator | None) -> Tensor:
    """``n`` bools, True where dropped: 16 random bits per element (15 for every fourth)."""
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(generator=gen)
    return (words.view(torch.int16).view(-1, 4) < thresholds).view(-1)[:n]


def _chunked_masks(n: int, p: float, seed: int) -> Iterator[tuple[int, int, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    thresholds = _thresholds(p)
    for i in range(0, n, _CHUNK):
        j = min(i + _CHUNK, n)
        yield i, j, _drop_bits(j - i, thresholds, gen)


def _scale_and_drop(src: Tensor, out: Tensor, p: float, scale: float, seed: int) -> Tensor:
    """``out = src * scale`` with the elements of the seeded mask set to 0, chunk by chunk."""
    flat_src, flat_out = src.reshape(-1), out.view(-1)
    for i, j, drop in _chunked_masks(flat_out.numel(), p, seed):
        torch.mul(flat_src[i:j], scale, out=flat_out[i:j]).masked_fill_(drop, 0)
    return out


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, inplace: bool) -> Tensor:  # type: ignore[override]
        ctx.seed, ctx.p, ctx.scale = _seed(), p, 1.0 / (1.0 - p)
        if inplace:
            ctx.mark_dirty(x)
            out = x
        else:
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
        return _scale_and_drop(x, out, p, ctx.scale, ctx.seed)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        dx = torch.empty_like(dy, memory_format=torch.contiguous_format)
        return _scale_and_drop(dy, dx, ctx.p, ctx.scale, ctx.seed), None, None


def _fast_path(x: Tensor) -> bool:
    return x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


def dropout(x: Tensor, p: float, training: bool = True, inplace: bool = False) -> Tensor:
    """Functional dropout: zero elements with probability ``p`` and scale by ``1/(1-p)``.

    ``inplace=True`` overwrites ``x`` (only for a fresh tensor that is not a view).
    """
    if not training or p == 0.0:
        return x
    if p == 1.0 or not _fast_path(x):
        return F.dropout(x, p, training=True, inplace=inplace)
    return _Dropout.apply(x, p, inplace)


class Dropout(nn.Module):
    """Drop-in replacement for ``nn.Dropout`` (same ``p`` and train/eval behaviour).

    Args:
        p: Probability of an element to be zeroed.
        inplace: Overwrite the input (only for a fresh tensor that is not a view).

    Examples::

        >>> import torch
        >>> drop = Dropout(0.1)
        >>> y = drop(torch.ones(1000, 100))
        >>> round(float((y == 0).float().mean()), 2), float(y.max())
        (0.1, 1.1111111640930176)
        >>> bool((drop.eval()(torch.ones(3)) == 1).all())
        True
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability should be in [0, 1], got {p!r}.")
        self.p = p
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
