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
from collections.abc import Mapping
from typing import Any

from nmfseg.errors import ConfigError
from nmfseg.inference.ensemble import Ensemble

__all__ = ["inference_config", "preprocessing_transforms"]

_RESERVED = ("$", "@", "%")  # strings that MONAI's config parser would evaluate or resolve


# ---------------------------------------------------------------------- preprocessing
def preprocessing_transforms(
    preprocessing: Mapping[str, Any] | None, in_channels: int
) -> list[dict[str, Any]]:
    """The MONAI transforms (config dicts) between loading and the network.

    nmfseg's preprocessing (:mod:`nmfseg.data.preprocess`): crop to the box of the voxels
    that are nonzero in any channel, then z-score each channel on its nonzero voxels
    (``NormalizeIntensityd(nonzero=True, channel_wise=True)``, the same statistics).
    ``preprocessing`` is a run's ``config["dataset"]["preprocessing"]`` section (``None``:
    that default for every channel).

    Raises:
        ConfigError: A preprocessing that a bundle cannot express (the line says which).

    Examples::

        >>> [t["_target_"] for t in preprocessing_transforms(None, 4)]
        ['CropForegroundd', 'NormalizeIntensityd']
    """
    if preprocessing is not None:
        raise ConfigError(
            "the run's dataset.preprocessing section is not supported by this nmfseg version's "
            "bundle export yet"
        )
    crop = {
        "_target_": "CropForegroundd",
        "keys": "image",
        "source_key": "image",
        "select_fn": "$lambda x: x != 0",
        "margin": 0,
    }
    norm = {
        "_target_": "NormalizeIntensityd",
        "keys": "image",
        "nonzero": True,
        "channel_wise": True,
    }
    return [crop, norm]


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
    model_name: str,
    model_kwargs: Mapping[str, Any],
    ensemble: Ensemble,
    preprocessing: Mapping[str, Any] | None = None,
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
    pre = [load, first, *preprocessing_transforms(preprocessing, ensemble.in_channels)]
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
