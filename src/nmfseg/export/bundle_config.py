"""The ``configs/inference.json`` of a MONAI bundle written by ``nmfseg export``.

:func:`inference_config` writes nmfseg's prediction as MONAI's inference properties
(``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``, ``dataset``,
``evaluator``, ...): load the image (one 4D file, or one file per channel), crop to the
nonzero box of all channels and normalize (:func:`preprocessing_transforms`, the one
translation of a run's preprocessing), the sliding window of the run (patch size, overlap,
Gaussian blending), sigmoid, the inverse of the preprocessing, the threshold, regions ->
the dataset's labels (:class:`~nmfseg.export.bundle_transforms.RegionsToLabelsd`), NIfTI in
the input's geometry (``SaveImaged``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from nmfseg.data.normalization import ChannelNorm, Preprocessing
from nmfseg.errors import ConfigError
from nmfseg.inference.ensemble import Ensemble

__all__ = ["describe_preprocessing", "inference_config", "preprocessing_transforms"]

_RESERVED = ("$", "@", "%")  # strings that MONAI's config parser would evaluate or resolve


# ---------------------------------------------------------------------- preprocessing
def preprocessing_transforms(pre: Preprocessing) -> list[dict[str, Any]]:
    """The MONAI transforms (config dicts) between loading and the network: the one
    translation of a run's :class:`~nmfseg.data.normalization.Preprocessing`.

    As :func:`nmfseg.data.preprocess.preprocess_case` does, in its order: crop to the box of
    the voxels that are nonzero in any channel (``CropForegroundd``), resample to the target
    spacing if there is one (``Spacingd``, trilinear, the same field of view), normalize:

    - every channel ``zscore_nonzero`` (the paper's rule):
      ``NormalizeIntensityd(nonzero=True, channel_wise=True)``;
    - every channel ``zscore``: ``NormalizeIntensityd(channel_wise=True)``;
    - every channel ``ct`` with the same four numbers (one CT channel): ``ScaleIntensityRanged``
      from ``[lower, upper]`` to ``[(lower - mean) / std, (upper - mean) / std]`` with
      clipping, which is ``(clip(x, lower, upper) - mean) / std``;
    - every channel ``none``: nothing;
    - anything else (channels with different schemes or CT numbers): nmfseg's own code
      (:class:`~nmfseg.export.bundle_transforms.NormalizeChannelsd`).

    ``Invertd`` undoes the crop and the resampling (probabilities resampled back
    trilinearly, as nmfseg does).

    Raises:
        ConfigError: A transposed preprocessing (nnU-Net-trained folders), which a bundle
            does not express.

    Examples::

        >>> [t["_target_"] for t in preprocessing_transforms(Preprocessing.default(4))]
        ['CropForegroundd', 'NormalizeIntensityd']
        >>> ct = ChannelNorm("ct", lower=-100.0, upper=300.0, mean=50.0, std=100.0)
        >>> pre = Preprocessing((ct,), target_spacing=(1.0, 1.0, 2.0))
        >>> [t["_target_"] for t in preprocessing_transforms(pre)]
        ['CropForegroundd', 'Spacingd', 'ScaleIntensityRanged']
    """
    if pre.transpose is not None:
        raise ConfigError(
            f"the run's preprocessing transposes the image axes ({list(pre.transpose)}, an "
            "nnU-Net-trained folder); a MONAI bundle of it is not supported"
        )
    out: list[dict[str, Any]] = [
        {
            "_target_": "CropForegroundd",
            "keys": "image",
            "source_key": "image",
            "select_fn": "$lambda x: x != 0",
            "margin": 0,
        }
    ]
    if pre.target_spacing is not None:
        out.append(
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": list(pre.target_spacing),
                "mode": "bilinear",
                "padding_mode": "border",
                "scale_extent": True,
            }
        )
    return out + _normalization(pre.normalization)


def _normalization(norms: Sequence[ChannelNorm]) -> list[dict[str, Any]]:
    schemes = {n.scheme for n in norms}
    if schemes == {"none"}:
        return []
    if schemes == {"zscore_nonzero"} or schemes == {"zscore"}:
        nonzero = schemes == {"zscore_nonzero"}
        return [
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": nonzero,
             "channel_wise": True}
        ]  # fmt: skip
    if schemes == {"ct"} and len(set(norms)) == 1:  # one CT channel, or several alike
        n = norms[0]
        assert n.lower is not None and n.upper is not None and n.mean and n.std
        return [
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": n.lower,
                "a_max": n.upper,
                "b_min": (n.lower - n.mean) / n.std,
                "b_max": (n.upper - n.mean) / n.std,
                "clip": True,
            }
        ]
    return [
        {
            "_target_": "nmfseg.export.bundle_transforms.NormalizeChannelsd",
            "keys": "image",
            "normalization": [n.to_dict() for n in norms],
        }
    ]


def describe_preprocessing(pre: Preprocessing, channels: Sequence[str]) -> str:
    """One sentence of what the bundle does to a case before the network, for its README.

    Examples::

        >>> describe_preprocessing(Preprocessing.default(1), ["dwi"])
        'crop to the box of the voxels nonzero in any channel; dwi: z-score on its nonzero voxels'
    """
    words = {
        "zscore_nonzero": "z-score on its nonzero voxels",
        "zscore": "z-score on all its voxels",
        "none": "as it is",
    }
    parts = ["crop to the box of the voxels nonzero in any channel"]
    if pre.target_spacing is not None:
        parts.append("resample to " + " x ".join(f"{s:g}" for s in pre.target_spacing) + " mm")
    for name, n in zip(channels, pre.normalization, strict=False):
        text = words.get(n.scheme) or (
            f"clip to [{n.lower:g}, {n.upper:g}], subtract {n.mean:g}, divide by {n.std:g}"
        )
        parts.append(f"{name}: {text}")
    return "; ".join(parts)


# ---------------------------------------------------------------------- the configs
def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data that MONAI's config parser leaves as it is."""
    try:
        data = json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: not plain data, cannot go into a bundle config") from None

    def check(v: Any) -> None:
        if isinstance(v, str) and v.startswith(_RESERVED):
            raise ConfigError(f"{where}: the value {v!r} would be evaluated by MONAI's parser")
        for child in v.values() if isinstance(v, dict) else v if isinstance(v, list) else ():
            check(child)

    check(data)
    return data


def inference_config(
    model_name: str, model_kwargs: Mapping[str, Any], ensemble: Ensemble
) -> dict[str, Any]:
    """``configs/inference.json`` of a bundle (MONAI's inference properties).

    Examples::

        >>> from nmfseg.data.schemes import SCHEMES
        >>> ens = Ensemble([], [], (16, 16, 16), 2, 1, scheme=SCHEMES["isles22"])
        >>> cfg = inference_config("swin_factorizer_isles", {"channels": [4, 8]}, ens)
        >>> cfg["network_def"]["_target_"], cfg["inferer"]["roi_size"], cfg["inferer"]["mode"]
        ('nmfseg.create_model', [16, 16, 16], 'gaussian')
    """
    kwargs = _plain(dict(model_kwargs), "the run's model arguments")
    clash = sorted({k for k in kwargs if k in ("name", "checkpoint_path") or k[:1] == "_"})
    if clash:
        raise ConfigError(f"the run's model arguments use the reserved name {clash[0]!r}")
    if ensemble.scheme is None:
        raise ConfigError(
            "the run's config names no label scheme, so a bundle cannot write its labels"
        )
    load = {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader"}
    first = {"_target_": "EnsureChannelFirstd", "keys": "image"}
    pre = [load, first, *preprocessing_transforms(ensemble.preprocessing)]
    post = [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": False,
            "to_tensor": True,
        },
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": float(ensemble.threshold)},
        {
            "_target_": "nmfseg.export.bundle_transforms.RegionsToLabelsd",
            "keys": "pred",
            "scheme": "@label_scheme",
        },
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_dtype": "$numpy." + ("uint8" if max(ensemble.scheme.labels) < 256 else "int16"),
            "resample": False,
            "separate_folder": False,
            "squeeze_end_dims": True,
            "writer": "NibabelWriter",
        },
    ]
    return {
        "imports": [
            "$import numpy",
            "$import torch",
            "$import nmfseg.export.bundle_transforms as nmfseg_bundle",
        ],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/input'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "label_scheme": _plain(ensemble.scheme.to_dict(), "the run's label scheme"),
        "datalist": "$nmfseg_bundle.datalist(@dataset_dir, @label_scheme)",
        "network_def": {"_target_": "nmfseg.create_model", "name": model_name, **kwargs},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": pre,
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [int(p) for p in ensemble.patch_size],
            "sw_batch_size": int(ensemble.sw_batch_size),
            "overlap": float(ensemble.overlap),
            "mode": str(ensemble.mode),
            "sigma_scale": 0.125,
            "padding_mode": "constant",
            "cval": 0.0,
        },
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }
