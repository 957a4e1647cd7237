"""Shared CLI plumbing: one-line user errors and exit codes, and the shared vocabulary.

Every verb speaks the same words: ``-o/--out`` for what it writes, ``--format`` for a dataset
format, ``--folds`` for fold ids and ``--n-folds`` for a number of folds, ``--workers`` for a
number of worker processes. Older spellings (``--fmt``, ``--scheme``, ``--output``, ``split
--folds N``) are hidden aliases for one release (:func:`one_of`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

FORMAT_HELP = (
    "Dataset format: msd_brats, brats2021, brats2023, isles22, nnunet or any registered one "
    "(default: detected from the files)."
)


def handle_errors(fn: F) -> F:
    """Turn :class:`~nmfseg.errors.NmfsegError` into ``nmfseg: error: ...`` and exit 1.

    Every command is wrapped with this, so bad input never shows a traceback, whether
    the command is run from the shell or through ``typer.testing.CliRunner``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from nmfseg.errors import NmfsegError

        try:
            return fn(*args, **kwargs)
        except NmfsegError as err:
            typer.echo(f"nmfseg: error: {err}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("nmfseg: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def one_of(value: Any, old: Any, name: str, old_name: str) -> Any:
    """The value of option ``name``, or of its old spelling ``old_name`` (a hidden alias).

    Raises:
        ConfigError: Both are given with different values.

    Examples::

        >>> one_of(None, "isles22", "--format", "--fmt")
        'isles22'
    """
    from nmfseg.errors import ConfigError

    if old is None:
        return value
    if value is not None and value != old:
        raise ConfigError(f"{old_name} is the old spelling of {name}; give only {name}")
    return old
