"""nnU-Net v2 trainers that train nmfseg networks (``-tr nnUNetTrainerSwinFactorizer``).

nnU-Net finds a trainer by its class name, in its own package and in the folders of the
``nnUNet_extTrainer`` environment variable; ``nmfseg nnunet-path`` prints the folder that
holds these (a one-line module re-exporting this one). Then, from any shell::

    export nnUNet_extTrainer=$(nmfseg nnunet-path)
    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerSwinFactorizer
    nnUNetv2_predict -i IN -o OUT -d DATASET -c 3d_fullres -tr nnUNetTrainerSwinFactorizer

========================================= ===================================================
trainer                                   network
========================================= ===================================================
``nnUNetTrainerGlobalFactorizer``         the paper's Global Factorizer (any plans)
``nnUNetTrainerLocalFactorizer``          the paper's Local Factorizer (any plans)
``nnUNetTrainerSwinFactorizer``           the paper's Swin Factorizer (any plans)
``nnUNetTrainerNmfseg``                   the network the plans name (``nmfseg nnunet-plans``):
                                          any registered one, with argument overrides
``<any of these>_AdamWCosine``            the same with the paper's AdamW, warm-up and cosine
                                          schedule and deep-supervision weights
========================================= ===================================================

What stays nnU-Net's: the plans (spacing, normalization, patch and batch size), the data
loading and augmentation, the loss (Dice + cross-entropy for labels, Dice + BCE for
regions), SGD with the poly schedule, the validation, the checkpoints and the prediction.
What the trainers change:

- the network (:func:`~nmfseg.models.nnunet_arch.build_nnunet_network`): channels from
  the dataset, ``spatial_dims`` from the configuration (``2d`` works for every network that
  takes ``spatial_dims=2``);
- the patch, rounded to the network's size multiple and written into the plans that the
  trainer saves (``plans.json`` of the results folder), so prediction slides the same
  window;
- deep supervision: one output per scale the network computes (full resolution first,
  then 1/2, 1/4), nnU-Net's scales overridden to match, switched by nnU-Net's
  ``set_deep_supervision_enabled`` in both ``train()`` and ``eval()``; a network without
  deep supervision trains without it.

Examples::

    >>> nnUNetTrainerSwinFactorizer.model_name  # doctest: +SKIP
    'swin_factorizer_brats'
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import nn
from torch._dynamo import OptimizedModule
from torch.optim.lr_scheduler import _LRScheduler

from nmfseg.models.nnunet_arch import (
    build_nnunet_network,
    nnunet_model,
    plans_architecture,
    probe_network,
    round_patch,
)
from nmfseg.training.config import load_recipe
from nmfseg.training.schedule import WarmupCosine, adamw

__all__ = [
    "WarmupCosineLRScheduler",
    "nnUNetTrainerGlobalFactorizer",
    "nnUNetTrainerGlobalFactorizer_AdamWCosine",
    "nnUNetTrainerLocalFactorizer",
    "nnUNetTrainerLocalFactorizer_AdamWCosine",
    "nnUNetTrainerNmfseg",
    "nnUNetTrainerNmfseg_AdamWCosine",
    "nnUNetTrainerSwinFactorizer",
    "nnUNetTrainerSwinFactorizer_AdamWCosine",
]


class nnUNetTrainerNmfseg(nnUNetTrainer):
    """The nnU-Net trainer of nmfseg networks; builds the network the plans name.

    Subclasses for one network set :attr:`model_name` (a registered name); subclass any of
    them as you would an nnU-Net trainer (keep the constructor's signature, nnU-Net reads
    it). The network and its argument overrides are written into the plans saved with the
    results (``"network_class_name": "nmfseg:NAME"``).
    """

    model_name: str | None = None

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_outputs = self._fit_patch_to_network()
        self.enable_deep_supervision = self.num_outputs > 1

    def _fit_patch_to_network(self) -> int:
        """Name the network and round the patch to its size multiple, in the configuration
        and in the plans saved with the results; returns the network's number of outputs."""
        config = self.configuration_manager.configuration
        name, overrides = nnunet_model(config, self.model_name)
        saved = self.plans_manager.plans["configurations"][self.configuration_name]
        config["architecture"] = saved["architecture"] = plans_architecture(name, overrides)
        n_in = determine_num_input_channels(
            self.plans_manager, self.configuration_manager, self.dataset_json
        )
        n_out = self.label_manager.num_segmentation_heads
        net = probe_network(name, overrides, n_in, n_out, len(config["patch_size"]))
        patch = list(round_patch(config["patch_size"], net.size_multiple))
        if patch != list(config["patch_size"]):
            self.print_to_log_file(
                f"nmfseg: patch size {list(config['patch_size'])} rounded to {patch}, a "
                f"multiple of {net.size_multiple} for {name}"
            )
            config["patch_size"] = saved["patch_size"] = patch
        return int(net.num_outputs)

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: Any,
        configuration_manager: Any,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        """The nmfseg network of this trainer and plans (nnU-Net calls this to train and
        again, with ``enable_deep_supervision=False``, to predict)."""
        return build_nnunet_network(
            configuration_manager.configuration,
            num_input_channels,
            num_output_channels,
            bool(enable_deep_supervision),
            cls.model_name,
        )

    def _network_module(self) -> Any:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Every deep-supervision output (``True``) or one tensor, in any module mode."""
        self._network_module().set_deep_supervision(bool(enabled))

    def _get_deep_supervision_scales(self) -> list[list[float]] | None:
        """One scale per output of the network: ``[1, ...], [1/2, ...], [1/4, ...]``."""
        if not self.enable_deep_supervision:
            return None
        dims = len(self.configuration_manager.patch_size)
        return [[1.0 / 2**i] * dims for i in range(self.num_outputs)]


class WarmupCosineLRScheduler(_LRScheduler):
    """The paper's schedule per nnU-Net epoch: linear warm-up, then cosine to 0.

    nnU-Net steps its scheduler once per epoch with the epoch number (``step(epoch)``), as
    its ``PolyLRScheduler``; the warm-up is the paper's share of the run (2000 of 100000
    steps: 2%, at least one epoch).

    Examples::

        >>> opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-4)
        >>> sched = WarmupCosineLRScheduler(opt, 1e-4, 100)
        >>> [round(sched.factor(e), 3) for e in (0, 1, 2, 51, 99)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_steps: int) -> None:
        recipe = load_recipe("default")
        share = recipe["scheduler"]["warmup_steps"] / recipe["steps"]
        self.initial_lr = float(initial_lr)
        self.factor = WarmupCosine(max(1, math.ceil(share * max_steps)), max_steps)
        self.ctr = 0
        super().__init__(optimizer)

    def step(self, current_step: int | None = None) -> None:  # type: ignore[override]
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.initial_lr * self.factor(int(current_step))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)


