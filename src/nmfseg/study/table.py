"""The study's comparison: every fold's validation cases pooled per model, #params and FLOPs.

The paper's Table 1 is 5-fold cross-validation: each case is scored once, by the model of the
fold that held it out, and a model's row is the mean over all of them. :func:`pooled_reports`
reads each fold's report (``OUT/reports/<model>/fold_K``) and joins the rows per model (a
``fold`` column says which fold scored the case); a model that failed keeps its row, marked
with the reason. :func:`model_costs` counts the parameters of each network as it was trained
(preset plus ``--model-arg``) and its FLOPs at the paper's input of the data it was built
for (:func:`~nmfseg.study.plan.flops_input`: 128³ for BraTS, 64³ for ISLES'22, whatever
the preset), on the meta device (:mod:`nmfseg.models.complexity`), so it costs neither
memory nor time.
:func:`write_study_table` writes ``compare.md``, ``compare.csv`` and the box plots of Fig. 3
(:func:`~nmfseg.evaluation.compare.write_comparison`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nmfseg.evaluation.compare import (
    Comparison,
    ModelCost,
    ModelReport,
    compare_reports,
    write_comparison,
)
from nmfseg.evaluation.evaluate import read_report
from nmfseg.fileio import short_error
from nmfseg.models import create_model
from nmfseg.models.complexity import count_flops, count_params
from nmfseg.study.plan import CHECKPOINT, StudyPlan

__all__ = ["model_costs", "pooled_reports", "study_comparison", "write_study_table"]


def model_costs(plan: StudyPlan) -> dict[str, ModelCost]:
    """#params of each network as trained and its FLOPs at the paper's input of its data.

    A network that cannot be counted (e.g. it fails on that input) gets ``None`` counts.
    """
    costs = {}
    for model in plan.models:
        job = next(j for j in plan.jobs if j.model == model)
        kwargs = job.model_kwargs
        shape = job.flops_input or (1, int(kwargs.get("in_channels", 1)), *job.patch_size)
        try:
            with torch.device("meta"):
                net = create_model(model, **kwargs)
            costs[model] = ModelCost(count_params(net), count_flops(net, shape)["total"], shape)
        except Exception:  # a network that cannot be counted: n/a
            costs[model] = ModelCost(None, None, shape)
    return costs


def pooled_reports(plan: StudyPlan, failed: dict[str, str]) -> list[ModelReport]:
    """One report per model: the rows of all its folds (in fold order), or its failure."""
    reports = []
    for model in plan.models:
        path = Path("reports") / model
        if model in failed:
            reports.append(ModelReport(model, plan.regions, [], path, failure=failed[model]))
            continue
        rows = []
        try:
            for job in (j for j in plan.jobs if j.model == model):
                _, fold_rows = read_report(job.report_dir)
                rows += [{"fold": job.fold, **row} for row in fold_rows]
        except Exception as err:  # reported as this model's failure
            failed[model] = f"collecting the reports: {short_error(err)}"
            reports.append(ModelReport(model, plan.regions, [], path, failure=failed[model]))
            continue
        reports.append(ModelReport(model, plan.regions, rows, path))
    return reports


def study_comparison(plan: StudyPlan, failed: dict[str, str]) -> Comparison:
    """Table 1 of the study: pooled reports, paired tests against the reference, costs."""
    cmp = compare_reports(pooled_reports(plan, failed), plan.reference)
    cmp.costs = model_costs(plan)
    return cmp


def _preamble(plan: StudyPlan, cmp: Comparison) -> str:
    folds = plan.folds
    if folds == list(range(plan.n_folds)):
        which = f"{plan.n_folds}-fold cross-validation"
    else:
        which = f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))} of a "
        which += f"{plan.n_folds}-fold split"
    return (
        f"# {plan.dataset_name}: {which}\n\n"
        f"Each model's validation cases of every fold, pooled (n cases), predicted with "
        f"checkpoint_{CHECKPOINT}.pt of the fold that held them out. Dice (%) higher is better, "
        "HD95 (mm) lower; BraTS conventions for empty masks. Best in bold"
        + (", second underlined.\n\n" if len(cmp.evaluated) >= 3 else ".\n\n")
    )


def write_study_table(plan: StudyPlan, cmp: Comparison, plots: bool = True) -> list[Path]:
    """Write ``compare.md``, ``compare.csv`` and (``plots``) the box plots into the study
    folder, all or nothing; return the paths."""
    return write_comparison(cmp, plan.out, plots=plots, preamble=_preamble(plan, cmp))
