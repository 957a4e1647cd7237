"""``nmfseg train``: train a network on one fold of a dataset (the paper's recipe by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from nmfseg.cli._common import FORMAT_HELP, check_format, handle_errors, key_value, one_of
from nmfseg.cli._options import DEVICE, QUIET, naming_model_args

# CLI option -> config key. Values are parsed here (not by click) so that a bad value is
# one "nmfseg: error: --steps: ..." line with exit status 1, like every other bad input.
_OPTIONS = {
    "--steps": "steps",
    "--patch-size": "patch_size",
    "--batch-size": "batch_size",
    "--lr": "optimizer.lr",
    "--weight-decay": "optimizer.weight_decay",
    "--warmup-steps": "scheduler.warmup_steps",
    "--val-every": "val_every",
    "--checkpoint-every": "checkpoint_every",
    "--log-every": "log_every",
    "--seed": "seed",
    "--workers": "workers",
    "--n-folds": "n_folds",
    "--device": "device",
    "--amp": "amp",
}


STEPS = typer.Option(None, "--steps", metavar="INT", help="Optimizer steps [100000].")
SEED = typer.Option(None, "--seed", metavar="INT", help="Random seed [42].")
WORKERS = typer.Option(
    None,
    "--workers",
    metavar="INT",
    help="DataLoader workers per process [cores available, at most 4].",
)
N_FOLDS = typer.Option(
    None, "--n-folds", metavar="INT", help="Folds when splits.json is created [5]."
)


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
    steps: str = STEPS,
    patch_size: str = typer.Option(
        None, "--patch-size", metavar="INT[,INT,INT]", help="Patch size [128 BraTS, 64 ISLES]."
    ),
    batch_size: str = typer.Option(
        None, "--batch-size", metavar="INT", help="Global batch size, split over DDP processes [2]."
    ),
    lr: str = typer.Option(None, "--lr", metavar="FLOAT", help="AdamW learning rate [1e-4]."),
    weight_decay: str = typer.Option(
        None, "--weight-decay", metavar="FLOAT", help="AdamW weight decay [1e-2]."
    ),
    warmup_steps: str = typer.Option(
        None, "--warmup-steps", metavar="INT", help="Linear warm-up steps before cosine [2000]."
    ),
    val_every: str = typer.Option(
        None, "--val-every", metavar="INT", help="Validate every N steps (and at the end)."
    ),
    checkpoint_every: str = typer.Option(
        None, "--checkpoint-every", metavar="INT", help="Write checkpoint_last.pt every N steps."
    ),
    log_every: str = typer.Option(None, "--log-every", metavar="INT", help="Log every N steps."),
    seed: str = SEED,
    workers: str = WORKERS,
    n_folds: str = N_FOLDS,
    model_arg: list[str] = typer.Option(
        None,
        "--model-arg",
        metavar="KEY=VALUE",
        help="Network argument, e.g. channels=8,16,32,64,128 (repeatable).",
    ),
    set_: list[str] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Any config key, e.g. augmentation.flip.prob=0."
    ),
    device: str = DEVICE,
    amp: str = typer.Option(None, "--amp", help="Mixed precision: bf16 or none [none]."),
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
    from nmfseg.training.config import parse_value
    from nmfseg.training.setup import prepare_run
    from nmfseg.training.trainer import run_training

    given = {
        "--steps": steps,
        "--patch-size": patch_size,
        "--batch-size": batch_size,
        "--lr": lr,
        "--weight-decay": weight_decay,
        "--warmup-steps": warmup_steps,
        "--val-every": val_every,
        "--checkpoint-every": checkpoint_every,
        "--log-every": log_every,
        "--seed": seed,
        "--workers": workers,
        "--n-folds": n_folds,
        "--device": device,
        "--amp": amp,
    }
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option, text in given.items():
        if text is None:
            continue
        key = _OPTIONS[option]
        value = text if option == "--device" else parse_value(text, option)
        if option == "--amp" and value in ("none", "None", None, False):
            value = None
        overrides[key] = value
        sources[key] = option
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
