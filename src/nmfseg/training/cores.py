"""How a training process shares the CPU's cores between compute threads and data workers.

On the CPU the network's forward and backward and the DataLoader workers that cut and
augment the patches run on the same cores. Left alone, torch computes on one thread per core
and the workers come on top: on two cores, two compute threads and two workers. OpenMP's
threads wait for each other (spinning) at the end of every parallel region, so a thread
pushed off its core by a worker holds back all the others, and the run slows down far more
than the workers' share of the work. :func:`share_cores` is the policy, a pure function of
the cores, the device, the training processes on the machine and what the user fixed:

- **Data workers** (``workers: null``, the default). On the CPU: one per
  :data:`CORES_PER_WORKER` cores of the process, at least 1 and at most :data:`MAX_WORKERS`.
  On CUDA: the process's cores, at least 1 and at most 4 (the GPU computes, the CPU only
  feeds it). ``--workers N`` sets the number.
- **Compute threads** on the CPU: the process's cores, less one for every worker after the
  first, at least 1; or ``OMP_NUM_THREADS`` when it is set, as it is. On CUDA torch's own
  count is left alone.
- **DDP**: the cores are first divided among the training processes of the machine
  (``LOCAL_WORLD_SIZE``), on the CPU and on CUDA. ``torchrun`` sets ``OMP_NUM_THREADS=1`` in
  each of its processes unless it is set already; set it to choose another count.

Why the first worker takes no core: a worker is busy only while it makes the next batch
(reading memory-mapped patches, and a resampling or a smoothing in 15% of the samples each), a
tenth of a training step on the CPU, where a 3D network's forward and backward take seconds;
charging it a whole core would take a compute thread from a 2- or 3-core machine for that
tenth. Measured on the 2-core Intel VM (``benchmarks/train_threads.sh``, the demo's Swin
Factorizer, seconds per step over steps 20–60, two runs of one each): 2 threads + 1 worker
0.994 / 1.279, + 0 workers 1.118 / 1.196, + 2 workers 1.127 / 1.208 — the splits are within
the machine's noise of each other, so the default keeps one worker beside a thread on every
core (the demo's documented setting). From 4 cores on, one worker per 4 cores keeps the queue
full as steps get shorter, and every worker after the first takes a core from the compute
threads. Only the 2-core point is measured; tune :data:`CORES_PER_WORKER` when more are.

What ``nmfseg train`` does to torch: :meth:`nmfseg.training.trainer.Trainer.fit` sets
``torch.set_num_threads`` to the share's compute threads for the run (CPU only) and sets the
caller's count back when it returns; each DataLoader worker computes on one thread
(:func:`worker_init`). Exact resume is bitwise at the same number of threads: on the CPU it
follows the workers, so resume with the same ``--workers`` (or fix ``OMP_NUM_THREADS``).
Every checkpoint records the threads its steps computed on (``threads``); a run resumed on
another count says so in one line (:func:`thread_change`). A run begun before nmfseg shared
the cores computed on torch's count (one thread per core, beside its workers) and recorded
none: resume it with ``OMP_NUM_THREADS`` set to that count (the line says it), or with
``--workers 0`` (every core computes).

Examples::

    >>> str(share_cores(2, "cpu"))
    'cpu: 2 compute threads + 1 data worker (2 cores)'
    >>> str(share_cores(8, "cpu"))
    'cpu: 7 compute threads + 2 data workers (8 cores)'
    >>> str(share_cores(8, "cuda"))
    'cuda: 4 data workers (8 cores)'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from nmfseg.text import is_number

__all__ = [
    "CORES_PER_WORKER",
    "MAX_WORKERS",
    "CoreShare",
    "cores_available",
    "omp_threads",
    "share_cores",
    "share_cores_here",
    "thread_change",
    "worker_init",
]

#: On the CPU, one default DataLoader worker per this many cores of a process (module docstring).
CORES_PER_WORKER = 4
#: The most DataLoader workers a process gets by default, on any device.
MAX_WORKERS = 4


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class CoreShare:
    """How one training process uses the cores of its machine.

    Attributes:
        device: the device type, ``"cpu"`` or ``"cuda"``.
        workers: DataLoader worker processes.
        threads: torch's intra-op threads on the CPU; ``None`` on CUDA (torch's own count).
        cores: the cores of the machine the training processes may use.
        processes: training processes on the machine sharing those cores.
        fixed: ``threads`` is the user's (``OMP_NUM_THREADS``), not the policy's.

    Examples::

        >>> share = share_cores(16, "cpu", processes=2)
        >>> share.threads, share.workers
        (7, 2)
        >>> str(share)
        'cpu: 7 compute threads + 2 data workers per process (2 processes on 16 cores)'
        >>> str(share_cores(4, "cpu", threads=1))
        'cpu: 1 compute thread (OMP_NUM_THREADS) + 1 data worker (4 cores)'
    """

    device: str
    workers: int
    threads: int | None
    cores: int
    processes: int = 1
    fixed: bool = False

    def __str__(self) -> str:
        """The line ``nmfseg train`` starts with, e.g. ``cpu: 1 compute thread + 1 data worker``."""
        parts = [_count(self.workers, "data worker")]
        if self.threads is not None:
            fixed = " (OMP_NUM_THREADS)" if self.fixed else ""
            parts.insert(0, _count(self.threads, "compute thread") + fixed)
        where = _count(self.cores, "core")
        if self.processes > 1:
            parts[-1] += " per process"
            where = f"{self.processes} processes on {where}"
        return f"{self.device}: {' + '.join(parts)} ({where})"

    @contextlib.contextmanager
    def applied(self) -> Iterator[CoreShare]:
        """Compute on :attr:`threads` intra-op threads inside the ``with`` block, then on the
        caller's count again (nothing changes on CUDA).

        Examples::

            >>> before = torch.get_num_threads()
            >>> with share_cores(3, "cpu", threads=1).applied():
            ...     torch.get_num_threads()
            1
            >>> torch.get_num_threads() == before
            True
        """
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            yield self
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def share_cores(
    cores: int,
    device: str = "cpu",
    processes: int = 1,
    workers: int | None = None,
    threads: int | None = None,
) -> CoreShare:
    """The policy: a training process's compute threads and data workers (module docstring).

    Args:
        cores: cores of the machine the training processes may use.
        device: ``"cpu"`` or ``"cuda"`` (a device type).
        processes: training processes on the machine (DDP), sharing the cores evenly (on
            the CPU and on CUDA).
        workers: the config's ``workers``; ``None`` is the default for the device.
        threads: intra-op threads the user fixed (``OMP_NUM_THREADS``); ``None``: the policy's.

    Raises:
        ValueError: a count below its minimum, or a device other than cpu and cuda.

    Examples::

        >>> [share_cores(n, "cpu").workers for n in (1, 2, 3, 4, 8, 16, 64)]
        [1, 1, 1, 1, 2, 4, 4]
        >>> [share_cores(n, "cpu").threads for n in (1, 2, 3, 4, 8, 16, 64)]
        [1, 2, 3, 4, 7, 13, 61]
        >>> s = share_cores(2, "cpu", workers=2)  # workers given: still at least one thread
        >>> s.threads, s.workers
        (1, 2)
        >>> [share_cores(n, "cuda").workers for n in (1, 2, 8)]
        [1, 2, 4]
        >>> [share_cores(16, "cuda", processes=p).workers for p in (1, 2, 8, 32)]
        [4, 4, 2, 1]
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if cores < 1 or processes < 1 or (workers or 0) < 0 or (threads is not None and threads < 1):
        raise ValueError(
            f"need cores >= 1, processes >= 1, workers >= 0 and threads >= 1; got {cores}, "
            f"{processes}, {workers} and {threads}"
        )
    mine = max(1, cores // processes)  # this process's cores, at least one
    if device == "cuda":
        count = min(MAX_WORKERS, mine) if workers is None else workers
        return CoreShare(device, count, None, cores, processes)
    if workers is None:
        workers = max(1, min(MAX_WORKERS, mine // CORES_PER_WORKER))
    fixed = threads is not None
    threads = threads if threads is not None else max(1, mine - max(0, workers - 1))
    return CoreShare(device, workers, threads, cores, processes, fixed)


def cores_available() -> int:
    """The cores this process may run on (``os.sched_getaffinity``: ``taskset`` and cpusets
    count; a CPU quota does not), else every core of the machine.

    Examples::

        >>> cores_available() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def omp_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """The threads ``OMP_NUM_THREADS`` asks for (its first level), or ``None`` when it is
    unset or not a positive integer (torch ignores it then too).

    Examples::

        >>> omp_threads({"OMP_NUM_THREADS": "3"}), omp_threads({"OMP_NUM_THREADS": "4,2"})
        (3, 4)
        >>> [omp_threads({"OMP_NUM_THREADS": t}) for t in ("", "0", "x", "²")], omp_threads({})
        ([None, None, None, None], None)
    """
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    return _positive(text.split(",")[0])


def _positive(text: str) -> int | None:
    """``text`` as a positive integer written in ASCII digits (as OpenMP and torchrun read
    them), else ``None``; ``"²"`` is a digit to :meth:`str.isdigit` but not to :func:`int`."""
    text = text.strip()
    if not is_number(text):
        return None
    return int(text) or None


def share_cores_here(
    device: torch.device | str, workers: int | None = None, world_size: int = 1
) -> CoreShare:
    """:func:`share_cores` for this process: the cores it may use
    (:func:`cores_available`), the training processes on this machine (``LOCAL_WORLD_SIZE``,
    which ``torchrun`` sets, else ``world_size``) and ``OMP_NUM_THREADS``.

    Args:
        device: the device the process trains on.
        workers: the config's ``workers`` (``None``: the default).
        world_size: the processes of the run (all machines).

    Examples::

        >>> share_cores_here("cpu", workers=0).workers
        0
    """
    processes = _positive(os.environ.get("LOCAL_WORLD_SIZE", "")) or max(1, world_size)
    kind = torch.device(device).type
    return share_cores(cores_available(), kind, processes, workers, omp_threads())


def thread_change(recorded: int | None, threads: int, before: int) -> str | None:
    """The line a resumed CPU run says when it computes on another number of threads than
    its checkpoint's steps did (bitwise resume needs the same count), else ``None``.

    Args:
        recorded: the checkpoint's ``threads``; ``None`` for a run of an nmfseg that did not
            record them, which computed on torch's count (``before``).
        threads: the threads this session computes on.
        before: torch's count in this process before the run set its own.

    Examples::

        >>> thread_change(2, 2, 1) is None
        True
        >>> print(thread_change(None, 1, 2))  # doctest: +NORMALIZE_WHITESPACE
        resumed on 1 compute thread, but the run's steps so far computed on 2 (torch's count;
        its checkpoint does not record them): not bitwise an uninterrupted run; set
        OMP_NUM_THREADS=2 to continue on 2
    """
    ran = before if recorded is None else recorded
    if ran == threads:
        return None
    how = " (torch's count; its checkpoint does not record them)" if recorded is None else ""
    return (
        f"resumed on {_count(threads, 'compute thread')}, but the run's steps so far computed "
        f"on {ran}{how}: not bitwise an uninterrupted run; set OMP_NUM_THREADS={ran} to "
        f"continue on {ran}"
    )


def worker_init(worker_id: int) -> None:
    """DataLoader worker setup: one intra-op thread per worker (the workers run in parallel
    beside the compute threads; :func:`share_cores` counts each worker after the first as one
    core)."""
    del worker_id
    torch.set_num_threads(1)
