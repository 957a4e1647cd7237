"""``nmfseg postprocess-search``: choose post-processing on a run's validation cases.

Like nnU-Net's ``determine_postprocessing``, but on region masks: every fold of the run predicts
its own validation cases (``split.val`` of its config), and a setting is kept only if it raises
the mean Dice over those cases (averaged over the regions, the Table 1 "Avg."):

1. for each region, outermost first (WT, TC, ET for BraTS): keep only its largest connected
   component, if that helps;
2. for each region: remove its connected components below a size (``thresholds`` voxels; for
   ET the BraTS rule: they become necrosis), the size that helps most, if any helps.

Each step starts from the setting chosen so far. The result is written to
``RUN/postprocessing.json`` (:data:`~nmfseg.inference.postprocess.POSTPROCESSING`) with the
Dice before and after, and ``nmfseg predict --postprocess auto`` applies it.
:func:`search_postprocessing` is the search on masks already predicted.

Examples::

    >>> import numpy as np
    >>> from nmfseg.data.schemes import SCHEMES
    >>> gt = np.zeros((1, 12, 12, 12), bool); gt[0, 2:6, 2:6, 2:6] = True
    >>> pred = gt.copy(); pred[0, 10, 10, 10] = True   # one false-positive speck
    >>> chosen, scores = search_postprocessing([(pred, gt)], SCHEMES["isles22"])
    >>> chosen.words(), round(scores["none"], 3), scores["chosen"]
    (['largest:lesion'], 0.992, 1.0)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nmfseg.analysis.runs import validation_ids
from nmfseg.data.formats import Dataset, load_case
from nmfseg.data.schemes import DatasetScheme, labels_to_regions
from nmfseg.errors import ConfigError, DataError
from nmfseg.evaluation.metrics import dice_score
from nmfseg.fileio import check_writable, write_json
from nmfseg.inference.ensemble import find_checkpoints
from nmfseg.inference.postprocess import POSTPROCESSING, PostProcessing
from nmfseg.inference.predictor import Predictor

__all__ = ["MIN_GAIN", "THRESHOLDS", "check_search", "postprocess_run", "search_postprocessing"]

#: Component sizes (voxels) tried by the min-size step.
THRESHOLDS = (10, 25, 50, 100, 200, 500, 1000)
#: Smallest rise of the mean Dice (0.1 Dice points) for which a step is kept.
MIN_GAIN = 0.001

Pair = tuple[np.ndarray, np.ndarray]  # (predicted regions, true regions), (R, *spatial) bool


def check_search(min_gain: float, thresholds: Sequence[int] = THRESHOLDS) -> None:
    """Refuse a ``min_gain`` outside ``[0, 1)`` (a rise of a mean Dice, itself in ``[0, 1]``:
    1 or more would keep nothing) and component sizes that are not integers ``>= 1``.

    Raises:
        ConfigError: Naming ``--min-gain``, or the thresholds.

    Examples::

        >>> check_search(0.001)
        >>> check_search(2)
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --min-gain 2: must be a number in [0, 1) (a rise of ...
    """
    number = isinstance(min_gain, int | float) and not isinstance(min_gain, bool)
    if not number or not 0 <= min_gain < 1:  # NaN fails too
        shown = f"{min_gain:g}" if number else repr(min_gain)
        raise ConfigError(
            f"--min-gain {shown}: must be a number in [0, 1) (a rise of the mean Dice, at most 1)"
        )
    if not all(type(t) is int and t >= 1 for t in thresholds):
        raise ConfigError(f"thresholds {list(thresholds)!r}: component sizes are integers >= 1")


def _score(pairs: Sequence[Pair], pp: PostProcessing, scheme: DatasetScheme) -> float:
    """Mean over cases of the mean Dice over regions, after ``pp``."""
    per_case = []
    for pred, gt in pairs:
        cleaned = pp.apply(pred, scheme)
        per_case.append(np.mean([dice_score(p, g) for p, g in zip(cleaned, gt, strict=True)]))
    return float(np.mean(per_case))


def search_postprocessing(
    pairs: Sequence[Pair],
    scheme: DatasetScheme,
    thresholds: Sequence[int] = THRESHOLDS,
    min_gain: float = MIN_GAIN,
) -> tuple[PostProcessing, dict[str, float]]:
    """The post-processing that raises the mean Dice of ``pairs`` (greedy, see the module);
    a step is kept only if it raises the mean Dice by more than ``min_gain`` (noise on a few
    validation cases is not a reason to change every prediction).

    Returns:
        ``(chosen, {"none": Dice without, "chosen": Dice with})``.
    """
    check_search(min_gain, thresholds)
    names = list(scheme.regions)
    outer_first = sorted(names, key=lambda n: -len(scheme.regions[n]))
    chosen = PostProcessing()
    best = none = _score(pairs, chosen, scheme)
    for name in outer_first:
        trial = dataclasses.replace(chosen, largest=(*chosen.largest, name))
        score = _score(pairs, trial, scheme)
        if score > best + min_gain:
            chosen, best = trial, score
    for name in outer_first:
        if name in chosen.largest:
            continue  # nothing smaller than the largest component is left
        trials = [
            dataclasses.replace(chosen, min_size={**chosen.min_size, name: size})
            for size in thresholds
        ]
        scores = [_score(pairs, trial, scheme) for trial in trials]
        if scores and max(scores) > best + min_gain:
            chosen, best = trials[int(np.argmax(scores))], max(scores)
    return chosen, {"none": none, "chosen": best}


def _fold_pairs(fold_ckpt: Path, dataset: Dataset, device: Any, progress: bool) -> list[Pair]:
    predictor = Predictor.from_run(fold_ckpt, folds=None, device=device)
    ids = validation_ids(predictor.ensemble.config, dataset, fold_ckpt)
    scheme = dataset.scheme
    pairs = []
    bar = tqdm(ids, desc=f"{fold_ckpt.parent.name} validation", unit="case", file=sys.stderr,
               disable=not progress)  # fmt: skip
    for case_id in bar:
        data = load_case(dataset.get(case_id))
        regions = predictor.to_regions(predictor.probabilities(data.image, case_id), scheme)
        pairs.append((regions.astype(bool), labels_to_regions(data.label, scheme).astype(bool)))
    return pairs


def postprocess_run(
    model: str | Path,
    dataset: Dataset,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    device: Any = None,
    thresholds: Sequence[int] = THRESHOLDS,
    progress: bool = True,
    min_gain: float = MIN_GAIN,
) -> tuple[Path, dict[str, Any]]:
    """Search the post-processing of a run on its folds' validation cases and save it.

    Args:
        model: Run folder (its folds' validation cases are pooled) or fold folder.
        dataset: The dataset the run was trained on.
        folds: Folds of a run folder (default: every numbered one).
        checkpoint: ``final``, ``best`` or ``last``.
        device: Where the networks run.
        thresholds: Component sizes tried by the min-size step.
        progress: Progress bars.
        min_gain: Smallest rise of the mean Dice for which a step is kept.

    Returns:
        The path of ``postprocessing.json`` (in the run folder) and what it holds.

    Raises:
        DataError: A fold's validation case missing from ``dataset`` or without a label.
        ConfigError: ``min_gain`` outside ``[0, 1)`` or bad ``thresholds`` (before any work).
    """
    check_search(min_gain, thresholds)
    ckpts = find_checkpoints(model, folds, checkpoint)
    folds_of = {c.parent for c in ckpts}
    # a run (several folds, or a folder of fold_K folders): the run folder; else the fold
    run = ckpts[0].parent.parent if len(folds_of) > 1 or Path(model) not in folds_of else None
    run = run if run is not None and Path(model).is_dir() else ckpts[0].parent
    check_writable(run, what="post-processing file")  # before any case is predicted
    pairs: list[Pair] = []
    for ckpt in ckpts:
        pairs += _fold_pairs(ckpt, dataset, device, progress)
    if not pairs:
        raise DataError(model, "no validation cases to search the post-processing on")
    chosen, scores = search_postprocessing(pairs, dataset.scheme, thresholds, min_gain)
    record = {
        "postprocess": chosen.to_dict(),
        "words": chosen.words(),
        "mean_dice": scores,
        "regions": list(dataset.scheme.regions),
        "n_cases": len(pairs),
        "checkpoints": [str(c.resolve()) for c in ckpts],
        "thresholds": list(thresholds),
        "min_gain": min_gain,
    }
    write_json(run / POSTPROCESSING, record)
    return run / POSTPROCESSING, record
