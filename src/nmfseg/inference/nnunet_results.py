"""An nnU-Net v2 results folder of an nmfseg trainer, loaded as an nmfseg model.

A Factorizer trained inside nnU-Net (``nnUNetv2_train ... -tr nnUNetTrainerSwinFactorizer``)
is still a Factorizer to nmfseg: ``nmfseg explain``, ``nmfseg ablate`` and
``Predictor.from_run`` take its results folder
(``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``), a ``fold_K`` folder
of it or one of its ``checkpoint_*.pth`` files. Nothing of nnU-Net is imported: the folder's
``plans.json`` names the network (the trainers write ``"nmfseg:NAME"`` into it) and its
arguments, ``dataset.json`` the channels and labels, and each checkpoint holds the weights.

nnU-Net's preprocessing becomes a :class:`~nmfseg.data.normalization.Preprocessing`:

- axes: nnU-Net reads NIfTI through SimpleITK (or its ``NibabelIO``, which matches it), so
  its arrays are nibabel's with the axes reversed, then permuted by ``transpose_forward``;
- the configuration's spacing (resampled with MONAI here, third-order splines in nnU-Net:
  intensities differ slightly at the resampled voxels);
- normalization: ``ZScoreNormalization`` with ``use_mask_for_norm`` is the paper's rule on
  nonzero voxels (nnU-Net's mask is the union of the channels' nonzero voxels, nmfseg's each
  channel's own: the same for skull-stripped MRI), without it a z-score over the case;
  ``CTNormalization`` the stored foreground percentiles, mean and std; ``NoNormalization``
  nothing. Other schemes are refused in one line.

The sliding window is nnU-Net's default (overlap 0.5, Gaussian blending). Region-based
training (sigmoid outputs) predicts exactly as nnU-Net's regions; a network trained with
softmax over labels is read as region probabilities of its foreground classes
(:class:`LabelProbabilities`: the same labels as nnU-Net's argmax for one foreground class,
and windows are blended as ``logit(p)`` rather than as logits; for several classes use
nnUNetv2_predict to reproduce nnU-Net's labels).
The validation cases of a fold are those nnU-Net predicted into ``fold_K/validation``.

Examples::

    >>> nnunet_preprocessing({"transpose_forward": [0, 1, 2],
    ...     "foreground_intensity_properties_per_channel": {}},
    ...     {"spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
    ...      "use_mask_for_norm": [True]}).transpose
    (2, 1, 0)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nmfseg.data.nifti import NIFTI_ENDINGS, nifti_files, strip_nifti_ending
from nmfseg.data.normalization import ChannelNorm, Preprocessing
from nmfseg.data.schemes import scheme_from_nnunet_json
from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import read_json
from nmfseg.models.nnunet_arch import build_nnunet_network, plans_network
from nmfseg.text import is_number

__all__ = [
    "LabelProbabilities",
    "find_nnunet_results",
    "load_nnunet_folds",
    "nnunet_preprocessing",
]

#: nmfseg's checkpoint choice -> nnU-Net's file.
CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth",
                    "last": "checkpoint_latest.pth"}  # fmt: skip
_READERS = ("SimpleITKIO", "NibabelIO")
_FOLD = re.compile(r"^fold_(\d+|all)$")


def find_nnunet_results(path: str | Path) -> Path | None:
    """The results folder (with ``plans.json`` and ``dataset.json``) that ``path`` is, or
    holds (a fold folder or a checkpoint file), or ``None``.

    Examples::

        >>> find_nnunet_results("/nonexistent") is None
        True
    """
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        files = (candidate / "plans.json", candidate / "dataset.json")
        if all(f.is_file() for f in files) and any(candidate.glob("fold_*/checkpoint_*.pth")):
            return candidate
    return None


def _configuration(plans: Mapping[str, Any], name: str, where: Path) -> dict[str, Any]:
    configs = plans.get("configurations") or {}
    if name not in configs:
        raise DataError(where, f"plans have no configuration {name!r}")
    config = copy.deepcopy(configs[name])
    if "inherits_from" in config:  # nnU-Net's inheritance: the parent, updated by the child
        parent = _configuration(plans, config.pop("inherits_from"), where)
        config = {**parent, **config}
    return config


def nnunet_preprocessing(plans: Mapping[str, Any], config: Mapping[str, Any]) -> Preprocessing:
    """nnU-Net's preprocessing of a configuration as nmfseg's (module docstring).

    Raises:
        ConfigError: A reader or normalization scheme nmfseg does not reproduce.
    """
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in _READERS:
        raise ConfigError(
            f"plans read images with {reader}; nmfseg reproduces {' and '.join(_READERS)} only"
        )
    forward = [int(a) for a in plans.get("transpose_forward", range(len(config["spacing"])))]
    dims = len(forward)
    transpose = tuple(dims - 1 - a for a in forward)  # nibabel axes -> nnU-Net's network axes
    stats = plans.get("foreground_intensity_properties_per_channel") or {}
    norms = []
    masks = config.get("use_mask_for_norm") or [False] * len(config["normalization_schemes"])
    for c, (scheme, mask) in enumerate(zip(config["normalization_schemes"], masks, strict=True)):
        if scheme == "ZScoreNormalization":
            norms.append(ChannelNorm("zscore_nonzero" if mask else "zscore"))
        elif scheme == "CTNormalization":
            s = stats.get(str(c)) or {}
            norms.append(
                ChannelNorm("ct", s["percentile_00_5"], s["percentile_99_5"], s["mean"], s["std"])
            )
        elif scheme == "NoNormalization":
            norms.append(ChannelNorm("none"))
        else:
            raise ConfigError(
                f"channel {c} is normalized with nnU-Net's {scheme}, which nmfseg does not "
                "reproduce; predict with nnUNetv2_predict"
            )
    spacing = config.get("spacing")
    return Preprocessing(tuple(norms), tuple(spacing) if spacing else None, transpose)


class LabelProbabilities(nn.Module):
    """A softmax-trained network's foreground class probabilities as region logits.

    ``sigmoid(out[k]) = softmax(logits)[k + 1]``, so nmfseg's sigmoid-and-threshold pipeline
    reads them as region probabilities. The wrapped network stays reachable as ``net`` (and
    its NMF layers as submodules).

    Examples::

        >>> m = LabelProbabilities(nn.Conv3d(1, 3, 1))
        >>> p = torch.sigmoid(m(torch.randn(1, 1, 2, 2, 2)))
        >>> p.shape
        torch.Size([1, 2, 2, 2, 2])
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.in_channels = getattr(net, "in_channels", None)
        self.out_channels = int(getattr(net, "out_channels", 2)) - 1

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.log_softmax(self.net(x).float(), dim=1)[:, 1:]
        return logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-7))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


