"""Compare evaluation reports: the paper's Table 1 and paired Wilcoxon tests (Fig. 3).

``nmfseg compare REPORT_A REPORT_B ...`` reads the ``metrics.csv``/``summary.json`` of
several ``nmfseg evaluate`` reports (one per model) and gives

- a table shaped like the paper's Table 1 (Table 2 for a single region): one row per model,
  mean Dice (%) per region and averaged over regions, mean HD95 (mm) likewise, the best
  value of each column in bold (``**x**``; ties all bold) and, with three or more models,
  the second best underlined (``<u>x</u>``, as the paper's Markdown does), each model's mean
  over its own cases. When :attr:`Comparison.costs` is filled (``nmfseg study`` does) the
  table has the paper's #Params and FLOPs columns, and a model that could not be evaluated
  (:attr:`ModelReport.failure`) keeps its row, marked failed with the reason;
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
    "ModelCost",
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
    """One model's evaluation: its name, region names and per-case rows.

    ``failure`` (one line) marks a model that could not be evaluated: it keeps its row in the
    table, without metrics, and takes part in no mean, ranking or test.
    """

    name: str
    regions: list[str]
    rows: list[dict[str, Any]]
    path: Path | None = None
    failure: str | None = None

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


@dataclass(frozen=True)
class ModelCost:
    """A network's #params and FLOPs (None: could not be counted) and the FLOPs' input shape.

    Examples::

        >>> ModelCost(5_855_241, 174_200_000_000, (1, 4, 128, 128, 128)).cells()
        ['5.9M', '174.2G']
    """

    params: int | None
    flops: int | None
    input_shape: tuple[int, ...] = ()

    def cells(self) -> list[str]:
        """The #Params and FLOPs cells of the table, in the paper's units."""
        return [_count(self.params), _count(self.flops)]


def _count(value: int | None) -> str:
    """``5855241`` -> ``'5.9M'`` (K, M, G, T with one decimal); None -> ``'n/a'``."""
    if value is None:
        return "n/a"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return str(value)


@dataclass
class Comparison:
    """Means per model and tests against the reference (what the tables show).

    Attributes:
        models: the reports, in table order (failed ones included).
        reference: name of the reference model.
        groups: regions, plus ``avg`` for more than one region.
        means: ``{model: {metric: {group: mean}}}`` (Dice as a fraction), evaluated models.
        tests: ``{model: {metric: {group: PairedTest}}}`` for every evaluated non-reference
            model (none when the reference itself failed).
        costs: ``{model: ModelCost}``; when not empty the table has #Params and FLOPs columns.
    """

    models: list[ModelReport]
    reference: str
    groups: list[str]
    means: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    stds: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    tests: dict[str, dict[str, dict[str, PairedTest]]] = field(default_factory=dict)
    costs: dict[str, ModelCost] = field(default_factory=dict)

    @property
    def evaluated(self) -> list[ModelReport]:
        """The models that have metrics (not failed), in table order."""
        return [rep for rep in self.models if rep.failure is None]

    @property
    def failed(self) -> dict[str, str]:
        """``{model: one-line reason}`` of the failed models."""
        return {rep.name: rep.failure for rep in self.models if rep.failure is not None}


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
        reports: model reports with the same regions; failed ones (``failure`` set) are kept
            as rows but get no means and no tests.
        reference: a model name; defaults to the first evaluated report.

    Raises:
        ConfigError: unknown reference name.
    """
    names = [r.name for r in reports]
    evaluated = [r for r in reports if r.failure is None]
    if reference is None:
        reference = (evaluated or list(reports))[0].name
    if reference not in names:
        raise ConfigError(f"--reference {reference!r} is not one of the models: {', '.join(names)}")
    ref = reports[names.index(reference)]
    cmp = Comparison(list(reports), reference, ref.groups)
    for rep in evaluated:
        cmp.means[rep.name], cmp.stds[rep.name] = {}, {}
        for metric in METRICS:
            vals = {g: np.array(list(rep.values(metric, g).values())) for g in cmp.groups}
            cmp.means[rep.name][metric] = {g: float(v.mean()) for g, v in vals.items()}
            cmp.stds[rep.name][metric] = {
                g: float(v.std(ddof=1)) if v.size > 1 else 0.0 for g, v in vals.items()
            }
        if rep.name != reference and ref.failure is None:
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


def _ranks(values: list[float], better: Any, second: bool) -> tuple[float | None, float | None]:
    """The best value and (``second``) the best of those strictly worse than it."""
    if not values:
        return None, None
    best = better(values)
    rest = [v for v in values if v != best]
    return best, (better(rest) if second and rest else None)


def format_table(cmp: Comparison) -> str:
    """The paper's Table 1 as Markdown: mean Dice (%) and HD95 (mm), best in bold, second
    underlined (three or more models); #Params and FLOPs when ``cmp.costs`` is filled."""
    single = len(cmp.groups) == 1
    cols = [(m, g) for m in METRICS for g in cmp.groups]
    evaluated = cmp.evaluated
    shown = {
        rep.name: {(m, g): f"{cmp.means[rep.name][m][g] * _SCALE[m]:.2f}" for m, g in cols}
        for rep in evaluated
    }
    ranks = {
        (m, g): _ranks(
            [float(shown[r.name][(m, g)]) for r in evaluated], _BETTER[m], len(evaluated) >= 3
        )
        for m, g in cols
    }
    failed = cmp.failed
    rows = []
    for rep in cmp.models:
        cells = [rep.name]
        if cmp.costs:
            cost = cmp.costs.get(rep.name, ModelCost(None, None))
            cells += cost.cells()
        if rep.failure is not None:
            cells += ["–"] * (1 + len(cols))
        else:
            cells.append(str(len(rep.rows)))
            for m, g in cols:
                text = shown[rep.name][(m, g)]
                best, second = ranks[(m, g)]
                if float(text) == best:
                    text = f"**{text}**"
                elif float(text) == second:
                    text = f"<u>{text}</u>"
                cells.append(text)
        if failed:
            reason = (rep.failure or "").replace("|", "\\|")
            cells.append(f"failed: {reason}" if rep.failure is not None else "ok")
        rows.append(cells)
    header = ["Model", *(["#Params", "FLOPs"] if cmp.costs else [])]
    header += ["n", *(_header(m, g, single) for m, g in cols), *(["Status"] if failed else [])]
    table = _markdown(header, rows)
    if cmp.costs:
        table += "\n\n" + _cost_note(cmp.costs)
    return table


