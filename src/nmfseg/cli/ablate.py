"""``nmfseg ablate``: free speed-ups of a trained Factorizer, measured (paper §4.5, Fig. 8)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nmfseg.cli._common import FORMAT_HELP, check_format, handle_errors, parse_number
from nmfseg.cli._options import (
    CHECKPOINT,
    DEVICE,
    OLD_RUN,
    QUIET,
    WINDOW,
    data_option,
    parse_fold,
    run_option,
    the_data,
    the_run,
    with_settings,
)

if TYPE_CHECKING:
    from nmfseg.inference.settings import InferenceSettings

HELP = (
    "Measure what a trained Factorizer keeps when its NMF layers change at inference "
    "(paper §4.5, Fig. 8).\n\n"
    "On the validation cases of the model's fold (from the run's config), scores and times: "
    "(a) only the first k NMF layers kept, k = 0..L (layers.csv); (b) one NMF layer removed at a "
    "time (remove.csv); (c) T NMF iterations (iters.csv); (d) rank R with HALS and with MU "
    "(rank.csv); mean Dice per region and averaged, and seconds per case. Also writes "
    "reference.csv (the unmodified model), ablation.png (the four panels, the unmodified model "
    "dashed) and fastest.md / fastest.csv: the settings within 1 Dice point of the unmodified "
    "model, fastest first, with the nmfseg predict options that deploy them. Each setting's passes "
    "over a case alternate with passes of the unmodified model, the fastest of --repeats "
    "each, and its speed-up is their ratio; a speed-up within the spread of the unmodified "
    "model's own times (the timing noise of a busy machine) is reported as noise. Before the "
    "sweep, one timed pass gives an estimate of the whole run (about 2 x settings x cases x "
    "--repeats passes; on a CPU, start with --sweeps iters --iters 1-3 --repeats 1). Resumable: "
    "a setting already in its CSV is not redone. Layers are 0-based (encoder, bridge, decoder)."
)


@with_settings(*WINDOW, "threshold", "amp")
def ablate(
    run: Path = run_option(),
    data: Path = data_option("The dataset the run was trained on."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the CSVs, table and figure."),
    fold: str = typer.Option(
        None, "--fold", "-f", metavar="K", help="Fold of a run folder [its only fold]."
    ),
    sweeps: str = typer.Option(
        "all",
        "--sweeps",
        metavar="SWEEPS",
        help="Which sweeps: layers, remove, iters, rank (comma-separated) or all.",
    ),
    iters: str = typer.Option("1-20", "--iters", metavar="T", help="T values of the iters sweep."),
    ranks: str = typer.Option("1-8", "--ranks", metavar="R", help="R values of the rank sweep."),
    solvers: str = typer.Option(
        "hals,mu", "--solvers", metavar="hals,mu", help="Solvers of the rank sweep."
    ),
    repeats: str = typer.Option(
        "3",
        "--repeats",
        metavar="N",
        help="Passes over each case per setting and per unmodified model, interleaved; "
        "each time is the fastest (a CPU's speed drifts by tens of percent).",
    ),
    checkpoint: str = CHECKPOINT,
    device: str = DEVICE,
    settings: InferenceSettings = None,  # the options named in @with_settings, checked
    fmt: str = typer.Option(None, "--format", help=FORMAT_HELP),
    quiet: bool = QUIET,
    old_run: Path = OLD_RUN,
) -> None:
    """Measure what a trained Factorizer keeps when its NMF layers change at inference."""
    from nmfseg.analysis.ablate import parse_int_list, parse_sweeps, run_ablation
    from nmfseg.analysis.ablate_report import fastest_line
    from nmfseg.analysis.runs import fold_checkpoint
    from nmfseg.data.formats import open_dataset
    from nmfseg.errors import ConfigError
    from nmfseg.inference.predictor import Predictor
    from nmfseg.nmf import SOLVERS

    model, data = the_run(run, old_run), the_data(data, None)
    chosen = parse_sweeps(sweeps)
    n_repeats = parse_number(repeats, "--repeats", minimum=1)
    t_values = parse_int_list(iters, "--iters", 0)
    r_values = parse_int_list(ranks, "--ranks", 1)
    solver_list = [s.strip().lower() for s in solvers.split(",") if s.strip()]
    if not solver_list or any(s not in SOLVERS for s in solver_list):
        raise ConfigError(f"--solvers {solvers!r}: choose from {', '.join(SOLVERS)}")
    path, others = fold_checkpoint(model, parse_fold(fold), checkpoint)
    if others:
        folds = ", ".join([path.parent.name, *others])
        raise ConfigError(f"--fold: {model} has {folds}; choose the fold to ablate")
    dataset = open_dataset(data, check_format(fmt))
    predictor = Predictor.from_run(path, device=device, settings=settings)
    result = run_ablation(
        predictor,
        dataset,
        out,
        sweeps=chosen,
        iters=t_values,
        ranks=r_values,
        solvers=solver_list,
        repeats=n_repeats,
        progress=not quiet,
    )
    line = fastest_line(result.fastest, result.reference, result.noise)
    typer.echo(f"{line}; see {Path(out) / 'fastest.md'}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``nmfseg ablate`` to app."""
    app.command("ablate", help=HELP)(handle_errors(ablate))
