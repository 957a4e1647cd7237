"""Checks of constructor arguments shared by the networks (``ValueError`` naming the argument).

:func:`ntuple` (one int, or one per spatial axis) is the NMF core's
(:func:`nmfseg.nmf.windows.ntuple`), re-exported here with the other checks; ``int_tuple``
is its old name (deprecated).
"""

from __future__ import annotations

import warnings
from typing import Any

from nmfseg.nmf.windows import ntuple

__all__ = [
    "check_deep_supervision",
    "check_dropout",
    "check_heads",
    "check_positive",
    "ntuple",
]

_RENAMED = {"int_tuple": "ntuple"}  # old name -> new name, kept one release


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(
            f"nmfseg.layers.args.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive int.

    Examples::

        >>> check_positive(in_channels=4, out_channels=0)
        Traceback (most recent call last):
        ...
        ValueError: out_channels should be a positive int, got 0.
        >>> ntuple(8, 3, "window_size")
        (8, 8, 8)
    """
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} should be a positive int, got {value!r}.")


def check_dropout(**values: float) -> None:
    """Raise ``ValueError`` naming the first probability that is not in ``[0, 1)``.

    Examples::

        >>> check_dropout(dropout=0.1, drop_path=1.0)
        Traceback (most recent call last):
        ...
        ValueError: drop_path should be in [0, 1), got 1.0.
    """
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} should be in [0, 1), got {value!r}.")


def check_deep_supervision(
    deep_supervision: bool, deep_supr_num: int, levels: int, unit: str = "levels"
) -> int:
    """The number of output heads of a U-shaped network of ``levels`` resolutions
    (``1 + deep_supr_num`` with deep supervision, else 1), after checking both arguments:
    the lowest-resolution output is at most one level above the bridge.

    Raises:
        ValueError: ``deep_supervision`` is not a bool, or ``deep_supr_num`` is not an int in
            ``[1, levels - 2]`` while ``deep_supervision`` is on.

    Examples::

        >>> check_deep_supervision(True, 2, levels=5), check_deep_supervision(False, 9, levels=5)
        (3, 1)
        >>> check_deep_supervision(True, 3, levels=4, unit="stages")
        Traceback (most recent call last):
        ...
        ValueError: deep_supr_num should be an int in [1, 2] for 4 stages, got 3.
    """
    if not isinstance(deep_supervision, bool):
        raise ValueError(f"deep_supervision should be True or False, got {deep_supervision!r}.")
    if not deep_supervision:
        return 1
    if not (isinstance(deep_supr_num, int) and 1 <= deep_supr_num <= levels - 2):
        raise ValueError(
            f"deep_supr_num should be an int in [1, {levels - 2}] for {levels} {unit}, "
            f"got {deep_supr_num!r}."
        )
    return 1 + deep_supr_num


def check_heads(num_heads: int, channels: int) -> None:
    """Raise ``ValueError`` unless ``num_heads`` is a positive int dividing ``channels``.

    Examples::

        >>> check_heads(3, channels=16)
        Traceback (most recent call last):
        ...
        ValueError: num_heads should be a positive int dividing channels=16, got 3.
    """
    if not isinstance(num_heads, int) or num_heads < 1 or channels % num_heads:
        raise ValueError(
            f"num_heads should be a positive int dividing channels={channels}, got {num_heads!r}."
        )