def _checkpoints(root: Path, path: Path, folds: Sequence[int | str] | None, which: str):
    if which not in CHECKPOINT_FILES:
        raise ConfigError(f"--checkpoint {which!r}: choose one of {', '.join(CHECKPOINT_FILES)}")
    if path.is_file():
        return [path]
    if _FOLD.match(path.name) and path.parent == root:
        fold_dirs = [path]
    else:
        available = sorted((p for p in root.glob("fold_*") if _FOLD.match(p.name)), key=str)
        if folds:
            fold_dirs = [root / f"fold_{k}" for k in folds]
            missing = [p.name for p in fold_dirs if p not in available]
            if missing:
                names = ", ".join(p.name for p in available)
                raise DataError(root, f"no {', '.join(missing)} (available: {names})")
        else:
            fold_dirs = [p for p in available if p.name != "fold_all"] or available
    files = [p / CHECKPOINT_FILES[which] for p in fold_dirs]
    missing_files = [f for f in files if not f.is_file()]
    if missing_files:
        raise DataError(missing_files[0], f"no such nnU-Net checkpoint ({which})")
    return files


def _validation_ids(fold_dir: Path) -> list[str]:
    folder = fold_dir / "validation"
    if not folder.is_dir():
        return []
    return sorted(strip_nifti_ending(p.name) for p in nifti_files(folder))


