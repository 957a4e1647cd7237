"""``nmfseg study``: train, predict and evaluate several models on several folds; Table 1."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nmfseg.cli._common import FORMAT_HELP, check_format, handle_errors
from nmfseg.cli._options import (
    OLD_DATA_DIR,
    data_option,
    naming_model_args,
    the_data,
    with_training_options,
)

if TYPE_CHECKING:
    from nmfseg.study.plan import StudyPlan

HELP = (
    "The paper's comparison in one command: train every model on every fold of DATA_DIR, "
    "predict each fold's validation cases with its final checkpoint, evaluate them and pool "
    "the folds per model (cross-validation) into the paper's Table 1.\n\n"
    "Writes into OUT: compare.md and compare.csv (Dice and HD95 per region and averaged, "
    "#Params, FLOPs at the preset's paper input, best in bold, second underlined, paired "
    "Wilcoxon tests against --reference), dice_boxplot.png and hd95_boxplot.png (Fig. 3), "
    "study.json (models, folds, settings, status and time of every stage, failures), and "
    "runs/, predictions/, reports/.\n\n"
    "Rerun the same command after an interruption: it continues where it stopped. A model "
    "that fails (out of memory, an error) is marked failed in the table and the others "
    "finish; the exit status is then 1. With --print-jobs it prints one 'nmfseg train ... && "
    "nmfseg predict ...' line per (model, fold) for a cluster scheduler; rerunning the study "
    "afterwards only collects, evaluates and writes the table."
)


@with_training_options()  # --steps ... --amp for every model, declared in nmfseg.training.options
def study(
    data_dir: Path = OLD_DATA_DIR,  # the old spelling of -d/--data
    data: Path = data_option(),
    models: list[str] = typer.Option(
        ...,
        "--models",
        "-m",
        metavar="NAME[,NAME...]",
        help="Networks to compare, in table order: --models a,b,c.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", metavar="DIR", help="Study folder (created if needed)."
    ),
    folds: str = typer.Option(
        None,
        "--folds",
        "-f",
        metavar="FOLDS",
        help="Folds: numbers and ranges, 0-4 or 0,2,3 [every fold].",
    ),
    reference: str = typer.Option(
        None,
        "--reference",
        metavar="NAME",
        help="Model the others are tested against [the first].",
    ),
    config: Path = typer.Option(
        None, "--config", "-c", metavar="YAML", help="Training config keys for every model."
    ),
    training: list | None = None,  # the options of @with_training_options, as given
    set_: list[str] = typer.Option(
        None,
        "--set",
        metavar="[MODEL:]KEY=VALUE",
        help="Config key for every model, or for MODEL only: --set unetr_brats:optimizer.lr=1e-3.",
    ),
    model_arg: list[str] = typer.Option(
        None,
        "--model-arg",
        metavar="[MODEL:]KEY=VALUE",
        help="Network argument for every model, or for MODEL only: "
        "--model-arg segresnet_brats:init_filters=16.",
    ),
    fmt: str = typer.Option(None, "--format", help=FORMAT_HELP),
    print_jobs: bool = typer.Option(
        False,
        "--print-jobs",
        help="Print one 'nmfseg train ... && nmfseg predict ...' line per (model, fold) and "
        "exit; run them anywhere, then rerun the study to collect.",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bars (the line per stage stays)."
    ),
) -> None:
    """The paper's comparison: train, predict, evaluate every (model, fold); write Table 1."""
    from nmfseg.study.plan import StudyOptions, plan_study
    from nmfseg.text import split_list

    options = StudyOptions(
        data_dir=the_data(data, data_dir),
        out=out.expanduser(),
        models=[name for item in models for name in split_list(item, "--models")],
        folds=_fold_spec(folds),
        reference=reference,
        config_file=config,
        train=_training(training, set_ or []),
        model_args=list(model_arg or []),
        fmt=check_format(fmt),
    )
    with naming_model_args(options.model_args):
        plan = plan_study(options)
    if print_jobs:
        _print_jobs(plan)
    else:
        _run(plan, quiet)


def _fold_spec(folds: str | None) -> str | None:
    """``--folds`` read by the one fold grammar (:func:`nmfseg.text.parse_folds`), its words
    joined by commas for the study's plan, which checks them against the number of folds.

    Raises:
        ConfigError: Not a fold list, or ``all``: the ``fold_all`` model has no validation
            cases of its own to compare on.
    """
    from nmfseg.errors import ConfigError
    from nmfseg.text import fold_words, parse_folds

    if folds is None:
        return None
    if "all" in parse_folds(folds):
        raise ConfigError(
            f"--folds {folds!r}: a study compares models on each fold's validation cases, which "
            "the fold_all model trained on; give fold numbers (0-4), or no --folds for every fold"
        )
    return ",".join(fold_words(folds))


def _training(training: list, set_: list[str]) -> list[tuple[str, str]]:
    """The training settings for every model, in order: ``(option, text)``."""
    return [(opt.option, text) for opt, text in training] + [("--set", t) for t in set_]


def _print_jobs(plan: StudyPlan) -> None:
    """``--print-jobs``: one shell line per (model, fold) on stdout, what to do on stderr."""
    from nmfseg.study.run import job_lines

    lines = job_lines(plan)
    typer.echo(
        f"# {len(lines)} job(s), one line per (model, fold): train, then predict with "
        "checkpoint_final.pt. Run each line once, anywhere (a SLURM job array runs line "
        "$SLURM_ARRAY_TASK_ID; on a GPU node, 'torchrun --nproc_per_node N -m nmfseg train "
        "...' instead of 'nmfseg train ...'), then "
        "rerun this nmfseg study command without --print-jobs to collect the table.",
        err=True,
    )
    for line in lines:
        typer.echo(line)


def _run(plan: StudyPlan, quiet: bool) -> None:
    """Run every stage that is not done, print the table and its tests; exit 1 if a model
    failed."""
    from nmfseg.errors import NmfsegError
    from nmfseg.evaluation.compare import format_table, format_tests
    from nmfseg.study.run import run_plan

    result = run_plan(plan, progress=not quiet)
    cmp = result.comparison
    typer.echo(format_table(cmp))
    if cmp.tests or cmp.reference in cmp.failed:
        typer.echo("")
        typer.echo(format_tests(cmp))
    names = ", ".join(str(p) for p in [*result.files, result.manifest])
    typer.echo(f"wrote {names}", err=True)
    if result.failed:
        n, total = len(result.failed), len(plan.models)
        first, why = next(iter(result.failed.items()))
        more = f" (and {n - 1} more)" if n > 1 else ""
        raise NmfsegError(
            f"{n} of {total} model(s) failed: {first}: {why}{more}; "
            f"see {plan.out / 'compare.md'} and {plan.out / 'study.json'}"
        )


def register(app: typer.Typer) -> None:
    """Add ``nmfseg study`` to ``app``."""
    app.command("study", help=HELP)(handle_errors(study))
