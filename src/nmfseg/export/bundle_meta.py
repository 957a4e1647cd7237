"""The ``configs/metadata.json`` of a MONAI bundle written by ``nmfseg export``, with the
run's own validation Dice (:func:`run_metrics`), and the bundle's ``docs/README.md`` and
``configs/logging.conf``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmfseg import __version__
from nmfseg.export.bundle_config import describe_preprocessing
from nmfseg.fileio import read_json
from nmfseg.inference.ensemble import Ensemble

__all__ = [
    "BUNDLE_VERSION",
    "SCHEMA",
    "bundle_metadata",
    "bundle_readme",
    "logging_conf",
    "run_metrics",
]

#: The MONAI metadata schema the metadata follows (``verify_metadata`` downloads it).
SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
    "meta_schema_20240725.json"
)
BUNDLE_VERSION = "1.0.0"
PAPER = (
    "Ashtari P, Sima DM, De Lathauwer L, Sappey-Marinier D, Maes F, Van Huffel S. Factorizer: "
    "A scalable interpretable approach to context modeling for medical image segmentation. "
    "Medical Image Analysis, 2023."
)


# ---------------------------------------------------------------------- the run's numbers
def _key(region: str) -> str:
    return re.sub(r"\W+", "_", str(region)).strip("_") or "region"


def run_metrics(source: Path, ckpt: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """The validation Dice of the exported checkpoint, as ``eval_metrics``, and their origin.

    From the fold's ``validation/summary.json`` when it describes this checkpoint (the same
    file and training step), else from the validation row of the checkpoint's training log
    at its step. Never invented: without either, no metrics and a note that says so.

    Examples::

        >>> run_metrics(Path("fold_0/checkpoint_final.pt"), {"step": 10, "history": [
        ...     {"step": 10, "val_dice_lesion": 0.75, "val_dice": 0.75}]})[0]
        {'val_mean_dice': 0.75, 'val_mean_dice_lesion': 0.75}
    """
    step = ckpt.get("step")
    fold = source.parent.name
    summary_path = source.parent / "validation" / "summary.json"
    if summary_path.is_file():
        summary = read_json(summary_path)
        if summary.get("checkpoint") == source.name and summary.get("step", step) == step:
            mean = summary.get("mean") or {}
            values = {"val_mean_dice": summary.get("foreground_mean")}
            values |= {f"val_mean_dice_{_key(k)}": v for k, v in mean.items()}
            metrics = _finite(values)
            if metrics:
                cases = summary.get("n_cases", "?")
                return metrics, (
                    f"mean validation Dice over the {cases} validation cases of {fold} at step "
                    f"{summary.get('step', step)} (threshold {summary.get('threshold', '?')}), "
                    "from validation/summary.json"
                )
    for row in reversed(list(ckpt.get("history") or [])):
        if row.get("step") == step and "val_dice" in row:
            values = {"val_mean_dice": row["val_dice"]}
            values |= {
                f"val_mean_dice_{_key(k[len('val_dice_') :])}": v
                for k, v in row.items()
                if k.startswith("val_dice_")
            }
            metrics = _finite(values)
            if metrics:
                return metrics, (
                    f"mean validation Dice of {fold} at step {step}, from the checkpoint's "
                    "training log"
                )
    return {}, (
        f"no validation metrics: {fold} has no validation/summary.json for {source.name} and "
        f"its training log has no validation at step {step}"
    )


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            out[k] = round(float(v), 6)
    return out if "val_mean_dice" in out else {}


def _versions(names: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def bundle_metadata(
    ensemble: Ensemble,
    model_name: str,
    source: Path,
    ckpt: Mapping[str, Any],
    metrics: tuple[dict[str, float], str],
    torchscript_note: str,
) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's fields, ``network_data_format``, the run's numbers."""
    scheme = ensemble.scheme
    assert scheme is not None  # inference_config refuses a run without one
    channels = list(ensemble.channels or scheme.channels)
    regions = list(ensemble.regions or scheme.region_names)
    dataset = str((ensemble.config.get("dataset") or {}).get("name") or "the training dataset")
    labels = {str(v): scheme.label_names.get(v, f"label {v}") for v in scheme.labels}
    pre = ensemble.preprocessing
    modality = "CT" if "ct" in pre.schemes else "MR"
    patch = [int(p) for p in ensemble.patch_size]

    def tensor(kind: str, names: Sequence[str], value_range: list[float]) -> dict[str, Any]:
        return {
            "type": "image",
            "format": kind,
            **({"modality": modality} if kind == "magnitude" else {}),
            "num_channels": len(names),
            "spatial_shape": patch,
            "dtype": "float32",
            "value_range": value_range,
            "is_patch_data": True,
            "channel_def": {str(i): str(n) for i, n in enumerate(names)},
        }

    values, note = metrics
    versions = _versions(("monai", "nibabel", "pytorch-ignite", "fire"))
    painted = ", ".join(
        f"{r} -> {scheme.region_labels[r]}" for r in scheme.write_order if r in regions
    )
    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {
            BUNDLE_VERSION: f"exported by nmfseg {__version__} from {source.parent.name}/"
            f"{source.name} (step {ckpt.get('step', '?')})"
        },
        "monai_version": versions.get("monai", "unknown"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            "nmfseg": __version__,
            **{k: versions[k] for k in ("nibabel", "pytorch-ignite", "fire") if k in versions},
        },
        "name": f"{model_name} ({dataset})",
        "task": f"3D segmentation of {', '.join(regions)} from {', '.join(channels)}",
        "description": f"nmfseg network {model_name} trained on {dataset} ({source.parent.name}); "
        "sliding-window inference with nmfseg's preprocessing, labels written in the "
        f"dataset's own values ({scheme.name} scheme).",
        "authors": "nmfseg (exported with nmfseg export --format monai-bundle)",
        "copyright": "the owner of the training run",
        "data_source": dataset,
        "data_type": "nibabel",
        "image_classes": f"{len(channels)} channel data: "
        + ", ".join(f"{i}: {c}" for i, c in enumerate(channels)),
        "label_classes": "label map: " + ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "pred_classes": f"{len(regions)} region channels (sigmoid): {', '.join(regions)}; "
        f"written as one label map (painted {painted})",
        **({"eval_metrics": values} if values else {}),
        "intended_use": "Research only; not for clinical or diagnostic use.",
        "references": [PAPER],
        "network_data_format": {
            "inputs": {"image": tensor("magnitude", channels, [])},
            "outputs": {"pred": tensor("segmentation", regions, [0, 1])},
        },
        "nmfseg": {
            "model": model_name,
            "checkpoint": {"fold": source.parent.name, "file": source.name},
            "step": ckpt.get("step"),
            "validation": note,
            "scheme": scheme.to_dict(),
            "preprocessing": pre.to_dict(),
            "preprocessing_text": describe_preprocessing(pre, channels),
            "threshold": float(ensemble.threshold),
            "overlap": float(ensemble.overlap),
            "blend": str(ensemble.mode),
            "size_multiple": int(getattr(ensemble.models[0], "size_multiple", 1)),
            "torchscript": torchscript_note,
        },
    }
    return meta


