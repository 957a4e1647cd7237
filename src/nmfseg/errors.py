"""User-facing errors.

Anything a user can cause (a bad file, a bad option, a dataset that fails its checks)
is raised as :class:`NmfsegError` with one line that names the file or option and the
problem. The CLI prints that line and exits with status 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class NmfsegError(Exception):
    """An error caused by user input, reported as one line by the CLI."""


class DataError(NmfsegError):
    """A dataset, case or file that cannot be used as it is."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class ConfigError(NmfsegError):
    """A bad option, config value or model name."""
