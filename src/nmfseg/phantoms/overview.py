"""The overview figure of a phantom dataset: every channel and the labels of a few cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.plotting import figure

__all__ = ["save_overview"]


def save_overview(
    path: str | Path,
    slices: Sequence[tuple[str, int, np.ndarray, np.ndarray]],
    channels: Sequence[str],
    labels: dict[int, tuple[str, str]],
    window: tuple[float, float] | None = None,
) -> Path:
    """Save a figure of axial slices: every channel plus a label overlay per case.

    Args:
        path: The PNG to write (atomically).
        slices: ``(case_id, z, image (C, X, Y), label (X, Y))`` per row; labels in
            internal codes.
        channels: Channel names (column titles).
        labels: Internal code -> ``(name, colour)``.
        window: Display range of every channel (e.g. CT's brain window ``(0, 80)`` HU);
            None shows 0 to the 99.5th percentile of each slice's positive values (MRI).

    Returns:
        The path written.
    """
    path = Path(path)
    size = (2.3 * (len(channels) + 1), 2.5 * len(slices) + 0.4)
    with figure(path, size, layout=None) as fig:  # the one style
        _draw_overview(fig, slices, channels, labels, window)
    return path


def _draw_overview(fig: Any, slices: Sequence[Any], channels: Sequence[str],
                   labels: dict[int, tuple[str, str]], window: Any) -> None:  # fmt: skip
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ncols = len(channels) + 1
    codes = sorted(labels)
    cmap = ListedColormap([labels[c][1] for c in codes])
    lut = np.zeros(max(codes) + 1, dtype=float)
    lut[codes] = np.arange(len(codes))
    axes = fig.subplots(len(slices), ncols, squeeze=False)
    for row, (case_id, z, image, label) in zip(axes, slices, strict=True):
        for c, ax in enumerate(row):
            chan = image[min(c, len(channels) - 1) if c < len(channels) else 0]
            if window is None:
                nz = chan[chan > 0]
                vmin, vmax = 0.0, float(np.percentile(nz, 99.5)) if nz.size else 1.0
            else:
                vmin, vmax = window
            ax.imshow(chan.T, origin="lower", cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(channels):
                ax.set_title(channels[c])
            else:
                ax.set_title("labels on " + channels[0])
                shown = np.ma.masked_where(label.T == 0, lut[label.T])
                ax.imshow(
                    shown,
                    origin="lower",
                    cmap=cmap,
                    vmin=-0.5,
                    vmax=len(codes) - 0.5,
                    alpha=0.55,
                    interpolation="nearest",
                )
        empty = "" if label.any() else " (no lesion)"
        row[0].set_ylabel(f"{case_id}\nz={z}{empty}")
    fig.legend(
        handles=[Patch(color=labels[c][1], label=labels[c][0]) for c in codes],
        loc="lower center",
        ncol=len(codes),
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.35 / (2.5 * len(slices) + 0.4), 1, 1))
