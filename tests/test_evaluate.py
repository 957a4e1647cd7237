"""nmfseg evaluate / compare end to end: tiny NIfTI files, toy datasets, the CLI, Wilcoxon tests."""

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
from nmfseg.evaluation.compare import (
    ModelCost,
    ModelReport,
    compare_reports,
    comparison_csv,
    format_table,
    format_tests,
    load_reports,
    paired_wilcoxon,
    write_comparison,
)
from nmfseg.evaluation.evaluate import (
    EvaluationReport,
    evaluate,
    read_report,
    summarize,
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


# --------------------------------------------------------------------------- compare


def _fake_report(path, values, regions=("ET", "TC", "WT")):
    """A report whose per-case Dice is ``values[case][i]`` and HD95 is ``10 * (1 - dice)``."""
    rows = []
    for cid, dice in values.items():
        row = {"case_id": cid, "prediction": "found"}
        for region, d in zip(regions, dice, strict=True):
            row |= {f"dice_{region}": d, f"hd95_{region}": 10 * (1 - d)}
            row |= {f"{k}_{region}": 0 for k in ("pred_voxels", "gt_voxels", "pred_ml", "gt_ml")}
        row["dice_avg"] = float(np.mean(dice))
        row["hd95_avg"] = float(np.mean([10 * (1 - d) for d in dice]))
        rows.append(row)
    summary = {"regions": list(regions), "metrics": summarize(rows, regions)}
    write_report(EvaluationReport(rows, summary, list(regions)), path, plots=False)
    return path


def _three_reports(tmp_path, n=9):
    rng = np.random.default_rng(0)
    base = {f"c{i}": rng.uniform(0.6, 0.9, 3) for i in range(n)}
    better = {k: np.minimum(v + rng.uniform(0.01, 0.08, 3), 1.0) for k, v in base.items()}
    noisy = {k: v + rng.normal(0, 0.05, 3) for k, v in reversed(list(base.items()))}
    noisy["extra_case"] = np.array([0.1, 0.2, 0.3])  # not in the other reports
    return (
        _fake_report(tmp_path / "base", base),
        _fake_report(tmp_path / "better", better),
        _fake_report(tmp_path / "noisy", noisy),
        (base, better, noisy),
    )


def test_compare_means_bold_and_wilcoxon_against_scipy(tmp_path):
    *paths, (base, better, noisy) = _three_reports(tmp_path)
    cmp = compare_reports(load_reports(paths), reference="better")
    assert [m.name for m in cmp.models] == ["base", "better", "noisy"]
    assert cmp.groups == ["ET", "TC", "WT", "avg"]
    ref_ids = list(better)
    for name, values in (("base", base), ("noisy", noisy)):
        for i, region in enumerate(["ET", "TC", "WT"]):
            assert cmp.means[name]["dice"][region] == pytest.approx(
                np.mean([v[i] for v in values.values()])
            )
            x = [values[c][i] for c in ref_ids]
            y = [better[c][i] for c in ref_ids]
            test = cmp.tests[name]["dice"][region]
            assert test.n == len(ref_ids)
            assert test.p == pytest.approx(wilcoxon(x, y).pvalue, rel=1e-12)
            hd = cmp.tests[name]["hd95"][region]
            assert hd.p == pytest.approx(
                wilcoxon([10 * (1 - a) for a in x], [10 * (1 - b) for b in y]).pvalue, rel=1e-9
            )
        avg_x = [np.mean(values[c]) for c in ref_ids]
        avg_y = [np.mean(better[c]) for c in ref_ids]
        assert cmp.tests[name]["dice"]["avg"].p == pytest.approx(wilcoxon(avg_x, avg_y).pvalue)
    # 'better' beats 'base' on every case: the exact two-sided p-value is 2 / 2**9
    assert cmp.tests["base"]["dice"]["avg"].p == pytest.approx(2 / 2**9)
    assert cmp.tests["base"]["dice"]["avg"].stars == "**"

    table = format_table(cmp).splitlines()
    assert table[0].startswith(
        "| Model | n | Dice ET (%) | Dice TC (%) | Dice WT (%) | Dice Avg. (%)"
    )
    assert "| HD95 Avg. (mm) |" in table[0]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table[2:]}
    assert rows["noisy"][0] == "10"
    best_avg = max(cmp.means, key=lambda m: cmp.means[m]["dice"]["avg"])
    assert rows[best_avg][4].startswith("**")  # Dice Avg. column
    assert rows[best_avg][8].strip(" |").startswith("**")  # HD95 Avg. (= 10 - 10 Dice Avg.)
    assert not rows["base"][4].startswith("**")
    tests = format_tests(cmp)
    assert "against better" in tests and "| base | 9 |" in tests
    assert not [line for line in tests.splitlines() if line.startswith("| better |")]


