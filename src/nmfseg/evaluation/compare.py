"""Compare evaluation reports: the paper's Table 1 and paired Wilcoxon tests (Fig. 3).

``nmfseg compare REPORT_A REPORT_B ...`` reads the ``metrics.csv``/``summary.json`` of
several ``nmfseg evaluate`` reports (one per model) and gives

- a table shaped like the paper's Table 1 (Table 2 for a single region): one row per model,
  mean Dice (%) per region and averaged over regions, mean HD95 (mm) likewise, the best
  value of each column in bold (``**x**``; ties all bold), each model's mean over its own
  cases;
- a table of two-sided paired Wilcoxon signed-rank p-values (``scipy.stats.wilcoxon`` with
  its defaults) of every model against the reference model, per region and for the
  average, on the cases present in both reports, with Fig. 3's significance marks. When all
  paired differences are zero the p-value is 1.0 (no evidence of a difference); with no
  common case there is no test (``n/a``).

Examples::

    >>> import numpy as np
    >>> rows_a = [{"case_id": f"c{i}", "dice_WT": 0.9, "hd95_WT": 2.0} for i in range(6)]
    >>> rows_b = [{"case_id": f"c{i}", "dice_WT": 0.8 - 0.01 * i, "hd95_WT": 3.0}
    ...           for i in range(6)]
    >>> cmp = compare_reports([ModelReport("A", ["WT"], rows_a), ModelReport("B", ["WT"], rows_b)])
    >>> cmp.means["B"]["dice"]["WT"] < cmp.means["A"]["dice"]["WT"]
    True
    >>> round(cmp.tests["B"]["dice"]["WT"].p, 5), cmp.tests["B"]["dice"]["WT"].n
    (0.03125, 6)
    >>> print(format_table(cmp).splitlines()[2])
    | A | 6 | **90.00** | **2.00** |
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.errors import ConfigError, DataError
from nmfseg.evaluation.evaluate import AVERAGE, METRICS, read_report
from nmfseg.evaluation.plots import group_label, metric_boxplot, significance_stars
from nmfseg.fileio import StagedFiles

__all__ = [
    "Comparison",
    "ModelReport",
    "PairedTest",
    "compare_reports",
    "comparison_csv",
    "format_table",
    "format_tests",
    "load_reports",
    "paired_wilcoxon",
    "write_comparison",
]

_UNITS = {"dice": "%", "hd95": "mm"}
_LABEL = {"dice": "Dice", "hd95": "HD95"}
_SCALE = {"dice": 100.0, "hd95": 1.0}
_BETTER = {"dice": max, "hd95": min}


@dataclass
class ModelReport:
    """One model's evaluation: its name, region names and per-case rows."""

    name: str
    regions: list[str]
    rows: list[dict[str, Any]]
    path: Path | None = None

    @property
    def groups(self) -> list[str]:
        """Regions, plus ``avg`` when there is more than one region."""
        return [*self.regions, AVERAGE] if len(self.regions) > 1 else list(self.regions)

    def values(self, metric: str, group: str) -> dict[str, float]:
        """``{case_id: value}`` of one metric and group; ``avg`` is computed if absent."""
        out = {}
        for row in self.rows:
            key = f"{metric}_{group}"
            if key in row:
                out[row["case_id"]] = float(row[key])
            else:
                out[row["case_id"]] = float(np.mean([row[f"{metric}_{r}"] for r in self.regions]))
        return out


@dataclass(frozen=True)
class PairedTest:
    """A paired Wilcoxon signed-rank test: p-value (None when impossible) and pair count."""

    p: float | None
    n: int

    @property
    def stars(self) -> str:
        """Fig. 3's significance mark."""
        return significance_stars(self.p)


