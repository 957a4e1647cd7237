"""``nmfseg synth``: write a synthetic BraTS-, ISLES'22- or head-CT-like dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from nmfseg.cli._common import handle_errors


def synth(
    kind: str = typer.Argument(
        ...,
        metavar="KIND",
        help="brats (FLAIR/T1/T1Gd/T2 gliomas), brats2d (the same, 2D: one axial slice per "
        "case at --size pixels), isles (DWI/ADC infarcts) or ct (head CT in "
        "HU with haemorrhages, a clinical voxel size per case).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (empty/new)."),
    cases: int = typer.Option(10, "--cases", "-n", help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; case i uses the seed (seed, i)."),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="msd (default for brats), brats2021, brats2023, isles22 (default for isles), "
        "nnunet (any kind; the default for ct).",
    ),
    spacing: float | None = typer.Option(
        None,
        "--spacing",
        help="Voxel size in mm [2 = the MNI 2 mm grid; 3-4 for quick runs]. ct: the generation "
        "grid and the scale of each case's clinical voxel size [1].",
    ),
    shape: str | None = typer.Option(
        None, "--shape", help="Crop/pad the grid about the brain to X,Y,Z voxels, e.g. 64,64,64."
    ),
    size: int | None = typer.Option(
        None, "--size", help="brats2d: pixels per side of the slices [512]."
    ),
    workers: int = typer.Option(1, "--workers", "-j", help="Worker processes generating cases."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier nmfseg synth dataset in --out."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate phantoms from the MNI152 template (shipped with nilearn) in a real format.

    Writes the cases, the format's metadata and synth.json (seeds, lesion volumes).
    overview.png shows every channel and the labels of the first cases.
    The same seed always gives the same files.
    """
    from nmfseg.errors import ConfigError
    from nmfseg.phantoms.synth import synthesize_dataset

    grid = None
    if shape is not None:
        try:
            grid = tuple(int(v) for v in shape.replace("x", ",").split(","))
        except ValueError:
            raise ConfigError(f"--shape must look like 64,64,64, got {shape!r}") from None
    root = synthesize_dataset(
        kind,
        out,
        cases,
        seed=seed,
        fmt=fmt,
        spacing=spacing,
        shape=grid,
        workers=workers,
        progress=progress,
        overwrite=overwrite,
        size=size,
    )
    typer.echo(
        f"wrote {cases} {kind} phantom case(s) to {root} (overview: {root / 'overview.png'})"
    )


def register(app: typer.Typer) -> None:
    """Add ``synth`` to app."""
    app.command("synth")(handle_errors(synth))