class _PaperRecipe:
    """The paper's optimizer (AdamW), schedule and deep-supervision weights (1, 1/2, 1/4)
    inside nnU-Net (nmfseg's ``default.yaml``); mixed into a trainer before it."""

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, _LRScheduler]:
        opt = load_recipe("default")["optimizer"]
        self.initial_lr = float(opt["lr"])
        optimizer = adamw(self.network.parameters(), opt)  # type: ignore[attr-defined]
        epochs = self.num_epochs  # type: ignore[attr-defined]
        return optimizer, WarmupCosineLRScheduler(optimizer, self.initial_lr, epochs)

    def _build_loss(self) -> nn.Module:
        loss = super()._build_loss()  # type: ignore[misc]
        if isinstance(loss, DeepSupervisionWrapper):
            paper = np.asarray(load_recipe("default")["loss"]["ds_weights"], float)
            n = len(loss.weight_factors)
            weights = np.array([paper[min(i, len(paper) - 1)] for i in range(n)])
            loss.weight_factors = tuple(weights / weights.sum())
        return loss


class nnUNetTrainerGlobalFactorizer(nnUNetTrainerNmfseg):
    """The paper's Global Factorizer (``global_factorizer_brats``) inside nnU-Net."""

    model_name = "global_factorizer_brats"


class nnUNetTrainerLocalFactorizer(nnUNetTrainerNmfseg):
    """The paper's Local Factorizer (``local_factorizer_brats``) inside nnU-Net."""

    model_name = "local_factorizer_brats"


class nnUNetTrainerSwinFactorizer(nnUNetTrainerNmfseg):
    """The paper's Swin Factorizer (``swin_factorizer_brats``) inside nnU-Net."""

    model_name = "swin_factorizer_brats"


class nnUNetTrainerNmfseg_AdamWCosine(_PaperRecipe, nnUNetTrainerNmfseg):
    """:class:`nnUNetTrainerNmfseg` with the paper's optimizer and schedule."""


class nnUNetTrainerGlobalFactorizer_AdamWCosine(_PaperRecipe, nnUNetTrainerGlobalFactorizer):
    """:class:`nnUNetTrainerGlobalFactorizer` with the paper's optimizer and schedule."""


class nnUNetTrainerLocalFactorizer_AdamWCosine(_PaperRecipe, nnUNetTrainerLocalFactorizer):
    """:class:`nnUNetTrainerLocalFactorizer` with the paper's optimizer and schedule."""


class nnUNetTrainerSwinFactorizer_AdamWCosine(_PaperRecipe, nnUNetTrainerSwinFactorizer):
    """:class:`nnUNetTrainerSwinFactorizer` with the paper's optimizer and schedule."""
