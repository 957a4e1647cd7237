"""``nmfseg evaluate`` and ``nmfseg compare``: metrics of a prediction folder, model tables."""

from __future__ import annotations

from pathlib import Path

import typer

from nmfseg.cli._common import check_format, handle_errors, one_of
from nmfseg.cli._options import data_option, the_data

EVALUATE_HELP = (
    "Dice and HD95 (mm) per case and region of the predictions in --pred against the "
    "labels of -d/--data.\n\n"
    "BraTS conventions for empty masks: both empty gives Dice 1, HD95 0; only one empty gives "
    "Dice 0, HD95 373.13 mm (no case is dropped from the mean). Writes OUT/metrics.csv (one "
    "row per case), OUT/summary.json (mean, std, median per region and for the average over "
    "regions) and OUT/dice_boxplot.png, OUT/hd95_boxplot.png, all at once after every case "
    "was evaluated."
)
COMPARE_HELP = (
    "The paper's Table 1 for several evaluation reports, and paired Wilcoxon tests.\n\n"
    "Mean Dice (%) and HD95 (mm) per region and averaged over regions, best in bold (second "
    "underlined with three or more models); then "
    "two-sided Wilcoxon signed-rank p-values of every model against the reference on the "
    "cases both reports contain (* p<0.05, ** p<0.01, *** p<0.001, **** p<0.0001)."
)


def evaluate(
    pred: Path = typer.Option(
        ..., "--pred", help="Folder of predicted label maps CASE.nii.gz (nmfseg predict output)."
    ),
    data: Path = data_option(
        "Ground truth: the dataset folder in any supported format, or a plain folder of "
        "label files CASE.nii.gz (then --format names their labels)."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Report folder to write."),
    fmt: str = typer.Option(
        None,
        "--format",
        help="Format whose labels a plain label folder holds: msd_brats, brats2021, brats2023, "
        "isles22 (a dataset folder names its own).",
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes computing metrics."),
    missing: str = typer.Option(
        "empty",
        "--missing",
        help="A case without prediction: 'empty' scores it as an empty prediction (Dice 0, "
        "HD95 373.13 mm where the truth is non-empty, like BraTS); 'skip' leaves it out.",
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the box plots."),
    old_fmt: str = typer.Option(None, "--scheme", hidden=True),
    old_data: Path = typer.Option(None, "--gt", hidden=True),
) -> None:
    """Dice and HD95 (mm) per case and region, with BraTS conventions for empty masks.

    Writes OUT/metrics.csv (one row per case), OUT/summary.json (mean, std, median per
    region and for the average over regions) and OUT/dice_boxplot.png, OUT/hd95_boxplot.png.
    Both empty: Dice 1, HD95 0; only one empty: Dice 0, HD95 373.13 mm.
    """
    from nmfseg.errors import ConfigError
    from nmfseg.evaluation.evaluate import evaluate_matching, write_report
    from nmfseg.evaluation.matching import find_ground_truth, match_predictions
    from nmfseg.fileio import check_writable

    if missing not in ("empty", "skip"):
        raise ConfigError(f"--missing {missing!r}: choose 'empty' or 'skip'")
    gt = the_data(data, old_data, "--gt")
    truth = find_ground_truth(gt, check_format(one_of(fmt, old_fmt, "--format", "--scheme")))
    check_writable(out, what="report")
    regions = ", ".join(truth.scheme.regions)
    typer.echo(
        f"ground truth: {truth.root} ({truth.source}, scheme {truth.scheme.name}, "
        f"{len(truth.labels)} cases, regions {regions})"
    )
    matching = match_predictions(pred, truth)
    typer.echo(f"predictions: {len(matching.predictions)} of {len(truth.labels)} cases in {pred}")
    if matching.missing:
        how = (
            "scored as empty predictions (Dice 0, HD95 373.13 mm where the truth is non-empty)"
            if missing == "empty"
            else "left out of the report (--missing skip)"
        )
        typer.echo(
            f"missing prediction for {len(matching.missing)} case(s), {how}: "
            + ", ".join(matching.missing),
            err=True,
        )
    if matching.extra:
        typer.echo(
            f"ignored {len(matching.extra)} prediction(s) that match no case: "
            + ", ".join(p.name for p in matching.extra),
            err=True,
        )
    report = evaluate_matching(matching, missing=missing, workers=workers, progress=True)
    report.summary["pred"] = str(pred)
    written = write_report(report, out, plots=plots)

    metrics = report.summary["metrics"]
    groups = [*report.regions, "average"] if len(report.regions) > 1 else report.regions
    typer.echo(f"{'mean ± std':10}" + "".join(f"{g:>20}" for g in groups))
    for metric, label in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
        cells = (
            f"{metrics[metric][g]['mean']:.4f} ± {metrics[metric][g]['std']:.4f}" for g in groups
        )
        typer.echo(f"{label:10}" + "".join(f"{c:>20}" for c in cells))
    typer.echo(f"{report.summary['n_cases']} cases; wrote " + ", ".join(str(p) for p in written))


def _split_names(names: list[str] | None) -> list[str] | None:
    from nmfseg.text import split_list

    if not names:
        return None
    return [name for item in names for name in split_list(item, "--names")]


def compare(
    reports: list[Path] = typer.Argument(
        ..., metavar="REPORT", help="Report folders written by nmfseg evaluate."
    ),
    reference: str = typer.Option(
        None, "--reference", help="Model the others are tested against (default: the first)."
    ),
    names: list[str] = typer.Option(
        None,
        "--names",
        help="Model names in report order: '--names a,b,c' or repeated '--names a --names b' "
        "(default: the report folder names).",
    ),
    out: Path = typer.Option(
        None, "-o", "--out", help="Also write compare.md, compare.csv and box plots here."
    ),
) -> None:
    """Table 1 of the paper for several models, and paired Wilcoxon tests vs a reference.

    Mean Dice (%) and HD95 (mm) per region and averaged over regions, best in bold (second
    underlined with three or more models); then
    two-sided Wilcoxon signed-rank p-values against the reference on the cases both reports
    contain (* p<0.05, ** p<0.01, *** p<0.001, **** p<0.0001).
    """
    from nmfseg.evaluation.compare import (
        compare_reports,
        format_table,
        format_tests,
        load_reports,
        write_comparison,
    )
    from nmfseg.fileio import check_writable

    given = _split_names(names)
    if out is not None:  # before anything is computed or printed
        check_writable(out, what="comparison")
    cmp = compare_reports(load_reports(reports, given), reference)
    typer.echo(format_table(cmp))
    typer.echo("")
    typer.echo(format_tests(cmp))
    ref = next(r for r in cmp.models if r.name == cmp.reference)
    ref_cases = {row["case_id"] for row in ref.rows}
    for rep in cmp.models:
        cases = {row["case_id"] for row in rep.rows}
        extra, lacking = len(cases - ref_cases), len(ref_cases - cases)
        if extra or lacking:
            what = [f"{extra} case(s) not in {ref.name}"] if extra else []
            what += [f"{lacking} case(s) of {ref.name} missing"] if lacking else []
            typer.echo(
                f"note: {rep.name}: {', '.join(what)}; the tests use the common cases", err=True
            )
    if out is not None:
        written = write_comparison(cmp, out)
        typer.echo("wrote " + ", ".join(str(p) for p in written))


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``compare`` to the app."""
    app.command("evaluate", help=EVALUATE_HELP)(handle_errors(evaluate))
    app.command("compare", help=COMPARE_HELP)(handle_errors(compare))
