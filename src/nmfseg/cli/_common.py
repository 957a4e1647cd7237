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


def os_error_line(err: OSError) -> str:
    """One line for an operating-system error: the path(s) and the system's words.

    Examples::

        >>> os_error_line(PermissionError(13, "Permission denied", "/data/run"))
        '/data/run: Permission denied'
        >>> os_error_line(OSError(28, "No space left on device"))
        'No space left on device'
    """
    what = err.strerror or str(err) or type(err).__name__
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return ": ".join([" -> ".join(paths), what] if paths else [what])


def handle_errors(fn: F) -> F:
    """Turn user errors into ``nmfseg: error: ...`` on stderr and exit 1.

    User errors are :class:`~nmfseg.errors.NmfsegError` (a bad file or option) and
    :class:`OSError` (a read-only folder, a full disk, a permission, too many open files: one
    line naming the path). Every command is wrapped with this, so bad input never shows a
    traceback, whether the command is run from the shell or through ``CliRunner``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from nmfseg.errors import NmfsegError

        try:
            return fn(*args, **kwargs)
        except NmfsegError as err:
            typer.echo(f"nmfseg: error: {err}", err=True)
            raise typer.Exit(1) from None
        except OSError as err:
            typer.echo(f"nmfseg: error: {os_error_line(err)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("nmfseg: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def check_format(fmt: str | None, option: str = "--format") -> str | None:
    """``fmt`` if it names a registered dataset format (or is None).

    Raises:
        ConfigError: Naming the option and listing the registered formats.
    """
    from nmfseg.data.formats import list_formats
    from nmfseg.errors import ConfigError

    if fmt is not None and fmt not in list_formats():
        raise ConfigError(
            f"{option} {fmt!r}: not a dataset format; choose from {', '.join(list_formats())}"
        )
    return fmt


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
