"""Shared CLI plumbing: one-line user errors and exit codes, and the shared vocabulary.

Every verb speaks the same words, one per thing:

- ``-m/--model NAME``: a registered network (``train``, ``complexity``, ``demo``,
  ``nnunet-plans``; ``study -m/--models`` takes several);
- ``-r/--run RUN``: a trained run, what ``train -o`` made: its run folder, a fold folder, a
  checkpoint file, or the results root when it holds one run (``predict``, ``explain``,
  ``ablate``, ``postprocess-search``, ``export``; ``predict --engine onnxruntime``: the
  exported ``.onnx``);
- ``-d/--data DATA_DIR``: a dataset folder (``check-data``, ``split``, ``train``, ``study``,
  ``ablate``, ``postprocess-search``, ``evaluate``'s ground truth; ``nnunet-plans``: the
  nnU-Net dataset, nnU-Net's ``-d``);
- ``-i/--input``: the images ``predict`` and ``explain`` segment, a dataset folder or one
  case (nnU-Net's ``-i``; not ``-d``, which is always a whole dataset);
- ``-o/--out`` for what a verb writes, ``--format`` for a dataset format, ``--fold K`` for
  one fold and ``--folds LIST`` for several (one grammar, :func:`nmfseg.text.parse_folds`:
  ``0-4,6``, ``all`` is the ``fold_all`` model), ``--n-folds`` for a number of folds,
  ``--workers`` for a number of worker processes.

Older spellings are hidden aliases (:func:`one_of`): ``--fmt``, ``--scheme``, ``--output``,
``split --folds N``, the positional ``DATA_DIR`` (``check-data``, ``split``, ``train``,
``study``) and ``DATASET`` (``nnunet-plans``), ``evaluate --gt``, ``export``'s positional
``RUN_DIR``, and ``-m/--model`` where it named a trained run (``predict``, ``explain``,
``ablate``, ``postprocess-search``): there it still means the run, never a network name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from nmfseg.text import is_number

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


#: Smaller settings that need less memory, per verb (what a memory error suggests).
_PREDICTING = "--sw-batch-size 1 or a lower --nmf-rank (the trained one, 1, is the cheapest)"
_SMALLER = {
    "train": "a smaller --batch-size or --patch-size, or a narrower network "
    "(--model-arg channels=16,32,64,128,256)",
    "study": "a smaller --set batch_size=N or --patch-size, or narrower networks "
    "(--model-arg MODEL:channels=...)",
    **dict.fromkeys(("predict", "explain", "ablate", "export", "postprocess-search"), _PREDICTING),
}
_MEMORY_WORDS = ("out of memory", "not enough memory", "can't allocate memory",
                 "cannot allocate memory", "unable to allocate")  # fmt: skip


def memory_error_line(err: BaseException, verb: str) -> str | None:
    """One line for an allocation failure (torch's ``OutOfMemoryError``, a ``RuntimeError``
    of the CPU allocator, NumPy's ``MemoryError``), naming the verb, what was asked for and
    smaller settings; ``None`` for any other error.

    Examples::

        >>> print(memory_error_line(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. "
        ...     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 95367431640 "
        ...     "bytes. Error code 12 (Cannot allocate memory)"), "predict"))
        predict ran out of memory (it asked for 88.8 GiB); try --sw-batch-size 1 or a lower
        --nmf-rank (the trained one, 1, is the cheapest)
        >>> memory_error_line(RuntimeError("shape mismatch"), "predict") is None
        True
    """
    text = str(err)
    oom = type(err).__name__ == "OutOfMemoryError" or isinstance(err, MemoryError)
    if not (oom or any(w in text.lower() for w in _MEMORY_WORDS)):
        return None
    asked = re.search(r"(?i)tried to allocate (\d+) bytes", text)
    if asked:
        size = f"{int(asked[1]) / 2**30:.1f} GiB"
    else:
        found = re.search(r"(?i)allocate ([\d.]+ [KMGTP]i?B)", text)
        size = found[1] if found else ""
    what = f" (it asked for {size})" if size else ""
    smaller = _SMALLER.get(verb, "smaller inputs or settings")
    return f"{verb} ran out of memory{what}; try {smaller}"


def handle_errors(fn: F) -> F:
    """Turn user errors into ``nmfseg: error: ...`` on stderr and exit 1.

    User errors are :class:`~nmfseg.errors.NmfsegError` (a bad file or option),
    :class:`OSError` (a read-only folder, a full disk, a permission, too many open files: one
    line naming the path) and allocation failures (settings too large for the memory:
    :func:`memory_error_line`). Every command is wrapped with this, so bad input never shows
    a traceback, whether the command is run from the shell or through ``CliRunner``.
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
        except (RuntimeError, MemoryError) as err:
            line = memory_error_line(err, fn.__name__.replace("_", "-"))
            if line is None:
                raise
            typer.echo(f"nmfseg: error: {line}", err=True)
            raise typer.Exit(1) from None

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


