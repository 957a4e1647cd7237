"""The figures of ``nmfseg explain`` (paper Fig. 6) and ``nmfseg ablate`` (paper Fig. 8).

- :func:`component_panel`: the input's modalities and ground truth in the first row, then one
  row per NMF layer with its components overlaid on the same axial slice through the lesion.
- :func:`ablation_figure`: the four inference-time ablations, mean Dice against (a) the
  number of first NMF layers kept, (b) the layer removed, (c) the iterations ``T`` and (d) the
  rank for HALS and MU, each with the unmodified model as a dashed reference line and the
  inference time per case on a second axis.

Both are drawn in the one style of nmfseg's figures (:func:`nmfseg.plotting.figure`) and
written atomically; matplotlib is imported only when a figure is drawn.

Examples::

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "panel.png"
    >>> image = np.random.default_rng(0).random((6, 5))
    >>> component_panel(path, [("dwi", image)], None, [("layer 0", [("h0", image)])], image)
    PosixPath('...panel.png')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.plotting import (
    IMAGE_CMAP,
    LABEL,
    LABEL_CMAP,
    MAP_CMAP,
    MUTED,
    REFERENCE,
    SMALL,
    TINY,
    figure,
)

__all__ = ["ablation_figure", "axial_slice", "component_panel"]


def axial_slice(mask: np.ndarray | None, depth: int) -> int:
    """Index along the last axis with the largest area of ``mask`` (``depth // 2`` if empty).

    Examples::

        >>> mask = np.zeros((4, 4, 5), bool); mask[1:3, 1:3, 3] = True
        >>> axial_slice(mask, 5), axial_slice(None, 5)
        (3, 2)
    """
    if mask is None or not np.any(mask):
        return depth // 2
    area = np.asarray(mask).reshape(-1, mask.shape[-1]).sum(0)
    return int(area.argmax())


def _gray(ax: Any, image: np.ndarray) -> None:
    nonzero = image[image != 0]
    lo, hi = np.percentile(nonzero, (1, 99)) if nonzero.size else (0.0, 1.0)
    ax.imshow(np.rot90(image), cmap=IMAGE_CMAP, vmin=lo, vmax=hi if hi > lo else lo + 1)


def _off(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=SMALL)
    ax.axis("off")


def component_panel(
    path: Path,
    modalities: Sequence[tuple[str, np.ndarray]],
    truth: np.ndarray | None,
    layers: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
    background: np.ndarray,
    *,
    max_columns: int = 8,
    title: str = "",
) -> Path:
    """Draw a Fig. 6-style panel of 2D slices and write it atomically to ``path`` (PNG).

    Args:
        path: Output file.
        modalities: ``(name, slice)`` of every input channel.
        truth: Label map slice (integers, 0 = background), or ``None``.
        layers: ``(row title, [(component title, map slice), ...])`` per NMF layer; at most
            ``max_columns`` components of a layer are drawn, and a row that shows fewer than
            its layer has says so (``8 of 16 maps``).
        background: The slice the maps are overlaid on (usually the first modality).
        max_columns: Most images per row.
        title: Figure title.

    Every map is drawn relative to its own maximum in the slice (one colour bar, 0 to 1), so
    a weak component stays visible; the values themselves are in the NIfTI maps.
    """
    first = len(modalities) + (truth is not None)
    cols = max(first, min(max_columns, max((len(c) for _, c in layers), default=1)))
    rows = 1 + len(layers)
    if any(len(c) > cols for _, c in layers):
        title = f"{title}\n" if title else ""
        title += f"a row shows at most {cols} maps of its layer"
    with figure(path, (1.7 * cols, 1.9 * rows)) as fig:
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        _inputs(axes[0], modalities, truth, background)
        mappable = None
        for row, (name, components) in enumerate(layers, start=1):
            drawn = _layer_row(axes[row], name, list(components), background)
            mappable = drawn if drawn is not None else mappable
        if mappable is not None:
            bar = fig.colorbar(mappable, ax=axes[1:, :], shrink=0.6, aspect=30, pad=0.01)
            bar.set_label("map / its maximum in the slice", fontsize=SMALL)
            bar.ax.tick_params(labelsize=TINY)
        if title:
            fig.suptitle(title, fontsize=LABEL)  # a point smaller, as the panel's images are
    return Path(path)


def _inputs(
    row: Any,
    modalities: Sequence[tuple[str, np.ndarray]],
    truth: np.ndarray | None,
    background: np.ndarray,
) -> None:
    """The first row: every input channel, then the ground truth over ``background``."""
    for col, (name, image) in enumerate(modalities):
        _gray(row[col], image)
        _off(row[col], name)
    if truth is not None:
        ax = row[len(modalities)]
        _gray(ax, background)
        shown = np.ma.masked_equal(np.rot90(truth).astype(float), 0)
        ax.imshow(shown, cmap=LABEL_CMAP, vmin=0, vmax=9, interpolation="nearest")
        _off(ax, "ground truth")


def _layer_row(
    row: Any, name: str, components: list[tuple[str, np.ndarray]], background: np.ndarray
) -> Any:
    """One NMF layer's maps over ``background``, each relative to its maximum (at most as
    many as the row has columns, the title saying so); the last image drawn, or ``None``."""
    cols = len(row)
    if len(components) > cols:
        head, _, rest = name.partition("\n")
        name = f"{head} ({cols} of {len(components)} maps)" + (f"\n{rest}" if rest else "")
    mappable = None
    for col, (label, image) in enumerate(components[:cols]):
        ax = row[col]
        _gray(ax, background)
        peak = float(np.max(image)) if np.size(image) else 0.0
        shown = np.rot90(image) / (peak or 1.0)
        mappable = ax.imshow(shown, cmap=MAP_CMAP, alpha=0.7, vmin=0, vmax=1)
        _off(ax, f"{name}\n{label}" if col == 0 else label)
    return mappable


_PANELS = {
    "layers": ("(a) first NMF layers kept", "layers kept"),
    "remove": ("(b) one NMF layer removed", "layer removed"),
    "iters": ("(c) NMF iterations", "iterations T"),
    "rank": ("(d) NMF rank", "rank R"),
}


def ablation_figure(
    path: Path,
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    reference: Mapping[str, Any],
    *,
    title: str = "",
) -> Path:
    """Draw the four panels of Fig. 8 and write them atomically to ``path`` (PNG).

    Args:
        path: Output file.
        rows: Rows of each sweep (``layers``, ``remove``, ``iters``, ``rank``), each with
            ``value``, ``nmf_solver``, ``dice_mean`` and ``speedup`` (time of the unmodified
            model over the setting's, measured side by side); a sweep that was not run is left
            out (its panel says so).
        reference: The unmodified model's row.
        title: Figure title.

    Examples::

        >>> import tempfile
        >>> ref = {"dice_mean": 0.8, "speedup": 1.0}
        >>> rows = {"iters": [{"value": t, "nmf_solver": "hals", "dice_mean": 0.7 + t / 100,
        ...                    "speedup": 3 / t} for t in (1, 2, 3)]}
        >>> ablation_figure(Path(tempfile.mkdtemp()) / "fig8.png", rows, ref).name
        'fig8.png'
    """
    ref_dice = 100 * float(reference["dice_mean"])
    with figure(path, (9.5, 7)) as fig:
        axes = fig.subplots(2, 2)
        for ax, (sweep, (name, xlabel)) in zip(axes.flat, _PANELS.items(), strict=True):
            ax.set_title(name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean Dice (%)")
            found = list(rows.get(sweep, ()))
            if found:
                _sweep_panel(ax, sweep, found, ref_dice)
            else:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        if title:
            fig.suptitle(title)
    return Path(path)


def _sweep_panel(ax: Any, sweep: str, found: list[Mapping[str, Any]], ref_dice: float) -> None:
    """One sweep: mean Dice per value (one line per solver for the rank), the speed-up on a
    second axis, and the unmodified model as a dashed line."""
    timing = ax.twinx()
    timing.set_ylabel("speed-up (×)", color=MUTED)
    for solver, marker in (("hals", "o"), ("mu", "s")):
        own = sorted(
            (r for r in found if sweep != "rank" or r.get("nmf_solver") == solver),
            key=lambda r: int(r["value"]),
        )
        if not own or (sweep != "rank" and solver == "mu"):
            continue
        x = [int(r["value"]) for r in own]
        label = solver.upper() if sweep == "rank" else None
        ax.plot(x, [100 * float(r["dice_mean"]) for r in own], marker=marker, label=label)
        speedup = [float(r["speedup"]) for r in own]
        timing.plot(x, speedup, color=MUTED, linestyle=":", marker=marker, markersize=3)
    ax.axhline(ref_dice, color=REFERENCE, linestyle="--", label="unmodified")
    ax.set_xticks(sorted({int(r["value"]) for r in found}))
    ax.legend(loc="lower right")