def paired_wilcoxon(a: dict[str, float], b: dict[str, float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test on the cases present in both ``a`` and ``b``.

    ``scipy.stats.wilcoxon(x, y)`` with its defaults (``zero_method="wilcox"``, exact
    distribution for small samples without ties). All differences zero gives p = 1.0; no
    common case gives p = None.

    Examples::

        >>> paired_wilcoxon({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0, "c": 0.0})
        PairedTest(p=1.0, n=2)
        >>> paired_wilcoxon({"a": 1.0}, {"b": 1.0})
        PairedTest(p=None, n=0)
    """
    from scipy.stats import wilcoxon

    common = [k for k in a if k in b]
    if not common:
        return PairedTest(None, 0)
    x = np.array([a[k] for k in common], dtype=np.float64)
    y = np.array([b[k] for k in common], dtype=np.float64)
    if np.all(x == y):
        return PairedTest(1.0, len(common))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(wilcoxon(x, y).pvalue)
    return PairedTest(p if np.isfinite(p) else None, len(common))


@dataclass
class Comparison:
    """Means per model and tests against the reference (what the tables show).

    Attributes:
        models: the reports, in table order.
        reference: name of the reference model.
        groups: regions, plus ``avg`` for more than one region.
        means: ``{model: {metric: {group: mean}}}`` (Dice as a fraction).
        tests: ``{model: {metric: {group: PairedTest}}}`` for every non-reference model.
    """

    models: list[ModelReport]
    reference: str
    groups: list[str]
    means: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    stds: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    tests: dict[str, dict[str, dict[str, PairedTest]]] = field(default_factory=dict)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def load_reports(
    paths: Sequence[str | Path], names: Sequence[str] | None = None, minimum: int = 2
) -> list[ModelReport]:
    """Read evaluation reports; names default to the shortest unique folder suffixes.

    ``minimum`` is the number of reports required (``nmfseg compare`` needs two; a one-row
    table, as the demo writes for a single model, needs one).

    Raises:
        DataError: a folder that is not a report, or reports with different regions.
        ConfigError: the wrong number of names, or duplicate names.
    """
    paths = [Path(p).expanduser() for p in paths]
    if len(paths) < minimum:
        raise ConfigError(
            "compare needs at least two reports" if minimum == 2 else f"need {minimum} reports"
        )
    if names:
        if len(names) != len(paths):
            raise ConfigError(f"--names gives {len(names)} names for {len(paths)} reports")
        names = [str(n) for n in names]
    else:
        names = _unique_names(paths)
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {', '.join(names)}")
    reports = []
    for name, path in zip(names, paths, strict=True):
        summary, rows = read_report(path)
        reports.append(ModelReport(name, [str(r) for r in summary["regions"]], rows, path))
    first = reports[0]
    for rep in reports[1:]:
        if rep.regions != first.regions:
            raise DataError(
                rep.path or rep.name,
                f"regions {rep.regions} differ from {first.name}'s {first.regions}",
            )
    return reports


def compare_reports(reports: Sequence[ModelReport], reference: str | None = None) -> Comparison:
    """Means of every model and paired Wilcoxon tests against ``reference``.

    Args:
        reports: at least two model reports with the same regions.
        reference: a model name; defaults to the first report.

    Raises:
        ConfigError: unknown reference name.
    """
    names = [r.name for r in reports]
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise ConfigError(f"--reference {reference!r} is not one of the models: {', '.join(names)}")
    ref = reports[names.index(reference)]
    cmp = Comparison(list(reports), reference, ref.groups)
    for rep in reports:
        cmp.means[rep.name], cmp.stds[rep.name] = {}, {}
        for metric in METRICS:
            vals = {g: np.array(list(rep.values(metric, g).values())) for g in cmp.groups}
            cmp.means[rep.name][metric] = {g: float(v.mean()) for g, v in vals.items()}
            cmp.stds[rep.name][metric] = {
                g: float(v.std(ddof=1)) if v.size > 1 else 0.0 for g, v in vals.items()
            }
        if rep.name != reference:
            cmp.tests[rep.name] = {
                metric: {
                    g: paired_wilcoxon(rep.values(metric, g), ref.values(metric, g))
                    for g in cmp.groups
                }
                for metric in METRICS
            }
    return cmp


def _header(metric: str, group: str, single: bool) -> str:
    unit = _UNITS[metric]
    return (
        f"{_LABEL[metric]} ({unit})"
        if single
        else f"{_LABEL[metric]} {group_label(group)} ({unit})"
    )


def _markdown(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def format_table(cmp: Comparison) -> str:
    """The paper's Table 1 as Markdown: mean Dice (%) and HD95 (mm), best in bold."""
    single = len(cmp.groups) == 1
    cols = [(m, g) for m in METRICS for g in cmp.groups]
    shown = {
        rep.name: {(m, g): f"{cmp.means[rep.name][m][g] * _SCALE[m]:.2f}" for m, g in cols}
        for rep in cmp.models
    }
    best = {(m, g): _BETTER[m](float(shown[r.name][(m, g)]) for r in cmp.models) for m, g in cols}
    rows = []
    for rep in cmp.models:
        cells = [rep.name, str(len(rep.rows))]
        for m, g in cols:
            text = shown[rep.name][(m, g)]
            cells.append(f"**{text}**" if float(text) == best[(m, g)] else text)
        rows.append(cells)
    header = ["Model", "n", *(_header(m, g, single) for m, g in cols)]
    return _markdown(header, rows)


def _p_text(test: PairedTest) -> str:
    if test.p is None:
        return "n/a"
    return f"{test.p:.3g} {test.stars}"


def format_tests(cmp: Comparison) -> str:
    """Markdown table of paired Wilcoxon p-values (and marks) against the reference."""
    single = len(cmp.groups) == 1
    cols = [(m, g) for m in METRICS for g in cmp.groups]
    rows = []
    for rep in cmp.models:
        if rep.name == cmp.reference:
            continue
        tests = cmp.tests[rep.name]
        n = tests[METRICS[0]][cmp.groups[0]].n
        rows.append([rep.name, str(n), *(_p_text(tests[m][g]) for m, g in cols)])
    header = ["Model", "pairs", *(_header(m, g, single).rsplit(" (", 1)[0] for m, g in cols)]
    title = (
        f"Paired two-sided Wilcoxon signed-rank test against {cmp.reference} "
        "(* p<0.05, ** p<0.01, *** p<0.001, **** p<0.0001, ns not significant)"
    )
    return title + "\n\n" + _markdown(header, rows)


def comparison_csv(cmp: Comparison) -> str:
    """One row per model: n, mean/std per metric and group, p-value and pair count."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["model", "report", "n_cases", "reference"]
    for m in METRICS:
        for g in cmp.groups:
            header += [f"{m}_{g}_mean", f"{m}_{g}_std", f"{m}_{g}_p", f"{m}_{g}_pairs"]
    writer.writerow(header)
    for rep in cmp.models:
        row: list[Any] = [rep.name, str(rep.path or ""), len(rep.rows), rep.name == cmp.reference]
        for m in METRICS:
            for g in cmp.groups:
                test = cmp.tests.get(rep.name, {}).get(m, {}).get(g)
                p = "" if test is None or test.p is None else repr(test.p)
                n = "" if test is None else test.n
                row += [repr(cmp.means[rep.name][m][g]), repr(cmp.stds[rep.name][m][g]), p, n]
        writer.writerow(row)
    return buf.getvalue()


def write_comparison(cmp: Comparison, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write ``compare.md``, ``compare.csv`` and the combined box plots, all or nothing."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    with StagedFiles(out) as staged:
        staged.write_text("compare.md", format_table(cmp) + "\n\n" + format_tests(cmp) + "\n")
        staged.write_text("compare.csv", comparison_csv(cmp))
        if plots:
            for metric, ylabel in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
                samples = {
                    rep.name: {g: list(rep.values(metric, g).values()) for g in cmp.groups}
                    for rep in cmp.models
                }
                stars = {
                    (name, g): tests[metric][g].stars
                    for name, tests in cmp.tests.items()
                    for g in cmp.groups
                }
                metric_boxplot(
                    samples,
                    staged.path(f"{metric}_boxplot.png"),
                    ylabel=ylabel,
                    stars=stars,
                    title=f"paired Wilcoxon signed-rank vs {cmp.reference}: "
                    "* p<0.05, ** p<0.01, *** p<0.001, **** p<0.0001",
                )
        return staged.commit()
