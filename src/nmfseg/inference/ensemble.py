"""Trained models for prediction: find the checkpoints, load the folds, predict one case.

``-m`` of ``nmfseg predict`` may name, like nnU-Net:

- a run folder ``RUN_DIR/<dataset>/<model>`` holding ``fold_K`` folders: the folds given
  by ``folds`` are ensembled (default: every ``fold_K`` that exists);
- one fold folder ``.../fold_K`` holding ``checkpoint_{final,best,last}.pt``;
- one checkpoint file;
- an nnU-Net v2 results folder of an nmfseg trainer (or one of its folds or checkpoints),
  read by :mod:`nmfseg.inference.nnunet_results`.

The ensemble's probability is the mean of the folds' probabilities (each itself the mean
over flips when TTA is on).

Examples::

    >>> import numpy as np, torch
    >>> from nmfseg.inference.ensemble import predict_case
    >>> models = [torch.nn.Conv3d(2, 3, 1), torch.nn.Conv3d(2, 3, 1)]
    >>> image = np.zeros((2, 12, 10, 9), np.float32)
    >>> image[:, 2:9, 1:8, 3:7] = np.random.default_rng(0).random((2, 7, 7, 4)) + 1
    >>> predict_case(models, image, patch_size=(8, 8, 8)).shape
    (3, 12, 10, 9)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmfseg.data.normalization import Preprocessing
from nmfseg.data.preprocess import preprocess_case, restore, uncrop
from nmfseg.data.schemes import SCHEMES, DatasetScheme
from nmfseg.device import resolve_device
from nmfseg.errors import ConfigError, DataError
from nmfseg.inference.nnunet_results import find_nnunet_results, load_nnunet_folds
from nmfseg.inference.sliding_window import sliding_window_predict
from nmfseg.models import load_model
from nmfseg.models.checkpoint import (
    CHECKPOINTS,
    check_checkpoint_kind,
    check_not_onnx,
    find_checkpoint,
)

__all__ = [
    "CHECKPOINTS",
    "Ensemble",
    "find_checkpoints",
    "load_ensemble",
    "predict_case",
    "predict_preprocessed",
]

_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


def _fold_sort_key(path: Path) -> tuple[int, int | str]:
    k = _FOLD_RE.match(path.name).group(1)  # type: ignore[union-attr]
    return (0, int(k)) if k.isdigit() else (1, k)


def find_checkpoints(
    model: str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
) -> list[Path]:
    """Checkpoint files named by a run folder, a fold folder or a checkpoint file (or a results
    root ``train -o`` wrote, when it holds a single run).

    Args:
        model: run folder (with ``fold_K`` folders), fold folder or checkpoint file.
        folds: folds of a run folder to use (``None``: every numbered ``fold_K`` that
            exists; ``fold_all`` only when asked for or when it is the only one).
        checkpoint: which checkpoint of a fold folder, one of ``final``, ``best``, ``last``.

    Raises:
        DataError: the path does not exist, is an ONNX model, or holds no such checkpoints
            (the message names the path and what is available).
        ConfigError: ``checkpoint`` is not one of the known names.

    Examples::

        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp()) / "Task01_BrainTumour" / "swin_factorizer_brats"
        >>> for k in (0, 1):
        ...     (run / f"fold_{k}").mkdir(parents=True)
        ...     (run / f"fold_{k}" / "checkpoint_final.pt").touch()
        >>> [p.parent.name for p in find_checkpoints(run)]
        ['fold_0', 'fold_1']
        >>> find_checkpoints(run, folds=[1])[0].name
        'checkpoint_final.pt'
    """
    check_checkpoint_kind(checkpoint)  # before looking at the files
    path = Path(model)
    if not path.exists():
        raise DataError(path, "no such model (expected a run folder, fold folder or checkpoint)")
    check_not_onnx(path)  # an exported model: say so, and what to give instead
    if path.is_file():
        if folds:
            raise ConfigError(f"--folds needs a run folder, but {path} is a checkpoint file")
        return [path]
    fold_dirs = sorted(
        (p for p in path.iterdir() if p.is_dir() and _FOLD_RE.match(p.name)), key=_fold_sort_key
    )
    if not fold_dirs:
        runs = _runs_below(path) if not any(path.glob("checkpoint_*")) else []
        if len(runs) == 1:  # a results root (train -o) holding one run
            return find_checkpoints(runs[0], folds, checkpoint)
        if runs:
            listed = ", ".join(str(r.relative_to(path)) for r in runs)
            raise DataError(path, f"holds {len(runs)} runs ({listed}); name one with -m")
        if folds:
            raise ConfigError(f"--folds needs a run folder with fold_K folders, not {path}")
        return [find_checkpoint(path, checkpoint)]
    if folds:
        by_name = {p.name: p for p in fold_dirs}
        wanted = [f"fold_{k}" for k in folds]
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise DataError(
                path,
                f"no {', '.join(missing)} (available: {', '.join(by_name)})",
            )
        fold_dirs = [by_name[name] for name in dict.fromkeys(wanted)]
    elif any(p.name != "fold_all" for p in fold_dirs):
        # like nnU-Net: the default ensemble is the cross-validation folds, not fold_all
        fold_dirs = [p for p in fold_dirs if p.name != "fold_all"]
    return [find_checkpoint(p, checkpoint) for p in fold_dirs]


def _runs_below(root: Path) -> list[Path]:
    """The run folders ``root/<dataset>/<model>`` (with ``fold_K`` folders) of a results root."""
    folds = (p for p in root.glob("*/*/fold_*") if p.is_dir() and _FOLD_RE.match(p.name))
    return sorted({p.parent for p in folds})


def _patch_size(config: dict[str, Any], where: Path) -> tuple[int, ...]:
    value = config.get("patch_size")
    for section in ("data", "training"):
        sub = config.get(section)
        if value is None and isinstance(sub, dict):
            value = sub.get("patch_size")
    if value is None:
        raise DataError(where, "the checkpoint's config has no patch_size")
    return tuple(int(p) for p in value)


def _dataset_section(config: dict[str, Any]) -> dict[str, Any]:
    for key in ("dataset", "data"):
        if isinstance(config.get(key), dict):
            return config[key]
    return {}


def _model_scheme(config: dict[str, Any]) -> DatasetScheme | None:
    """The label scheme the model was trained on, when the config pins it down."""
    value = _dataset_section(config).get("scheme", config.get("scheme"))
    if isinstance(value, dict):
        try:
            return DatasetScheme.from_dict(value)
        except (KeyError, TypeError, ValueError):
            return None
    if isinstance(value, str) and value in SCHEMES and value != "nnunet":
        return SCHEMES[value]
    return None


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict):
        return tuple(str(k) for k in value)
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return ()


@dataclass
class Ensemble:
    """The folds of one trained model, ready to predict.

    Attributes:
        models: one network per fold, in ``eval()`` mode on ``device``.
        sources: the checkpoint file of each network.
        patch_size: sliding-window size (the training patch size, same for all folds).
        in_channels: image channels the networks take.
        out_channels: regions the networks predict.
        channels: channel names the model was trained with (empty if unknown).
        regions: region names of the output channels (empty if unknown).
        scheme: label scheme of the training data (``None`` if the config does not pin it).
        overlap: sliding-window overlap (the config's ``validation.overlap``, default 0.5).
        mode: window blending (the config's ``validation.mode``, default ``"gaussian"``).
        sw_batch_size: windows per forward pass (``validation.sw_batch_size``, default 1).
        threshold: probability at or above which a voxel is inside a region
            (``validation.threshold``, default 0.5).
        config: resolved training config of the first fold.
        device: where the networks run.
        preprocessing: what is done to a case before the networks see it (the config's
            ``dataset.preprocessing``; ``None`` becomes
            :meth:`~nmfseg.data.normalization.Preprocessing.default`, the paper's rule).
    """

    models: list[nn.Module]
    sources: list[Path]
    patch_size: tuple[int, ...]
    in_channels: int
    out_channels: int
    channels: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    scheme: DatasetScheme | None = None
    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 1
    threshold: float = 0.5
    config: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    preprocessing: Preprocessing = None  # type: ignore[assignment]  # None: the default

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            self.preprocessing = Preprocessing.default(self.in_channels)


def _channels(model: nn.Module, attr: str, where: Path) -> int:
    value = getattr(model, attr, None)
    if not isinstance(value, int):
        raise DataError(where, f"the network has no integer attribute {attr!r}")
    return value


def _load_fold(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    try:
        return load_model(path, device)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as err:
        raise DataError(path, f"cannot load checkpoint ({type(err).__name__}: {err})") from err


def load_ensemble(
    model: str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    device: str | torch.device | None = None,
) -> Ensemble:
    """Load every fold named by ``model`` (see :func:`find_checkpoints`) onto ``device``.

    The patch size, channel and region names come from each checkpoint's resolved training
    config (``patch_size``, ``dataset.scheme/channels/regions``), the preprocessing from its
    ``dataset.preprocessing`` (the paper's rule when it has none), the overlap and blending
    from its ``validation`` section, so prediction slides exactly like validation did.

    Examples::

        >>> run = "RUN_DIR/Task01_BrainTumour/swin_factorizer_brats"
        >>> ens = load_ensemble(run, folds=[0, 1], device="cpu")  # doctest: +SKIP
        >>> [type(net).__name__ for net in ens.models]  # doctest: +SKIP
        ['Factorizer', 'Factorizer']

    Raises:
        DataError: a checkpoint is missing or unreadable, or the folds disagree on
            patch size, channels, regions or preprocessing.
        ConfigError: a config's ``dataset.preprocessing`` is not valid.
    """
    dev = resolve_device(device)
    if find_nnunet_results(model) is not None:  # trained inside nnU-Net by an nmfseg trainer
        nets, paths, nn_config = load_nnunet_folds(model, folds, checkpoint, dev)
        loaded: Iterable[tuple[nn.Module, dict[str, Any]]] = ((n, nn_config) for n in nets)
    else:
        paths = find_checkpoints(model, folds, checkpoint)
        loaded = (_load_fold(path, dev) for path in paths)
    models, first = [], None
    for path, (net, config) in zip(paths, loaded, strict=True):
        net.eval()
        scheme = _model_scheme(config)
        dataset = _dataset_section(config)
        spec = {
            "patch size": _patch_size(config, path),
            "in_channels": _channels(net, "in_channels", path),
            "out_channels": _channels(net, "out_channels", path),
            "channels": _names(dataset.get("channels")) or (scheme.channels if scheme else ()),
            "regions": _names(dataset.get("regions")) or (scheme.region_names if scheme else ()),
        }
        pre = dataset.get("preprocessing")
        spec["preprocessing"] = (
            Preprocessing.from_dict(pre, where=f"{path}: config dataset.preprocessing")
            if pre is not None
            else Preprocessing.default(spec["in_channels"])
        )
        if first is None:
            first = (spec, scheme, config)
        else:
            diff = [k for k in spec if spec[k] != first[0][k]]
            if diff:
                k = diff[0]
                ours, theirs = (
                    (spec[k].to_dict(), first[0][k].to_dict())
                    if k == "preprocessing"
                    else (spec[k], first[0][k])
                )
                raise DataError(path, f"this fold's {k} {ours} differs from {paths[0]}'s {theirs}")
        models.append(net)
    assert first is not None
    spec, scheme, config = first
    validation = config.get("validation") if isinstance(config.get("validation"), dict) else {}
    return Ensemble(
        models=models,
        sources=paths,
        patch_size=spec["patch size"],
        in_channels=spec["in_channels"],
        out_channels=spec["out_channels"],
        channels=spec["channels"],
        regions=spec["regions"],
        scheme=scheme,
        overlap=float(validation.get("overlap", 0.5)),
        mode=str(validation.get("mode", "gaussian")),
        sw_batch_size=int(validation.get("sw_batch_size", 1)),
        threshold=float(validation.get("threshold", 0.5)),
        config=config,
        device=dev,
        preprocessing=spec["preprocessing"],
    )


def predict_preprocessed(
    models: Sequence[nn.Module],
    image: np.ndarray,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    tta: bool = False,
    *,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Mean probabilities of the models on an image that is already preprocessed.

    The part of :func:`predict_case` between the preprocessing and the uncrop: one
    :func:`sliding_window_predict` per model (with flips when ``tta``), averaged.

    Args:
        models: the networks to ensemble (e.g. the folds of a run).
        image: preprocessed image ``(C, *spatial)``.
        patch_size: sliding-window size.
        overlap: window overlap fraction.
        tta: average over all flip combinations.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        sw_batch_size: windows per forward pass.
        device: where the models run (default: where their parameters are).
        progress: per-window progress bar.

    Returns:
        Float32 array ``(R, *image.shape[1:])``.

    Examples::

        >>> nets = [torch.nn.Conv3d(2, 1, 1), torch.nn.Conv3d(2, 1, 1)]
        >>> predict_preprocessed(nets, np.zeros((2, 5, 6, 7), np.float32), (8, 8, 8)).shape
        (1, 5, 6, 7)
    """
    total = None
    for model in models:
        probs = sliding_window_predict(
            model,
            image,
            patch_size,
            overlap,
            tta,
            mode=mode,
            sw_batch_size=sw_batch_size,
            device=device,
            progress=progress,
        )
        total = probs if total is None else total + probs
    assert total is not None
    return (total / len(models)).numpy().astype(np.float32, copy=False)


def predict_case(
    models: Sequence[nn.Module],
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    where: str = "image",
    spacing: Sequence[float] | None = None,
    preprocessing: Preprocessing | None = None,
    **window: Any,
) -> np.ndarray:
    """Probabilities of one raw case, in its original grid.

    Preprocesses ``image`` exactly as in training (:func:`~nmfseg.data.preprocess.preprocess_case`
    with ``preprocessing``), predicts the preprocessed volume with :func:`predict_preprocessed`
    (every model's sliding window, averaged) and puts the result back into the original grid
    (:func:`~nmfseg.data.preprocess.restore`: probabilities resampled back trilinearly when
    the case was resampled, probability 0 outside the nonzero box, axes transposed back).

    Args:
        models: the networks to ensemble (e.g. the folds of a run).
        image: raw image ``(C, X, Y, Z)``.
        patch_size: sliding-window size.
        where: case name used in error messages.
        spacing: the case's voxel size in mm (needed when ``preprocessing`` resamples).
        preprocessing: what training did to its cases (``None``: the paper's rule).
        **window: the other sliding-window arguments of :func:`predict_preprocessed`
            (``overlap``, ``tta``, ``mode``, ``sw_batch_size``, ``device``, ``progress``).

    Returns:
        Float32 array ``(R, X, Y, Z)`` in ``[0, 1]``.

    Raises:
        DataError: the image's channel count differs from a model's ``in_channels``, it
            has NaN/Inf voxels, or it must be resampled and ``spacing`` is missing.
    """
    if not models:
        raise ValueError("predict_case needs at least one model.")
    image = np.asarray(image)
    for model in models:
        expected = getattr(model, "in_channels", None)
        if expected is not None and image.shape[0] != expected:
            raise DataError(
                where,
                f"image has {image.shape[0]} channels but the model expects {expected}",
            )
    if preprocessing is None:
        x, _, crop = preprocess_case(image, where=where)
        return uncrop(predict_preprocessed(models, x, patch_size, **window), crop, fill=0.0)
    x, _, record = preprocess_case(image, where=where, spacing=spacing, preprocessing=preprocessing)
    probs = predict_preprocessed(models, x, patch_size, **window)
    return restore(probs, record, fill=0.0, mode="bilinear").astype(np.float32, copy=False)
