"""Which prediction belongs to which ground-truth case (``nmfseg evaluate --pred -d``).

:func:`find_ground_truth` reads ``-d/--data``: a dataset folder in any registered format (its
reader finds the label files and the label scheme), or a plain folder of label files
``CASE.nii.gz`` (then the format, whose fixed scheme the labels are in, must be named). A
folder with NIfTI files directly in it is a plain folder; anything else is opened as a dataset.
:func:`match_predictions` pairs ``DIR/CASE.nii.gz`` (or ``.nii``) with the cases by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nmfseg.data.formats import get_format, open_dataset
from nmfseg.data.nifti import nifti_files, strip_nifti_ending
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import ConfigError, DataError

__all__ = ["GroundTruth", "Matching", "find_ground_truth", "find_predictions", "match_predictions"]


def _nifti_by_stem(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the NIfTI files directly in ``folder``; two files, one stem: error."""
    found: dict[str, Path] = {}
    for path in nifti_files(folder):
        stem = strip_nifti_ending(path.name)
        if stem in found:
            raise DataError(path, f"clashes with {found[stem].name}: two files for case {stem!r}")
        found[stem] = path
    return found


@dataclass(frozen=True)
class GroundTruth:
    """Where the truth comes from.

    Attributes:
        root: the ``-d/--data`` folder.
        scheme: the label scheme.
        labels: ``{case_id: label file}`` in case order.
        source: how it was read, e.g. ``"brats2021 dataset"`` or ``"folder of label files"``.
    """

    root: Path
    scheme: DatasetScheme
    labels: dict[str, Path]
    source: str


def find_ground_truth(gt: str | Path, fmt: str | None = None) -> GroundTruth:
    """Read the ``-d/--data`` folder: a dataset in any registered format, or a folder of labels.

    Args:
        gt: Dataset folder, or a folder of ``CASE.nii.gz`` label files.
        fmt: Dataset format whose label scheme the files are in; required for a plain folder
            (and then a format with a fixed scheme); for a dataset it must be the dataset's
            own format if given.

    Raises:
        DataError: Missing folder, no labels, or an unrecognised layout.
        ConfigError: Unknown or contradicting format.
    """
    root = Path(gt).expanduser()
    if not root.is_dir():
        raise DataError(
            root, "ground-truth folder not found" if not root.exists() else "not a folder"
        )
    files = _nifti_by_stem(root)
    if files:
        if fmt is None:
            raise ConfigError(
                f"-d/--data {root} is a folder of label files: name the format whose labels they "
                "use with --format (e.g. msd_brats, brats2021, brats2023, isles22)"
            )
        scheme = get_format(fmt).scheme
        if scheme is None:
            raise ConfigError(
                f"--format {fmt} has no fixed label scheme: point -d/--data at the {fmt} "
                "dataset folder itself, whose metadata names the labels"
            )
        return GroundTruth(root, scheme, files, "folder of label files")
    dataset = open_dataset(root)
    if fmt is not None and get_format(fmt).name != dataset.fmt:
        raise ConfigError(
            f"--format {fmt} contradicts the {dataset.fmt} dataset in {root}; leave --format "
            "out for a dataset folder"
        )
    if not dataset.has_labels:
        raise DataError(root, f"{dataset.fmt} dataset without label files: nothing to compare to")
    labels = {c.case_id: Path(c.label_path) for c in dataset.cases if c.label_path is not None}
    return GroundTruth(root, dataset.scheme, labels, f"{dataset.fmt} dataset")


def find_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """``{case_id: file}`` of the ``CASE.nii.gz`` / ``CASE.nii`` files in ``pred_dir``."""
    root = Path(pred_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            root, "prediction folder not found" if not root.exists() else "not a folder"
        )
    return _nifti_by_stem(root)


@dataclass
class Matching:
    """Predictions paired with cases.

    Attributes:
        gt: the ground truth.
        predictions: ``{case_id: prediction file}`` for the cases that have one.
        missing: case ids without a prediction, in case order.
        extra: prediction files that match no case.
    """

    gt: GroundTruth
    predictions: dict[str, Path]
    missing: list[str]
    extra: list[Path]


def match_predictions(pred_dir: str | Path, gt: GroundTruth) -> Matching:
    """Pair the prediction files with the ground-truth cases by name.

    Raises:
        DataError: no prediction matches any case (naming an expected file name).
    """
    preds = find_predictions(pred_dir)
    if not gt.labels:
        raise DataError(gt.root, "no cases with labels found")
    matched = {cid: preds[cid] for cid in gt.labels if cid in preds}
    if not matched:
        example = next(iter(gt.labels))
        found = f"found {len(preds)} NIfTI file(s)" if preds else "found no NIfTI files"
        raise DataError(
            Path(pred_dir),
            f"no prediction matches a case of {gt.root} ({found}; expected names like "
            f"{example}.nii.gz)",
        )
    missing = [cid for cid in gt.labels if cid not in preds]
    extra = [p for cid, p in preds.items() if cid not in gt.labels]
    return Matching(gt, matched, missing, extra)
