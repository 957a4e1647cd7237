"""Writing files so that no half-written output is ever seen under its final name.

Every file nmfseg writes (NIfTI predictions, checkpoints, configs, logs, reports, figures,
caches) goes through :func:`atomic_path`: the content is written to a temporary file in the
target's own folder, flushed to disk (``fsync``), then renamed over the target with
``os.replace``, which is atomic on POSIX and Windows. A run killed at any moment leaves
either the old file or the new one, never a part of one, and a failed write removes its
temporary file.

The temporary file is created like a plain ``open(path, "w")`` would create the target
(mode ``0o666`` less the process umask), so the renamed file has the permissions users of a
shared machine expect (not the ``0o600`` of :func:`tempfile.mkstemp`). Its name keeps the
target's ending (``.tmp-1a2b3c4d-case.nii.gz``), so libraries that choose a format from the
file name (nibabel, matplotlib) write the right one.

:class:`StagedFiles` extends this to a group of files that must appear together.

Examples::

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_json(folder / "a.json", {"x": 1})
    >>> read_json(folder / "a.json")
    {'x': 1}
    >>> with atomic_open(folder / "b.txt", "w") as fh:
    ...     _ = fh.write("hello")
    >>> sorted(p.name for p in folder.iterdir())
    ['a.json', 'b.txt']
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from nmfseg.errors import DataError

__all__ = [
    "StagedFiles",
    "atomic_open",
    "atomic_path",
    "read_json",
    "short_error",
    "write_bytes",
    "write_json",
    "write_text",
]

_TEMP_PREFIX = ".tmp-"


def short_error(err: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _new_temp(path: Path) -> Path:
    """Create an empty temporary file next to ``path`` (umask-respecting mode) and name it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` on success.

    The parent folder is created if needed. If the ``with`` block raises, the temporary file
    is removed and ``path`` is left as it was.

    Examples::

        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "scan.nii.gz"
        >>> with atomic_path(target) as tmp:
        ...     tmp.name.endswith("-scan.nii.gz"), target.exists()
        (True, False)
    """
    path = Path(path)
    tmp = _new_temp(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, atomically (see :func:`atomic_path`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file; mode should start with 'w', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (with a final newline) atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file.

    Raises:
        DataError: naming the file, if it is unreadable, not JSON or not an object.
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot read JSON ({short_error(err)})") from None
    if not isinstance(obj, dict):
        raise DataError(path, "must hold a JSON object")
    return obj


class StagedFiles:
    """Write several files in one folder so that either all of them appear or none does.

    Each file is written to a temporary name in the folder (:meth:`path`, :meth:`write_text`);
    :meth:`commit` renames them all into place; leaving the ``with`` block without a commit
    (e.g. on an error) deletes the temporary files.

    Examples::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with StagedFiles(folder) as staged:
        ...     staged.write_text("a.csv", "x\\n1\\n")
        ...     [p.name for p in staged.commit()]
        ['a.csv']
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._pending: list[tuple[Path, Path]] = []

    def path(self, name: str) -> Path:
        """A temporary path (same folder, same ending) that becomes ``folder/name``."""
        final = self.folder / name
        tmp = _new_temp(final)
        self._pending.append((tmp, final))
        return tmp

    def write_text(self, name: str, text: str) -> None:
        """Stage a UTF-8 text file."""
        self.path(name).write_text(text, encoding="utf-8")

    def commit(self) -> list[Path]:
        """Flush every staged file to disk, then rename them into place; the final paths."""
        for tmp, _ in self._pending:
            _fsync(tmp)
        done = []
        for tmp, final in self._pending:
            os.replace(tmp, final)
            done.append(final)
        self._pending = []
        return done

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending = []
