"""The one style of every figure nmfseg draws: fonts, colours, sizes, and how it is written.

Every figure (``nmfseg evaluate``/``compare`` box plots, ``explain``'s component panel,
``ablate``'s Fig. 8, the demo's overlays) is drawn inside :func:`figure`: matplotlib's
object API on an Agg canvas (no pyplot, no global backend switched, no display needed), the
rcParams of :data:`STYLE` in force while it is drawn, then written atomically at
:data:`DPI`. The sizes a caller still names (a dense panel's small titles, a colour bar's
ticks) and the colours come from the constants here, never from a number in the plot.

matplotlib is imported inside the functions: importing this module costs nothing.

Examples::

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "line.png"
    >>> with figure(path, (3, 2)) as fig:
    ...     ax = fig.subplots()
    ...     _ = ax.plot([0, 1], [1, 0], label="a")
    ...     _ = ax.set_title("one style")
    >>> path.stat().st_size > 0, ax.title.get_fontsize() == TITLE
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from nmfseg.fileio import atomic_path

__all__ = [
    "COLOURS",
    "DPI",
    "IMAGE_CMAP",
    "LABEL",
    "LABEL_CMAP",
    "MAP_CMAP",
    "MUTED",
    "REFERENCE",
    "REGION_COLOURS",
    "SMALL",
    "STYLE",
    "TINY",
    "TITLE",
    "figure",
    "style",
]

#: Resolution every figure is written at.
DPI = 110

#: Font sizes (points): titles, axis labels and text, dense panels and legends, colour-bar ticks.
TITLE, LABEL, SMALL, TINY = 9, 8, 7, 6

#: One colour per model or series, in order (the box plots' and the line plots' cycle).
COLOURS = (
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
)
#: Contour colours of the BraTS regions (WT is drawn first, so nested regions stay visible).
REGION_COLOURS = {"WT": "#3cc43c", "TC": "#e8412c", "ET": "#ffe119"}
#: A reference drawn beside the data (the unmodified model in Fig. 8).
REFERENCE = "tab:green"
#: What is secondary (a second axis, a note).
MUTED = "0.5"
#: Colour maps: images, NMF component maps, label maps (0 masked out).
IMAGE_CMAP, MAP_CMAP, LABEL_CMAP = "gray", "magma", "tab10"

#: The rcParams in force while a figure is drawn.
STYLE: dict[str, Any] = {
    "font.size": LABEL,
    "axes.titlesize": TITLE,
    "axes.labelsize": LABEL,
    "xtick.labelsize": SMALL,
    "ytick.labelsize": SMALL,
    "legend.fontsize": SMALL,
    "figure.titlesize": TITLE,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}


@contextmanager
def style() -> Iterator[None]:
    """:data:`STYLE` in force for a ``with`` block (and the colour cycle of
    :data:`COLOURS`), restored after it."""
    import matplotlib as mpl  # heavy: only when a figure is drawn

    with mpl.rc_context({**STYLE, "axes.prop_cycle": mpl.cycler(color=COLOURS)}):
        yield


@contextmanager
def figure(
    path: str | Path | IO[bytes], size: tuple[float, float], *, layout: str | None = "constrained"
) -> Iterator[Any]:
    """A new figure of ``size`` inches in the one style, written to ``path`` (PNG) when the
    ``with`` block ends without an error.

    Args:
        path: The file, written atomically, or a binary file object.
        size: Width and height in inches.
        layout: matplotlib's layout engine (``"constrained"``, ``"tight"``, or ``None`` for a
            caller that lays the figure out itself).

    Yields:
        The :class:`matplotlib.figure.Figure`, on an Agg canvas.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with style():
        fig = Figure(figsize=size, dpi=DPI, layout=layout)
        FigureCanvasAgg(fig)
        yield fig
        if isinstance(path, str | Path):
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=DPI)
        else:
            fig.savefig(path, format="png", dpi=DPI)
