"""Validation during training: the fold's validation cases predicted whole and scored.

Every validation case (from the preprocessed cache) is predicted with the prediction
code's sliding window (window = patch size, the config's ``validation`` overlap, blending
and windows per batch), thresholded, and scored with Dice per region in the original grid:
the label voxels that lie outside the case's crop box (``PreparedCase.outside``) count as
missed, and a region empty in both prediction and truth scores 1 (BraTS conventions,
:func:`nmfseg.evaluation.metrics.dice_from_counts`). The fold's final scores go to
``validation/summary.json``.

Examples::

    >>> results = [{"case_id": "a", "dice": {"ET": 0.5, "WT": 1.0}},
    ...            {"case_id": "b", "dice": {"ET": 0.7, "WT": 0.8}}]
    >>> mean_dice(results, ["ET", "WT"])
    {'ET': 0.6, 'WT': 0.9}
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmfseg.evaluation.metrics import dice_from_counts
from nmfseg.fileio import write_json
from nmfseg.inference.sliding_window import sliding_window_predict
from nmfseg.training.data import PreparedCase

__all__ = ["mean_dice", "score_cases", "write_summary"]


def score_cases(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    regions: Sequence[str],
    patch_size: Sequence[int],
    validation: Mapping[str, Any],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> list[dict[str, Any]]:
    """``[{"case_id", "dice": {region: Dice}}]`` of ``cases`` (see the module docstring).

    ``autocast()`` gives the context each case is predicted in (the run's ``amp``).
    """
    results = []
    for case in cases:
        image, truth = case.load()
        with autocast():
            probs = sliding_window_predict(
                model,
                image,
                patch_size,
                overlap=validation["overlap"],
                mode=validation["mode"],
                sw_batch_size=validation["sw_batch_size"],
                device=device,
            )
        pred = (probs >= validation["threshold"]).numpy()
        gt = truth.astype(bool)
        dice = {
            name: dice_from_counts(
                int(np.count_nonzero(pred[r] & gt[r])),
                int(np.count_nonzero(pred[r])),
                int(np.count_nonzero(gt[r])) + int(case.outside[r]),
            )
            for r, name in enumerate(regions)
        }
        results.append({"case_id": case.case_id, "dice": dice})
    return results


def mean_dice(results: Sequence[Mapping[str, Any]], regions: Sequence[str]) -> dict[str, float]:
    """Mean Dice per region over the cases of :func:`score_cases`."""
    return {name: float(np.mean([r["dice"][name] for r in results])) for name in regions}


def write_summary(
    path: Path,
    results: Sequence[Mapping[str, Any]],
    regions: Sequence[str],
    step: int,
    threshold: float,
) -> None:
    """``validation/summary.json``: per-case and mean Dice of the final model."""
    means = mean_dice(results, regions)
    summary = {
        "metric": "dice",
        "checkpoint": "checkpoint_final.pt",
        "step": step,
        "regions": list(regions),
        "threshold": threshold,
        "mean": means,
        "foreground_mean": float(np.mean(list(means.values()))),
        "n_cases": len(results),
        "per_case": list(results),
    }
    write_json(path, summary)
