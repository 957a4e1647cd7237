"""Trained models for prediction: find the checkpoints, load the folds, choose the output scheme.

``-r/--run`` of ``nmfseg predict`` may name, like nnU-Net:

- a run folder ``RUN_DIR/<dataset>/<model>`` holding ``fold_K`` folders: the folds given
  by ``folds`` are ensembled (default: every ``fold_K`` that exists);
- one fold folder ``.../fold_K`` holding ``checkpoint_{final,best,last}.pt``;
- one checkpoint file;
- an nnU-Net v2 results folder of an nmfseg trainer (or one of its folds or checkpoints),
  read by :mod:`nmfseg.inference.nnunet_results`.

:class:`~nmfseg.inference.predictor.Predictor` predicts with an :class:`Ensemble`: the
ensemble's probability is the mean of the folds' probabilities (each itself the mean over
flips when TTA is on).

Examples::

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> for k in (1, 0):
    ...     (run / f"fold_{k}").mkdir(parents=True)
    ...     (run / f"fold_{k}" / "checkpoint_final.pt").touch()
    >>> [p.parent.name for p in find_checkpoints(run)]
    ['fold_0', 'fold_1']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmfseg.data.formats import Dataset
from nmfseg.data.normalization import Preprocessing
from nmfseg.data.schemes import SCHEMES, DatasetScheme
from nmfseg.device import resolve_device
from nmfseg.errors import ConfigError, DataError
from nmfseg.inference.nnunet_results import find_nnunet_results, load_nnunet_folds
from nmfseg.models import load_model
from nmfseg.models.checkpoint import (
    CHECKPOINTS,
    check_checkpoint_kind,
    check_not_onnx,
    find_checkpoint,
)
from nmfseg.text import is_number

__all__ = [
    "CHECKPOINTS",
    "Ensemble",
    "find_checkpoints",
    "load_ensemble",
    "output_scheme",
]

_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


def _fold_sort_key(path: Path) -> tuple[int, int | str]:
    k = _FOLD_RE.match(path.name).group(1)  # type: ignore[union-attr]
    return (0, int(k)) if is_number(k) else (1, k)


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
            raise DataError(path, f"holds {len(runs)} runs ({listed}); name one with -r")
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
    if value is None:
        raise DataError(where, "the checkpoint's config has no patch_size")
    return tuple(int(p) for p in value)


def _dataset_section(config: dict[str, Any]) -> dict[str, Any]:
    dataset = config.get("dataset")
    return dataset if isinstance(dataset, dict) else {}


def _model_scheme(config: dict[str, Any]) -> DatasetScheme | None:
    """The label scheme the model was trained on, when the config pins it down."""
    value = _dataset_section(config).get("scheme")
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


def output_scheme(dataset: Dataset, ensemble: Ensemble) -> tuple[DatasetScheme, str]:
    """The scheme predictions are written in, and a note when it is not the dataset's own.

    The dataset's scheme is used when its regions are the model's (by name, or by count when
    the model does not record names); otherwise the model's training scheme, when known.

    Raises:
        DataError: the dataset's images do not have the model's channel count, or its regions
            cannot be written from the model's outputs.
    """
    ds = dataset.scheme
    first = dataset.cases[0].case_id if dataset.cases else "?"
    if ds.in_channels != ensemble.in_channels:
        expected = f" ({', '.join(ensemble.channels)})" if ensemble.channels else ""
        raise DataError(
            dataset.root,
            f"case {first} has {ds.in_channels} channels ({', '.join(ds.channels)}) but the "
            f"model expects {ensemble.in_channels}{expected}",
        )
    same = (
        ds.region_names == ensemble.regions
        if ensemble.regions
        else ds.out_channels == ensemble.out_channels
    )
    if same:
        return ds, ""
    model = ensemble.scheme
    if model is not None and model.out_channels == ensemble.out_channels:
        return model, (
            f"note: the model's regions ({', '.join(ensemble.regions)}) are not the dataset's "
            f"({', '.join(ds.region_names)}); writing labels in the model's {model.name} scheme"
        )
    raise DataError(
        dataset.root,
        f"the model predicts {ensemble.out_channels} region(s) "
        f"({', '.join(ensemble.regions) or 'unnamed'}) but the {dataset.fmt} labels need "
        f"{ds.out_channels} ({', '.join(ds.region_names)})",
    )
