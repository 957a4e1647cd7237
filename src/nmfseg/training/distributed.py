"""Multi-GPU / multi-node training through ``torch.distributed`` (DDP).

``nmfseg train`` runs as one process, or as one process per GPU under ``torchrun``::

    torchrun --nproc_per_node 4 -m nmfseg train -d DATA -m swin_factorizer_brats -o runs
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 -m nmfseg train ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them (``env://``) and joins the process
group with NCCL on CUDA and Gloo on CPU. Each process drives one device
(``cuda:LOCAL_RANK``); the configured batch size is the global batch, split evenly over
the processes, and every process draws different patches (the sample index includes the
rank). Gradients are averaged by ``DistributedDataParallel``; rank 0 alone writes logs,
plots and checkpoints; validation cases are shared out over the ranks and their results
gathered on every rank.

Examples::

    >>> from nmfseg.training.distributed import init_distributed
    >>> ctx = init_distributed("cpu")   # no torchrun: a single process
    >>> ctx.world_size, ctx.rank, ctx.is_main, ctx.device.type
    (1, 0, True, 'cpu')
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nmfseg.device import resolve_device

__all__ = ["DistContext", "init_distributed", "is_main_process"]

# Validation or preprocessing on one rank can keep the others waiting at a barrier.
_TIMEOUT = datetime.timedelta(hours=4)


def is_main_process() -> bool:
    """Whether this process is rank 0 (or not part of a ``torchrun`` job)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class DistContext:
    """Where this process stands in a (possibly one-process) distributed run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op when alone)."""
        if self.is_distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        """Mean of a float over all ranks."""
        if not self.is_distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def close(self) -> None:
        """Leave the process group (if this process joined one)."""
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``None`` (CUDA when available).

    Returns:
        A :class:`DistContext`; a single process when ``WORLD_SIZE`` is unset or 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return DistContext(0, 1, 0, resolve_device(device, 0))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "timeout": _TIMEOUT}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistContext(rank, world_size, local_rank, dev)
