"""Shared CLI plumbing: one-line user errors and exit codes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


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
