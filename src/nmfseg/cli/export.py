"""``nmfseg export``: one fold of a trained run as an ONNX model, for deployment.

The library side is :mod:`nmfseg.export`; ``onnx`` and ``onnxruntime`` are the optional
extra ``nmfseg[export]``, and without them this command says so in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nmfseg.cli._common import handle_errors, one_fold, parse_number
from nmfseg.cli._options import CHECKPOINT, NMF, parse_fold, with_settings

if TYPE_CHECKING:
    from nmfseg.inference.settings import InferenceSettings

HELP = (
    "Export one fold of a trained run as an ONNX model (dynamic batch and spatial size).\n\n"
    "The network is loaded in eval mode with the NMF settings given (paper §4.5; the NMF "
    "iterations are unrolled in the graph), traced, and accepted only if onnxruntime (CPU) "
    "reproduces PyTorch's logits to --tolerance on two inputs of other batch and spatial "
    "sizes than the traced one. OUT gets the model, with the run's inference settings "
    "(patch size, channels, regions and label scheme, overlap, blending, threshold, NMF "
    "settings, nmfseg version, source checkpoint) in its metadata, and OUT with .json "
    "instead of .onnx gets the same settings; both are written together, atomically. "
    "Predict with it: nmfseg predict --engine onnxruntime -m OUT. Networks whose trace "
    "fixes the input size (a Python branch on a shape) are refused in one line naming the "
    "source line. Needs pip install 'nmfseg[export]'."
)


@with_settings(*NMF)
def export(
    model: Path = typer.Argument(
        ...,
        metavar="RUN_DIR",
        help="Run folder RUN_DIR/<dataset>/<model>, a fold folder or a checkpoint file.",
    ),
    out: Path = typer.Option(..., "-o", "--out", help="The .onnx file to write."),
    fold: str = typer.Option(
        None, "--fold", "-f", metavar="K", help="Fold of a run folder, or all [its first fold]."
    ),
    checkpoint: str = CHECKPOINT,
    settings: InferenceSettings = None,  # the options named in @with_settings, checked
    opset: str = typer.Option("17", "--opset", metavar="N", help="ONNX opset version, 11 to 20."),
    tolerance: str = typer.Option(
        "1e-4",
        "--tolerance",
        metavar="FLOAT",
        help="Largest accepted max |onnxruntime - torch| of the logits.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines, only the summary."),
) -> None:
    """Export one fold of a trained run as an ONNX model (dynamic batch and spatial size)."""
    from nmfseg.errors import ConfigError
    from nmfseg.export.onnx import OPSETS, check_onnx_path, export_onnx, require

    require("onnx", "onnxruntime")
    if not (opset.isdigit() and int(opset) in OPSETS):
        raise ConfigError(f"--opset {opset!r}: choose an opset from {OPSETS[0]} to {OPSETS[-1]}")
    tol = parse_number(tolerance, "--tolerance", float, exclusive=True)
    check_onnx_path(out)
    path = one_fold(model, parse_fold(fold, allow_all=True), checkpoint, "exporting")

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    result = export_onnx(
        path,
        out,
        checkpoint=checkpoint,
        settings=settings,
        opset=int(opset),
        tolerance=tol,
        echo=None if quiet else echo,
    )
    worst = max(diff for _, diff in result.checks)
    typer.echo(
        f"wrote {result.path} and {result.sidecar.name} (onnxruntime matches PyTorch to "
        f"{worst:.1g} on {len(result.checks)} input sizes)",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``nmfseg export`` to app."""
    app.command("export", help=HELP)(handle_errors(export))
