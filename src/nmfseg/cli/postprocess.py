"""``nmfseg postprocess-search``: choose the post-processing of a run on its validation cases."""

from __future__ import annotations

from pathlib import Path

import typer

from nmfseg.cli._common import FORMAT_HELP, check_format, handle_errors, parse_number
from nmfseg.cli._options import (
    CHECKPOINT,
    DEVICE,
    OLD_RUN,
    QUIET,
    data_option,
    parse_folds,
    run_option,
    the_data,
    the_run,
)


def postprocess_search(
    ctx: typer.Context,
    run: Path = run_option(
        "Trained run: the run folder (its folds' validation cases are pooled) or a fold folder."
    ),
    data: Path = data_option("The dataset the run was trained on."),
    folds: list[str] = typer.Option(
        None,
        "-f",
        "--folds",
        metavar="FOLDS",
        help="Folds of a run folder: 0-4, 0,2,3 or all (the fold_all model) [every numbered fold].",
    ),
    checkpoint: str = CHECKPOINT,
    device: str = DEVICE,
    min_gain: str = typer.Option(
        "0.001",
        "--min-gain",
        metavar="FLOAT",
        help="Smallest rise of the mean Dice (0-1) for which a step is kept.",
    ),
    fmt: str = typer.Option(None, "--format", help=FORMAT_HELP),
    quiet: bool = QUIET,
    old_run: Path = OLD_RUN,
) -> None:
    """Choose post-processing that raises the mean Dice on the run's validation cases.

    Every fold predicts its own validation cases; then, greedily, each region is reduced to
    its largest connected component, and small components of each region are removed (for
    ET, the BraTS rule: they become necrosis), each kept only if the mean Dice rises by more
    than --min-gain (nnU-Net's determine_postprocessing, on region masks). Writes
    RUN/postprocessing.json, which 'nmfseg predict --postprocess auto' applies. The paper uses
    no post-processing.
    """
    from nmfseg.analysis.postprocess import check_search, postprocess_run
    from nmfseg.data.formats import open_dataset
    from nmfseg.inference.postprocess import PostProcessing, option_words

    model, data = the_run(run, old_run), the_data(data, None)
    gain = parse_number(min_gain, "--min-gain", float)
    check_search(gain)
    fold_ids = parse_folds(folds or [], ctx.args) or None
    dataset = open_dataset(data, check_format(fmt))
    path, record = postprocess_run(
        model, dataset, fold_ids, checkpoint, device, progress=not quiet, min_gain=gain
    )
    dice = record["mean_dice"]
    chosen = PostProcessing.from_dict(record["postprocess"])
    typer.echo(
        f"{record['n_cases']} validation case(s): mean Dice {dice['none']:.4f} without, "
        f"{dice['chosen']:.4f} with: {option_words(chosen)}"
    )
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``nmfseg postprocess-search`` to ``app``."""
    app.command(
        "postprocess-search",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
    )(handle_errors(postprocess_search))
