"""Checks of constructor arguments shared by the networks (``ValueError`` naming the argument)."""

from __future__ import annotations

from nmfseg.nmf.windows import ntuple as int_tuple

__all__ = ["check_channels", "int_tuple"]


def check_channels(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive int.

    Examples::

        >>> check_channels(in_channels=4, out_channels=0)
        Traceback (most recent call last):
        ...
        ValueError: out_channels should be a positive int, got 0.
        >>> int_tuple(8, 3, "window_size")
        (8, 8, 8)
    """
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} should be a positive int, got {value!r}.")
