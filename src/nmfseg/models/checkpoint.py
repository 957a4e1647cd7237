"""Checkpoint files: finding them, reading them, upgrading old ones, loading their weights.

A checkpoint is one ``torch.save`` file holding a plain dict (only tensors, numbers,
strings, lists and dicts, so it loads with ``torch.load(..., weights_only=True)``):

=====================  ==============================================================
``model_name``         registry name of the network (``nmfseg.create_model(model_name)``)
``model_kwargs``       keyword arguments that rebuild it (incl. ``in_channels``/``out_channels``)
``model``              ``state_dict`` of the network (never of a DDP / compiled wrapper)
``config``             the resolved training config (patch size, dataset, scheme, fold...)
``checkpoint_format``  :data:`CHECKPOINT_FORMAT` (absent in files of nmfseg 0.1)
=====================  ==============================================================

plus, from training, ``optimizer``, ``scheduler``, ``step``, ``rng``, ``scheme``,
``nmfseg_version``, ``history``, ``best_metric`` and ``threads``
(:mod:`nmfseg.training.checkpoint`).

Files written by earlier versions are upgraded in memory when read
(:func:`upgrade_checkpoint`), so every trained model keeps loading.

Examples::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> fold = Path(tempfile.mkdtemp())
    >>> torch.save({"step": 3}, fold / "checkpoint_last.pt")
    >>> find_checkpoint(fold).name
    'checkpoint_last.pt'
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import read_json, short_error

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAMES",
    "check_checkpoint_kind",
    "check_not_onnx",
    "find_checkpoint",
    "load_weights",
    "read_checkpoint",
    "read_weights",
    "upgrade_checkpoint",
]

#: Version of the checkpoint layout; bumped (with an upgrade step) when it changes.
CHECKPOINT_FORMAT = 2
#: The checkpoints a fold folder holds (``--checkpoint``), in :func:`find_checkpoint`'s order
#: of preference, and their file names.
CHECKPOINTS = ("final", "best", "last")
CHECKPOINT_NAMES = tuple(f"checkpoint_{kind}.pt" for kind in CHECKPOINTS)
_SUFFIXES = (".pt", ".pth")
_REQUIRED = ("model_name", "model_kwargs", "model", "config")
_RENAMED = {"segresnet": "segresnet_brats"}  # network names of format 1


def check_not_onnx(path: str | Path) -> None:
    """Refuse an exported ONNX model (or a folder holding only one) where a trained run is
    expected, saying what it is and what to do: give the run it came from, or predict with it.

    Raises:
        DataError: Naming ``path``, and the checkpoint it was exported from when its sidecar
            (``model.json`` beside ``model.onnx``) says.

    Examples::

        >>> import tempfile
        >>> onnx = Path(tempfile.mkdtemp()) / "model.onnx"
        >>> onnx.touch()
        >>> check_not_onnx(onnx)
        Traceback (most recent call last):
        ...
        nmfseg.errors.DataError: ...model.onnx: an ONNX model (nmfseg export), not a trained ...
    """
    path = Path(path)
    if path.is_dir() and not any(path.glob("checkpoint_*")) and not any(path.glob("fold_*")):
        found = sorted(path.glob("*.onnx"))
        path = found[0] if len(found) == 1 else path
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return
    source = None
    if path.with_suffix(".json").is_file():
        try:
            source = read_json(path.with_suffix(".json"))["source"]["checkpoint"]
        except (DataError, KeyError, TypeError):
            source = None
    run = f"the run it was exported from ({source})" if source else "the run it was exported from"
    raise DataError(
        path,
        f"an ONNX model (nmfseg export), not a trained run: give {run}, or predict with "
        "--engine onnxruntime (nmfseg predict)",
    )


def check_checkpoint_kind(checkpoint: str) -> None:
    """Refuse a ``--checkpoint`` that is not one of :data:`CHECKPOINTS`.

    Examples::

        >>> check_checkpoint_kind("best")
        >>> check_checkpoint_kind("latest")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --checkpoint 'latest': choose one of final, best, last
    """
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint {checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")


def find_checkpoint(path: str | Path, checkpoint: str | None = None) -> Path:
    """The checkpoint file ``path`` names, or the one ``checkpoint`` names in a fold folder.

    Without ``checkpoint`` the order of preference in a folder is ``checkpoint_final.pt`` (a
    finished run), then ``checkpoint_best.pt`` (best validation Dice), then
    ``checkpoint_last.pt`` (a run still going or stopped early); with it (``final``, ``best``
    or ``last``), that one (``.pt``, or ``.pth``).

    Raises:
        ConfigError: ``checkpoint`` is not one of :data:`CHECKPOINTS`.
        DataError: ``path`` does not exist, is an ONNX model (:func:`check_not_onnx`), or the
            folder holds no such checkpoint (the message lists the ones it holds).
    """
    if checkpoint is not None:
        check_checkpoint_kind(checkpoint)
    path = Path(path)
    check_not_onnx(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "no such checkpoint file or fold folder")
    kinds = CHECKPOINTS if checkpoint is None else (checkpoint,)
    for kind in kinds:
        for suffix in _SUFFIXES:
            if (path / f"checkpoint_{kind}{suffix}").is_file():
                return path / f"checkpoint_{kind}{suffix}"
    found = sorted(p.name for p in path.glob("checkpoint_*") if p.suffix in _SUFFIXES)
    if checkpoint is None:
        looked = ", ".join(CHECKPOINT_NAMES)
        raise DataError(path, f"no checkpoint in this folder (looked for {looked})")
    if not found:
        raise DataError(path, "no checkpoint_*.pt files and no fold_K folders")
    hint = " (training not finished?)" if checkpoint == "final" else ""
    raise DataError(
        path,
        f"no checkpoint_{checkpoint}.pt{hint}; available: {', '.join(found)}; choose one "
        "with --checkpoint",
    )


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or not a torch file
        raise DataError(path, f"cannot load checkpoint ({type(err).__name__})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an nmfseg checkpoint (``weights_only``, on the CPU), upgraded to this version.

    ``path`` may also be a fold folder (see :func:`find_checkpoint`).

    Raises:
        DataError: The file cannot be read or is not an nmfseg checkpoint.
    """
    path = find_checkpoint(path)
    ckpt = _load(path)
    missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise DataError(path, f"not an nmfseg checkpoint (missing {', '.join(missing)})")
    return upgrade_checkpoint(ckpt)


