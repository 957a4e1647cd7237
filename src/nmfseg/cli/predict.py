"""``nmfseg predict``: segment a dataset folder or one case with a trained model (nnU-Net style)."""

from __future__ import annotations

from pathlib import Path

import typer

from nmfseg.cli._common import handle_errors, one_of

HELP = (
    "Predict every case of IN and write OUT/CASE.nii.gz in the dataset's own labels.\n\n"
    "Same preprocessing as training, sliding window (training patch size, 50% overlap, "
    "Gaussian blending), sigmoid, mean over folds (and over flips with --tta), threshold 0.5, "
    "crop undone; every output keeps its input's shape, affine and header. A case that cannot "
    "be read is reported and skipped; the exit status is 1 if any case failed."
)


def predict(
    ctx: typer.Context,
    model: Path = typer.Option(
        ...,
        "-m",
        "--model",
        help="Run folder RUN_DIR/<dataset>/<model> (ensembles its fold_K folders), "
        "a fold folder, or a checkpoint file.",
    ),
    input: Path = typer.Option(
        ...,
        "-i",
        "--input",
        help="Dataset folder in any supported format (labels optional), or a single case: "
        "a BraTS case folder, an ISLES'22 subject folder, an MSD 4D file or an nnU-Net "
        "CASE_0000.nii.gz.",
    ),
    out: Path = typer.Option(None, "-o", "--out", help="Folder for CASE.nii.gz files."),
    folds: list[str] = typer.Option(
        None,
        "-f",
        "--folds",
        help="Folds to ensemble: '--folds 0 1 2' or '--folds all' (default: every numbered fold).",
    ),
    checkpoint: str = typer.Option(
        "final", "--checkpoint", help="Which checkpoint of each fold: final, best or last."
    ),
    tta: bool = typer.Option(
        False, "--tta", help="Average over all 8 flip combinations (8x slower)."
    ),
    device: str = typer.Option(
        None, "--device", help="cpu or cuda (default: cuda when available)."
    ),
    save_probabilities: bool = typer.Option(
        False,
        "--save-probabilities",
        help="Also write CASE_probabilities.npz (float16 region probabilities, original grid).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo cases whose outputs exist (default: skip them)."
    ),
    old_out: Path = typer.Option(None, "--output", hidden=True),
) -> None:
    """Predict every case of IN and write OUT/CASE.nii.gz in the dataset's own labels.

    Same preprocessing as training, sliding window (training patch size, 50% overlap,
    Gaussian blending), sigmoid, mean over folds (and flips with --tta), threshold 0.5, the
    crop undone; each output keeps its input's shape, affine and header. A case that
    cannot be read is reported and skipped; the exit status is 1 if any case failed.
    """
    from nmfseg.errors import ConfigError, NmfsegError
    from nmfseg.inference.predict import describe, predict_folder

    output = one_of(out, old_out, "-o/--out", "--output")
    if output is None:
        raise ConfigError("-o/--out is required: the folder for the predictions")
    fold_ids = _parse_folds(folds or [], ctx.args)
    result = predict_folder(
        model,
        input,
        output,
        folds=fold_ids or None,
        checkpoint=checkpoint,
        tta=tta,
        device=device,
        save_probabilities=save_probabilities,
        overwrite=overwrite,
    )
    typer.echo(describe(result, output), err=True)
    if result.failed:
        n, total = len(result.failed), len(result.failed) + len(result.written)
        total += len(result.skipped)
        names = ", ".join(list(result.failed)[:5]) + (", ..." if n > 5 else "")
        raise NmfsegError(f"{n} of {total} case(s) failed: {names}")


def _parse_folds(given: list[str], extra: list[str]) -> list[str]:
    """``--folds 0 1 2`` arrives as ``["0"]`` plus extra arguments ``["1", "2"]``."""
    from nmfseg.errors import ConfigError

    if extra and not given:
        raise ConfigError(f"unexpected argument {extra[0]!r}")
    out = []
    for item in [*given, *extra]:
        for part in item.replace(",", " ").split():
            if not (part.isdigit() or part == "all"):
                raise ConfigError(f"--folds {part!r}: a fold is a number (0, 1, ...) or 'all'")
            out.append(part)
    return out


def register(app: typer.Typer) -> None:
    """Add ``nmfseg predict`` to app."""
    app.command(
        "predict",
        help=HELP,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
    )(handle_errors(predict))
