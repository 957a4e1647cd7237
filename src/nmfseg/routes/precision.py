"""The precision policy: the NMF and the custom kernels compute in float32 (or float64).

bf16 would ruin the divisions of the NMF updates, so every NMF entry point runs inside
:func:`autocast_off`, and the custom autograd Functions run their backward there too
(:func:`backward_without_autocast`), whether ``backward()`` is called inside an autocast
region or not. The fused CPU kernels of :mod:`nmfseg.layers.fused`, the pointwise conv and
FAVOR+ use the same helpers (moved here from ``nmfseg.nmf.precision``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["autocast_off", "autocast_on", "backward_without_autocast", "work_dtype"]

F = TypeVar("F", bound=Callable[..., Any])


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the NMF computes in for input of ``dtype``: float32 or float64 as given,
    float32 for anything else (bf16, float16).

    Examples::

        >>> work_dtype(torch.bfloat16), work_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is active for ``x``'s device (never for the meta device)."""
    return x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)


def autocast_off(x: Tensor):
    """A context that disables autocast for ``x``'s device if it is on (NMF runs in float32)."""
    if autocast_on(x):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return nullcontext()


def backward_without_autocast(backward: F) -> F:
    """Run an autograd Function's ``backward(ctx, *grads)`` with autocast off, as its forward
    ran: a ``backward()`` called inside an autocast region would otherwise turn its matrix
    products into bf16 ones, with float32 operands beside them.

    Examples::

        >>> class Square(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x * x
        ...     @staticmethod
        ...     @backward_without_autocast
        ...     def backward(ctx, dy):
        ...         assert not autocast_on(dy)  # though backward() runs inside autocast
        ...         (x,) = ctx.saved_tensors
        ...         return 2 * x * dy
        >>> x = torch.ones(3, requires_grad=True)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     Square.apply(x).sum().backward()
        >>> x.grad
        tensor([2., 2., 2.])
    """

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        grad = next((g for g in grads if isinstance(g, Tensor)), None)
        with autocast_off(grad) if grad is not None else nullcontext():
            return backward(ctx, *grads)

    return wrapper  # type: ignore[return-value]
