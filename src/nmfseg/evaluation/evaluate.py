"""Evaluate a folder of predicted label maps against a dataset's ground truth.

``nmfseg evaluate --pred DIR -d DIR -o REPORT_DIR`` in library form:

1. :func:`~nmfseg.evaluation.matching.find_ground_truth` reads ``-d/--data``: a dataset
   folder in any registered format, or a plain folder of label files ``CASE.nii.gz`` (then
   their format must be named).
2. :func:`~nmfseg.evaluation.matching.match_predictions` pairs ``DIR/CASE.nii.gz`` (or
   ``.nii``) with the cases by name. Predictions are label maps in the dataset's own label
   scheme, as ``nmfseg predict`` writes them.
3. :func:`evaluate_matching` computes Dice / HD95 / volumes per case and region
   (:mod:`nmfseg.evaluation.metrics`, BraTS empty-mask conventions) and the summary.
4. :func:`write_report` writes ``metrics.csv``, ``summary.json``, ``dice_boxplot.png`` and
   ``hd95_boxplot.png``; all files are staged first and moved into place together only
   after everything was computed, so a failure never leaves a half-written report.

**Missing predictions** (a case without ``CASE.nii.gz``) are, by default
(``missing="empty"``), evaluated as an empty prediction: Dice 0 and HD95 373.13 mm in every
region where the truth is non-empty (Dice 1 / HD95 0 where it is empty too), which is how
the BraTS challenge scores a missing submission; their rows say ``prediction=missing``.
``missing="skip"`` leaves them out of the report instead. Either way they are listed in
``summary.json``. **Extra predictions** (files matching no case) are listed and ignored.
Where a scheme has an nnU-Net ``ignore`` label, voxels carrying it in the truth are left
out of both masks.

Examples::

    >>> import tempfile, numpy as np, nibabel as nib
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "gt").mkdir(); (root / "pred").mkdir()
    >>> lab = np.zeros((12, 12, 12), np.uint8); lab[3:8, 3:8, 3:8] = 1
    >>> nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "gt" / "c1.nii.gz")
    >>> nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "pred" / "c1.nii.gz")
    >>> report = evaluate(root / "pred", root / "gt", fmt="isles22")
    >>> report.rows[0]["dice_lesion"], report.rows[0]["hd95_lesion"]
    (1.0, 0.0)
    >>> sorted(p.name for p in write_report(report, root / "report", plots=False))
    ['metrics.csv', 'summary.json']
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nmfseg.data.nifti import check_label_values, compare_geometry, read_nifti, squeeze_image
from nmfseg.data.schemes import DatasetScheme, labels_to_regions
from nmfseg.errors import ConfigError, DataError, NmfsegError
from nmfseg.evaluation.matching import Matching, find_ground_truth, match_predictions
from nmfseg.evaluation.metrics import HD95_ONE_EMPTY, case_metrics, union_bbox
from nmfseg.evaluation.plots import metric_boxplot
from nmfseg.fileio import StagedFiles

__all__ = [
    "MISSING_POLICIES",
    "EvaluationReport",
    "evaluate",
    "evaluate_case",
    "evaluate_matching",
    "read_report",
    "summarize",
    "write_report",
]

MISSING_POLICIES = ("empty", "skip")
METRICS = ("dice", "hd95")
AVERAGE = "avg"  # column suffix of the per-case mean over regions

CONVENTIONS = {
    "dice": "2|P∩G|/(|P|+|G|); 1 when prediction and truth are both empty",
    "hd95": (
        "mm, voxel spacing from the truth's header; surface = mask minus its 6-connected "
        "(2D images: 4-connected) erosion; max of the two directed 95th percentiles of exact "
        "Euclidean surface distances (MONAI compute_hausdorff_distance, percentile=95)"
    ),
    "both_empty": {"dice": 1.0, "hd95": 0.0},
    "one_empty": {"dice": 0.0, "hd95": HD95_ONE_EMPTY},
    "average": "per case, the mean over regions; summary statistics over cases",
    "std": "sample standard deviation over cases (ddof=1; 0 for one case)",
}


# --------------------------------------------------------------------------- one case


def _read_label_file(path: Path) -> tuple[np.ndarray, Any]:
    """Raw 3D (or 2D: ``X x Y`` or ``X x Y x 1`` files) array (file dtype) and image of a
    label file."""
    data, img = read_nifti(path, dtype=None)
    return squeeze_image(data, path), img


def _checked_labels(data: np.ndarray, path: Path, scheme: DatasetScheme) -> np.ndarray:
    label, problem = check_label_values(data, scheme)
    if label is None:
        raise DataError(path, problem)
    return label


def evaluate_case(
    case_id: str, pred_path: Path | None, label_path: Path, scheme: DatasetScheme
) -> dict[str, Any]:
    """One row of ``metrics.csv``: Dice, HD95 and volumes of every region of one case.

    Args:
        case_id: the case.
        pred_path: predicted label map; ``None`` evaluates an empty prediction.
        label_path: true label map.
        scheme: the label scheme of both files.

    Raises:
        DataError: unreadable file, labels outside the scheme, or a prediction whose shape
            or affine differs from the truth's (naming the prediction file).
    """
    label_path = Path(label_path)
    gt_raw, gt_img = _read_label_file(label_path)
    pred_raw = None
    if pred_path is not None:
        pred_path = Path(pred_path)
        pred_raw, pred_img = _read_label_file(pred_path)
        problem = compare_geometry(pred_img, gt_img, label_path, shape=pred_raw.shape)
        if problem is not None:
            raise DataError(pred_path, problem)
    # Outside the bounding box of the nonzero voxels of both maps everything is label 0, so
    # crop to it (plus one voxel, which keeps every surface) before checking the label values
    # and computing the metrics: no count or distance changes, and it is much faster.
    foreground = gt_raw != 0  # NaN counts as nonzero, so the label check still sees it
    box = union_bbox(foreground, foreground if pred_raw is None else pred_raw != 0, margin=1)
    box = box if box is not None else tuple(slice(0, 1) for _ in gt_raw.shape)
    gt_label = _checked_labels(gt_raw[box], label_path, scheme)
    if pred_raw is None:
        pred_label = np.zeros_like(gt_label)
    else:
        pred_label = _checked_labels(pred_raw[box], pred_path, scheme)  # type: ignore[arg-type]
    # zooms are float32 in the header: keep their shortest decimal form (1.2, not 1.2000000477);
    # a 2D image is measured in its plane (HD95 in 2D, volumes as of a 1 mm thick slice)
    zooms = gt_img.header.get_zooms()[: gt_raw.ndim]
    spacing = tuple(float(str(np.float32(z))) for z in zooms)
    gt_regions = labels_to_regions(gt_label, scheme)
    pred_regions = labels_to_regions(pred_label, scheme)
    if getattr(scheme, "ignore_label", None) is not None:
        pred_regions[:, gt_label == scheme.ignore_label] = 0
    per_region = case_metrics(pred_regions, gt_regions, list(scheme.regions), spacing)

    row: dict[str, Any] = {
        "case_id": case_id,
        "prediction": "missing" if pred_path is None else "found",
    }
    for region, m in per_region.items():
        for key, value in m.as_dict().items():
            row[f"{key}_{region}"] = value
    for metric in METRICS:
        row[f"{metric}_{AVERAGE}"] = float(
            np.mean([getattr(m, metric) for m in per_region.values()])
        )
    return row


def _case_task(args: tuple) -> tuple[str, Any]:
    """Worker wrapper: errors come back as data (DataError does not pickle)."""
    try:
        return "ok", evaluate_case(*args)
    except DataError as err:
        return "error", (err.where, err.problem)
    except NmfsegError as err:
        return "error", ("", str(err))


def _init_worker() -> None:
    import torch  # heavy: imported by the metrics anyway, here only to set its threads

    torch.set_num_threads(1)


# --------------------------------------------------------------------------- whole folder


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def summarize(rows: Sequence[dict[str, Any]], regions: Sequence[str]) -> dict[str, Any]:
    """Mean, std, median, min, max of Dice and HD95 per region and for the average.

    Args:
        rows: per-case rows from :func:`evaluate_case`.
        regions: region names in order.

    Returns:
        ``{"dice": {region: stats, ..., "average": stats}, "hd95": {...},
        "volume_ml": {region: {"pred_mean", "gt_mean"}}}``.
    """
    if not rows:
        raise ValueError("no rows to summarize")
    out: dict[str, Any] = {}
    for metric in METRICS:
        out[metric] = {r: _stats([row[f"{metric}_{r}"] for row in rows]) for r in regions}
        out[metric]["average"] = _stats([row[f"{metric}_{AVERAGE}"] for row in rows])
    out["volume_ml"] = {
        r: {
            "pred_mean": float(np.mean([row[f"pred_ml_{r}"] for row in rows])),
            "gt_mean": float(np.mean([row[f"gt_ml_{r}"] for row in rows])),
        }
        for r in regions
    }
    return out


@dataclass
class EvaluationReport:
    """Per-case rows and the summary of one evaluation (what ``write_report`` writes)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    regions: list[str] = field(default_factory=list)
    name: str = ""


