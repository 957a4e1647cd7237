"""``nmfseg predict``: segment a dataset folder or one case with a trained model (nnU-Net style).

The prediction settings are options here and fields of
:class:`~nmfseg.inference.settings.InferenceSettings`; values are taken as text and checked
there, so a bad one is one ``nmfseg: error: --overlap ...`` line with exit status 1 before
anything is loaded or written. The option objects are shared with ``nmfseg ablate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from nmfseg.cli._common import handle_errors, one_of

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


# The prediction settings as options, shared by every command that predicts (ablate too).
OVERLAP = typer.Option(
    None,
    "--overlap",
    metavar="FLOAT",
    help="Sliding-window overlap in [0, 1) [the run's validation.overlap, 0.5].",
)
SW_BATCH_SIZE = typer.Option(
    None,
    "--sw-batch-size",
    metavar="INT",
    help="Windows per forward pass [the run's validation.sw_batch_size, 1].",
)
BLEND = typer.Option(
    None,
    "--blend",
    metavar="gaussian|constant",
    help="Window blending [the run's validation.mode, gaussian].",
)
THRESHOLD = typer.Option(
    None,
    "--threshold",
    metavar="FLOAT",
    help="Probability in (0, 1) at or above which a voxel is inside a region "
    "[the run's validation.threshold, 0.5].",
)
AMP = typer.Option(None, "--amp", metavar="bf16|none", help="Mixed precision: bf16 or none [none].")
DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N [cuda if available].")
CHECKPOINT = typer.Option(
    "final", "--checkpoint", help="Which checkpoint of each fold: final, best or last."
)
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
NMF_ITERS = typer.Option(
    None, "--nmf-iters", metavar="T", help="NMF iterations T >= 0 [as trained, 5]."
)
NMF_RANK = typer.Option(None, "--nmf-rank", metavar="R", help="NMF rank R >= 1 [as trained, 1].")
NMF_SOLVER = typer.Option(
    None, "--nmf-solver", metavar="hals|mu", help="NMF solver [as trained, hals]."
)
NMF_LAYERS = typer.Option(
    None,
    "--nmf-layers",
    metavar="LAYERS",
    help="NMF layers that run, 0-based in network order (encoder, bridge, decoder): "
    "0-4, 0,3,8, all or none; the others are short-circuited [all].",
)


def predict(
    ctx: typer.Context,
    model: Path = typer.Option(
        ...,
        "-m",
        "--model",
        help="Run folder RUN_DIR/<dataset>/<model> (ensembles its fold_K folders), a fold "
        "folder, a checkpoint file, or the results root RUN_DIR when it holds one run.",
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
        help="Folds to ensemble: '--folds 0 1 2' or '--folds all' (the fold_all model) "
        "[every numbered fold].",
    ),
    checkpoint: str = CHECKPOINT,
    tta: bool = typer.Option(
        False, "--tta", help="Average over all 8 flip combinations (8x slower)."
    ),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the networks (pays off on many cases, GPU)."
    ),
    device: str = DEVICE,
    overlap: str = OVERLAP,
    sw_batch_size: str = SW_BATCH_SIZE,
    blend: str = BLEND,
    threshold: str = THRESHOLD,
    amp: str = AMP,
    nmf_iters: str = NMF_ITERS,
    nmf_rank: str = NMF_RANK,
    nmf_solver: str = NMF_SOLVER,
    nmf_layers: str = NMF_LAYERS,
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
    postprocess: list[str] = typer.Option(
        None,
        "--postprocess",
        metavar="SPEC",
        help="Clean the region masks (repeatable): largest:REGION[,REGION] keeps the largest "
        "connected component, min-size:REGION=VOXELS removes smaller components (ET: the "
        "BraTS rule, they become necrosis), auto uses the run's postprocessing.json "
        "(nmfseg postprocess-search) [none, as the paper].",
    ),
    into_labels: bool = typer.Option(
        False,
        "--write-into-labels",
        help="Allow -o to be the input's own label folder (its ground truth is replaced).",
    ),
    engine: str = typer.Option(
        "torch",
        "--engine",
        metavar="torch|onnxruntime",
        help="Run the networks with PyTorch, or run a model from nmfseg export with "
        "onnxruntime: -m then names the .onnx file (or its folder); same preprocessing, "
        "sliding window, TTA and writing.",
    ),
    old_out: Path = typer.Option(None, "--output", hidden=True),
) -> None:
    """Predict every case of IN and write OUT/CASE.nii.gz in the dataset's own labels."""
    from nmfseg.errors import ConfigError, NmfsegError
    from nmfseg.inference.predict import describe, predict_folder

    output = one_of(out, old_out, "-o/--out", "--output")
    settings = settings_from(
        tta=tta,
        compile=compile_,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        blend=blend,
        threshold=threshold,
        amp=amp,
        nmf_iters=nmf_iters,
        nmf_rank=nmf_rank,
        nmf_solver=nmf_solver,
        nmf_layers=nmf_layers,
        postprocess=tuple(postprocess) if postprocess else None,
    )
    if output is None:
        raise ConfigError("-o/--out is required: the folder for the predictions")
    fold_ids = parse_folds(folds or [], ctx.args)
    source = model_for_engine(engine, model, settings, fold_ids, checkpoint, device)
    result = predict_folder(
        source,
        input,
        output,
        folds=fold_ids or None,
        checkpoint=checkpoint,
        device=device,
        save_probabilities=save_probabilities,
        overwrite=overwrite,
        progress=not quiet,
        settings=settings,
        into_labels=into_labels,
    )
    typer.echo(describe(result, output), err=True)
    if result.failed:
        n, total = len(result.failed), len(result.failed) + len(result.written)
        total += len(result.skipped)
        names = ", ".join(list(result.failed)[:5]) + (", ..." if n > 5 else "")
        raise NmfsegError(f"{n} of {total} case(s) failed: {names}")


def settings_from(**options: Any) -> Any:
    """:class:`~nmfseg.inference.settings.InferenceSettings` from the options given (as text)."""
    from nmfseg.inference.settings import InferenceSettings

    return InferenceSettings(**{k: v for k, v in options.items() if v is not None})


def model_for_engine(
    engine: str, model: Path, settings: Any, folds: list[str], checkpoint: str, device: str | None
) -> Any:
    """What ``-m`` names for the engine: the path itself (torch) or the ensemble of one
    exported model (onnxruntime), after refusing what an ONNX model cannot change."""
    from nmfseg.errors import ConfigError

    if engine not in ("torch", "onnxruntime"):
        raise ConfigError(f"--engine {engine!r}: must be torch or onnxruntime")
    if engine == "torch":
        if model.suffix == ".onnx":
            raise ConfigError(f"-m {model} is an ONNX model: predict with --engine onnxruntime")
        return model
    from nmfseg.export.onnx import require
    from nmfseg.export.runtime import check_onnx_settings, load_onnx_ensemble

    require("onnxruntime")
    check_onnx_settings(settings)
    if folds:
        raise ConfigError("--folds: an ONNX model holds one fold; export each fold you want")
    if checkpoint != "final":
        raise ConfigError("--checkpoint: an ONNX model's checkpoint is chosen by nmfseg export")
    return load_onnx_ensemble(model, device)


def parse_folds(given: list[str], extra: list[str]) -> list[str]:
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
