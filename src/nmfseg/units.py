"""Quantities as a person reads them: durations and sizes, in the unit that shows them.

Floor 0: imports nothing of nmfseg. Every message, estimate and report that shows a time or
a size goes through these two functions, so the units read the same everywhere.

Examples::

    >>> format_seconds(330), format_bytes(40_000)
    ('5.5 min', '39.1 KB')
"""

from __future__ import annotations

__all__ = ["format_bytes", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``0.42`` -> ``'0.4 s'``, ``42`` -> ``'42 s'``, ``330`` -> ``'5.5 min'``, ``9000`` ->
    ``'2.5 h'`` (a whole number of minutes drops its ``.0``).

    Examples::

        >>> [format_seconds(s) for s in (0.42, 42, 330, 600, 9000)]
        ['0.4 s', '42 s', '5.5 min', '10 min', '2.5 h']
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min".replace(".0 min", " min")
    return f"{seconds / 3600:.1f} h"


def format_bytes(n: int) -> str:
    """A size in the unit that shows it: bytes, KB, MB or GB.

    Examples::

        >>> [format_bytes(n) for n in (0, 900, 40_000, 3 << 20, 25 << 30)]
        ['0 bytes', '900 bytes', '39.1 KB', '3.0 MB', '25.0 GB']
    """
    if n < 1024:
        return f"{n} bytes"
    if n < 2**20:
        return f"{n / 1024:.1f} KB"
    if n < 10 * 2**30:
        return f"{n / 2**20:.1f} MB"
    return f"{n / 2**30:.1f} GB"
