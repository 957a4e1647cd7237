"""What the benchmark scripts share: timing, peak memory, the machine, results and tables.

The house rules of ``benchmarks/``, in one place:

- Times are medians over interleaved rounds (:func:`measure`: one run of every job per
  round), so a machine that gets busier slows every job alike and ratios stay meaningful;
  wall-clock and process-CPU time are both kept.
- Peak memory is measured in a fresh process per measurement (:func:`run_worker`): the
  peak resident size at the end (``VmHWM``, :func:`peak_rss_mb`) minus the resident size
  once the model and its input exist (:func:`rss_mb`).
- Every report names the machine (:func:`machine`) and the environment knobs that change
  CPU timings (:func:`environment`).
- With ``--out DIR`` a script writes ``NAME.md`` and ``NAME.csv`` (:func:`save_table`),
  atomically (:mod:`nmfseg.fileio`), and keeps its finished measurements in ``NAME.json``
  (:class:`Results`), so that an interrupted run resumes where it stopped.

Scripts import this module as ``_common`` (``python benchmarks/NAME.py`` puts
``benchmarks/`` on the path).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nmfseg.errors import DataError
from nmfseg.fileio import check_writable, read_json, write_json, write_text

Job = Callable[[], object]
#: Environment variables that change CPU timings; printed when set.
KNOBS = ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def rss_mb() -> float:
    """Resident size of this process now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident size of this process (``VmHWM``), in MB, since it started or since the
    last :func:`reset_peak_rss`.

    Not ``ru_maxrss``: in a process started by ``fork``/``exec`` that also holds the size of
    the process that started it (measured: 625 MB in a child of a 625 MB parent whose own
    peak was 9 MB), which hides every peak below the parent's size.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Restart :func:`peak_rss_mb` at the current resident size (``/proc/self/clear_refs``);
    ``False`` where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def limit_memory(gb: float) -> None:
    """Let this process allocate at most ``gb`` GB more address space than it holds now.

    An allocation beyond it fails with a ``RuntimeError``/``MemoryError`` in this process
    (reported as out of memory) instead of waking the kernel's OOM killer on a shared machine.
    """
    with open("/proc/self/statm") as f:
        held = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = held + int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def is_oom(err: BaseException) -> bool:
    """Whether an exception is an allocation failure.

    Examples::

        >>> is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
        True
        >>> is_oom(ValueError("bad shape"))
        False
    """
    text = str(err).lower()
    return isinstance(err, MemoryError) or "allocate memory" in text or "out of memory" in text


def environment() -> str:
    """The timing knobs that are set, as ``NAME=value, ...`` (``defaults`` if none)."""
    return ", ".join(f"{k}={os.environ[k]}" for k in KNOBS if k in os.environ) or "defaults"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the architecture where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> str:
    """One line naming the machine: CPU, cores, threads used, torch, load average."""
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, {threads} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; "
        f"environment: {environment()}"
    )


def measure(jobs: dict[Any, Job], repeats: int, warmup: int = 1) -> dict[Any, tuple[float, float]]:
    """Median wall-clock and process-CPU milliseconds of every job, interleaved.

    Each of ``warmup`` rounds and then ``repeats`` timed rounds runs every job once.

    Examples::

        >>> res = measure({"noop": lambda: None}, repeats=3)
        >>> sorted(res), len(res["noop"])
        (['noop'], 2)
    """
    wall: dict[Any, list[float]] = {k: [] for k in jobs}
    cpu: dict[Any, list[float]] = {k: [] for k in jobs}
    for _ in range(warmup):
        for fn in jobs.values():
            fn()
    for _ in range(repeats):
        for key, fn in jobs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[key].append((time.perf_counter() - w0) * 1e3)
            cpu[key].append((time.process_time() - c0) * 1e3)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in jobs}