# ---------------------------------------------------------------------- the other files
def logging_conf() -> str:
    """``configs/logging.conf``: INFO to standard output (MONAI's runner applies it)."""
    return "\n".join(
        [
            "[loggers]", "keys=root", "", "[handlers]", "keys=consoleHandler", "",
            "[formatters]", "keys=fullFormatter", "", "[logger_root]", "level=INFO",
            "handlers=consoleHandler", "", "[handler_consoleHandler]", "class=StreamHandler",
            "level=INFO", "formatter=fullFormatter", "args=(sys.stdout,)", "",
            "[formatter_fullFormatter]", "format=%(asctime)s - %(name)s - %(levelname)s - "
            "%(message)s", "",
        ]
    )  # fmt: skip


def bundle_readme(meta: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """``docs/README.md`` of a bundle: what goes in, what comes out, how to run it."""
    nmf = meta["nmfseg"]
    fmt = meta["network_data_format"]
    channels = fmt["inputs"]["image"]["channel_def"]
    regions = fmt["outputs"]["pred"]["channel_def"]
    inferer = config["inferer"]
    window = "x".join(map(str, inferer["roi_size"]))
    metrics = meta.get("eval_metrics")
    rows = (
        "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
        if metrics
        else "(none: see below)"
    )
    return f"""# {meta["name"]}

{meta["description"]}

Exported by nmfseg {_version(meta)} from `{nmf["checkpoint"]["fold"]}/{nmf["checkpoint"]["file"]}`
(step {nmf["step"]}). Research use only; not for clinical or diagnostic use.

## Install and run

```bash
pip install 'nmfseg[bundle]' pytorch-ignite   # nmfseg, MONAI with fire; ignite for the evaluator
python -m monai.bundle run --config_file configs/inference.json \\
    --meta_file configs/metadata.json --logging_file configs/logging.conf \\
    --bundle_root . --dataset_dir /path/to/images --output_dir /path/to/predictions
```

Run it from this folder (or pass `--bundle_root`). Settings can be changed on the command
line, e.g. `--inferer#overlap 0.25` or `--device "\\$torch.device('cpu')"`.

## Input

`--dataset_dir` is a folder in any format nmfseg reads (MSD, nnU-Net, BraTS 2021/2023,
ISLES'22: one case per case folder or file set), or a folder of NIfTI files, each one case:
a 4D file with the channels last. The channels, in this order:
{_bullets(channels)}

Before the network: {nmf["preprocessing_text"]}. The network slides over the case with
windows of {window} voxels, overlap {inferer["overlap"]}, {inferer["mode"]} blending.

## Output

`OUTPUT_DIR/<first input file>_seg.nii.gz`: one label map per case with the input's shape
and affine, in the dataset's labels ({meta["label_classes"]}). The network predicts the
regions (sigmoid, threshold {nmf["threshold"]}):
{_bullets(regions)}

and they are written as labels {meta["pred_classes"].split("(painted ", 1)[-1].rstrip(")")}
(later regions overwrite earlier ones).

## The run's validation

| metric | value |
| --- | --- |
{rows}

{nmf["validation"]}.

## Files

- `configs/inference.json`, `configs/metadata.json`, `configs/logging.conf`
- `models/model.pt`: the state dict of `network_def` (`nmfseg.create_model`)
- `models/model.ts` (TorchScript): {nmf["torchscript"]}

## Differences from `nmfseg predict`

The same preprocessing, window and threshold give the same labels up to rounding (MONAI
computes the z-score in float32, nmfseg in float64). nmfseg refuses images with NaN/Inf
voxels and predicts an all-zero image as background; MONAI does neither. `nmfseg predict`
writes the labels of the input's own format when its regions are the model's (BraTS 2021's
ET is 4); the bundle always writes the training dataset's. Test-time flips, fold ensembles
and post-processing are not part of the bundle.

Reference: {PAPER}
"""


def _version(meta: Mapping[str, Any]) -> str:
    """The nmfseg version that wrote a bundle's metadata."""
    return str(meta.get("required_packages_version", {}).get("nmfseg", "?"))


def _bullets(channel_def: Mapping[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in channel_def.items())
