"""Training log: ``log.csv`` and ``progress.png`` (loss, validation Dice, learning rate).

The log is a list of rows (dicts) kept in memory and inside every checkpoint, so a resumed
run continues the same log. Each row has ``step``, ``loss`` (mean training loss since the
previous row), ``lr`` and ``time`` (seconds since the start of the run, including earlier
sessions); rows written at a validation also carry ``val_dice`` (mean over regions and
cases) and ``val_dice_<region>``. Both files are rewritten atomically from the rows.

Examples::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from nmfseg.training.progress import write_log_csv
    >>> rows = [{"step": 1, "loss": 1.5, "lr": 1e-4, "time": 0.3},
    ...         {"step": 2, "loss": 1.2, "lr": 1e-4, "time": 0.6, "val_dice": 0.5}]
    >>> path = Path(tempfile.mkdtemp()) / "log.csv"
    >>> write_log_csv(rows, path)
    >>> path.read_text().splitlines()[0]
    'step,loss,lr,time,val_dice'
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nmfseg.fileio import write_bytes, write_text
from nmfseg.plotting import figure

__all__ = ["plot_progress", "training_seconds", "write_log_csv"]

_BASE_COLUMNS = ("step", "loss", "lr", "time")


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols = list(_BASE_COLUMNS)
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def write_log_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write the rows as CSV (missing values left empty), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def plot_progress(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Draw loss, validation Dice and learning rate against the step into a PNG."""
    buf = io.BytesIO()
    with figure(buf, (8, 9)) as fig:  # the one style; no pyplot: thread-safe
        _draw_progress(fig, rows, title)
    write_bytes(path, buf.getvalue())


def _draw_progress(fig: Any, rows: Sequence[Mapping[str, Any]], title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax_loss, ax_dice, ax_lr = fig.subplots(3, 1, sharex=True)
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss") not in (None, "")]
    dots = "." if len(rows) <= 50 else None  # a line of one point is not drawn: a dot is
    if losses:
        ax_loss.plot(*zip(*losses, strict=True), lw=1, marker=dots)
    else:
        ax_loss.text(0.5, 0.5, "no training loss logged yet", ha="center", va="center",
                     transform=ax_loss.transAxes, color="gray")  # fmt: skip
    ax_loss.set_ylabel("training loss")
    val = [r for r in rows if r.get("val_dice") is not None]
    regions = [k for k in _columns(rows) if k.startswith("val_dice_")]
    for key in regions:
        pts = [(r["step"], r[key]) for r in val if r.get(key) is not None]
        if pts:
            ax_dice.plot(*zip(*pts, strict=True), marker=".", lw=1, label=key[len("val_dice_") :])
    if val:
        ax_dice.plot(
            [r["step"] for r in val], [r["val_dice"] for r in val], "k", marker="o", label="mean"
        )
        ax_dice.legend(loc="lower right")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_ylim(-0.02, 1.02)
    ax_lr.plot([r["step"] for r in rows], [r["lr"] for r in rows], lw=1, marker=dots)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    steps = [int(r["step"]) for r in rows]
    if steps and max(steps) - min(steps) < 2:  # too short a range for integer ticks
        ax_lr.set_xlim(min(steps) - 1, max(steps) + 1)
    for ax in (ax_loss, ax_dice, ax_lr):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)


def training_seconds(fold_dir: str | Path) -> float | None:
    """A run's training time (validation included, every session of a resumed run): the
    ``time`` of the last row of its ``log.csv``; None without a readable log.

    Examples::

        >>> import tempfile
        >>> fold = Path(tempfile.mkdtemp())
        >>> write_log_csv([{"step": 1, "loss": 1.0, "lr": 1e-4, "time": 12.5}], fold / "log.csv")
        >>> training_seconds(fold), training_seconds(fold / "nothing")
        (12.5, None)
    """
    try:
        with (Path(fold_dir) / "log.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        return float(rows[-1]["time"]) if rows else None
    except (OSError, KeyError, ValueError):
        return None
