"""``nmfseg demo``: the whole job on synthetic phantoms (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from nmfseg.cli._common import handle_errors


def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Output folder."),
    config: Path = typer.Option(
        None, "--config", "-c", help="Demo YAML (default: the packaged configs/demo.yaml)."
    ),
    models: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        metavar="NAME[,NAME...]",
        help="Only these models of the config (repeatable, or a comma list).",
    ),
    steps: int = typer.Option(None, "--steps", min=1, help="Training steps per model."),
    train_cases: int = typer.Option(None, "--train-cases", min=5, help="Training phantoms."),
    test_cases: int = typer.Option(None, "--test-cases", min=1, help="Held-out phantoms."),
) -> None:
    """Generate phantoms, check them, train, predict held-out cases, evaluate, write report.md.

    Resumable: rerun the same command after an interruption and it continues.
    """
    from nmfseg.demo import run_demo
    from nmfseg.text import split_list

    names = [name for item in models or [] for name in split_list(item, "--model")] or None
    result = run_demo(
        out, config, models=names, steps=steps, n_train=train_cases, n_test=test_cases
    )
    typer.echo(f"demo report: {result.report}")


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(handle_errors(demo))
