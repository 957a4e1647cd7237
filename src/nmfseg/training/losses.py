"""The paper's loss: soft Dice + binary cross-entropy over deep-supervision outputs (eq. 15-17).

For logits ``z`` and binary region targets ``G`` (``(B, R, *spatial)``), ``P = sigmoid(z)``:

* **soft Dice** with a squared denominator (eq. 17), for each sample ``b`` and region ``r``
  over the voxels of the patch, then averaged over ``b`` and ``r``::

      L_dice = 1 - (2 <G, P> + eps) / (||G||^2 + ||P||^2 + eps),   eps = 1e-5

  This is MONAI ``DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=eps, smooth_dr=eps,
  batch=False)``, the loss of the paper's own code; ``tests/test_losses.py`` checks it
  against the formula written out. (Eq. 17 as printed sums over the regions inside one
  Dice; for one region, e.g. ISLES'22, both readings are identical.)
* **BCE**: ``binary_cross_entropy_with_logits`` averaged over every element, the
  multi-label (sigmoid) counterpart of eq. 17's cross-entropy.
* **deep supervision** (eq. 15): ``L = sum_i w_i (L_dice + L_bce)(G_i, P_i)`` with weights
  ``(1, 0.5, 0.25)`` from the full resolution down. ``G_i`` is the target brought to the
  size of output ``i`` by ``nearest`` neighbour (the default and the paper code's choice:
  targets stay binary) or by ``avg`` (area average: soft targets that keep the volume
  fraction of small structures). The weighted sum is not normalized (eq. 15 as printed;
  the paper's code divides by the sum of the weights, which AdamW barely notices).

Losses are computed in float32 whatever the autocast dtype of the logits.

Examples::

    >>> import torch
    >>> from nmfseg.training.losses import DeepSupervisionLoss
    >>> loss_fn = DeepSupervisionLoss(weights=(1.0, 0.5, 0.25))
    >>> target = (torch.rand(2, 3, 16, 16, 16) > 0.5).float()
    >>> outputs = [torch.randn(2, 3, 16 // 2**i, 16 // 2**i, 16 // 2**i) for i in range(3)]
    >>> loss_fn(outputs, target).ndim
    0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeepSupervisionLoss", "DiceBCELoss", "downsample_target"]


def downsample_target(target: Tensor, size: Sequence[int], mode: str = "nearest") -> Tensor:
    """Bring region targets ``(B, R, *spatial)`` to spatial ``size`` for deep supervision.

    Args:
        target: binary (or soft) targets.
        size: spatial size of the deep-supervision output.
        mode: ``"nearest"`` (``F.interpolate``: for a size halved exactly, every second
            voxel starting at 0) or ``"avg"`` (adaptive average pooling: the fraction of
            each output voxel's block that is foreground).

    Examples::

        >>> import torch
        >>> t = torch.zeros(1, 1, 4, 4, 4); t[..., :2, :2, :1] = 1
        >>> downsample_target(t, (2, 2, 2), "avg")[0, 0, 0, 0, 0].item()
        0.5
        >>> downsample_target(t, (2, 2, 2), "nearest")[0, 0, 0, 0, 0].item()
        1.0
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[2:]) == size:
        return target
    target = target.float()
    if mode == "nearest":
        return F.interpolate(target, size=size, mode="nearest")
    if mode == "avg":
        pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
        return pool[len(size)](target, size)
    raise ValueError(f"mode must be 'nearest' or 'avg', got {mode!r}.")


class DiceBCELoss(nn.Module):
    """Soft Dice (squared denominator, per sample and region) + BCE, on logits.

    Args:
        eps: smoothing constant of the Dice numerator and denominator (paper: 1e-5).
        dice_weight: factor of the Dice term.
        bce_weight: factor of the BCE term.

    Examples::

        >>> import torch
        >>> target = torch.zeros(1, 1, 4, 4, 4); target[..., :2] = 1
        >>> logits = (target * 2 - 1) * 20  # confident and right
        >>> float(DiceBCELoss()(logits, target)) < 1e-6
        True
    """

    def __init__(self, eps: float = 1e-5, dice_weight: float = 1.0, bce_weight: float = 1.0):
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(
            sigmoid=True,
            squared_pred=True,
            smooth_nr=eps,
            smooth_dr=eps,
            batch=False,
            reduction="mean",
        )
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of logits ``(B, R, *spatial)`` against targets of the same shape."""
        logits = logits.float()
        target = target.float()
        dice = self.dice(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.dice_weight * dice + self.bce_weight * bce


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of :class:`DiceBCELoss` over deep-supervision outputs (eq. 15).

    Args:
        weights: weight of each output, full resolution first (paper: 1, 0.5, 0.25). A
            network returning fewer outputs uses the first weights; extra weights are
            ignored.
        eps: Dice smoothing constant.
        target_mode: ``"nearest"`` or ``"avg"``, see :func:`downsample_target`.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 0.5, 0.25),
        eps: float = 1e-5,
        target_mode: str = "nearest",
    ):
        super().__init__()
        if target_mode not in ("nearest", "avg"):
            raise ValueError(f"target_mode must be 'nearest' or 'avg', got {target_mode!r}.")
        self.weights = tuple(float(w) for w in weights)
        self.target_mode = target_mode
        self.loss = DiceBCELoss(eps=eps)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DeepSupervisionLoss:
        """The loss of a recipe's ``loss`` section (``ds_weights``, ``dice_eps``,
        ``ds_target``), as ``nmfseg train`` and the benchmarks build it."""
        return cls(cfg["ds_weights"], cfg["dice_eps"], cfg["ds_target"])

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        """Loss of one logits tensor or a list ``[full, 1/2, 1/4, ...]`` against ``target``."""
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        if len(outputs) > len(self.weights):
            raise ValueError(
                f"the network returned {len(outputs)} outputs but only {len(self.weights)} "
                "deep-supervision weights are configured (loss.ds_weights)."
            )
        total = torch.zeros((), device=target.device, dtype=torch.float32)
        for weight, out in zip(self.weights, outputs, strict=False):
            if weight == 0:
                continue
            g = downsample_target(target, out.shape[2:], self.target_mode)
            total = total + weight * self.loss(out, g)
        return total