def load_nnunet_folds(
    path: str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    device: torch.device | None = None,
) -> tuple[list[nn.Module], list[Path], dict[str, Any]]:
    """The folds of an nnU-Net results folder of an nmfseg trainer, and an nmfseg config.

    Args:
        path: The results folder, a fold folder or a ``checkpoint_*.pth`` file.
        folds: Folds to load (default: every numbered fold, like nnU-Net).
        checkpoint: ``final``, ``best`` or ``last`` (nnU-Net's ``latest``).
        device: Where the networks go.

    Returns:
        ``(networks, checkpoint files, config)``: networks in ``eval()`` mode; the config as
        nmfseg's runs write it (``patch_size``, ``dataset`` with the scheme, channels,
        regions and preprocessing, ``validation``, ``split.val``, ``model``, ``nnunet``).

    Raises:
        DataError: Not a results folder, a trainer that is not nmfseg's, missing
            checkpoints or weights that do not fit.
        ConfigError: A preprocessing nmfseg does not reproduce.
    """
    path = Path(path)
    root = find_nnunet_results(path)
    if root is None:
        raise DataError(path, "not an nnU-Net results folder (no plans.json and fold checkpoints)")
    files = _checkpoints(root, path, folds, checkpoint)
    plans, meta = read_json(root / "plans.json"), read_json(root / "dataset.json")
    models, config = [], None
    for file in files:
        try:
            # nnU-Net's own checkpoints hold numpy objects: read as nnU-Net's predictor does
            ckpt = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as err:  # any unpickling failure is a bad file
            problem = f"cannot read nnU-Net checkpoint ({type(err).__name__})"
            raise DataError(file, problem) from None
        trainer = str(ckpt.get("trainer_name", "?"))
        name = str(ckpt.get("init_args", {}).get("configuration", ""))
        conf = _configuration(plans, name, root / "plans.json")
        if plans_network(conf) is None:
            raise DataError(
                root,
                f"trained with nnU-Net's {trainer}, not an nmfseg trainer: explain and ablate "
                "need a network trained with -tr nnUNetTrainerSwinFactorizer (or another of "
                "nmfseg's trainers, see nmfseg nnunet-path --help)",
            )
        scheme = scheme_from_nnunet_json(meta, root / "dataset.json")
        region_based = "regions_class_order" in meta
        classes = [v for v in scheme.labels if v != scheme.ignore_label]
        n_out = scheme.out_channels if region_based else len(classes)
        try:
            net = build_nnunet_network(conf, scheme.in_channels, n_out, False)
            net.load_state_dict(ckpt["network_weights"])
        except (ConfigError, KeyError, RuntimeError) as err:
            raise DataError(file, f"weights do not fit {trainer}'s network ({err})") from None
        net.eval()
        models.append((net if region_based else LabelProbabilities(net)).to(device or "cpu"))
        if config is None:
            config = _config(plans, meta, conf, name, trainer, scheme, file)
    assert config is not None
    return models, files, config


def _config(plans, meta, conf, name, trainer, scheme, file: Path) -> dict[str, Any]:
    fold = file.parent.name.removeprefix("fold_")
    model_name = plans_network(conf)[0]  # type: ignore[index]
    return {
        "patch_size": [int(p) for p in conf["patch_size"]],
        "dataset": {
            "scheme": scheme.to_dict(),
            "channels": list(scheme.channels),
            "regions": list(scheme.regions),
            "preprocessing": nnunet_preprocessing(plans, conf).to_dict(),
            "file_ending": meta.get("file_ending", NIFTI_ENDINGS[0]),
        },
        "validation": {"overlap": 0.5, "mode": "gaussian", "sw_batch_size": 1, "threshold": 0.5},
        "split": {"val": _validation_ids(file.parent)},
        "fold": int(fold) if is_number(fold) else fold,
        "model": {"name": model_name},
        "nnunet": {"trainer": trainer, "plans": plans.get("plans_name"), "configuration": name},
    }
