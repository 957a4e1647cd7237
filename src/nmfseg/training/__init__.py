"""Training: the paper's recipe (§4.2, Appendix A) as a plain PyTorch loop.

============== ==============================================================
module         what it holds
============== ==============================================================
``config``     the YAML recipes (``nmfseg/configs/*.yaml``), overrides, validation
``losses``     soft Dice (squared denominator) + BCE over deep-supervision outputs
``data``       preprocessed case cache, the deterministic patch stream
``setup``      :func:`prepare_run`: every check before anything is written
``trainer``    :func:`run_training`: the loop, validation, checkpoints, resume, DDP
``checkpoint`` the checkpoint dict and :func:`load_model` (used by prediction)
``distributed`` ``torchrun`` / DDP process group
``progress``   ``log.csv`` and ``progress.png``
============== ==============================================================

Examples::

    >>> from nmfseg.training import load_model, prepare_run, run_training
    >>> callable(load_model) and callable(prepare_run) and callable(run_training)
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model", "prepare_run", "run_training"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing nmfseg.training.config does not pull in torch.
    if name == "load_model":
        from nmfseg.training.checkpoint import load_model

        return load_model
    if name == "prepare_run":
        from nmfseg.training.setup import prepare_run

        return prepare_run
    if name == "run_training":
        from nmfseg.training.trainer import run_training

        return run_training
    raise AttributeError(f"module 'nmfseg.training' has no attribute {name!r}")