def _run_cases(tasks: list[tuple], workers: int, progress: bool) -> list[dict[str, Any]]:
    bar = tqdm(total=len(tasks), desc="evaluate", unit="case", disable=not progress)
    rows: list[dict[str, Any]] = []
    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                rows.append(evaluate_case(*task))
                bar.update()
            return rows
        ctx = multiprocessing.get_context("spawn")  # safe with torch threads, unlike fork
        with ProcessPoolExecutor(min(workers, len(tasks)), ctx, _init_worker) as pool:
            for status, value in pool.map(_case_task, tasks):
                if status == "error":
                    pool.shutdown(wait=False, cancel_futures=True)
                    where, problem = value
                    raise DataError(where, problem)
                rows.append(value)
                bar.update()
        return rows
    finally:
        bar.close()


def evaluate_matching(
    matching: Matching, missing: str = "empty", workers: int = 1, progress: bool = False
) -> EvaluationReport:
    """Evaluate matched predictions (see the module docstring for ``missing``).

    Args:
        matching: from :func:`match_predictions`.
        missing: ``"empty"`` (evaluate as an empty prediction) or ``"skip"``.
        workers: processes (1 = in this process).
        progress: show a tqdm bar.
    """
    if missing not in MISSING_POLICIES:
        raise ConfigError(f"--missing {missing!r}: choose from {', '.join(MISSING_POLICIES)}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    gt = matching.gt
    tasks = [
        (cid, matching.predictions.get(cid), path, gt.scheme)
        for cid, path in gt.labels.items()
        if cid in matching.predictions or missing == "empty"
    ]
    for _, _, label_path, _ in tasks:
        if not Path(label_path).is_file():
            raise DataError(label_path, "label file not found")
    rows = _run_cases(tasks, workers, progress)
    regions = list(gt.scheme.regions)
    summary = {
        "n_cases": len(rows),
        "scheme": gt.scheme.name,
        "regions": regions,
        "gt": str(gt.root),
        "gt_source": gt.source,
        "missing_policy": missing,
        "missing_predictions": list(matching.missing),
        "extra_predictions": [p.name for p in matching.extra],
        "conventions": CONVENTIONS,
        "metrics": summarize(rows, regions),
    }
    return EvaluationReport(rows, summary, regions)


def evaluate(
    pred_dir: str | Path,
    gt: str | Path,
    fmt: str | None = None,
    missing: str = "empty",
    workers: int = 1,
    progress: bool = False,
) -> EvaluationReport:
    """Evaluate the predictions in ``pred_dir`` against ``gt`` (see the module docstring);
    ``fmt`` names the format of a plain folder of label files
    (:func:`~nmfseg.evaluation.matching.find_ground_truth`)."""
    matching = match_predictions(pred_dir, find_ground_truth(gt, fmt))
    report = evaluate_matching(matching, missing=missing, workers=workers, progress=progress)
    report.summary["pred"] = str(Path(pred_dir))
    return report


# --------------------------------------------------------------------------- writing


def _csv_text(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_report(report: EvaluationReport, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write ``metrics.csv``, ``summary.json`` and (``plots=True``) the two box plots.

    Returns:
        the written paths.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    name = report.name or out.name
    with StagedFiles(out) as staged:
        staged.write_text("metrics.csv", _csv_text(report.rows))
        staged.write_text("summary.json", json.dumps(report.summary, indent=2) + "\n")
        if plots:
            groups = [*report.regions, AVERAGE] if len(report.regions) > 1 else report.regions
            for metric, ylabel in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
                samples = {name: {g: [r[f"{metric}_{g}"] for r in report.rows] for g in groups}}
                metric_boxplot(
                    samples,
                    staged.path(f"{metric}_boxplot.png"),
                    ylabel=ylabel,
                    title=f"{name} ({len(report.rows)} cases)",
                )
        return staged.commit()


def read_report(report_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a report written by :func:`write_report`: ``(summary, rows)``.

    Numeric CSV fields come back as floats (voxel counts as ints).

    Raises:
        DataError: not a report folder, or an unreadable / inconsistent file.
    """
    root = Path(report_dir).expanduser()
    if not root.is_dir():
        raise DataError(root, "report folder not found" if not root.exists() else "not a folder")
    for name in ("summary.json", "metrics.csv"):
        if not (root / name).is_file():
            raise DataError(root, f"not an evaluation report: {name} missing (nmfseg evaluate)")
    try:
        summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
        regions = [str(r) for r in summary["regions"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(root / "summary.json", f"cannot read report summary ({err})") from None
    path = root / "metrics.csv"
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            raw = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(path, f"cannot read CSV ({err})") from None
    need = ["case_id"] + [f"{m}_{r}" for m in METRICS for r in [*regions, AVERAGE]]
    rows = []
    for i, rec in enumerate(raw, start=2):
        row: dict[str, Any] = dict(rec)
        for key in need:
            value = rec.get(key)
            if value is None or value == "":
                raise DataError(path, f"line {i}: column {key!r} missing")
            if key != "case_id":
                try:
                    row[key] = float(value)
                except ValueError:
                    raise DataError(path, f"line {i}: {key}={value!r} is not a number") from None
                if not math.isfinite(row[key]):
                    raise DataError(path, f"line {i}: {key}={value!r} is not finite")
        rows.append(row)
    if not rows:
        raise DataError(path, "has no cases")
    return summary, rows
