"""``nmfseg train``: train a network on one fold of a dataset (the paper's recipe by default)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from nmfseg.cli._common import FORMAT_HELP, check_format, handle_errors, key_value, one_of
from nmfseg.cli._options import (
    OLD_DATA_DIR,
    QUIET,
    data_option,
    naming_model_args,
    the_data,
    with_training_options,
)

if TYPE_CHECKING:
    from nmfseg.training.setup import TrainingRun

#: The on/off switches of train: option, config key.
SWITCHES = (
    ("--compile", "compile"),
    ("--deterministic", "deterministic"),
    ("--grad-checkpointing", "grad_checkpointing"),
)


@with_training_options()  # --steps ... --amp, declared in nmfseg.training.options
def train(
    data_dir: Path = OLD_DATA_DIR,  # the old spelling of -d/--data
    data: Path = data_option(),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        metavar="NAME",
        help="Network name, e.g. swin_factorizer_brats (see nmfseg models).",
    ),
    fold: str = typer.Option(
        "0",
        "--fold",
        "-f",
        metavar="K",
        help="Fold to train: 0..n_folds-1, or all (the fold_all model, on every case).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Results root; the run goes to OUT/<dataset>/<model>/fold_K."
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="YAML file overriding keys of the dataset's recipe."
    ),
    training: list | None = None,  # the options of @with_training_options, as given
    model_arg: list[str] = typer.Option(
        None,
        "--model-arg",
        metavar="KEY=VALUE",
        help="Network argument, e.g. channels=8,16,32,64,128 (repeatable).",
    ),
    set_: list[str] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Any config key, e.g. augmentation.flip.prob=0."
    ),
    compile_: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the network."
    ),
    deterministic: bool = typer.Option(
        None, "--deterministic/--no-deterministic", help="Deterministic GPU kernels (slower)."
    ),
    grad_checkpointing: bool = typer.Option(
        None,
        "--grad-checkpointing/--no-grad-checkpointing",
        help="Recompute each stage (and its blocks' mixers) in backward: less memory, more "
        "time, same results.",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from checkpoint_last.pt of the fold, if there is one."
    ),
    fmt: str = typer.Option(None, "--format", help=FORMAT_HELP),
    old_fmt: str = typer.Option(None, "--fmt", hidden=True),
    quiet: bool = QUIET,
) -> None:
    """Train MODEL on fold K of DATA_DIR with the paper's recipe (configs/brats.yaml, isles.yaml).

    Writes OUT/<dataset>/<model>/fold_K/: config.yaml, log.csv, progress.png,
    checkpoint_{last,best,final}.pt and validation/summary.json.

    Multi-GPU / multi-node: the same command under `torchrun --nproc_per_node N -m nmfseg train`.
    """
    from nmfseg.training.trainer import run_training

    data = the_data(data, data_dir)
    switches = (compile_, deterministic, grad_checkpointing)
    overrides, sources = _overrides(training, switches, set_ or [])
    run = _prepare(
        data,
        model,
        fold,
        out,
        config,
        overrides,
        sources,
        model_arg or [],
        resume=resume,
        fmt=check_format(one_of(fmt, old_fmt, "--format", "--fmt")),
    )
    run_training(run, progress=not quiet)
    _report(run)


def _overrides(
    training: list, switches: tuple[bool | None, ...], set_: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Config key -> value, and config key -> the option that set it: the training options,
    the switches given (:data:`SWITCHES`), then every ``--set``."""
    from nmfseg.training.options import training_overrides

    overrides, sources = training_overrides(training)
    for (flag, key), value in zip(SWITCHES, switches, strict=True):
        if value is not None:
            overrides[key], sources[key] = value, flag
    for item in set_:
        key, value = key_value(item, "--set")
        overrides[key], sources[key] = value, f"--set {key}"
    return overrides, sources


def _prepare(
    data: Path,
    model: str,
    fold: str,
    out: Path,
    config: Path | None,
    overrides: dict[str, Any],
    sources: dict[str, str],
    model_arg: list[str],
    **options: Any,
) -> TrainingRun:
    """Every check of the run before anything is written
    (:func:`~nmfseg.training.setup.prepare_run`), a bad ``--model-arg`` named as such."""
    from nmfseg.errors import ConfigError
    from nmfseg.training.setup import prepare_run

    model_args = dict(key_value(item, "--model-arg") for item in model_arg)
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such file")
    with naming_model_args(model_arg):
        return prepare_run(
            data,
            model,
            fold,
            out,
            config_file=config,
            overrides=overrides,
            model_args=model_args,
            sources=sources,
            **options,
        )


def _report(run: TrainingRun) -> None:
    """The line that ends a run: its folder, steps and validation Dice (main process only)."""
    import json

    from nmfseg.training.distributed import is_main_process

    if not is_main_process():
        return
    summary = json.loads((run.fold_dir / "validation" / "summary.json").read_text())
    dice = ", ".join(f"{k} {v:.4f}" for k, v in summary["mean"].items())
    typer.echo(
        f"{run.fold_dir}: {run.config['steps']} steps done; validation Dice "
        f"{summary['foreground_mean']:.4f} ({dice}) on {summary['n_cases']} case(s)"
    )


def register(app: typer.Typer) -> None:
    """Add ``nmfseg train`` to ``app``."""
    app.command("train")(handle_errors(train))
