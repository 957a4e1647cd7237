"""Deterministic k-fold cross-validation splits (``splits.json``).

The file has nnU-Net's ``splits_final.json`` shape: a list with one ``{"train": [...],
"val": [...]}`` dict per fold, case ids sorted within each list. Every case is in exactly
one validation set.

- Schemes with ``stratify_by_volume`` (ISLES'22) are stratified by foreground volume: the
  cases are sorted by volume (mm³) and dealt into the folds in groups of ``n_folds``, each
  group in a seeded random fold order, so every fold gets small, medium and large lesions.
- Other schemes get a seeded shuffle cut into ``n_folds`` nearly equal parts.

Both use ``numpy.random.default_rng(seed)``, so a seed gives the same splits everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.data.formats import Dataset
from nmfseg.data.nifti import read_nifti
from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import write_json

__all__ = [
    "default_splits_path",
    "foreground_volumes",
    "load_splits",
    "make_splits",
    "save_splits",
    "select_fold",
]

Split = dict[str, list[str]]


def default_splits_path(dataset: Dataset) -> Path:
    """``splits.json`` next to the dataset's ``dataset.json`` (or in its root folder)."""
    root = dataset.root
    return (root.parent if root.name in ("imagesTr", "imagesTs") else root) / "splits.json"


def foreground_volumes(dataset: Dataset) -> dict[str, float]:
    """Foreground (any region) volume of every case's label in mm³.

    Raises:
        DataError: the dataset has no labels, or a label file is missing or unreadable.
    """
    if not dataset.has_labels:
        raise DataError(dataset.root, "has no labels; cannot stratify folds by lesion volume")
    foreground = sorted({v for values in dataset.scheme.regions.values() for v in values})
    volumes = {}
    for case in dataset.cases:
        assert case.label_path is not None
        label, img = read_nifti(case.label_path, dtype=None)
        voxel = float(np.prod(img.header.get_zooms()[:3]))
        volumes[case.case_id] = float(np.isin(label, foreground).sum()) * voxel
    return volumes


def make_splits(
    dataset: Dataset, n_folds: int = 5, seed: int = 0, stratify: bool | None = None
) -> list[Split]:
    """Make deterministic ``n_folds``-fold splits of a dataset's cases.

    Args:
        dataset: the dataset.
        n_folds: number of folds, 2 to the number of cases.
        seed: random seed.
        stratify: stratify by foreground volume; defaults to the scheme's
            ``stratify_by_volume`` (True for ISLES'22). Reads the label files.

    Raises:
        ConfigError: ``n_folds`` below 2 or above the number of cases.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.formats import open_dataset
        >>> from nmfseg.phantoms.toy import make_toy_dataset
        >>> ds = open_dataset(make_toy_dataset(Path(tempfile.mkdtemp()), "brats2023", n_cases=3))
        >>> splits = make_splits(ds, n_folds=3)
        >>> sorted(v for s in splits for v in s["val"]) == ds.case_ids
        True
    """
    ids = sorted(dataset.case_ids)
    if not 2 <= n_folds <= len(ids):
        raise ConfigError(
            f"cannot make {n_folds} folds from {len(ids)} case(s) in {dataset.root}: "
            "need 2 <= folds <= number of cases"
        )
    if stratify is None:
        stratify = dataset.scheme.stratify_by_volume
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    if stratify:
        volumes = foreground_volumes(dataset)
        ordered = sorted(ids, key=lambda c: (volumes[c], c))
        for start in range(0, len(ordered), n_folds):
            group = ordered[start : start + n_folds]
            for case_id, fold in zip(group, rng.permutation(n_folds), strict=False):
                fold_of[case_id] = int(fold)
    else:
        shuffled = [ids[i] for i in rng.permutation(len(ids))]
        for fold, part in enumerate(np.array_split(np.arange(len(ids)), n_folds)):
            fold_of |= {shuffled[i]: fold for i in part}
    return [
        {
            "train": [c for c in ids if fold_of[c] != k],
            "val": [c for c in ids if fold_of[c] == k],
        }
        for k in range(n_folds)
    ]


def save_splits(splits: list[Split], path: str | Path) -> Path:
    """Write splits as JSON, atomically."""
    write_json(Path(path), splits)
    return Path(path)


def _validate(splits: Any, path: Path, case_ids: list[str] | None) -> list[Split]:
    if not isinstance(splits, list) or not splits:
        raise DataError(path, "must hold a non-empty list of {'train': [...], 'val': [...]}")
    for k, fold in enumerate(splits):
        if not (
            isinstance(fold, dict)
            and all(isinstance(fold.get(key), list) for key in ("train", "val"))
            and all(isinstance(c, str) for key in ("train", "val") for c in fold[key])
        ):
            raise DataError(path, f"fold {k} must be {{'train': [ids], 'val': [ids]}}")
        if overlap := sorted(set(fold["train"]) & set(fold["val"])):
            raise DataError(path, f"fold {k}: cases {overlap[:3]} are in both train and val")
        if case_ids is not None:
            unknown = sorted((set(fold["train"]) | set(fold["val"])) - set(case_ids))
            if unknown:
                raise DataError(path, f"fold {k}: cases {unknown[:3]} are not in the dataset")
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in splits]


def load_splits(path: str | Path, dataset: Dataset | None = None) -> list[Split]:
    """Read and validate a ``splits.json`` (ids checked against ``dataset`` if given)."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot read JSON ({err})") from None
    return _validate(splits, path, dataset.case_ids if dataset is not None else None)


def select_fold(splits: list[Split], fold: int | str) -> Split:
    """The train/val ids of one fold; ``"all"`` trains and validates on every case.

    Raises:
        ConfigError: the fold is out of range (``--fold 7`` with 5 folds).

    Examples::

        >>> splits = [{"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}]
        >>> select_fold(splits, 1)
        {'train': ['b'], 'val': ['a']}
        >>> select_fold(splits, "all")
        {'train': ['a', 'b'], 'val': ['a', 'b']}
    """
    if fold == "all":
        everything = sorted({c for s in splits for c in s["val"] + s["train"]})
        return {"train": everything, "val": list(everything)}
    try:
        k = int(fold)
    except (TypeError, ValueError):
        raise ConfigError(f"--fold {fold!r} must be an integer or 'all'") from None
    if not 0 <= k < len(splits):
        raise ConfigError(
            f"--fold {fold} is out of range: the splits have {len(splits)} folds "
            f"(0-{len(splits) - 1}) or 'all'"
        )
    return {"train": list(splits[k]["train"]), "val": list(splits[k]["val"])}
