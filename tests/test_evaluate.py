"""nmfseg evaluate end to end: tiny NIfTI files, toy datasets, the CLI, reports for compare."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from nmfseg.cli import app
from nmfseg.data.formats import list_formats, open_dataset
from nmfseg.data.schemes import SCHEMES, labels_to_regions
from nmfseg.evaluation.evaluate import (
    evaluate,
    read_report,
    write_report,
)
from nmfseg.evaluation.metrics import region_metrics
from nmfseg.phantoms.toy import TOY_SPACING, make_toy_dataset

runner = CliRunner()
AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm along x
AFFINE[:3, 3] = (-10.0, 5.0, 3.0)


def _save(path, label, affine=AFFINE, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(label).astype(dtype), affine), str(path))


def _brats2021_label(shape=(24, 20, 20)):
    """Nested boxes: WT (label 2) 12 x 10 x 10, TC (1) 8 x 6 x 6, ET (4) 4 x 4 x 4 voxels."""
    lab = np.zeros(shape, np.uint8)
    lab[4:16, 4:14, 4:14] = 2
    lab[6:14, 6:12, 6:12] = 1
    lab[8:12, 7:11, 7:11] = 4
    return lab


def _folders(tmp_path, n=3):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    labels = {}
    for i in range(n):
        lab = np.roll(_brats2021_label(), i, axis=1)
        labels[f"case{i}"] = lab
        _save(gt / f"case{i}.nii.gz", lab)
    return gt, pred, labels


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


# --------------------------------------------------------------------------- evaluate


def test_perfect_prediction(tmp_path):
    gt, pred, labels = _folders(tmp_path)
    for cid, lab in labels.items():
        _save(pred / f"{cid}.nii.gz", lab)
    report = evaluate(pred, gt, fmt="brats2021")
    assert report.regions == ["ET", "TC", "WT"]
    assert [r["case_id"] for r in report.rows] == ["case0", "case1", "case2"]
    for row in report.rows:
        for region in ("ET", "TC", "WT", "avg"):
            assert (row[f"dice_{region}"], row[f"hd95_{region}"]) == (1.0, 0.0)
        assert (row["gt_voxels_WT"], row["gt_ml_WT"]) == (1200, pytest.approx(2.4))
        assert row["gt_voxels_ET"] == row["pred_voxels_ET"] == 64
    m = report.summary["metrics"]
    assert m["dice"]["average"] == {"mean": 1, "std": 0, "median": 1, "min": 1, "max": 1, "n": 3}
    assert m["hd95"]["WT"]["mean"] == 0.0
    assert report.summary["missing_predictions"] == report.summary["extra_predictions"] == []


def test_shifted_prediction_expected_values(tmp_path):
    """Every box shifted by 2 voxels along x (2 mm voxels): Dice (a-2)/a, HD95 4 mm."""
    gt, pred, labels = _folders(tmp_path, n=2)
    for cid, lab in labels.items():
        _save(pred / f"{cid}.nii.gz", np.roll(lab, 2, axis=0))
    report = evaluate(pred, gt, fmt="brats2021")
    expected = {"ET": 2 / 4, "TC": 6 / 8, "WT": 10 / 12}
    for row in report.rows:
        for region, dice in expected.items():
            assert row[f"dice_{region}"] == pytest.approx(dice)
            assert row[f"hd95_{region}"] == pytest.approx(4.0)
        assert row["dice_avg"] == pytest.approx(np.mean(list(expected.values())))
        assert row["hd95_avg"] == pytest.approx(4.0)
    stats = report.summary["metrics"]["dice"]["TC"]
    assert (stats["mean"], stats["median"], stats["std"]) == (pytest.approx(0.75),) * 2 + (0.0,)


def test_labels_touching_the_volume_border(tmp_path):
    """evaluate crops to the labels' bounding box; values equal those on the full arrays."""
    gt, pred, _ = _folders(tmp_path, n=1)
    rng = np.random.default_rng(3)
    truth = rng.choice([0, 1, 2, 4], size=(24, 20, 20), p=[0.4, 0.2, 0.2, 0.2]).astype(np.uint8)
    guess = np.where(rng.random(truth.shape) < 0.2, 2, truth).astype(np.uint8)
    guess[:, :, :3] = 0
    _save(gt / "case0.nii.gz", truth)
    _save(pred / "case0.nii.gz", guess)
    row = evaluate(pred, gt, fmt="brats2021").rows[0]
    for i, region in enumerate(["ET", "TC", "WT"]):
        region_truth = labels_to_regions(truth, SCHEMES["brats2021"])[i]
        region_guess = labels_to_regions(guess, SCHEMES["brats2021"])[i]
        expected = region_metrics(region_guess, region_truth, (2.0, 1.0, 1.0))
        assert row[f"dice_{region}"] == pytest.approx(expected.dice)
        assert row[f"hd95_{region}"] == pytest.approx(expected.hd95, rel=1e-6)
        assert row[f"pred_voxels_{region}"] == expected.pred_voxels


