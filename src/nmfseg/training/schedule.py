"""The optimizer and learning-rate schedule of the paper's recipe: AdamW, linear warm-up,
then cosine to 0.

Examples::

    >>> import torch
    >>> opt = adamw([torch.zeros(1, requires_grad=True)], {"lr": 1e-3, "betas": [0.9, 0.999],
    ...             "weight_decay": 0.01})
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup=2, total=6))
    >>> sched.get_last_lr()
    [0.0005]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["WarmupCosine", "adamw"]


def adamw(parameters: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW with a recipe's ``optimizer`` section (``lr``, ``betas``, ``weight_decay``), as
    ``nmfseg train``, the nnU-Net trainers and the benchmarks build it."""
    return torch.optim.AdamW(
        parameters, lr=float(cfg["lr"]), betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"]
    )


class WarmupCosine:
    """LR factor: linear warm-up ``(s + 1) / warmup`` then cosine from 1 to 0 at ``total``.

    Examples::

        >>> f = WarmupCosine(warmup=2, total=6)
        >>> [round(f(s), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = int(warmup)
        self.total = int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(self.total - self.warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
