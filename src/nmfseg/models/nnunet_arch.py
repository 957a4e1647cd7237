"""Which nmfseg network an nnU-Net v2 trainer or plans file describes, and how to build it.

nnU-Net builds its network in ``nnUNetTrainer.build_network_architecture`` from the plans
and the dataset; at prediction time it builds it again from the results folder's
``plans.json`` and the trainer's name in the checkpoint. This module is that mapping for
nmfseg's networks, as plain data, so that the nnU-Net trainers
(:mod:`nmfseg.nnunet.trainers`) and nmfseg's own readers of nnU-Net results folders
(``nmfseg explain``, ``nmfseg ablate``, ``Predictor.from_run``) build the same network
without importing nnU-Net:

- a Factorizer trainer (``nnUNetTrainerSwinFactorizer`` ...) builds its Factorizer; the
  generic ``nnUNetTrainerNmfseg`` builds the network that a plans configuration names with
  ``"network_class_name": "nmfseg:NAME"`` (written by ``nmfseg nnunet-plans``), whose
  ``arch_kwargs`` are merged over the preset's arguments; either way the trainer writes
  that entry into the plans it saves with its results, so ``plans.json`` alone says which
  network a results folder holds;
- input and output channels come from the dataset (``num_input_channels`` and nnU-Net's
  number of segmentation heads: one per region for region-based training, one per class
  with background for softmax training), ``spatial_dims`` from the configuration's patch
  (``2d`` or ``3d_*``), and a preset's ``img_size`` (UNETR) is the patch;
- the patch is rounded to the network's size multiple (:func:`round_patch`), so no window
  is padded; the trainers write the rounded patch into the plans they save.

Examples::

    >>> round_patch([40, 224, 192], 16)
    (48, 224, 192)
    >>> nnunet_model({"patch_size": [64, 64]}, "swin_factorizer_brats")
    ('swin_factorizer_brats', {})
    >>> name, kwargs = nnunet_model({"architecture": plans_architecture("unetr_isles", {})})
    >>> name, network_kwargs(name, kwargs, 4, 2, (32, 32, 32))["img_size"]
    ('unetr_isles', (32, 32, 32))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nmfseg.errors import ConfigError
from nmfseg.models._registry import MODELS, create_model, model_info

__all__ = [
    "ARCH_PREFIX",
    "build_nnunet_network",
    "network_kwargs",
    "nnunet_model",
    "plans_architecture",
    "plans_network",
    "probe_network",
    "round_patch",
]

#: How a plans configuration names an nmfseg network: ``"network_class_name": "nmfseg:NAME"``.
ARCH_PREFIX = "nmfseg:"


def plans_network(configuration: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(name, overrides)`` of the nmfseg network a plans configuration names, or ``None``
    for any other architecture (nnU-Net's own).

    Examples::

        >>> plans_network({"architecture": {"network_class_name": "nmfseg:unetr_brats"}})
        ('unetr_brats', {})
        >>> plans_network({"architecture": {"network_class_name": "dynamic_network_"
        ...                                 "architectures.architectures.unet.PlainConvUNet"}})
    """
    arch = configuration.get("architecture")
    if not isinstance(arch, Mapping):
        return None
    cls = str(arch.get("network_class_name", ""))
    if not cls.startswith(ARCH_PREFIX):
        return None
    kwargs = arch.get("arch_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"plans architecture {cls!r}: arch_kwargs must be a dict")
    return cls[len(ARCH_PREFIX) :], dict(kwargs)


def plans_architecture(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The plans' ``architecture`` entry that names an nmfseg network (inverse of
    :func:`plans_network`).

    Examples::

        >>> plans_architecture("swin_factorizer_brats", {"channels": [8, 16, 32, 64, 128]})
        {'network_class_name': 'nmfseg:swin_factorizer_brats', 'arch_kwargs': {'channels': \
[8, 16, 32, 64, 128]}, '_kw_requires_import': []}
    """
    return {
        "network_class_name": ARCH_PREFIX + name,
        "arch_kwargs": dict(overrides),
        "_kw_requires_import": [],
    }


def nnunet_model(
    configuration: Mapping[str, Any], model_name: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The registered network and the argument overrides of an nmfseg trainer and plans.

    Args:
        configuration: The plans configuration (``plans["configurations"][name]``, with
            inheritance resolved).
        model_name: The trainer's network (``nnUNetTrainerSwinFactorizer.model_name``), or
            ``None`` for the network the plans name (``nnUNetTrainerNmfseg``).

    Returns:
        ``(name, overrides)``: a name of :func:`~nmfseg.models.list_models` and the plans'
        ``arch_kwargs`` for it (empty with nnU-Net's own architecture in the plans).

    Raises:
        ConfigError: No network named by either, plans that name another network than the
            trainer's, or an unregistered name.
    """
    planned = plans_network(configuration)
    if model_name is None:
        if planned is None:
            raise ConfigError(
                "nnUNetTrainerNmfseg builds the network the plans name, and these plans name "
                "nnU-Net's own; write plans for an nmfseg network with nmfseg nnunet-plans and "
                "train with -p, or use a Factorizer trainer (nnUNetTrainerSwinFactorizer, ...)"
            )
        name, kwargs = planned
    else:
        name, kwargs = model_name, {}
        if planned is not None:
            if planned[0] != model_name:
                raise ConfigError(
                    f"this trainer builds {model_name} but the plans name {planned[0]}; train "
                    "those plans with -tr nnUNetTrainerNmfseg"
                )
            kwargs = planned[1]
    if name not in MODELS:
        raise ConfigError(f"the plans name the network {name!r}, which is not registered")
    return name, kwargs


def round_patch(patch: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each patch size rounded to the nearest multiple of ``multiple`` (at least one).

    Ties round up; a size that is already a multiple is kept.

    Examples::

        >>> round_patch([20, 160, 7], 16)
        (16, 160, 16)
    """
    m = int(multiple)
    return tuple(max(m, m * math.floor(int(p) / m + 0.5)) for p in patch)


def network_kwargs(
    name: str,
    overrides: Mapping[str, Any],
    in_channels: int,
    out_channels: int,
    patch: Sequence[int],
) -> dict[str, Any]:
    """The keyword arguments for ``create_model(name, ...)`` inside nnU-Net.

    The dataset's channels, ``spatial_dims`` from the patch, the preset's deep-supervision
    heads kept (nnU-Net switches them with its flag), the patch as ``img_size`` where the
    preset has one, then the plans' overrides.
    """
    preset = model_info(name).kwargs
    kwargs: dict[str, Any] = {
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "spatial_dims": len(patch),
    }
    if "img_size" in preset:
        kwargs["img_size"] = tuple(int(p) for p in patch)
    return {**kwargs, **overrides}


def probe_network(
    name: str, overrides: Mapping[str, Any], in_channels: int, out_channels: int, dims: int
) -> Any:
    """The network ``name`` built on the meta device (no memory, no weights), at the preset's
    training patch: what its ``size_multiple`` and ``num_outputs`` are before nnU-Net's
    patch is rounded (a patch that is not yet a multiple could be refused, e.g. by UNETR).

    Examples::

        >>> net = probe_network("swin_factorizer_brats", {}, 4, 3, 3)
        >>> net.size_multiple, net.num_outputs
        (16, 3)
    """
    probe = (model_info(name).patch_size or (128,) * 3)[:1] * dims
    with torch.device("meta"):
        return create_model(
            name, **network_kwargs(name, overrides, in_channels, out_channels, probe)
        )


def build_nnunet_network(
    configuration: Mapping[str, Any],
    in_channels: int,
    out_channels: int,
    deep_supervision: bool | None = None,
    model_name: str | None = None,
) -> Any:
    """Build the network of an nmfseg trainer and plans configuration, as nnU-Net will.

    Args:
        configuration: The plans configuration (its ``patch_size`` is the one used).
        in_channels: Input channels (nnU-Net's ``num_input_channels``).
        out_channels: Output channels (nnU-Net's number of segmentation heads).
        deep_supervision: Passed to
            :meth:`~nmfseg.models.base.SegmentationNetwork.set_deep_supervision`.
        model_name: The trainer's network, or ``None`` for the one the plans name.

    Returns:
        The network (``model.model_config`` names it), in ``train()`` mode.

    Examples::

        >>> net = build_nnunet_network({"patch_size": [16, 16], "architecture":
        ...     plans_architecture("swin_factorizer_isles", {"channels": [8, 16, 32, 64]})},
        ...     3, 2, False)
        >>> net.spatial_dims, net.in_channels, net.out_channels, net.model_config.name
        (2, 3, 2, 'swin_factorizer_isles')
    """
    name, overrides = nnunet_model(configuration, model_name)
    patch = tuple(int(p) for p in configuration["patch_size"])
    model = create_model(name, **network_kwargs(name, overrides, in_channels, out_channels, patch))
    model.set_deep_supervision(deep_supervision)
    return model