def test_lesion_free_cases_isles(tmp_path):
    """ISLES'22 has lesion-free cases: both empty scores 1 / 0, a false alarm 0 / 373.13."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    empty = np.zeros((16, 18, 20), np.uint8)
    alarm = empty.copy()
    alarm[3:5, 4:6, 5:7] = 1
    for cid, truth, guess in (("s1", empty, empty), ("s2", empty, alarm), ("s3", alarm, empty)):
        _save(gt / f"{cid}.nii.gz", truth)
        _save(pred / f"{cid}.nii.gz", guess)
    report = evaluate(pred, gt, fmt="isles22")
    assert report.regions == ["lesion"]
    got = [(r["dice_lesion"], r["hd95_lesion"], r["pred_voxels_lesion"]) for r in report.rows]
    assert got == [(1.0, 0.0, 0), (0.0, 373.13, 8), (0.0, 373.13, 0)]
    assert report.summary["metrics"]["hd95"]["lesion"]["n"] == 3  # nothing dropped


def test_missing_and_extra_predictions(tmp_path):
    gt, pred, labels = _folders(tmp_path)
    lab = labels["case0"].copy()
    lab[lab == 4] = 1  # no ET in the truth ...
    _save(gt / "case0.nii.gz", lab)
    _save(pred / "case0.nii.gz", lab)  # ... nor in the prediction: Dice 1, HD95 0
    _save(pred / "case1.nii.gz", labels["case1"])
    _save(pred / "stray.nii.gz", labels["case1"])
    report = evaluate(pred, gt, fmt="brats2021")
    rows = {r["case_id"]: r for r in report.rows}
    assert (rows["case0"]["dice_ET"], rows["case0"]["hd95_ET"]) == (1.0, 0.0)
    assert rows["case2"]["prediction"] == "missing"
    for region in ("ET", "TC", "WT", "avg"):
        assert rows["case2"][f"dice_{region}"] == 0.0
        assert rows["case2"][f"hd95_{region}"] == pytest.approx(373.13)
    assert report.summary["missing_predictions"] == ["case2"]
    assert report.summary["extra_predictions"] == ["stray.nii.gz"]
    assert report.summary["metrics"]["dice"]["WT"]["mean"] == pytest.approx(2 / 3)

    skipped = evaluate(pred, gt, fmt="brats2021", missing="skip")
    assert [r["case_id"] for r in skipped.rows] == ["case0", "case1"]
    assert skipped.summary["n_cases"] == 2 and skipped.summary["missing_policy"] == "skip"
    assert skipped.summary["missing_predictions"] == ["case2"]


def test_report_files_round_trip(tmp_path):
    gt, pred, labels = _folders(tmp_path)
    for cid, lab in labels.items():
        _save(pred / f"{cid}.nii.gz", np.roll(lab, 1, axis=2))
    report = evaluate(pred, gt, fmt="brats2021")
    written = write_report(report, tmp_path / "report")
    assert sorted(p.name for p in written) == [
        "dice_boxplot.png",
        "hd95_boxplot.png",
        "metrics.csv",
        "summary.json",
    ]
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".tmp")]
    for png in ("dice_boxplot.png", "hd95_boxplot.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
    summary, rows = read_report(tmp_path / "report")
    assert summary["conventions"]["one_empty"] == {"dice": 0.0, "hd95": 373.13}
    assert len(rows) == 3
    for a, b in zip(rows, report.rows, strict=True):
        assert a["case_id"] == b["case_id"]
        assert a["dice_TC"] == b["dice_TC"] and a["hd95_avg"] == b["hd95_avg"]


@pytest.mark.parametrize("fmt", list_formats())
def test_dataset_folder_each_format(tmp_path, fmt):
    root = make_toy_dataset(tmp_path / "ds", fmt, n_cases=2, shape=(24, 24, 24), seed=1)
    dataset = open_dataset(root)
    pred = tmp_path / "pred"
    pred.mkdir()
    first, second = dataset.cases
    shutil.copy(first.label_path, pred / f"{first.case_id}.nii.gz")
    img = nib.load(second.label_path)
    shifted = np.roll(np.asarray(img.dataobj), 2, axis=1)
    nib.save(
        nib.Nifti1Image(shifted, img.affine, img.header), str(pred / f"{second.case_id}.nii.gz")
    )

    report = evaluate(pred, root)
    assert report.summary["gt_source"] == f"{fmt} dataset"
    assert report.regions == list(dataset.scheme.regions)
    rows = {r["case_id"]: r for r in report.rows}
    for region in report.regions:
        assert (rows[first.case_id][f"dice_{region}"], rows[first.case_id][f"hd95_{region}"]) == (
            1.0,
            0.0,
        )
    truth = labels_to_regions(np.asarray(img.dataobj), dataset.scheme)
    moved = labels_to_regions(shifted, dataset.scheme)
    for i, region in enumerate(report.regions):
        expected = region_metrics(moved[i], truth[i], TOY_SPACING)
        assert rows[second.case_id][f"dice_{region}"] == pytest.approx(expected.dice)
        assert rows[second.case_id][f"hd95_{region}"] == pytest.approx(expected.hd95, rel=1e-5)
        assert rows[second.case_id][f"gt_ml_{region}"] == pytest.approx(expected.gt_ml)
    assert 0 < rows[second.case_id]["dice_avg"] < 1


@pytest.mark.slow  # two spawned processes import torch and MONAI
def test_workers_give_the_same_rows(tmp_path):
    gt, pred, labels = _folders(tmp_path)
    for cid, lab in labels.items():
        _save(pred / f"{cid}.nii.gz", np.roll(lab, 1, axis=0))
    assert evaluate(pred, gt, "brats2021", workers=2).rows == evaluate(pred, gt, "brats2021").rows


# --------------------------------------------------------------------------- evaluate CLI


def test_cli_evaluate(tmp_path):
    gt, pred, labels = _folders(tmp_path)
    _save(pred / "case0.nii.gz", labels["case0"])
    _save(pred / "case1.nii.gz", labels["case1"])
    _save(pred / "extra.nii.gz", labels["case1"])
    result = _cli(
        "evaluate", "--pred", pred, "--gt", gt, "-o", tmp_path / "rep", "--format", "brats2021"
    )
    assert result.exit_code == 0, result.output
    assert "folder of label files, scheme brats2021, 3 cases, regions ET, TC, WT" in result.stdout
    assert "predictions: 2 of 3 cases" in result.stdout
    assert "missing prediction for 1 case(s), scored as empty predictions" in result.stderr
    assert "case2" in result.stderr and "extra.nii.gz" in result.stderr
    with open(tmp_path / "rep" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["prediction"] for r in rows] == ["found", "found", "missing"]
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["metrics"]["dice"]["average"]["mean"] == pytest.approx(2 / 3)
    assert summary["metrics"]["hd95"]["ET"]["median"] == 0.0


def _corrupt(path):
    path.write_bytes(b"\x1f\x8b not really gzip")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_pred_dir", "pred_missing: prediction folder not found"),
        ("no_gt_dir", "gt_missing: ground-truth folder not found"),
        (
            "no_scheme",
            "is a folder of label files: name the format whose labels they use with --format",
        ),
        ("bad_scheme", "--format 'brats2099': not a dataset format"),
        ("bad_missing", "--missing 'maybe'"),
        ("no_match", "no prediction matches a case of"),
        ("corrupt_pred", "case1.nii.gz: cannot read NIfTI"),
        ("shape", "case1.nii.gz: shape (24, 20, 19) differs from case1.nii.gz's (24, 20, 20)"),
        ("affine", "case1.nii.gz: affine differs from case1.nii.gz's"),
        ("pred_labels", "pred/case1.nii.gz: label values [3] are not in the brats2021 scheme"),
        ("gt_labels", "gt/case2.nii.gz: label values [7] are not in the brats2021 scheme"),
        ("float_labels", "pred/case1.nii.gz: has non-integer label values"),
        ("not_dataset", "no dataset format found"),
    ],
)
def test_cli_evaluate_errors(tmp_path, case, expected):
    gt, pred, labels = _folders(tmp_path)
    for cid, lab in labels.items():
        _save(pred / f"{cid}.nii.gz", lab)
    args = {"pred": pred, "gt": gt, "scheme": "brats2021", "missing": "empty"}
    if case == "no_pred_dir":
        args["pred"] = tmp_path / "pred_missing"
    elif case == "no_gt_dir":
        args["gt"] = tmp_path / "gt_missing"
    elif case == "no_scheme":
        args["scheme"] = None
    elif case == "bad_scheme":
        args["scheme"] = "brats2099"
    elif case == "bad_missing":
        args["missing"] = "maybe"
    elif case == "no_match":
        for p in pred.iterdir():
            p.rename(pred / f"x_{p.name}")
    elif case == "corrupt_pred":
        _corrupt(pred / "case1.nii.gz")
    elif case == "shape":
        _save(pred / "case1.nii.gz", labels["case1"][..., :19])
    elif case == "affine":
        _save(pred / "case1.nii.gz", labels["case1"], affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    elif case == "pred_labels":
        bad = labels["case1"].copy()
        bad[0, 0, 0] = 3
        _save(pred / "case1.nii.gz", bad)
    elif case == "gt_labels":
        bad = labels["case2"].copy()
        bad[0, 0, 0] = 7
        _save(gt / "case2.nii.gz", bad)
    elif case == "float_labels":
        _save(pred / "case1.nii.gz", labels["case1"] + 0.5, dtype=np.float32)
    elif case == "not_dataset":
        sub = tmp_path / "empty_dataset"
        (sub / "nothing_here").mkdir(parents=True)
        args["gt"] = sub
        args["scheme"] = None
    out = tmp_path / "rep"
    cmd = ["evaluate", "--pred", args["pred"], "--gt", args["gt"], "-o", out]
    cmd += ["--missing", args["missing"]]
    if args["scheme"]:
        cmd += ["--format", args["scheme"]]
    result = _cli(*cmd)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("nmfseg: error:")]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert expected in errors[0]
    assert not out.exists()  # no half-written report


def test_cli_compare_on_evaluate_reports(tmp_path):
    """evaluate twice (perfect and shifted predictions), then compare the two reports."""
    gt, pred, labels = _folders(tmp_path)
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for cid, lab in labels.items():
        _save(pred / f"{cid}.nii.gz", lab)
        _save(shifted / f"{cid}.nii.gz", np.roll(lab, 2, axis=0))
    for folder, name in ((pred, "perfect"), (shifted, "shifted")):
        result = _cli(
            "evaluate",
            "--pred",
            folder,
            "--gt",
            gt,
            "-o",
            tmp_path / name,
            "--scheme",  # the old spelling of --format still works
            "brats2021",
            "--no-plots",
        )
        assert result.exit_code == 0, result.output
    result = _cli("compare", tmp_path / "perfect", tmp_path / "shifted")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].startswith(
        "| perfect | 3 | **100.00** | **100.00** | **100.00** | **100.00** |"
    )
    assert lines[3].startswith("| shifted | 3 | 50.00 | 75.00 | 83.33 | 69.44 | 4.00 |")
    named = _cli(
        "compare", tmp_path / "shifted", tmp_path / "perfect", "--names", "S", "--names", "P"
    )
    assert named.exit_code == 0, named.output
    assert named.stdout.splitlines()[2].startswith("| S | 3 | 50.00 |")
    assert "test against S" in named.stdout
    avg = [row["dice_avg"] for row in read_report(tmp_path / "shifted")[1]]
    p = wilcoxon(avg, [1.0] * 3).pvalue
    assert f"| shifted | 3 | {p:.3g} ns |" in result.stdout
