"""``nmfseg train``: train a network on one fold of a dataset (the paper's recipe by default)."""

from __future__ import annotations

from pathlib import Path

import typer

from nmfseg.cli._common import FORMAT_HELP, check_format, handle_errors, key_value, one_of
from nmfseg.cli._options import QUIET, naming_model_args, with_training_options


@with_training_options()  # --steps ... --amp, declared in nmfseg.training.options
def train(
    data_dir: Path = typer.Argument(
        ..., metavar="DATA_DIR", help="Labelled dataset folder in any supported format."
    ),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Network name, e.g. swin_factorizer_brats (see nmfseg models).",
    ),
    fold: str = typer.Option("0", "--fold", "-f", help="Fold to train: 0..n_folds-1, or 'all'."),
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
    from nmfseg.errors import ConfigError
    from nmfseg.training.options import training_overrides
    from nmfseg.training.setup import prepare_run
    from nmfseg.training.trainer import run_training

    overrides, sources = training_overrides(training)
    for flag, key, value in (
        ("--compile", "compile", compile_),
        ("--deterministic", "deterministic", deterministic),
        ("--grad-checkpointing", "grad_checkpointing", grad_checkpointing),
    ):
        if value is not None:
            overrides[key], sources[key] = value, flag
    for item in set_ or []:
        key, value = key_value(item, "--set")
        overrides[key], sources[key] = value, f"--set {key}"
    model_args = dict(key_value(item, "--model-arg") for item in model_arg or [])
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such file")
    with naming_model_args(model_arg or []):
        run = prepare_run(
            data_dir,
            model,
            fold,
            out,
            config_file=config,
            overrides=overrides,
            model_args=model_args,
            sources=sources,
            resume=resume,
            fmt=check_format(one_of(fmt, old_fmt, "--format", "--fmt")),
        )
    run_training(run, progress=not quiet)
    from nmfseg.training.distributed import is_main_process

    if is_main_process():
        import json

        summary = json.loads((run.fold_dir / "validation" / "summary.json").read_text())
        dice = ", ".join(f"{k} {v:.4f}" for k, v in summary["mean"].items())
        typer.echo(
            f"{run.fold_dir}: {run.config['steps']} steps done; validation Dice "
            f"{summary['foreground_mean']:.4f} ({dice}) on {summary['n_cases']} case(s)"
        )


def register(app: typer.Typer) -> None:
    """Add ``nmfseg train`` to ``app``."""
    app.command("train")(handle_errors(train))
