"""What a training run saves: the checkpoint dict's training part, atomically, and RNG state.

The layout of a checkpoint (``model_name``, ``model_kwargs``, ``model``, ``config``...) and
reading it back are :mod:`nmfseg.models.checkpoint`'s; training adds ``optimizer`` (AdamW),
``scheduler`` (warm-up + cosine), ``step``, ``rng`` (python / numpy / torch (/ CUDA) and the
data sampler's state), ``scheme``, ``nmfseg_version``, ``history`` (the logged rows),
``best_metric`` (best mean validation Dice so far) and ``threads`` (the compute threads its
steps ran on: bitwise resume needs the same count).

A fold folder holds ``checkpoint_last.pt`` (written every ``checkpoint_every`` steps, for
``--resume``), ``checkpoint_best.pt`` (best mean validation Dice) and
``checkpoint_final.pt`` (the end of training). Every file is written atomically
(:mod:`nmfseg.fileio`), so a run killed at any moment leaves either the previous or the new
checkpoint, never half of one.

Examples::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> fold = Path(tempfile.mkdtemp())
    >>> atomic_save({"step": 3, "w": torch.zeros(2)}, fold / "checkpoint_last.pt")
    >>> sorted(p.name for p in fold.iterdir())
    ['checkpoint_last.pt']
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmfseg.fileio import atomic_open

__all__ = ["atomic_save", "capture_rng_state", "restore_rng_state", "tensor_bytes"]


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list (about what ``torch.save`` writes).

    Examples::

        >>> tensor_bytes({"w": torch.zeros(4), "opt": [torch.zeros(2, dtype=torch.float64)]})
        32
    """
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically (:func:`nmfseg.fileio.atomic_open`); on a full
    disk the previous file is kept and the error says how much space the file needs."""
    with atomic_open(path, size_hint=tensor_bytes(obj)) as fh:
        torch.save(obj, fh)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states, in ``weights_only``-safe form."""
    key, state, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    rng: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {
            "key": key,
            "state": torch.from_numpy(np.asarray(state, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (keys that are absent are left alone)."""
    if "python" in rng:
        py = rng["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "numpy" in rng:
        npy = rng["numpy"]
        state = np.asarray(npy["state"].numpy(), dtype=np.uint32)
        np.random.set_state(
            (npy["key"], state, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
        )
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        states = rng["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
