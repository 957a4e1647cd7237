"""nmfseg compare: the paper's Table 1 from evaluation reports, bold/underline, Wilcoxon."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import wilcoxon

from helpers import cli
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
    summarize,
    write_report,
)


def _cli(*args):
    result = cli(*args)
    assert "Traceback" not in result.output
    return result


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


@pytest.mark.parametrize(
    "case, expected",
    [
        ("one_report", "compare needs at least two reports"),
        ("not_report", "not an evaluation report: summary.json missing"),
        ("bad_reference", "--reference 'zzz' is not one of the models: a, b"),
        ("bad_names", "--names gives 3 names for 2 reports"),
        ("regions", "regions ['lesion'] differ from a's ['ET', 'TC', 'WT']"),
        ("bad_csv", "metrics.csv: line 2: dice_ET='oops' is not a number"),
        ("names_gap", "--names 'x,,y': an empty item in the comma list"),
        ("out_is_a_file", "out: cannot write the comparison here: "),
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
    elif case == "names_gap":
        args += ["--names", "x,,y"]
    elif case == "out_is_a_file":  # refused before the table is computed and printed
        (tmp_path / "out").write_text("a file")
    result = _cli("compare", *args, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmfseg: error: ")
    assert expected in result.stderr
    assert not result.stdout.strip(), "nothing is printed before the error"
    assert not (tmp_path / "out").is_dir()


#: (models, groups, ylabel, the y label drawn, the largest y tick at most): Dice in % like
#: the tables, other metrics as given; the title is never cut off.
BOXPLOTS = [
    (1, ("lesion", "avg"), "Dice", "Dice (%)", 100),
    (2, ("ET", "TC", "WT", "avg"), "Dice", "Dice (%)", 100),
    (5, ("ET", "TC", "WT", "avg"), "Dice", "Dice (%)", 100),
    (3, ("lesion", "avg"), "HD95 (mm)", "HD95 (mm)", 60),
]


@pytest.mark.parametrize(("n", "groups", "ylabel", "drawn", "top"), BOXPLOTS)
def test_boxplot_titles_fit_and_dice_is_in_percent(n, groups, ylabel, drawn, top, tmp_path,
                                                   monkeypatch):  # fmt: skip
    from matplotlib.figure import Figure

    from nmfseg.evaluation.plots import metric_boxplot

    figures = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig),
                                                                 real(fig, *a, **k)))  # fmt: skip
    rng = np.random.default_rng(n)
    scale = 1.0 if drawn.startswith("Dice") else 50.0
    names = [f"swin_factorizer_brats_{i}" for i in range(n)]
    samples = {m: {g: list(scale * rng.random(8)) for g in groups} for m in names}
    title = f"paired Wilcoxon signed-rank vs {names[0]}: * p<0.05, ** p<0.01, *** p<0.001, " \
            "**** p<0.0001"  # fmt: skip
    metric_boxplot(samples, tmp_path / "box.png", ylabel=ylabel, title=title)
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    box = ax.title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, (box, fig.bbox)
    assert "**** p<0.0001" in ax.title.get_text().replace("\n", " ")
    assert ax.get_ylabel() == drawn
    assert max(ax.get_ylim()) <= 1.2 * top and max(ax.get_ylim()) > 1.5
    legend = ax.get_legend()
    if n > 1:  # below the axes, inside the figure
        lbox = legend.get_window_extent(renderer)
        assert lbox.y1 <= ax.get_window_extent(renderer).y0 and lbox.y0 >= 0