def test_wilcoxon_edge_cases():
    same = {"a": 0.5, "b": 0.7, "c": 0.9}
    assert paired_wilcoxon(same, dict(same)).p == 1.0
    assert paired_wilcoxon(same, {"x": 1.0}).p is None
    one = paired_wilcoxon({"a": 0.5}, {"a": 0.6})
    assert one.n == 1 and 0 < one.p <= 1
    assert one.stars == "ns"


def test_compare_identical_and_disjoint_reports(tmp_path):
    vals = {f"c{i}": np.array([0.5, 0.6, 0.7]) + 0.01 * i for i in range(5)}
    a = _fake_report(tmp_path / "a", vals)
    b = _fake_report(tmp_path / "b", vals)
    c = _fake_report(tmp_path / "c", {f"d{i}": v for i, v in enumerate(vals.values())})
    cmp = compare_reports(load_reports([a, b, c], names=["A", "B", "C"]))
    assert cmp.reference == "A"
    assert all(t.p == 1.0 for m in cmp.tests["B"].values() for t in m.values())
    assert all(t.p is None and t.n == 0 for m in cmp.tests["C"].values() for t in m.values())
    text = format_tests(cmp)
    assert "| B | 5 | 1 ns |" in text and "| C | 0 | n/a |" in text
    # ties: every model is best, so every cell is bold
    assert format_table(cmp).splitlines()[2].count("**") == 16


def test_single_region_table_like_table_2(tmp_path):
    a = _fake_report(tmp_path / "a", {"s1": [0.7], "s2": [0.8]}, regions=("lesion",))
    b = _fake_report(tmp_path / "b", {"s1": [0.6], "s2": [0.95]}, regions=("lesion",))
    table = format_table(compare_reports(load_reports([a, b])))
    assert table.splitlines()[0] == "| Model | n | Dice (%) | HD95 (mm) |"
    assert table.splitlines()[2:] == [
        "| a | 2 | 75.00 | 2.50 |",
        "| b | 2 | **77.50** | **2.25** |",
    ]


def _cells(table: list[str]) -> dict[str, list[str]]:
    return {ln.split(" | ")[0].strip("| "): ln.strip("| ").split(" | ")[1:] for ln in table[2:]}


