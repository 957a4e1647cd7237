"""Plans variants that put any registered nmfseg network into nnU-Net, and the trainer folder.

nnU-Net takes its architecture from the plans (``configurations.<c>.architecture``), as its
own residual-encoder presets do. :func:`write_plans_variant` copies a dataset's plans
(``nnUNetPlans.json`` by default) into a new file whose configurations name an nmfseg
network (``"network_class_name": "nmfseg:NAME"``, ``arch_kwargs`` the argument overrides)
with the patch rounded to the network's size multiple; everything else, the preprocessed
data included, stays the source plans' (same ``data_identifier``), so nothing is
preprocessed again. Train it with the generic trainer::

    nmfseg nnunet-plans 501 -m unetr_brats            # -> nnUNetPlans_unetr_brats.json
    nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerNmfseg -p nnUNetPlans_unetr_brats

Examples::

    >>> trainer_folder().name
    'ext'
    >>> sorted(p.name for p in trainer_folder().glob("*.py"))
    ['nmfseg_trainers.py']
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import read_json, write_json
from nmfseg.models.nnunet_arch import plans_architecture, probe_network, round_patch
from nmfseg.text import is_number

__all__ = ["find_preprocessed", "require_nnunet", "trainer_folder", "write_plans_variant"]

_DATASET_ID = re.compile(r"^Dataset(\d{3})_.+$")


def trainer_folder() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` (``nmfseg nnunet-path`` prints it)."""
    return Path(__file__).resolve().parent / "ext"


def require_nnunet() -> None:
    """Raise one line naming the extra when nnU-Net v2 is not installed.

    Raises:
        ConfigError: ``nnunetv2`` cannot be imported.
    """
    if importlib.util.find_spec("nnunetv2") is None:
        raise ConfigError(
            "nnU-Net v2 is not installed: pip install 'nmfseg[nnunet]' (nnunetv2 2.8)"
        )


def find_preprocessed(dataset: str | Path) -> Path:
    """The preprocessed folder of a dataset: a path, or an id / name under
    ``$nnUNet_preprocessed`` (``501``, ``Dataset501_Phantoms``).

    Raises:
        ConfigError: ``nnUNet_preprocessed`` is not set for an id or name.
        DataError: No such folder.
    """
    path = Path(dataset)
    if path.is_dir():
        return path
    root = os.environ.get("nnUNet_preprocessed")  # noqa: SIM112 (nnU-Net's name)
    if not root:
        raise ConfigError(
            f"dataset {str(dataset)!r}: give the preprocessed folder, or set nnUNet_preprocessed "
            "to find it by id or name"
        )
    text = str(dataset)
    names = sorted(p.name for p in Path(root).glob("Dataset*_*") if p.is_dir())
    for name in names:
        match = _DATASET_ID.match(name)
        if name == text or (match and is_number(text) and int(match[1]) == int(text)):
            return Path(root) / name
    raise DataError(root, f"no preprocessed dataset {text!r} (run nnUNetv2_plan_and_preprocess)")


def write_plans_variant(
    dataset: str | Path,
    model: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str = "nnUNetPlans",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write plans whose configurations build the registered network ``model``.

    Args:
        dataset: The preprocessed dataset folder, or its id or name under
            ``$nnUNet_preprocessed``.
        model: A name of :func:`~nmfseg.models.list_models`.
        overrides: Keyword arguments merged over the preset's (``channels``, ...).
        source: The plans to start from (``nnUNetPlans``, ``nnUNetResEncUNetMPlans``...).
        name: The new plans' name (default ``<source>_<model>``).
        overwrite: Replace an existing plans file of that name.

    Returns:
        The new plans file (``<dataset>/<name>.json``).

    Raises:
        ConfigError: Unknown network, bad overrides (checked by building the network), a
            name that is taken.
        DataError: No such dataset or source plans.
    """
    folder = find_preprocessed(dataset)
    plans_file = folder / f"{source}.json"
    if not plans_file.is_file():
        raise DataError(plans_file, "no such plans file (run nnUNetv2_plan_and_preprocess)")
    plans = read_json(plans_file)
    name = name or f"{source}_{model}"
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name) or "__" in name:
        raise ConfigError(f"--name {name!r}: letters, digits, '-' and single '_' only")
    out = folder / f"{name}.json"
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    overrides = dict(overrides or {})
    dataset_json = folder / "dataset.json"
    meta = read_json(dataset_json) if dataset_json.is_file() else {}
    n_in = len(meta.get("channel_names", meta.get("modality", {}))) or 1
    multiple = probe_network(model, overrides, n_in, 1, 3).size_multiple
    variant = copy.deepcopy(plans)
    variant["plans_name"] = name
    for config in variant.get("configurations", {}).values():
        if "patch_size" in config:
            config["patch_size"] = list(round_patch(config["patch_size"], multiple))
        if "architecture" in config or "patch_size" in config:
            config["architecture"] = plans_architecture(model, overrides)
    write_json(out, variant)
    return out
