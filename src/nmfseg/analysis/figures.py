"""The figures of ``nmfseg explain`` (paper Fig. 6) and ``nmfseg ablate`` (paper Fig. 8).

- :func:`component_panel`: the input's modalities and ground truth in the first row, then one
  row per NMF layer with its components overlaid on the same axial slice through the lesion.
- :func:`ablation_figure`: the four inference-time ablations, mean Dice against (a) the
  number of first NMF layers kept, (b) the layer removed, (c) the iterations ``T`` and (d) the
  rank for HALS and MU, each with the unmodified model as a dashed reference line and the
  inference time per case on a second axis.

matplotlib is imported inside the functions: nothing else in nmfseg needs it.

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

from nmfseg.fileio import atomic_path

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
    ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)


def _off(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=7)
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
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    first = len(modalities) + (truth is not None)
    cols = max(first, min(max_columns, max((len(c) for _, c in layers), default=1)))
    rows = 1 + len(layers)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for col, (name, image) in enumerate(modalities):
        _gray(axes[0, col], image)
        _off(axes[0, col], name)
    if truth is not None:
        ax = axes[0, len(modalities)]
        _gray(ax, background)
        shown = np.ma.masked_equal(np.rot90(truth).astype(float), 0)
        ax.imshow(shown, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        _off(ax, "ground truth")
    mappable = None
    for row, (name, components) in enumerate(layers, start=1):
        components = list(components)
        if len(components) > cols:
            head, _, rest = name.partition("\n")
            name = f"{head} ({cols} of {len(components)} maps)" + (f"\n{rest}" if rest else "")
        for col, (label, image) in enumerate(components[:cols]):
            ax = axes[row, col]
            _gray(ax, background)
            peak = float(np.max(image)) if np.size(image) else 0.0
            shown = np.rot90(image) / (peak or 1.0)
            mappable = ax.imshow(shown, cmap="magma", alpha=0.7, vmin=0, vmax=1)
            _off(ax, f"{name}\n{label}" if col == 0 else label)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=axes[1:, :], shrink=0.6, aspect=30, pad=0.01)
        bar.set_label("map / its maximum in the slice", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if any(len(c) > cols for _, c in layers):
        title = f"{title}\n" if title else ""
        title += f"a row shows at most {cols} maps of its layer"
    _save(fig, path, title, fontsize=8)
    return Path(path)


def _save(fig: Any, path: str | Path, title: str | None, fontsize: int) -> None:
    """Title the figure, write it atomically, and free it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=fontsize)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


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
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    fig, axes = plt.subplots(2, 2, figsize=(9.5, 7), layout="constrained")
    ref_dice = 100 * float(reference["dice_mean"])
    for ax, (sweep, (name, xlabel)) in zip(axes.flat, _PANELS.items(), strict=True):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("mean Dice (%)", fontsize=8)
        found = list(rows.get(sweep, ()))
        if not found:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            continue
        timing = ax.twinx()
        timing.set_ylabel("speed-up (×)", fontsize=8, color="0.5")
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
            timing.plot(x, speedup, color="0.6", linestyle=":", marker=marker, markersize=3)
        ax.axhline(ref_dice, color="tab:green", linestyle="--", label="unmodified")
        ax.set_xticks(sorted({int(r["value"]) for r in found}))
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path, title, fontsize=9)
    return Path(path)
