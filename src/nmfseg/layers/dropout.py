"""Dropout with a cheaper mask on CPU.

``nn.Dropout`` on CPU draws one float per element with ``bernoulli_`` and multiplies by a
float mask, which makes dropout one of the most expensive operations of a Factorizer step
(32 dropout layers, most of them on full-resolution feature maps). Here the mask is drawn
as 15 random bits per element (``int16.random_()``, compared with ``round(p·2¹⁵)``), so
an element is dropped with probability ``round(p·2¹⁵) / 2¹⁵`` (``p`` to within 1.5e-5),
stored as a bool (one byte per element for backward), and applied in place. Results are
reproducible under ``torch.manual_seed`` like any other CPU sampling. On other devices
(and under autocast) ``torch.nn.functional.dropout`` is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "add_dropout", "dropout", "dropout_mask"]

_BITS = 2**15


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, device=None) -> Tensor:
    """A bool tensor that is True where an element is dropped (probability ``≈ p``)."""
    threshold = round(p * _BITS)
    return torch.empty(shape, dtype=torch.int16, device=device).random_() < threshold


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        drop = dropout_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return torch.where(drop, 0.0, x).mul_(scale)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (drop,) = ctx.saved_tensors
        return torch.where(drop, 0.0, dy).mul_(ctx.scale), None


def _fast_path(x: Tensor) -> bool:
    return x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


def dropout(x: Tensor, p: float, training: bool = True, inplace: bool = False) -> Tensor:
    """Functional dropout: zero elements with probability ``p`` and scale by ``1/(1-p)``.

    ``inplace=True`` overwrites ``x`` (only for a fresh tensor nothing else reads).
    """
    if not training or p == 0.0:
        return x
    if not _fast_path(x):
        return F.dropout(x, p, training=True, inplace=inplace)
    if p == 1.0:
        return x.zero_() if inplace else torch.zeros_like(x)
    if inplace:
        return x.masked_fill_(dropout_mask(x.shape, p, x.device), 0).mul_(1.0 / (1.0 - p))
    return _Dropout.apply(x, p)


class _AddDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor, p: float) -> Tensor:  # type: ignore[override]
        drop = dropout_mask(out.shape, p, out.device)
        scale = 1.0 / (1.0 - p)
        y = torch.add(x, out, alpha=scale)
        torch.where(drop, x, y, out=y)
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        (drop,) = ctx.saved_tensors
        return dy, torch.where(drop, 0.0, dy).mul_(ctx.scale), None


def add_dropout(x: Tensor, out: Tensor, p: float, training: bool = True) -> Tensor:
    """``x + dropout(out)``: the residual connection after a subblock's output dropout.

    On CPU this is one pass and one new tensor (the ``1/(1-p)`` scale is folded into the
    addition, the mask selects ``x`` where ``out`` is dropped).
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
        inplace: Overwrite the input (only for a fresh tensor nothing else reads).

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
