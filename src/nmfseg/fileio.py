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

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from nmfseg.errors import DataError
from nmfseg.units import format_bytes

__all__ = [
    "StagedFiles",
    "atomic_open",
    "atomic_path",
    "check_writable",
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
    """Create an empty temporary file next to ``path`` (umask-respecting mode) and name it.

    Raises:
        DataError: Naming ``path`` (not the temporary file) when its folder cannot be
            created or written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _create_temp(path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _no_space(path, path) from None
        raise DataError(path, f"cannot write the file here: {_os_words(err)}") from None


def _create_temp(path: Path) -> Path:
    """Create an empty temporary file next to ``path``; OSError as the system raises it."""
    while True:
        tmp = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _os_words(err: OSError) -> str:
    """``folder: Permission denied``: the system's words, naming the folder or file that
    refused (a temporary file's name is replaced by its folder's)."""
    where = err.filename
    if where is not None and Path(str(where)).name.startswith(_TEMP_PREFIX):
        where = Path(str(where)).parent
    words = err.strerror or str(err) or type(err).__name__
    return f"{where}: {words}" if where is not None else words


def _write_failed(path: Path, tmp: Path, err: OSError, size_hint: int | None = None) -> DataError:
    """One line naming ``path`` (never ``tmp``) for a failed write of its new content."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return _no_space(path, tmp, size_hint, quota=err.errno == errno.EDQUOT)
    if err.errno == errno.EISDIR or path.is_dir():
        return DataError(path, "is a folder; cannot write a file in its place")
    return DataError(path, f"cannot write the file: {_os_words(err)}")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _no_space(
    path: Path, tmp: Path, size_hint: int | None = None, quota: bool = False
) -> DataError:
    """The one line for a full disk (or quota): how much the file needed (``size_hint``, else
    what had been written: at least that) and how much is free; the old file is still there.

    Examples::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> print(_no_space(folder / "m.onnx", folder / "tmp", 3 << 20))  # doctest: +ELLIPSIS
        /.../m.onnx: No space left on device: the file needs about 3.0 MB; ... free
    """
    try:
        written = tmp.stat().st_size if tmp != path else 0
    except OSError:
        written = 0
    free = None if quota else _free_bytes(path.parent)
    if size_hint:
        need = f"needs about {format_bytes(size_hint)}"
    else:
        need = f"needs more than {format_bytes(written)}" if written else "could not be written"
    room = (
        ""
        if free is None
        else "; the disk is full"
        if free < 1024
        else f"; {format_bytes(free)} free"
    )
    kept = "; the previous file is kept" if path.exists() else ""
    what = "Disk quota exceeded" if quota else "No space left on device"
    return DataError(path, f"{what}: the file {need}{room}{kept}")


def check_writable(path: str | Path, need_bytes: int = 0, what: str = "output") -> None:
    """Check, before any expensive work, that ``path`` (a folder, created later if need be)
    can be written to and has roughly ``need_bytes`` free; nothing is created.

    Raises:
        DataError: Naming ``path``: a parent that is a file, no permission, a read-only file
            system, or too little free space.

    Examples::

        >>> import tempfile
        >>> check_writable(Path(tempfile.mkdtemp()) / "new" / "run")
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "file").touch()
        >>> check_writable(folder / "file" / "run")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nmfseg.errors.DataError: .../file/run: cannot write the output here: .../file is a file
    """
    path = Path(path).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise DataError(path, f"cannot write the {what} here: {existing} is a file")
    try:  # a real probe: permissions, read-only file systems, quotas, root or not
        os.unlink(_create_temp(existing / "write-probe"))
    except OSError as err:
        raise DataError(
            path, f"cannot write the {what} here: {existing}: {err.strerror or err}"
        ) from None
    free = _free_bytes(existing)
    if need_bytes and free is not None and free < need_bytes:
        raise DataError(
            path,
            f"not enough space for the {what}: about {format_bytes(need_bytes)} needed, "
            f"{format_bytes(free)} free",
        )


def _about(err: OSError, tmp: Path) -> bool:
    """Whether ``err`` is the failed write of ``tmp`` (or a full disk while writing it)."""
    names = {str(err.filename), str(err.filename2)}
    return err.errno in (errno.ENOSPC, errno.EDQUOT) or str(tmp) in names


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, size_hint: int | None = None) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` on success.

    The parent folder is created if needed. If the ``with`` block raises, the temporary file
    is removed and ``path`` is left as it was; a full disk is one
    :class:`~nmfseg.errors.DataError` naming the file, the space it needs (``size_hint``
    bytes, when the caller knows) and the space that is free.

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
    except OSError as err:
        if _about(err, tmp):
            raise _write_failed(path, tmp, err, size_hint) from None
        raise
    finally:
        with contextlib.suppress(OSError):  # never mask the error that got us here
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", size_hint: int | None = None, **kwargs: Any
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, atomically (see :func:`atomic_path`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file; mode should start with 'w', got {mode!r}")
    with atomic_path(path, size_hint) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", size_hint=len(data)) as fh:
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

    Each file is written to a temporary name in the folder (:meth:`path`, :meth:`write_text`,
    :meth:`write_bytes`); :meth:`commit` renames them all into place, and if one rename
    fails, the files already renamed are put back as they were (the previous versions, or
    none); leaving the ``with`` block without a commit (e.g. on an error) deletes the
    temporary files. Errors name the final files, never the temporary ones.

    Examples::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with StagedFiles(folder) as staged:
        ...     staged.write_text("a.csv", "x\\n1\\n")
        ...     staged.write_bytes("a.bin", b"1")
        ...     [p.name for p in staged.commit()]
        ['a.csv', 'a.bin']
        >>> (folder / "b.json").mkdir()  # a folder where a file should go: nothing changes
        >>> with StagedFiles(folder) as staged:  # doctest: +ELLIPSIS
        ...     staged.write_text("a.csv", "new")
        ...     staged.write_text("b.json", "{}")
        ...     staged.commit()
        Traceback (most recent call last):
        ...
        nmfseg.errors.DataError: .../b.json: is a folder; cannot write a file in its place
        >>> (folder / "a.csv").read_text(), sorted(p.name for p in folder.iterdir())
        ('x\\n1\\n', ['a.bin', 'a.csv', 'b.json'])
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._pending: list[tuple[Path, Path]] = []
        self._sizes: dict[Path, int] = {}

    def path(self, name: str) -> Path:
        """A temporary path (same folder, same ending) that becomes ``folder/name``."""
        final = self.folder / name
        tmp = _new_temp(final)
        self._pending.append((tmp, final))
        return tmp

    def write_bytes(self, name: str, data: bytes) -> None:
        """Stage a file; a full disk is one line naming ``folder/name`` and its size."""
        tmp = self.path(name)
        self._sizes[tmp] = len(data)
        try:
            tmp.write_bytes(data)
        except OSError as err:
            raise _write_failed(self.folder / name, tmp, err, len(data)) from None

    def write_text(self, name: str, text: str) -> None:
        """Stage a UTF-8 text file."""
        self.write_bytes(name, text.encode("utf-8"))

    def commit(self) -> list[Path]:
        """Flush every staged file to disk, then rename them into place; the final paths.

        Raises:
            DataError: Naming the file that could not be written (full disk, a folder in
                its place, no permission); every final file is then as it was before.
        """
        for tmp, final in self._pending:
            try:
                _fsync(tmp)
            except OSError as err:
                raise _write_failed(final, tmp, err, self._sizes.get(tmp)) from None
        done: list[tuple[Path, Path | None]] = []  # (final, its previous version kept aside)
        try:
            for tmp, final in self._pending:
                old = _keep_aside(final)
                try:
                    os.replace(tmp, final)
                except OSError as err:
                    if old is not None:
                        old.unlink(missing_ok=True)
                    raise _write_failed(final, tmp, err) from None
                done.append((final, old))
        except BaseException:
            for final, old in reversed(done):  # undo: the previous versions, or nothing
                with contextlib.suppress(OSError):
                    if old is not None:
                        os.replace(old, final)
                    else:
                        final.unlink()
            raise
        for _, old in done:
            if old is not None:
                with contextlib.suppress(OSError):
                    old.unlink()
        self._pending = []
        return [final for final, _ in done]

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self._pending = []


def _keep_aside(final: Path) -> Path | None:
    """A hard link (else a copy) of an existing file ``final``, to put back if a group of
    renames fails; ``None`` when there is no file."""
    if not final.is_file():
        return None
    aside = final.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex[:8]}-old-{final.name}")
    try:
        os.link(final, aside)
    except OSError:
        try:
            shutil.copy2(final, aside)
        except OSError as err:
            raise _write_failed(final, aside, err) from None
    return aside
