"""``nmfseg explain``: the NMF components of a trained Factorizer on one case (paper Fig. 6)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nmfseg.cli._common import handle_errors, one_fold, parse_number
from nmfseg.cli._options import (
    CHECKPOINT,
    DEVICE,
    OLD_RUN,
    QUIET,
    WINDOW,
    parse_fold,
    run_option,
    the_run,
    with_settings,
)

if TYPE_CHECKING:
    from nmfseg.inference.settings import InferenceSettings

HELP = (
    "Show what the NMF layers of a trained Factorizer see in one case (paper Fig. 6).\n\n"
    "Runs the model on CASE like nmfseg predict (same preprocessing and sliding window), "
    "records the NMF factors of the chosen layers in every window and writes, into OUT: "
    "maps/layerLL_headHH_compC.nii.gz, one spatial component per layer, head and component on "
    "the input's own grid and affine (open it over the scan in any viewer); components.png, "
    "the modalities and ground truth in the first row and the components of each layer on "
    "the axial slice through the lesion; components.json (layer, head, component, stage, "
    "level, window, value range). Swin layers combine their regular and shifted windows as "
    "the layer does. Greedy-rank NMF layers also write ranks.json and ranks.csv (how many "
    "windows took each rank) and print a line of them. Rerunning into OUT reuses the layers "
    "already written."
)


@with_settings(*WINDOW)
def explain(
    run: Path = run_option(),
    # -i/--input as in predict: the images of one case, not a dataset (-d/--data)
    input: Path = typer.Option(
        ...,
        "-i",
        "--input",
        help="One case: a BraTS case folder, an ISLES'22 subject folder, an MSD 4D file or an "
        "nnU-Net CASE_0000.nii.gz.",
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the maps, panel and JSON."),
    layers: str = typer.Option(
        "first,last",
        "--layers",
        metavar="LAYERS",
        help="NMF layers, 0-based in network order (encoder, bridge, decoder): first,last, "
        "all, 0,3,8 or 0-4.",
    ),
    gt: Path = typer.Option(
        None, "--gt", metavar="LABEL", help="Label file to show [the case's own label, if any]."
    ),
    fold: str = typer.Option(
        None, "--fold", "-f", metavar="K", help="Fold of a run folder [its first fold]."
    ),
    checkpoint: str = CHECKPOINT,
    device: str = DEVICE,
    settings: InferenceSettings = None,  # the options named in @with_settings, checked
    max_maps: str = typer.Option(
        "32", "--max-maps", metavar="INT", help="Maps held in memory at once (one pass each)."
    ),
    quiet: bool = QUIET,
    old_run: Path = OLD_RUN,
) -> None:
    """Show what the NMF layers of a trained Factorizer see in one case (paper Fig. 6)."""
    from nmfseg.analysis.explain import explain_case
    from nmfseg.analysis.ranks import rank_summary
    from nmfseg.fileio import check_writable
    from nmfseg.inference.predictor import Predictor
    from nmfseg.inference.settings import parse_layers

    model = the_run(run, old_run)
    parse_layers(layers, None, option="--layers")
    n_maps = parse_number(max_maps, "--max-maps", minimum=1)
    check_writable(out, what="component maps")  # before loading the model
    path = one_fold(model, parse_fold(fold), checkpoint, "explaining")
    predictor = Predictor.from_run(path, device=device, settings=settings, progress=not quiet)
    result = explain_case(predictor, input, out, layers, gt, max_maps=n_maps, progress=not quiet)
    reused = f" ({len(result.reused)} layer(s) reused)" if result.reused else ""
    typer.echo(
        f"wrote {len(result.components)} component maps, {result.panel} and "
        f"{out / 'components.json'}{reused}",
        err=True,
    )
    if result.ranks:  # greedy-rank NMF layers: the ranks they chose (ranks.json)
        typer.echo(rank_summary(result.ranks), err=True)


def register(app: typer.Typer) -> None:
    """Add ``nmfseg explain`` to app."""
    app.command("explain", help=HELP)(handle_errors(explain))