def _cost_note(costs: dict[str, ModelCost]) -> str:
    shapes = {c.input_shape for c in costs.values() if c.input_shape and c.flops is not None}
    where = (
        f"at {'×'.join(str(d) for d in next(iter(shapes)))}"
        if len(shapes) == 1
        else "at each network's own paper input (compare.csv: flops_input)"
    )
    return (
        "#Params: parameters of the networks as trained. FLOPs: one inference forward pass "
        f"{where}; 2 × multiply-adds, norms and element-wise operations included."
    )


def _p_text(test: PairedTest) -> str:
    if test.p is None:
        return "n/a"
    return f"{test.p:.3g} {test.stars}"


def format_tests(cmp: Comparison) -> str:
    """Markdown table of paired Wilcoxon p-values (and marks) against the reference."""
    if cmp.reference in cmp.failed:
        return f"No paired tests: the reference model {cmp.reference} failed."
    single = len(cmp.groups) == 1
    cols = [(m, g) for m in METRICS for g in cmp.groups]
    rows = []
    for rep in cmp.evaluated:
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
    """One row per model: n, mean/std per metric and group, p-value and pair count.

    With ``cmp.costs`` (or a failed model) also ``params``, ``flops``, ``flops_input``,
    ``status`` (``ok`` / ``failed``) and ``failure`` (the reason); a failed model's metric
    cells are empty.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = bool(cmp.costs or cmp.failed)
    header = ["model", "report", "n_cases", "reference"]
    if extra:
        header += ["params", "flops", "flops_input", "status", "failure"]
    for m in METRICS:
        for g in cmp.groups:
            header += [f"{m}_{g}_mean", f"{m}_{g}_std", f"{m}_{g}_p", f"{m}_{g}_pairs"]
    writer.writerow(header)
    for rep in cmp.models:
        row: list[Any] = [rep.name, str(rep.path or ""), len(rep.rows), rep.name == cmp.reference]
        if extra:
            cost = cmp.costs.get(rep.name, ModelCost(None, None))
            row += ["" if cost.params is None else cost.params]
            row += ["" if cost.flops is None else cost.flops]
            row += ["x".join(str(d) for d in cost.input_shape)]
            row += ["ok" if rep.failure is None else "failed", rep.failure or ""]
        for m in METRICS:
            for g in cmp.groups:
                if rep.failure is not None:
                    row += ["", "", "", ""]
                    continue
                test = cmp.tests.get(rep.name, {}).get(m, {}).get(g)
                p = "" if test is None or test.p is None else repr(test.p)
                n = "" if test is None else test.n
                row += [repr(cmp.means[rep.name][m][g]), repr(cmp.stds[rep.name][m][g]), p, n]
        writer.writerow(row)
    return buf.getvalue()


def write_comparison(
    cmp: Comparison, out_dir: str | Path, plots: bool = True, preamble: str = ""
) -> list[Path]:
    """Write ``compare.md`` (``preamble`` first), ``compare.csv`` and the combined box plots
    (Fig. 3; evaluated models only), all or nothing."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    tests = format_tests(cmp) if cmp.tests or cmp.reference in cmp.failed else ""
    text = preamble + format_table(cmp) + ("\n\n" + tests if tests else "") + "\n"
    with StagedFiles(out) as staged:
        staged.write_text("compare.md", text)
        staged.write_text("compare.csv", comparison_csv(cmp))
        if plots and cmp.evaluated:
            for metric, ylabel in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
                samples = {
                    rep.name: {g: list(rep.values(metric, g).values()) for g in cmp.groups}
                    for rep in cmp.evaluated
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