def forward_jobs(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> dict[str, Job]:
    """``fwd`` (no autograd) and ``fwd+bwd`` (random output gradient) jobs for ``fn``.

    Examples::

        >>> jobs = forward_jobs(torch.nn.Linear(3, 2), torch.randn(4, 3))
        >>> sorted(jobs), jobs["fwd"]().shape
        (['fwd', 'fwd+bwd'], torch.Size([4, 2]))
    """
    leaf = x.clone().requires_grad_()
    with torch.no_grad():
        dy = torch.randn_like(fn(x))

    def fwd() -> object:
        with torch.no_grad():
            return fn(x)

    def fwd_bwd() -> object:
        fn(leaf).backward(dy)
        leaf.grad = None

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def run_worker(script: str, args: Sequence[str], threads: int) -> dict[str, Any]:
    """Run ``python SCRIPT ARGS`` in a fresh process with ``threads`` OpenMP/MKL threads.

    Returns:
        The JSON object the worker printed last, or ``{"error": ...}`` with the end of its
        stderr (``"killed (signal N)"`` when a signal, e.g. the OOM killer, ended it).
    """
    cmd = [sys.executable, script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode < 0:
        return {"error": f"killed (signal {-out.returncode}; out of memory?)"}
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-500:] or f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than two points).

    Examples::

        >>> round(loglog_slope([1, 2, 4], [3, 12, 48]), 6)
        2.0
    """
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y, strict=True) if a > 0 and b > 0]
    if len(pts) < 2:
        return math.nan
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else math.nan


def positive_int(text: str) -> int:
    """``argparse`` type of a count or a size: a whole number >= 1 (else one usage line).

    Examples::

        >>> positive_int("3")
        3
        >>> positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: '0' is not a whole number >= 1
    """
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def widths(text: str) -> tuple[int, ...]:
    """``argparse`` type of ``--channels``: comma-separated widths, each >= 1.

    Examples::

        >>> widths("8,16,32")
        (8, 16, 32)
        >>> widths("8,a")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: '8,a': give widths >= 1 separated by commas (8,16,32,64,128)
    """
    try:
        return tuple(positive_int(c.strip()) for c in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give widths >= 1 separated by commas (8,16,32,64,128)"
        ) from None


def check_out(parser: argparse.ArgumentParser, out: Path | None) -> None:
    """Refuse, in one usage line and before any timing, an ``--out`` folder that cannot be
    written (:func:`nmfseg.fileio.check_writable`)."""
    if out is not None:
        try:
            check_writable(out)
        except DataError as err:
            parser.error(f"--out: {err}")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> str:
    """A Markdown table.

    Args:
        header: Column names.
        rows: Cells, one sequence per row.
        align: One ``l`` (left) or ``r`` (right) per column; default: the first column
            left, the others right.

    Examples::

        >>> print(markdown_table(["model", "s"], [["a", 1.5]]))
        | model | s |
        | --- | ---: |
        | a | 1.5 |
    """
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def save_table(out: Path | None, name: str, text: str, records: Sequence[dict[str, Any]]) -> None:
    """Print the Markdown report ``text``; with ``out``, also write ``NAME.md`` and ``NAME.csv``.

    Args:
        out: Output folder (created if needed), or ``None`` for stdout only.
        name: File stem.
        text: The Markdown report (title, machine, table, notes).
        records: The raw measurements, one dict per CSV row (columns: every key, in the order
            they first appear; a missing value is an empty cell).
    """
    print(f"\n{text}\n", flush=True)
    if out is None or not records:
        return
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in records for k in r))
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    write_text(out / f"{name}.md", text + "\n")
    write_text(out / f"{name}.csv", buf.getvalue())
    print(f"wrote {out / name}.md and {out / name}.csv", file=sys.stderr)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (no exponent), or ``-`` for none.

    Examples::

        >>> fmt(0.012345), fmt(12.345), fmt(1234.7), fmt(None)
        ('0.0123', '12.3', '1235', '-')
    """
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 10 ** (digits - 1) else f"{value:.{digits}g}"


class Results:
    """Finished measurements of one benchmark, kept in ``OUT/NAME.json`` to resume a run.

    Measurements are stored under string keys as soon as they finish (atomically); a new run
    with the same ``settings`` reuses them, one with other settings (or ``fresh``) starts
    again. Without ``out`` nothing is kept.

    Examples::

        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> Results(out, "b", {"threads": 2}).put("x", 1.5)
        >>> Results(out, "b", {"threads": 2}).get("x"), Results(out, "b", {"threads": 1}).get("x")
        (1.5, None)
    """

    def __init__(
        self, out: Path | None, name: str, settings: dict[str, Any], fresh: bool = False
    ) -> None:
        self.path = out / f"{name}.json" if out is not None else None
        self.settings = json.loads(json.dumps(settings))
        self.data: dict[str, Any] = {}
        if self.path is not None and self.path.is_file() and not fresh:
            saved = read_json(self.path)
            if saved.get("settings") == self.settings:
                self.data = dict(saved.get("results", {}))
        self.reused = len(self.data)

    def get(self, key: str) -> Any:
        """The stored measurement ``key``, or ``None``."""
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        """Store a finished measurement (and write the file, when there is one)."""
        self.data[key] = value
        if self.path is not None:
            write_json(self.path, {"settings": self.settings, "results": self.data})


def progress(step: int, total: int, what: str) -> None:
    """One progress line on stderr: ``[step/total] what``."""
    print(f"[{step}/{total}] {what}", file=sys.stderr, flush=True)
