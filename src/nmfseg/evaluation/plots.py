"""Box plots of per-case metrics, in the style of the paper's Fig. 3.

One group of boxes per region (and the average over regions), one box per model inside a
group, and optional significance marks (``*`` … ``****``, ``ns``) above a model's box from
a paired test against the reference model. Drawn in the one style of nmfseg's figures
(:func:`nmfseg.plotting.figure`: matplotlib's object API on an Agg canvas, so no global
backend is switched and no display is needed).

Examples::

    >>> import tempfile
    >>> from pathlib import Path
    >>> samples = {"A": {"ET": [0.8, 0.9, 0.7], "WT": [0.9, 0.95, 0.85]},
    ...            "B": {"ET": [0.6, 0.7, 0.8], "WT": [0.8, 0.9, 0.85]}}
    >>> path = Path(tempfile.mkdtemp()) / "dice.png"
    >>> metric_boxplot(samples, path, ylabel="Dice", stars={("B", "ET"): "*"}).stat().st_size > 0
    True
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nmfseg.plotting import COLOURS, LABEL, TITLE, figure

__all__ = ["group_label", "metric_boxplot", "significance_stars", "wrap_title"]


def significance_stars(p: float | None) -> str:
    """Fig. 3's marks: ``****`` p<1e-4, ``***`` p<1e-3, ``**`` p<0.01, ``*`` p<0.05, else ``ns``.

    ``None`` (no test possible) gives ``""``.

    Examples::

        >>> [significance_stars(p) for p in (0.2, 0.03, 0.004, 5e-4, 1e-6, None)]
        ['ns', '*', '**', '***', '****', '']
    """
    if p is None:
        return ""
    for limit, mark in ((1e-4, "****"), (1e-3, "***"), (1e-2, "**"), (0.05, "*")):
        if p < limit:
            return mark
    return "ns"


def wrap_title(title: str, inches: float, fontsize: float) -> str:
    """``title`` broken into lines that fit a figure ``inches`` wide at ``fontsize`` points.

    Examples::

        >>> print(wrap_title("paired Wilcoxon signed-rank vs A: * p<0.05, ** p<0.01", 3, 9))
        paired Wilcoxon signed-rank vs A:
        * p<0.05, ** p<0.01
    """
    chars = max(10, int(0.9 * inches * 72 / (0.55 * fontsize)))
    if len(title) <= chars:
        return title
    parts = title.split(": ", 1)  # a subject and its legend: the legend on lines of its own
    if len(parts) == 2:
        parts[0] += ":"
    return "\n".join(textwrap.fill(p, width=chars, break_on_hyphens=False) for p in parts)


def group_label(group: str) -> str:
    """Axis label of a group: ``"avg"`` is shown as ``"Avg."`` like in the paper's tables."""
    return "Avg." if group == "avg" else group


def metric_boxplot(
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    ylabel: str,
    stars: Mapping[tuple[str, str], str] | None = None,
    title: str | None = None,
    percent: bool | None = None,
) -> Path:
    """Grouped box plot: x = groups (regions, ``avg``), one box per model in each group.

    Args:
        samples: ``{model: {group: per-case values}}``; every model needs the same groups.
        path: output image (``.png``), written atomically.
        ylabel: y-axis label, e.g. ``"Dice"`` or ``"HD95 (mm)"``.
        stars: ``{(model, group): mark}`` drawn above that box.
        title: optional figure title, wrapped to the figure's width (never cut off).
        percent: show fractions in [0, 1] as % (like the tables); ``None``: when ``ylabel``
            is a Dice score.

    Returns:
        ``path``.
    """
    models = list(samples)
    if not models:
        raise ValueError("samples is empty")
    groups = list(samples[models[0]])
    for m in models:
        if list(samples[m]) != groups:
            raise ValueError(f"model {m!r} has groups {list(samples[m])}, expected {groups}")
    stars = dict(stars or {})
    if percent is None:
        percent = ylabel.lower().startswith("dice")
    if percent:
        samples = {m: {g: [100 * v for v in samples[m][g]] for g in groups} for m in models}
        ylabel = ylabel if "%" in ylabel else f"{ylabel} (%)"
    fig_width = max(5.0, 1.2 + len(groups) * (0.6 + 0.45 * len(models)))
    with figure(path, (fig_width, 4.4), layout="tight") as fig:
        ax = fig.add_subplot(1, 1, 1)
        _boxes(ax, samples, models, groups, stars)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([group_label(g) for g in groups])
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
        _legend(ax, models)
        if title:
            ax.set_title(wrap_title(title, fig_width, TITLE))
    return Path(path)


def _boxes(
    ax: Any,
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    models: list[str],
    groups: list[str],
    stars: Mapping[tuple[str, str], str],
) -> None:
    """One box per model in every group, its significance mark above it."""
    n = len(models)
    width = 0.8 / n
    for i, model in enumerate(models):
        color = COLOURS[i % len(COLOURS)]
        positions = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        data = [list(samples[model][g]) for g in groups]
        ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.85,
            patch_artist=True,
            showfliers=True,
            boxprops={"facecolor": color, "alpha": 0.75},
            medianprops={"color": "black"},
            flierprops={"marker": ".", "markersize": 3, "markeredgecolor": color},
            manage_ticks=False,
        )
        for x, group, values in zip(positions, groups, data, strict=True):
            mark = stars.get((model, group), "")
            if mark and values:
                ax.annotate(
                    mark,
                    (x, max(values)),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=LABEL,
                )


def _legend(ax: Any, models: list[str]) -> None:
    """The models' colours below the axes (never over a box or a mark); none for one model."""
    from matplotlib.patches import Patch  # heavy: only when a figure is drawn

    n = len(models)
    if n > 1:
        handles = [Patch(facecolor=COLOURS[i % len(COLOURS)], alpha=0.75) for i in range(n)]
        ax.legend(handles, models, fontsize=LABEL, frameon=False, loc="upper center",
                  bbox_to_anchor=(0.5, -0.08), ncol=min(n, 4))  # fmt: skip
