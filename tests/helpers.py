"""Helpers shared by the test modules (fixtures are in ``conftest.py``).

- :func:`small_model` builds any registered network at a reduced width (:data:`SMALL`), so a
  registry-wide test stays well under a second per network.
- :func:`cli` runs the ``nmfseg`` command in-process and returns typer's result.
- :func:`train_tiny` trains a tiny Swin Factorizer for 2 steps on a toy dataset.
- :data:`KILL_RUNNER` runs the CLI in a subprocess that SIGKILLs itself after a training step.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch
from torch import nn
from typer.testing import CliRunner, Result

from nmfseg.cli import app
from nmfseg.models import create_model, model_info
from nmfseg.phantoms.toy import make_toy_dataset

# Reduced-width constructor overrides, by model name pattern (the first match wins), and the
# number of outputs each returns in train() (deep supervision).
SMALL: dict[str, tuple[dict[str, Any], int]] = {
    "*factorizer_*": (dict(channels=(8, 16, 32, 64, 128)), 3),
    "performer_*": (dict(channels=(8, 16, 32, 64, 128)), 3),
    "nnformer_*": (dict(feature_size=12, num_heads=(1, 2, 4, 8)), 3),
    "nnunet_*": (dict(channels=(8, 16, 32, 64, 128)), 3),
    "resunet_*": (dict(channels=(8, 16, 32, 64, 128)), 3),
    "transbts_*": (
        dict(
            feature_size=8,
            blocks_down=[1, 1, 1, 1],
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            mlp_dim=64,
        ),
        1,
    ),
    "unetr_*": (dict(feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2), 1),
    "swin_unetr_*": (dict(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), 1),
    "segresnet_*": (dict(init_filters=8), 1),
}


# Feature-map shapes every matricize and one-node NMF test covers: divisible, padded, clamped,
# a stage smaller than the window, 2D and 3D, odd and 1-voxel dims.
MATRICIZE_SHAPES = [
    (2, 8, 16, 16, 16),  # 3D, divisible
    (1, 8, 12, 5, 9),  # 3D, padded along two dims, clamped along one
    (2, 16, 4, 4, 4),  # 3D, a stage smaller than the window: one clamped window
    (2, 8, 16, 24),  # 2D, divisible
    (1, 4, 50, 70),  # 2D, padded
    (3, 4, 7, 1),  # 2D, odd and 1-voxel dims
]

# ``python -c KILL_RUNNER STEP ARGS...``: ``nmfseg ARGS`` killed with SIGKILL right after
# optimizer step STEP (before any file of that step is written), through the trainer's public
# ``on_step_end`` hook; to test that an interrupted run resumes exactly.
KILL_RUNNER = (
    "import os, signal, sys\n"
    "from nmfseg.training.trainer import Trainer\n"
    "def on_step_end(self, step, loss, kill_at=int(sys.argv[1])):\n"
    "    if step == kill_at:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "Trainer.on_step_end = on_step_end\n"
    "from nmfseg.cli import main\n"
    "main(sys.argv[2:])\n"
)


def small_kwargs(name: str) -> tuple[dict[str, Any], int]:
    """``(overrides, outputs in train())`` of :data:`SMALL` for a registered model."""
    for pattern, entry in SMALL.items():
        if fnmatch.fnmatch(name, pattern):
            return entry
    raise KeyError(f"no reduced-width entry in tests/helpers.py SMALL for model {name!r}")


def preset_size(name: str, size: tuple[int, ...]) -> tuple[int, ...]:
    """A 3D test ``size`` for the preset ``name``: as it is, or its first two sizes for a 2D
    preset (``swin_factorizer_2d``)."""
    return tuple(size[: model_info(name).spatial_dims])


def small_model(name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """The preset ``name`` at a reduced width (:data:`SMALL`), built from ``seed``."""
    torch.manual_seed(seed)
    return create_model(name, **{**small_kwargs(name)[0], **kwargs})


def pointwise_net(in_channels: int = 2, out_channels: int = 3, seed: int = 0) -> nn.Module:
    """A seeded 1x1x1 convolution: a network whose sliding-window output is known exactly."""
    torch.manual_seed(seed)
    return nn.Conv3d(in_channels, out_channels, kernel_size=1)


def cli(*args: Any) -> Result:
    """``nmfseg ARGS`` in-process; every argument is passed as a string."""
    return CliRunner().invoke(app, [str(a) for a in args])


def train_tiny(
    root: Path, fold: int = 1, model: str = "swin_factorizer_isles"
) -> tuple[Path, Path]:
    """``(dataset, run folder)``: a 2-step tiny ``model`` on 4 toy ISLES'22 cases, fold
    ``fold`` of 2 (so 2 validation cases), trained through the CLI."""
    data = make_toy_dataset(root / "Toy", "isles22", n_cases=4, shape=(28, 30, 26), seed=1)
    result = cli(
        "train", data, "--model", model, "--fold", fold, "--out", root / "runs", "--steps", 2,
        "--patch-size", 16, "--n-folds", 2, "--workers", 0, "--val-every", 2, "--seed", 3,
        "--model-arg", "channels=4,8,16", "--model-arg", "deep_supr_num=1", "--device", "cpu",
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return data, root / "runs" / data.name / model


# An nnU-Net v2 region-based BraTS dataset.json, written from nnU-Net's documentation.
NNUNET_BRATS_JSON = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
    "labels": {
        "background": 0,
        "whole tumor": [1, 2, 3],
        "tumor core": [2, 3],
        "enhancing tumor": [3],
    },
    "regions_class_order": [1, 2, 3],
    "numTraining": 1,
    "file_ending": ".nii.gz",
}
