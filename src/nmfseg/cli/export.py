"""``nmfseg export``: one fold of a trained run as an ONNX model or a MONAI bundle.

The library side is :mod:`nmfseg.export`; ``onnx`` and ``onnxruntime`` are the optional
extra ``nmfseg[export]``, and without them ``--format onnx`` says so in one line. A MONAI
bundle (:mod:`nmfseg.export.bundle`) needs nothing more to be written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nmfseg.cli._common import handle_errors, one_fold, one_of, parse_number
from nmfseg.cli._options import CHECKPOINT, NMF, parse_fold, run_option, with_settings
from nmfseg.text import is_number

if TYPE_CHECKING:
    from nmfseg.inference.settings import InferenceSettings

HELP = (
    "Export one fold of a trained run as an ONNX model (dynamic batch and spatial size) or, "
    "with --format monai-bundle, as a MONAI bundle.\n\n"
    "The network is loaded in eval mode with the NMF settings given (paper §4.5; the NMF "
    "iterations are unrolled in the graph), traced, and accepted only if onnxruntime (CPU) "
    "reproduces PyTorch's logits to --tolerance on two inputs of other batch and spatial "
    "sizes than the traced one. OUT gets the model, with the run's inference settings "
    "(patch size, channels, regions and label scheme, overlap, blending, threshold, NMF "
    "settings, nmfseg version, source checkpoint) in its metadata, and OUT with .json "
    "instead of .onnx gets the same settings; both are written together, atomically, and "
    "an existing OUT is refused unless --overwrite. "
    "Predict with it: nmfseg predict --engine onnxruntime -r OUT. Networks whose trace "
    "fixes the input size (a Python branch on a shape) are refused in one line naming the "
    "source line. Needs pip install 'nmfseg[export]'.\n\n"
    "--format monai-bundle writes the folder OUT following MONAI's bundle specification: "
    "configs/inference.json (nmfseg's preprocessing as MONAI transforms, the run's sliding "
    "window, sigmoid, threshold, the dataset's labels, NIfTI in the input's geometry), "
    "configs/metadata.json (input channels, output regions, the run's validation Dice), "
    "models/model.pt, models/model.ts (TorchScript, when it reproduces PyTorch) and "
    "docs/README.md. Run it with python -m monai.bundle run --config_file "
    "OUT/configs/inference.json --meta_file OUT/configs/metadata.json --bundle_root OUT "
    "--dataset_dir IN --output_dir PRED (pip install 'nmfseg[bundle]' pytorch-ignite). An "
    "existing OUT is refused unless --overwrite; the bundle runs the network as trained, "
    "so the --nmf-* options do not apply."
)
FORMATS = ("onnx", "monai-bundle")


@with_settings(*NMF)
def export(
    old_run: Path = typer.Argument(None, metavar="RUN_DIR", hidden=True),  # before -r/--run
    run: Path = run_option(),
    out: Path = typer.Option(
        ..., "-o", "--out", help="The .onnx file (onnx) or the bundle folder (monai-bundle)."
    ),
    fmt: str = typer.Option(
        "onnx", "--format", metavar="onnx|monai-bundle", help="What to write [onnx]."
    ),
    fold: str = typer.Option(
        None,
        "--fold",
        "-f",
        metavar="K",
        help="Fold of a run folder: a number, or all (the fold_all model) [its first fold].",
    ),
    checkpoint: str = CHECKPOINT,
    settings: InferenceSettings = None,  # the options named in @with_settings, checked
    opset: str = typer.Option("17", "--opset", metavar="N", help="ONNX opset version, 11 to 20."),
    tolerance: str = typer.Option(
        "1e-4",
        "--tolerance",
        metavar="FLOAT",
        help="Largest accepted max |exported - torch| of the logits (onnxruntime; for a "
        "bundle, TorchScript).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an existing OUT: the .onnx file and its .json, or the bundle folder.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines, only the summary."),
) -> None:
    """Export one fold of a trained run as an ONNX model or a MONAI bundle."""
    from nmfseg.errors import ConfigError

    model = one_of(run, old_run, "-r/--run", "RUN_DIR", required="the trained run")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose onnx or monai-bundle")
    tol = parse_number(tolerance, "--tolerance", float, exclusive=True)

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    if fmt == "monai-bundle":
        _bundle(model, out, fold, checkpoint, settings, overwrite, tol, None if quiet else echo)
        return
    from nmfseg.export.onnx import OPSETS, check_onnx_path, export_onnx, require

    require("onnx", "onnxruntime")
    if not (is_number(opset) and int(opset) in OPSETS):
        raise ConfigError(f"--opset {opset!r}: choose an opset from {OPSETS[0]} to {OPSETS[-1]}")
    check_onnx_path(out, overwrite)
    path = one_fold(model, parse_fold(fold, allow_all=True), checkpoint, "exporting")

    result = export_onnx(
        path,
        out,
        checkpoint=checkpoint,
        settings=settings,
        opset=int(opset),
        tolerance=tol,
        overwrite=overwrite,
        echo=None if quiet else echo,
    )
    worst = max(diff for _, diff in result.checks)
    typer.echo(
        f"wrote {result.path} and {result.sidecar.name} (onnxruntime matches PyTorch to "
        f"{worst:.1g} on {len(result.checks)} input sizes)",
        err=True,
    )


def _bundle(
    model: Path,
    out: Path,
    fold: str | None,
    checkpoint: str,
    settings: InferenceSettings,
    overwrite: bool,
    tolerance: float,
    echo: Callable[[str], None] | None,
) -> None:
    """``--format monai-bundle``: check the options, write the bundle, print the summary."""
    from nmfseg.errors import ConfigError
    from nmfseg.export.bundle import check_bundle_path, export_bundle
    from nmfseg.inference.settings import NMF_SETTINGS, OPTIONS

    given = [name for name in NMF_SETTINGS if getattr(settings, name) is not None]
    if given:
        raise ConfigError(
            f"{OPTIONS[given[0]]}: not with --format monai-bundle (the bundle runs the network "
            "as trained)"
        )
    check_bundle_path(out, overwrite)
    path = one_fold(model, parse_fold(fold, allow_all=True), checkpoint, "exporting")
    result = export_bundle(
        path, out, checkpoint=checkpoint, overwrite=overwrite, tolerance=tolerance, echo=echo
    )
    ts = "with" if result.torchscript else "without"
    typer.echo(f"wrote the MONAI bundle {result.path} ({ts} TorchScript)", err=True)


def register(app: typer.Typer) -> None:
    """Add ``nmfseg export`` to app."""
    app.command("export", help=HELP)(handle_errors(export))
