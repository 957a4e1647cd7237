"""Checkpoints: what a training run saves, and how any later stage rebuilds the network.

A checkpoint is one ``torch.save`` file holding a plain dict (only tensors, numbers,
strings, lists and dicts, so it loads with ``torch.load(..., weights_only=True)``):

=================  ==================================================================
``model_name``     registry name of the network (``nmfseg.create_model(model_name, ...)``)
``model_kwargs``   keyword arguments that rebuild it (incl. ``in_channels``/``out_channels``)
``model``          ``state_dict`` of the network (never of a DDP / compiled wrapper)
``optimizer``      ``state_dict`` of AdamW
``scheduler``      ``state_dict`` of the warm-up + cosine LR schedule
``step``           optimizer steps done
``rng``            python / numpy / torch (/ CUDA) RNG states and the data sampler's state
``config``         the resolved training config (patch size, dataset format, scheme name,
                   channels, regions, fold, ...), as saved in ``config.yaml``
``scheme``         name of the dataset's label scheme
``nmfseg_version`` version of nmfseg that wrote it
``history``        logged rows (loss, LR, validation Dice) so far
``best_metric``    best mean validation Dice so far (``None`` before the first validation)
=================  ==================================================================

A fold folder holds ``checkpoint_last.pt`` (written every ``checkpoint_every`` steps, for
``--resume``), ``checkpoint_best.pt`` (best mean validation Dice) and
``checkpoint_final.pt`` (the end of training). Every file is written atomically: to a
temporary file in the same folder, flushed to disk, then renamed over the old one, so a
run killed at any moment leaves either the previous or the new checkpoint, never half of
one.

Examples::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nmfseg.training.checkpoint import atomic_save, find_checkpoint
    >>> fold = Path(tempfile.mkdtemp())
    >>> atomic_save({"step": 3, "w": torch.zeros(2)}, fold / "checkpoint_last.pt")
    >>> find_checkpoint(fold).name
    'checkpoint_last.pt'
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmfseg.errors import DataError
from nmfseg.fileio import atomic_open

__all__ = [
    "CHECKPOINT_NAMES",
    "atomic_save",
    "capture_rng_state",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "restore_rng_state",
]

# Preference order of load_model on a fold folder.
CHECKPOINT_NAMES = ("checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_last.pt")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically (:func:`nmfseg.fileio.atomic_open`)."""
    with atomic_open(path) as fh:
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


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names, or the preferred one in a fold folder.

    In a folder the order of preference is ``checkpoint_final.pt`` (a finished run), then
    ``checkpoint_best.pt`` (best validation Dice), then ``checkpoint_last.pt`` (a run
    still going or stopped early).

    Raises:
        DataError: ``path`` does not exist, or the folder holds no checkpoint.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "no such checkpoint file or fold folder")
    for name in CHECKPOINT_NAMES:
        if (path / name).is_file():
            return path / name
    raise DataError(
        path, f"no checkpoint in this folder (looked for {', '.join(CHECKPOINT_NAMES)})"
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (``weights_only``, tensors mapped to ``device``).

    Raises:
        DataError: the file cannot be read or is not an nmfseg checkpoint.
    """
    path = find_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # corrupt, truncated, or not a torch file
        raise DataError(path, f"cannot load checkpoint ({type(err).__name__})") from None
    missing = [k for k in ("model_name", "model_kwargs", "model", "config") if k not in ckpt]
    if not isinstance(ckpt, dict) or missing:
        raise DataError(path, f"not an nmfseg checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_model(
    path_or_fold_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a checkpoint (or of a fold folder) in ``eval()`` mode.

    Works for any registered network: the checkpoint names it and holds the keyword
    arguments it was built with. For a folder, the checkpoint is picked as in
    :func:`find_checkpoint` (final, then best, then last).

    Args:
        path_or_fold_dir: a ``checkpoint_*.pt`` file or a ``fold_K`` folder.
        device: where to put the network.

    Returns:
        ``(model, config)``: the network on ``device`` in ``eval()`` mode, and the resolved
        training config (``config["patch_size"]``, ``config["dataset"]["scheme"]``,
        ``config["dataset"]["channels"]``, ``config["dataset"]["regions"]``, ...).

    Raises:
        DataError: no checkpoint, unreadable file, or a network this version does not know.
    """
    from nmfseg.models import _registry

    path = find_checkpoint(path_or_fold_dir)
    ckpt = load_checkpoint(path, device="cpu")
    name = ckpt["model_name"]
    if name not in _registry.list_models():
        raise DataError(path, f"network {name!r} is not registered in this nmfseg version")
    model = _registry.create_model(name, **dict(ckpt["model_kwargs"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(path, f"weights do not fit network {name!r} ({first})") from None
    model.to(device).eval()
    return model, ckpt["config"]
