"""``nmfseg check-data`` and ``nmfseg split``: verify a dataset folder, make its folds."""

from __future__ import annotations

from pathlib import Path

import typer

from nmfseg.cli._common import FORMAT_HELP, check_format, handle_errors, one_of
from nmfseg.cli._options import OLD_DATA_DIR, data_option, the_data

DATA_HELP = "Dataset folder in any supported format."


def _open(data_dir: Path, fmt: str | None):
    from nmfseg.data.formats import open_dataset

    return open_dataset(data_dir, fmt)


def check_data(
    data_dir: Path = OLD_DATA_DIR,  # the old spelling of -d/--data
    data: Path = data_option(DATA_HELP),
    fmt: str = typer.Option(None, "--format", help=FORMAT_HELP),
    old_fmt: str = typer.Option(None, "--fmt", hidden=True),
) -> None:
    """Verify a dataset like nnU-Net's --verify_dataset_integrity.

    Checks that every file is present and readable, the channel count, that every channel
    and the label share shape and affine, no NaN/Inf, label values in the format's scheme.
    Prints one line per problem (CASE: FILE: problem), a summary, the spread of the cases'
    voxel sizes and each channel's normalization; exit status 1 if there is any problem.
    """
    from nmfseg.data.checks import check_dataset
    from nmfseg.errors import DataError

    fmt = check_format(one_of(fmt, old_fmt, "--format", "--fmt"))
    dataset = _open(the_data(data, data_dir), fmt)
    scheme = dataset.scheme
    report = check_dataset(dataset)
    for problem in report.problems:
        typer.echo(problem.message(dataset.root))
    labels = "labels " + ",".join(map(str, scheme.labels)) if dataset.has_labels else "no labels"
    typer.echo(
        f"{dataset.root}: {dataset.fmt}, channels {', '.join(scheme.channels)}, {labels}; "
        f"{report.n_ok} of {len(dataset)} case(s) OK"
    )
    for line in report.profile():
        typer.echo(f"  {line}")
    if not report.ok:
        n, bad = len(report.problems), len(report.bad_cases)
        raise DataError(dataset.root, f"{n} problem(s) found ({bad} case(s) affected)")


def split(
    data_dir: Path = OLD_DATA_DIR,  # the old spelling of -d/--data
    data: Path = data_option(DATA_HELP),
    n_folds: int = typer.Option(None, "--n-folds", help="Number of cross-validation folds [5]."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Path = typer.Option(
        None, "-o", "--out", help="Where to write the splits [DATA_DIR/splits.json]."
    ),
    fmt: str = typer.Option(None, "--format", help=FORMAT_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite different existing splits."),
    old_folds: int = typer.Option(None, "--folds", hidden=True),
    old_out: Path = typer.Option(None, "--output", hidden=True),
    old_fmt: str = typer.Option(None, "--fmt", hidden=True),
) -> None:
    """Write deterministic k-fold splits.json (nnU-Net's splits_final.json shape).

    ISLES'22 folds are stratified by lesion volume; other datasets get a seeded shuffle.
    An existing file with different splits is kept unless --force is given.
    """
    import json

    from nmfseg.data.splits import default_splits_path, make_splits, save_splits
    from nmfseg.errors import ConfigError
    from nmfseg.fileio import check_writable

    folds = one_of(n_folds, old_folds, "--n-folds", "--folds") or 5
    output = one_of(out, old_out, "-o/--out", "--output")
    fmt = check_format(one_of(fmt, old_fmt, "--format", "--fmt"))
    dataset = _open(the_data(data, data_dir), fmt)
    path = output if output is not None else default_splits_path(dataset)
    check_writable(path.parent, what="splits file")
    splits = make_splits(dataset, folds, seed)
    if path.is_file() and not force:
        try:
            same = json.loads(path.read_text()) == splits
        except (OSError, ValueError):
            same = False
        if not same:
            raise ConfigError(f"{path} exists with different splits; pass --force to overwrite")
    save_splits(splits, path)
    how = "stratified by lesion volume" if dataset.scheme.stratify_by_volume else "shuffled"
    typer.echo(f"{len(dataset)} cases, {folds} folds ({how}, seed {seed}) -> {path}")
    for k, fold in enumerate(splits):
        typer.echo(f"  fold {k}: {len(fold['train'])} train, {len(fold['val'])} val")


def register(app: typer.Typer) -> None:
    """Add ``check-data`` and ``split`` to the app."""
    app.command("check-data")(handle_errors(check_data))
    app.command("split")(handle_errors(split))