def test_compare_underlines_second_best_shows_costs_and_keeps_failed_rows(tmp_path):
    *paths, _ = _three_reports(tmp_path)
    reports = load_reports(paths)
    cmp = compare_reports(reports, reference="better")
    rows = _cells(format_table(cmp).splitlines())
    for col in range(1, 9):  # three models, no ties: one bold, one underlined, one plain
        cells = [rows[m][col] for m in ("base", "better", "noisy")]
        assert sum(c.startswith("**") for c in cells) == 1
        assert sum(c.startswith("<u>") and c.endswith("</u>") for c in cells) == 1
    second = sorted(cmp.means, key=lambda m: cmp.means[m]["dice"]["avg"])[1]
    assert rows[second][4].startswith("<u>")  # Dice Avg.: the second best

    # A failed model keeps its row (reason, no metrics); costs give the paper's columns.
    failed = ModelReport("big_net", reports[0].regions, [], failure="fold 2 train: OOM | x")
    cmp = compare_reports([reports[0], reports[1], failed], reference="base")
    assert "big_net" not in cmp.means and "big_net" not in cmp.tests
    shape = (1, 4, 128, 128, 128)
    cmp.costs = {
        "base": ModelCost(5_855_241, 174_200_000_000, shape),
        "better": ModelCost(28_700_000, 1_152_800_000_000, shape),
    }
    text = format_table(cmp)
    lines = text.splitlines()
    assert lines[0].startswith("| Model | #Params | FLOPs | n | Dice ET (%) |")
    assert lines[0].endswith("| HD95 Avg. (mm) | Status |")
    assert lines[2].startswith("| base | 5.9M | 174.2G | 9 |") and lines[2].endswith("| ok |")
    assert lines[3].startswith("| better | 28.7M | 1.2T | 9 | **")
    assert lines[4] == "| big_net | n/a | n/a | " + "– | " * 9 + "failed: fold 2 train: OOM \\| x |"
    assert "<u>" not in text  # two evaluated models: the best only
    assert "forward pass at 1×4×128×128×128;" in text
    with_failure = {r["model"]: r for r in csv.DictReader(comparison_csv(cmp).splitlines())}
    assert with_failure["base"]["params"] == "5855241" and with_failure["base"]["status"] == "ok"
    assert with_failure["big_net"]["failure"] == "fold 2 train: OOM | x"
    assert with_failure["big_net"]["dice_avg_mean"] == "" and with_failure["big_net"]["flops"] == ""
    # The reference failed: no tests, said so.
    cmp = compare_reports([reports[0], failed], reference="big_net")
    assert cmp.tests == {}
    assert format_tests(cmp) == "No paired tests: the reference model big_net failed."
    write_comparison(cmp, tmp_path / "out", plots=False, preamble="# Title\n\n")
    md = (tmp_path / "out" / "compare.md").read_text()
    assert md.startswith("# Title\n\n| Model | n |") and "No paired tests" in md


def test_cli_compare_writes_outputs(tmp_path):
    *paths, _ = _three_reports(tmp_path)
    out = tmp_path / "cmp"
    result = _cli(
        "compare", *paths, "--names", "nnU-Net,Swin,Local", "--reference", "Swin", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "| Model | n | Dice ET (%)" in result.stdout
    assert "Wilcoxon signed-rank test against Swin" in result.stdout
    assert "note: Local: 1 case(s) not in Swin; the tests use" in result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["compare.csv", "compare.md", "dice_boxplot.png", "hd95_boxplot.png"]
    with open(out / "compare.csv", newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert rows["Swin"]["reference"] == "True" and rows["Swin"]["dice_avg_p"] == ""
    assert float(rows["nnU-Net"]["dice_avg_p"]) == pytest.approx(2 / 2**9)
    assert int(rows["Local"]["n_cases"]) == 10 and int(rows["Local"]["dice_avg_pairs"]) == 9
    assert "**" in (out / "compare.md").read_text()


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


@pytest.mark.parametrize(
    "case, expected",
    [
        ("one_report", "compare needs at least two reports"),
        ("not_report", "not an evaluation report: summary.json missing"),
        ("bad_reference", "--reference 'zzz' is not one of the models: a, b"),
        ("bad_names", "--names gives 3 names for 2 reports"),
        ("regions", "regions ['lesion'] differ from a's ['ET', 'TC', 'WT']"),
        ("bad_csv", "metrics.csv: line 2: dice_ET='oops' is not a number"),
    ],
)
def test_cli_compare_errors(tmp_path, case, expected):
    a = _fake_report(tmp_path / "a", {"c0": [0.5, 0.6, 0.7], "c1": [0.4, 0.5, 0.6]})
    b = _fake_report(tmp_path / "b", {"c0": [0.6, 0.6, 0.7], "c1": [0.5, 0.5, 0.6]})
    args = [a, b]
    if case == "one_report":
        args = [a]
    elif case == "not_report":
        (tmp_path / "plain").mkdir()
        args = [a, tmp_path / "plain"]
    elif case == "bad_reference":
        args += ["--reference", "zzz"]
    elif case == "bad_names":
        args += ["--names", "x,y,z"]
    elif case == "regions":
        args = [a, _fake_report(tmp_path / "c", {"c0": [0.5]}, regions=("lesion",))]
    elif case == "bad_csv":
        text = (b / "metrics.csv").read_text().splitlines()
        text[1] = text[1].replace("0.6", "oops", 1)
        (b / "metrics.csv").write_text("\n".join(text) + "\n")
    result = _cli("compare", *args, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmfseg: error: ")
    assert expected in result.stderr
    assert not (tmp_path / "out").exists()
