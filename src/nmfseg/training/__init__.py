"""Training: the paper's recipe (§4.2, Appendix A) as a plain PyTorch loop.

============== ==============================================================
module         what it holds
============== ==============================================================
``config``     the YAML recipes (``nmfseg/configs/*.yaml``), overrides, validation
``losses``     soft Dice (squared denominator) + BCE over deep-supervision outputs
``data``       preprocessed case cache, the deterministic patch stream
``setup``      :func:`prepare_run`: every check before anything is written
``trainer``    :func:`run_training`: the loop, validation, checkpoints, resume, DDP
``checkpoint`` the training part of a checkpoint, RNG state (reading: :mod:`nmfseg.models`)
``distributed`` ``torchrun`` / DDP process group
``progress``   ``log.csv`` and ``progress.png``
============== ==============================================================

Examples::

    >>> from nmfseg.training import prepare_run, run_training
    >>> callable(prepare_run) and callable(run_training)
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["prepare_run", "run_training"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing nmfseg.training.config does not pull in torch.
    if name == "prepare_run":
        from nmfseg.training.setup import prepare_run

        return prepare_run
    if name == "run_training":
        from nmfseg.training.trainer import run_training

        return run_training
    raise AttributeError(f"module 'nmfseg.training' has no attribute {name!r}")
