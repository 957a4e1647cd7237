"""``nmfseg predict``: segment a dataset folder or one case with a trained model (nnU-Net style).

The prediction settings are options here and fields of
:class:`~nmfseg.inference.settings.InferenceSettings`; values are taken as text and checked
there, so a bad one is one ``nmfseg: error: --overlap ...`` line with exit status 1 before
anything is loaded or written (:func:`~nmfseg.cli._options.with_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from nmfseg.cli._common import handle_errors, one_of
from nmfseg.cli._options import (
    CHECKPOINT,
    DEVICE,
    OLD_RUN,
    QUIET,
    RUN_HELP,
    SETTING_OPTIONS,
    parse_folds,
    run_option,
    the_run,
    with_settings,
)

if TYPE_CHECKING:
    from nmfseg.inference.settings import InferenceSettings

HELP = (
    "Predict every case of IN and write OUT/CASE.nii.gz in the dataset's own labels.\n\n"
    "Same preprocessing as training, sliding window (training patch size, the run's overlap "
    "and blending, 50% and Gaussian by default), sigmoid, mean over folds (and over flips with "
    "--tta), threshold, crop undone; every output keeps its input's shape, affine and header. "
    "OUT/predict.json records the model, its checkpoints and every setting; a folder holding "
    "another model's or setting's outputs is refused without --overwrite. A case that cannot "
    "be read is reported and skipped; the exit status is 1 if any case failed.\n\n"
    "Factorizers predict faster without retraining (paper §4.5; find a setting with nmfseg "
    "ablate): fewer NMF iterations (--nmf-iters), other rank or solver, or fewer NMF layers "
    "(--nmf-layers)."
)


@with_settings(*SETTING_OPTIONS)
def predict(
    ctx: typer.Context,
    run: Path = run_option(
        RUN_HELP + " A run folder ensembles its fold_K folders; with --engine onnxruntime, "
        "the .onnx file of nmfseg export (or its folder)."
    ),
    # -i/--input, not -d/--data: what to segment is a dataset folder or one case (a file, a
    # case folder), nnU-Net's -i; -d/--data always names a whole dataset.
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
        metavar="FOLDS",
        help="Folds to ensemble: numbers and ranges, 0-4 or 0,2,3, or all (the fold_all "
        "model trained on every case) [every numbered fold].",
    ),
    checkpoint: str = CHECKPOINT,
    device: str = DEVICE,
    settings: InferenceSettings = None,  # the options named in @with_settings, checked
    save_probabilities: bool = typer.Option(
        False,
        "--save-probabilities",
        help="Also write CASE_probabilities.npz (float16 region probabilities, original grid).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Redo cases whose outputs exist, and replace outputs of other settings [skip them].",
    ),
    quiet: bool = QUIET,
    into_labels: bool = typer.Option(
        False,
        "--write-into-labels",
        help="Allow -o to be the input's own label folder (its ground truth is replaced).",
    ),
    engine: str = typer.Option(
        "torch",
        "--engine",
        metavar="torch|onnxruntime|openvino",
        help="Run the networks with PyTorch, or run a model from nmfseg export with "
        "onnxruntime or OpenVINO (CPU; --amp bf16 for bfloat16): -r then names the .onnx "
        "file (or its folder); same preprocessing, sliding window, TTA and writing.",
    ),
    old_out: Path = typer.Option(None, "--output", hidden=True),
    old_run: Path = OLD_RUN,
) -> None:
    """Predict every case of IN and write OUT/CASE.nii.gz in the dataset's own labels."""
    from nmfseg.errors import NmfsegError
    from nmfseg.inference.predict import predict_folder, summary_line

    model = the_run(run, old_run)
    output = one_of(out, old_out, "-o/--out", "--output", required="the folder for the predictions")
    fold_ids = parse_folds(folds or [], ctx.args)
    predictor = model_for_engine(engine, model, settings, fold_ids, checkpoint, device)
    result = predict_folder(
        predictor,
        input,
        output,
        save_probabilities=save_probabilities,
        overwrite=overwrite,
        progress=not quiet,
        into_labels=into_labels,
        model=model,
    )
    typer.echo(summary_line(result, output), err=True)
    if result.failed:
        n, total = len(result.failed), len(result.failed) + len(result.written)
        total += len(result.skipped)
        names = ", ".join(list(result.failed)[:5]) + (", ..." if n > 5 else "")
        raise NmfsegError(f"{n} of {total} case(s) failed: {names}")


def model_for_engine(
    engine: str,
    model: Path,
    settings: Any,
    folds: list[int | str],
    checkpoint: str,
    device: str | None,
) -> Any:
    """The :class:`~nmfseg.inference.predictor.Predictor` of what ``-r`` names for the engine:
    the folds of a run (torch) or one exported model (onnxruntime, openvino), after refusing
    what an ONNX model cannot change."""
    from nmfseg.errors import ConfigError
    from nmfseg.inference.predictor import Predictor

    if engine not in ("torch", "onnxruntime", "openvino"):
        raise ConfigError(f"--engine {engine!r}: must be torch, onnxruntime or openvino")
    if engine == "torch":
        from nmfseg.models.checkpoint import check_not_onnx

        check_not_onnx(model)  # the one message wherever a run is expected
        return Predictor.from_run(model, folds or None, checkpoint, device, settings=settings)
    from nmfseg.export.runtime import check_onnx_settings

    check_onnx_settings(settings, engine)
    if folds:
        raise ConfigError("--folds: an ONNX model holds one fold; export each fold you want")
    if checkpoint != "final":
        raise ConfigError("--checkpoint: an ONNX model's checkpoint is chosen by nmfseg export")
    if engine == "openvino":
        from nmfseg.export.openvino import load_openvino_ensemble

        return Predictor(load_openvino_ensemble(model, device, settings.amp), settings)
    from nmfseg.export.runtime import load_onnx_ensemble

    return Predictor(load_onnx_ensemble(model, device), settings)


def register(app: typer.Typer) -> None:
    """Add ``nmfseg predict`` to app."""
    app.command(
        "predict",
        help=HELP,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
    )(handle_errors(predict))
