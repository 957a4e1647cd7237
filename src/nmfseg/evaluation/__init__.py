"""Evaluation: Dice/HD95 with BraTS empty-mask conventions, reports, model comparison.

- :mod:`~nmfseg.evaluation.metrics`: per-region Dice, HD95 (mm) and volumes of one case.
- :mod:`~nmfseg.evaluation.evaluate`: a prediction folder against a dataset's labels ->
  ``metrics.csv``, ``summary.json``, box plots (``nmfseg evaluate``).
- :mod:`~nmfseg.evaluation.compare`: several reports -> the paper's Table 1 and paired
  Wilcoxon tests (``nmfseg compare``).
- :mod:`~nmfseg.evaluation.plots`: Fig. 3-style box plots.

Examples::

    >>> import numpy as np
    >>> from nmfseg.evaluation import dice_score, hd95
    >>> empty = np.zeros((4, 4, 4), bool)
    >>> dice_score(empty, empty), hd95(empty, empty)
    (1.0, 0.0)
"""

from __future__ import annotations

from nmfseg.evaluation.compare import compare_reports, load_reports, paired_wilcoxon
from nmfseg.evaluation.evaluate import evaluate, read_report, write_report
from nmfseg.evaluation.metrics import (
    HD95_ONE_EMPTY,
    RegionMetrics,
    case_metrics,
    dice_score,
    hd95,
    region_metrics,
)

__all__ = [
    "HD95_ONE_EMPTY",
    "RegionMetrics",
    "case_metrics",
    "compare_reports",
    "dice_score",
    "evaluate",
    "hd95",
    "load_reports",
    "paired_wilcoxon",
    "read_report",
    "region_metrics",
    "write_report",
]
