"""Dropout with cheap, replayed masks on CPU.

``nn.Dropout`` on CPU draws one float per element with ``bernoulli_``, multiplies by a float
mask and keeps the mask for backward, which makes dropout one of the most expensive parts of
a Factorizer step (32 dropout layers, most of them on full-resolution feature maps). Here:

- the mask is drawn as 15 random bits per element (``int16.random_()`` compared with
  ``round(p·2¹⁵)``), so an element is dropped with probability ``round(p·2¹⁵) / 2¹⁵``
  (``p`` to within 1.5e-5);
- the bits come from a private generator seeded from the global one, and backward replays
  them instead of keeping the mask: dropout stores nothing but a seed. Results are
  reproducible under ``torch.manual_seed``, and ``torch.utils.checkpoint`` (which restores
  the global generator) recomputes the same masks;
- the residual connection after a subblock's dropout is one pass (:func:`add_dropout`).

On other devices (and under CPU autocast) ``torch.nn.functional.dropout`` is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "add_dropout", "dropout", "dropout_mask"]

_BITS = 2**15


def _seed() -> int:
    return int(torch.randint(0, 2**62, (1,)).item())


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, seed: int | None = None) -> Tensor:
    """A bool CPU tensor, True where an element is dropped (probability ``≈ p``).

    With a ``seed`` the same mask is drawn again from a private generator; without one,
    from the global generator.
    """
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.empty(shape, dtype=torch.int16).random_(generator=gen) < round(p * _BITS)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, inplace: bool) -> Tensor:  # type: ignore[override]
        ctx.seed, ctx.p, ctx.scale = _seed(), p, 1.0 / (1.0 - p)
        drop = dropout_mask(x.shape, p, ctx.seed)
        if inplace:
            ctx.mark_dirty(x)
            return x.masked_fill_(drop, 0).mul_(ctx.scale)
        return torch.where(drop, 0.0, x).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        drop = dropout_mask(dy.shape, ctx.p, ctx.seed)
        return torch.where(drop, 0.0, dy).mul_(ctx.scale), None, None


class _AddDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor, p: float) -> Tensor:  # type: ignore[override]
        ctx.seed, ctx.p, ctx.scale = _seed(), p, 1.0 / (1.0 - p)
        drop = dropout_mask(out.shape, p, ctx.seed)
        y = torch.add(x, out, alpha=ctx.scale)
        return torch.where(drop, x, y, out=y)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        drop = dropout_mask(dy.shape, ctx.p, ctx.seed)
        return dy, torch.where(drop, 0.0, dy).mul_(ctx.scale), None


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


def add_dropout(x: Tensor, out: Tensor, p: float, training: bool = True) -> Tensor:
    """``x + dropout(out)``: the residual connection after a subblock's output dropout.

    On CPU this is one pass and one new tensor: the ``1/(1-p)`` scale is folded into the
    addition and the mask selects ``x`` where ``out`` is dropped.
    """
    if not training or p == 0.0:
        return x + out
    if p == 1.0 or not _fast_path(out) or x.shape != out.shape:
        return x + F.dropout(out, p, training=True)
    return _AddDropout.apply(x, out, p)


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