def read_weights(path: str | Path) -> dict[str, Any]:
    """An nmfseg checkpoint (upgraded, as :func:`read_checkpoint`) or a bare ``state_dict``.

    Raises:
        DataError: The file cannot be read or holds neither.
    """
    path = find_checkpoint(path)
    obj = _load(path)
    if isinstance(obj, dict) and all(k in obj for k in _REQUIRED):
        return upgrade_checkpoint(obj)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise DataError(path, "neither an nmfseg checkpoint nor a state_dict of tensors")


def _upgrade_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """0.1 network arguments -> 2: ``patch_size`` (the matricize window) -> ``window_size``;
    ``deep_supervision`` as a number of heads -> a bool and ``deep_supr_num``."""
    kwargs = dict(kwargs)
    if "patch_size" in kwargs and "window_size" not in kwargs:
        kwargs["window_size"] = kwargs.pop("patch_size")
    heads = kwargs.get("deep_supervision")
    if type(heads) is int:  # a bool is the new form
        kwargs["deep_supervision"] = heads > 1
        if heads > 1:
            kwargs["deep_supr_num"] = heads - 1
    return kwargs


def _upgrade_sections(config: dict[str, Any]) -> None:
    """0.1 config sections -> 2, in place: the dataset under ``data`` -> ``dataset``, the
    label scheme at the top -> ``dataset.scheme``, the patch under ``data`` or ``training``
    -> ``patch_size`` at the top."""
    if not isinstance(config.get("dataset"), dict) and isinstance(config.get("data"), dict):
        config["dataset"] = config.pop("data")
    if "scheme" in config and isinstance(config.get("dataset", {}), dict):
        config.setdefault("dataset", {}).setdefault("scheme", config.pop("scheme"))
    for section in ("dataset", "training"):
        sub = config.get(section)
        if config.get("patch_size") is None and isinstance(sub, dict) and "patch_size" in sub:
            config["patch_size"] = sub["patch_size"]


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A copy of a checkpoint dict in the current layout (:data:`CHECKPOINT_FORMAT`).

    Format 1 (nmfseg 0.1) to 2: the network arguments of :func:`_upgrade_kwargs` (in
    ``model_kwargs``, ``config.model.kwargs`` and ``config.model_args``), the weights of a
    block's token mixer moved from ``*.block.nmf.*`` to ``*.block.mixer.*``, and the network
    ``segresnet`` is now ``segresnet_brats`` (a ``segresnet_isles`` preset was added), and
    the config's sections of :func:`_upgrade_sections` (readers read only the current one).

    Examples::

        >>> old = {"model_kwargs": {"patch_size": 4, "deep_supervision": 1},
        ...        "model": {"encoder.0.block.nmf.in_proj.weight": 0}, "config": {}}
        >>> new = upgrade_checkpoint(old)
        >>> new["model_kwargs"], list(new["model"])
        ({'deep_supervision': False, 'window_size': 4}, ['encoder.0.block.mixer.in_proj.weight'])
    """
    ckpt = dict(ckpt)
    if int(ckpt.get("checkpoint_format", 1)) < 2:
        ckpt["model_kwargs"] = _upgrade_kwargs(ckpt.get("model_kwargs", {}))
        config = copy.deepcopy(ckpt.get("config", {}))
        if isinstance(config.get("model"), dict) and isinstance(
            config["model"].get("kwargs"), dict
        ):
            config["model"]["kwargs"] = _upgrade_kwargs(config["model"]["kwargs"])
        if isinstance(config.get("model_args"), dict):
            config["model_args"] = _upgrade_kwargs(config["model_args"])
        _upgrade_sections(config)
        ckpt["config"] = config
        ckpt["model"] = {
            k.replace(".block.nmf.", ".block.mixer."): v for k, v in ckpt.get("model", {}).items()
        }
    ckpt["checkpoint_format"] = CHECKPOINT_FORMAT
    return ckpt


def load_weights(model: nn.Module, source: dict[str, Any], where: str | Path) -> None:
    """Load the weights of ``source`` (an nmfseg checkpoint dict or a bare ``state_dict``).

    Raises:
        DataError: Naming ``where``, if the weights do not fit the network.
    """
    state = source["model"] if "model_name" in source and "model" in source else source
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        name = getattr(getattr(model, "model_config", None), "name", type(model).__name__)
        raise DataError(
            where, f"weights do not fit network {name!r} ({short_error(err)})"
        ) from None
