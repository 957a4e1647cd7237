"""``nmfseg models`` (the catalogue of registered networks: nothing is built, but reading the
registry imports PyTorch, a few seconds) and ``nmfseg complexity`` (their #params and FLOPs
counted, beside the paper's)."""

from __future__ import annotations

import typer

from nmfseg.cli._common import handle_errors


def parse_size(text: str) -> tuple[int, ...]:
    """``"128"`` → ``(128,)``; ``"96,128,64"`` or ``"96x128x64"`` → as given.

    A single number is every axis: a cube for a 3D network, a square for a 2D one.
    """
    from nmfseg.errors import ConfigError

    parts = text.lower().replace("x", ",").replace("×", ",").split(",")
    try:
        size = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise ConfigError(
            f"--input-size {text!r}: expected one int or ints separated by ',' or 'x'"
        ) from None
    if not size or min(size) < 1:
        raise ConfigError(f"--input-size {text!r}: sizes should be positive ints")
    return size


def _fmt_count(value: float | None, unit: float, suffix: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value / unit:.{digits}f}{suffix}"


def _delta(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"({100 * (ours - paper) / paper:+.1f}%)"


def complexity(
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        metavar="NAME[,NAME...]",
        help="Registered network names (repeatable, or a comma list) [every one].",
    ),
    input_size: str = typer.Option(
        None,
        "--input-size",
        help="Spatial input size, e.g. 128 or 96,128,64. Default: each preset's patch size "
        "(the paper's input).",
    ),
) -> None:
    """Print #params and FLOPs per model at the paper's input size, beside the paper's."""
    from nmfseg.models import list_models, model_info
    from nmfseg.models.complexity import FLOP_CONVENTION, model_complexity
    from nmfseg.text import split_list

    names = [name for item in model or [] for name in split_list(item, "--model")]
    size = parse_size(input_size) if input_size else None
    names = names or [  # one size fits every network, several the networks of as many dims
        n for n in list_models() if not size or len(size) in (1, model_info(n).spatial_dims)
    ]
    rows = [model_complexity(name, size) for name in names]

    width = max([len("model"), *(len(c.name) for c in rows)]) + 2  # names never run together
    header = f"{'model':<{width}}{'input':<16}{'params':>9}{'paper':>8}{'':>9}"
    header += f"{'GFLOPs':>10}{'paper':>9}{'':>9}"
    typer.echo(FLOP_CONVENTION)
    typer.echo(header)
    for c in rows:
        shape = "x".join(str(s) for s in c.input_shape)
        gflops = c.flops / 1e9
        typer.echo(
            f"{c.name:<{width}}{shape:<16}"
            f"{_fmt_count(c.params, 1e6, 'M', 2):>9}{_fmt_count(c.paper_params, 1e6, 'M'):>8}"
            f"{_delta(c.params, c.paper_params):>9}"
            f"{gflops:>10.2f}{_fmt_count(c.paper_gflops, 1, ''):>9}"
            f"{_delta(gflops, c.paper_gflops):>9}"
        )


def models(
    pattern: str = typer.Argument(
        None, metavar="[PATTERN]", help="Shell-style filter, e.g. '*_isles' or 'swin*'."
    ),
) -> None:
    """List the registered networks: dataset, channels, training patch, the paper's #params
    and GFLOPs (Tables 1-2), and what each is.

    Nothing is built (the registry is read; importing PyTorch takes a few seconds).
    `nmfseg complexity -m NAME` counts #params and FLOPs.
    """
    from nmfseg.errors import ConfigError
    from nmfseg.models import list_models, model_info

    names = list_models(pattern)
    if not names:
        raise ConfigError(f"no registered network matches {pattern!r}; see nmfseg models")
    width = max(len(n) for n in names) + 2
    typer.echo(
        f"{'model':<{width}}{'dataset':<9}{'in->out':>8}  {'patch':<12}{'paper':>7}{'GFLOPs':>8}"
        "  what"
    )
    for name in names:
        info = model_info(name)
        channels = f"{info.in_channels}->{info.out_channels}" if info.in_channels else "-"
        patch = "x".join(map(str, info.patch_size)) if info.patch_size else "-"
        typer.echo(
            f"{name:<{width}}{info.dataset or '-':<9}{channels:>8}  {patch:<12}"
            f"{_fmt_count(info.paper_params, 1e6, 'M'):>7}{_fmt_count(info.paper_gflops, 1, ''):>8}"
            f"  {info.description}"
        )


def register(app: typer.Typer) -> None:
    """Add the ``models`` and ``complexity`` commands to ``app``."""
    app.command("models")(handle_errors(models))
    app.command("complexity")(handle_errors(complexity))
