"""What ``nmfseg ablate`` says about time: the estimate before the sweep, the timing noise,
and the fastest settings (``fastest.csv``, ``fastest.md``, the closing line).

A CPU shared with other work runs the same pass at very different speeds (ten-fold on a busy
machine), and the paired timing of :mod:`nmfseg.analysis.ablate` only cancels the drift that
is slow compared with one setting. The unmodified model is timed beside every setting, so the
spread of those reference times over the settings (:func:`timing_noise`: the ratio of their
90th to their 10th percentile) measures how far a speed-up can be noise; a setting whose
speed-up lies within it is not named as faster (:func:`fastest_line`).

Examples::

    >>> rows = [{"reference_seconds_per_case": s} for s in (1.0, 1.1, 0.9, 1.05)]
    >>> round(timing_noise(rows), 2)
    1.17
    >>> print(format_estimate(1800.0, settings=17, cases=2, repeats=1, pass_seconds=26.5))
    ... # doctest: +NORMALIZE_WHITESPACE
    about 30 min: 17 settings x 2 case(s) x 1 repeat(s), each pass beside one of the
    unmodified model (26 s per pass, measured)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.fileio import write_text
from nmfseg.units import format_seconds

__all__ = [
    "MIN_NOISE_ROWS",
    "TOLERANCE",
    "estimate_seconds",
    "fastest_line",
    "fastest_rows",
    "format_estimate",
    "timing_noise",
    "write_fastest",
]

#: Dice points (in [0, 1] units) a setting may lose and still count as "as good".
TOLERANCE = 0.01
#: Settings timed beside the unmodified model needed to measure the timing noise.
MIN_NOISE_ROWS = 3


def estimate_seconds(pass_seconds: float, settings: int, cases: int, repeats: int) -> float:
    """Time of a sweep: every setting passes over every case ``repeats`` times, each pass
    beside one of the unmodified model (the reference row itself: one pass).

    Examples::

        >>> estimate_seconds(10.0, settings=3, cases=2, repeats=1)  # reference + 2 settings
        100.0
    """
    passes = cases * repeats * max(2 * settings - 1, 0)
    return pass_seconds * passes


def format_estimate(
    seconds: float, settings: int, cases: int, repeats: int, pass_seconds: float
) -> str:
    """The one line printed before the sweep (see the module's example)."""
    return (
        f"about {format_seconds(seconds)}: {settings} settings x {cases} case(s) x {repeats} "
        f"repeat(s), each pass beside one of the unmodified model "
        f"({format_seconds(pass_seconds)} per pass, measured)"
    )


def timing_noise(rows: Sequence[dict[str, Any]]) -> float | None:
    """How much the unmodified model's own time varied over the settings it was timed beside:
    90th / 10th percentile of their ``reference_seconds_per_case`` (``None`` with fewer than
    :data:`MIN_NOISE_ROWS` such settings).

    Examples::

        >>> timing_noise([{"reference_seconds_per_case": 1.0}]) is None
        True
    """
    times = [
        float(r["reference_seconds_per_case"])
        for r in rows
        if not r.get("note") and r.get("reference_seconds_per_case") not in (None, "")
    ]
    times = [t for t in times if t > 0]
    if len(times) < MIN_NOISE_ROWS:
        return None
    lo, hi = np.percentile(times, (10, 90))
    return float(hi / lo)


def fastest_rows(reference: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows within :data:`TOLERANCE` of the reference's mean Dice, fastest first."""
    floor = float(reference["dice_mean"]) - TOLERANCE
    good = [r for r in (reference, *rows) if not r.get("note") and float(r["dice_mean"]) >= floor]
    good = [{**r, "speedup": float(r["speedup"])} for r in good]
    return sorted(good, key=lambda r: -r["speedup"])


def beyond_noise(row: dict[str, Any], noise: float | None) -> bool:
    """A speed-up above 1 that the timing noise cannot explain (unknown noise: above 1)."""
    speedup = float(row.get("speedup", 1.0))
    return speedup > 1.0 and (noise is None or speedup > noise)


def fastest_line(fastest: Sequence[dict[str, Any]], reference: dict[str, Any],
                 noise: float | None) -> str:  # fmt: skip
    """The closing line: the fastest setting within one Dice point, or that none is faster
    beyond the timing noise.

    Examples::

        >>> ref = {"key": "reference", "dice_mean": "0.8", "speedup": 1.0}
        >>> fast = [{"key": "keep=2", "options": "--nmf-layers 0,1", "speedup": 3.27,
        ...          "dice_mean": "0.795"}, ref]
        >>> print(fastest_line(fast, ref, 10.0))  # doctest: +NORMALIZE_WHITESPACE
        no setting within 1 Dice point is faster beyond the timing noise: the unmodified
        model's own time varied 10.0x between settings, and the fastest measured, keep=2
        (3.27x), is within it; rerun on an idle machine (or with more --repeats)
        >>> print(fastest_line(fast, ref, 1.1))  # doctest: +NORMALIZE_WHITESPACE
        fastest within 1 Dice point of the unmodified model: keep=2 (--nmf-layers 0,1),
        3.27x (timing noise 1.10x), mean Dice 79.5 vs 80.0
    """
    best = fastest[0] if fastest else reference
    if not beyond_noise(best, noise):
        if best.get("key") == reference.get("key") or float(best.get("speedup", 1.0)) <= 1.0:
            return "no setting within 1 Dice point is faster than the unmodified model"
        return (
            "no setting within 1 Dice point is faster beyond the timing noise: the unmodified "
            f"model's own time varied {noise:.1f}x between settings, and the fastest measured, "
            f"{best['key']} ({float(best['speedup']):.2f}x), is within it; rerun on an idle "
            "machine (or with more --repeats)"
        )
    spread = f" (timing noise {noise:.2f}x)" if noise is not None else ""
    return (
        f"fastest within 1 Dice point of the unmodified model: {best['key']} "
        f"({best.get('options') or 'no options'}), {float(best['speedup']):.2f}x{spread}, "
        f"mean Dice {100 * float(best['dice_mean']):.1f} vs "
        f"{100 * float(reference['dice_mean']):.1f}"
    )


def _text(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else "" if value is None else value


def write_fastest(
    out: Path,
    fastest: Sequence[dict[str, Any]],
    reference: dict[str, Any],
    regions: Sequence[str],
    repeats: int,
    noise: float | None,
) -> None:
    """``fastest.csv`` and ``fastest.md``: the rows of :func:`fastest_rows`, with whether
    each speed-up is beyond the timing noise."""
    dice = [f"dice_{r}" for r in regions]
    fields = ["key", "options", "dice_mean", *dice, "seconds_per_case"]
    fields += ["reference_seconds_per_case", "speedup", "beyond_noise"]
    rows = [{**r, "beyond_noise": "yes" if beyond_noise(r, noise) else "no"} for r in fastest]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _text(row.get(k)) for k in fields})
    write_text(out / "fastest.csv", buffer.getvalue())
    if noise is None:
        spread = (
            f"The timing noise was not measured (fewer than {MIN_NOISE_ROWS} settings timed "
            "beside the unmodified model)."
        )
    else:
        spread = (
            f"The unmodified model's own time varied {noise:.2f}x between settings (90th / "
            "10th percentile): a speed-up below that is timing noise, not a faster setting."
        )
    lines = [
        f"# Fastest settings within {100 * TOLERANCE:.0f} Dice point of the unmodified model",
        "",
        f"Unmodified: mean Dice {100 * float(reference['dice_mean']):.2f}%, "
        f"{float(reference['seconds_per_case']):.3g} s per case. Each setting's passes over a "
        "case alternate with passes of the unmodified model, each keeping the fastest of "
        f"{repeats}; the speed-up is the ratio of the two, measured side by side. {spread}",
        "",
        f"**{fastest_line(fastest, reference, noise)}.**",
        "",
        "| setting | nmfseg predict options | mean Dice (%) | "
        + " | ".join(regions)
        + " | s / case | unmodified, s / case | speed-up | beyond noise |",
        "| --- | --- | --- | " + " | ".join("---" for _ in regions) + " | --- | --- | --- | --- |",
    ]
    for row in rows:
        per = " | ".join(f"{100 * float(row[k]):.2f}" for k in dice)
        lines.append(
            f"| {row['key']} | `{row.get('options') or '(none)'}` | "
            f"{100 * float(row['dice_mean']):.2f} | {per} | "
            f"{float(row['seconds_per_case']):.3g} | "
            f"{float(row['reference_seconds_per_case']):.3g} | "
            f"{row['speedup']:.2f}x | {row['beyond_noise']} |"
        )
    write_text(out / "fastest.md", "\n".join(lines) + "\n")