def one_of(value: Any, old: Any, name: str, old_name: str, required: str | None = None) -> Any:
    """The value of option ``name``, or of its old spelling ``old_name`` (a hidden alias).

    Args:
        required: What the option names, when one of the two must be given (a required
            option cannot be declared so to typer while its old spelling is another one).

    Raises:
        ConfigError: Both are given with different values, or neither is and it is required.

    Examples::

        >>> one_of(None, "isles22", "--format", "--fmt")
        'isles22'
        >>> one_of(None, None, "-r/--run", "-m/--model", required="the trained run")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: -r/--run is required: the trained run
    """
    from nmfseg.errors import ConfigError

    if old is None:
        if value is None and required is not None:
            raise ConfigError(f"{name} is required: {required}")
        return value
    if value is not None and value != old:
        raise ConfigError(f"{old_name} is the old spelling of {name}; give only {name}")
    return old


def one_fold(run: Path, fold: int | str | None, checkpoint: str, verb: str) -> Path:
    """The checkpoint of one fold of ``run`` (:func:`~nmfseg.analysis.runs.fold_checkpoint`);
    when the run has more folds, a note on stderr says which one is ``verb`` (e.g.
    ``exporting``) and how to choose another."""
    from nmfseg.analysis.runs import fold_checkpoint

    path, others = fold_checkpoint(run, fold, checkpoint)
    if others:
        typer.echo(
            f"note: {verb} {path.parent.name} of {run} ({len(others)} more fold(s); "
            "choose one with --fold)",
            err=True,
        )
    return path


def parse_number(
    text: str, option: str, kind: type = int, minimum: float = 0, exclusive: bool = False
) -> Any:
    """The value of a numeric option: an integer (digits only) or a float, ``>= minimum``
    (``> minimum`` if ``exclusive``).

    Raises:
        ConfigError: Naming the option and what it must be.

    Examples::

        >>> parse_number("3", "--repeats", minimum=1), parse_number("1e-3", "--min-gain", float)
        (3, 0.001)
        >>> parse_number("0", "--tolerance", float, exclusive=True)
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --tolerance '0': must be a number > 0
    """
    from nmfseg.errors import ConfigError

    text = str(text).strip()
    try:
        if kind is int and not is_number(text):
            raise ValueError
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not (value > minimum if exclusive else value >= minimum):  # NaN fails
        what = "an integer" if kind is int else "a number"
        raise ConfigError(
            f"{option} {text!r}: must be {what} {'>' if exclusive else '>='} {minimum:g}"
        )
    return value


def key_value(text: str, option: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of a repeatable option (``--set``, ``--model-arg``), the value parsed.

    Examples::

        >>> key_value("channels=8,16,32", "--model-arg")
        ('channels', [8, 16, 32])
    """
    from nmfseg.errors import ConfigError
    from nmfseg.training.config import parse_value

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} {text!r}: expected KEY=VALUE")
    return key.strip(), parse_value(value, f"{option} {key.strip()}")
