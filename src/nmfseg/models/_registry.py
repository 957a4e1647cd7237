"""Model registry: build any network by name (timm's ``create_model`` pattern).

A registered network is a :class:`ModelConfig`: the class (or function) that builds it, its
keyword arguments, and what it was made for (dataset, input/output channels, training patch
size, the paper's #params and FLOPs). :func:`create_model` builds one with user overrides
merged over the preset's arguments, and attaches the config to the model as
``model.model_config`` (timm's ``pretrained_cfg`` idea), so any later stage knows what the
network is.

Examples::

    >>> import nmfseg
    >>> "swin_factorizer_brats" in nmfseg.list_models()
    True
    >>> model_info("swin_factorizer_isles").patch_size
    (64, 64, 64)
    >>> net = nmfseg.create_model("local_factorizer_isles", channels=(8, 16, 32, 64, 128))
    >>> net.in_channels, net.out_channels, net.model_config.dataset
    (2, 1, 'ISLES22')
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmfseg.errors import ConfigError, DataError
from nmfseg.models.checkpoint import find_checkpoint, load_weights, read_checkpoint, read_weights
from nmfseg.registry import Registry

__all__ = [
    "PAPER_DATASETS",
    "ModelConfig",
    "create_model",
    "list_models",
    "load_model",
    "model_info",
    "register_model",
    "register_paper_presets",
    "temporarily_registered_model",
]

#: The paper's two datasets: the channels of their presets and the input of Tables 1-2.
PAPER_DATASETS: dict[str, dict[str, Any]] = {
    "brats": dict(dataset="BraTS", in_channels=4, out_channels=3, patch_size=(128, 128, 128)),
    "isles": dict(dataset="ISLES22", in_channels=2, out_channels=1, patch_size=(64, 64, 64)),
}


@dataclass(frozen=True)
class ModelConfig:
    """A registered network: how to build it and what it was made for.

    Attributes:
        name: Registry name (``swin_factorizer_brats``).
        builder: The class or function called with the keyword arguments.
        kwargs: The preset's keyword arguments (plain data: numbers, strings, lists, dicts).
        dataset: The dataset it is configured for (``"BraTS"``, ``"ISLES22"``), if any.
        in_channels: Input channels of the preset.
        out_channels: Output channels (regions) of the preset.
        patch_size: Training patch size (the paper's input size for its FLOPs).
        paper_params: #params reported by the paper, if any.
        paper_gflops: GFLOPs reported by the paper at ``(1, in_channels, *patch_size)``.
        description: One line for listings.
    """

    name: str
    builder: Callable[..., nn.Module]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    patch_size: tuple[int, ...] | None = None
    paper_params: float | None = None
    paper_gflops: float | None = None
    description: str = ""

    @property
    def spatial_dims(self) -> int:
        """2 or 3: the preset's ``spatial_dims`` argument, else the dims of its patch, else 3.

        Examples::

            >>> model_info("swin_factorizer_2d").spatial_dims
            2
            >>> model_info("unetr_brats").spatial_dims
            3
        """
        if "spatial_dims" in self.kwargs:
            return int(self.kwargs["spatial_dims"])
        return len(self.patch_size) if self.patch_size else 3

    def build(self, **overrides: Any) -> nn.Module:
        """The network with ``overrides`` merged over :attr:`kwargs` (dicts merged deeply)."""
        return self.builder(**merge_kwargs(self.kwargs, overrides))


MODELS: Registry[ModelConfig] = Registry("model")


def merge_kwargs(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``; a dict value updates a dict value key by key.

    Examples::

        >>> merge_kwargs({"a": 1, "b": {"x": 1, "y": 2}}, {"b": {"y": 3}})
        {'a': 1, 'b': {'x': 1, 'y': 3}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_kwargs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def register_model(entry: ModelConfig | Callable[..., nn.Module]) -> Any:
    """Register a network.

    Pass a :class:`ModelConfig` (a preset as data), or use it as a bare decorator on a
    function ``fn(**kwargs) -> nn.Module``, registered under the function's name.

    Raises:
        ValueError: The name is taken.
    """
    config = entry if isinstance(entry, ModelConfig) else ModelConfig(entry.__name__, entry)
    MODELS.add(config.name, config)
    return entry


def register_paper_presets(
    family: str,
    builder: Callable[..., nn.Module],
    kwargs: Mapping[str, Any],
    paper: Mapping[str, tuple[float | None, float | None]],
    description: str,
    per_dataset: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Register ``{family}_brats`` and ``{family}_isles`` (the datasets named in ``paper``).

    Each preset is ``builder(**kwargs, in_channels=, out_channels=, **per_dataset[dataset])``
    with the dataset's channels (:data:`PAPER_DATASETS`), and records the paper's
    ``(#params, GFLOPs)`` of Table 1 (BraTS) or Table 2 (ISLES'22).
    """
    for data, info in PAPER_DATASETS.items():
        if data not in paper:
            continue
        channels = {"in_channels": info["in_channels"], "out_channels": info["out_channels"]}
        register_model(
            ModelConfig(
                name=f"{family}_{data}",
                builder=builder,
                kwargs={**kwargs, **channels, **(per_dataset or {}).get(data, {})},
                paper_params=paper[data][0],
                paper_gflops=paper[data][1],
                description=f"{description}, {info['dataset']} preset",
                **info,
            )
        )


def temporarily_registered_model(config: ModelConfig) -> AbstractContextManager[ModelConfig]:
    """Register ``config`` inside a ``with`` block only (tests, experiments)."""
    return MODELS.temporarily(config.name, config)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell-style filter.

    Examples::

        >>> list_models("*_factorizer_isles")
        ['global_factorizer_isles', 'local_factorizer_isles', 'swin_factorizer_isles']
    """
    return MODELS.names(pattern)


def model_info(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered network.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered names).
    """
    return MODELS.get(name)


class UnknownArgument(ConfigError):
    """A keyword argument the network does not take (``--model-arg`` prefixes the option)."""

    def __init__(self, model: str, argument: str) -> None:
        self.model, self.argument = model, argument
        super().__init__(f"{model} has no argument {argument!r}")


def create_model(
    name: str, checkpoint_path: str | Path | None = None, **overrides: Any
) -> nn.Module:
    """Build a registered network, optionally with the weights of a checkpoint.

    Args:
        name: A name from :func:`list_models`.
        checkpoint_path: An nmfseg checkpoint (or a file holding a bare ``state_dict``)
            whose weights are loaded into the network; checkpoints of earlier nmfseg
            versions are upgraded (:func:`~nmfseg.models.checkpoint.upgrade_checkpoint`).
        **overrides: Keyword arguments merged over the preset's.

    Returns:
        The network, with ``model.model_config`` set (to the preset, its ``kwargs`` being the
        arguments actually used).

    Raises:
        ConfigError: Unknown name, unknown argument, or a bad argument value (the
            constructor's ``ValueError`` message, prefixed by the model name).
        DataError: The checkpoint cannot be read or its weights do not fit.
    """
    config = model_info(name)
    kwargs = merge_kwargs(config.kwargs, overrides)
    try:
        model = config.builder(**kwargs)
    except TypeError as err:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unknown:
            raise UnknownArgument(name, unknown[1]) from None
        raise
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from err
    model.model_config = dataclasses.replace(config, kwargs=kwargs)
    if checkpoint_path is not None:
        load_weights(model, read_weights(checkpoint_path), checkpoint_path)
    return model


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a checkpoint (or of a fold folder) in ``eval()`` mode.

    Works for any registered network: the checkpoint names it and holds the keyword
    arguments it was built with. For a folder, the checkpoint is picked as in
    :func:`~nmfseg.models.checkpoint.find_checkpoint` (final, then best, then last).

    Args:
        path: A ``checkpoint_*.pt`` file or a ``fold_K`` folder.
        device: Where to put the network.

    Returns:
        ``(model, config)``: the network on ``device`` in ``eval()`` mode, and the resolved
        training config stored with it (``config["patch_size"]``, ``config["dataset"]``...).

    Raises:
        DataError: No checkpoint, an unreadable file, or a network this version does not know.
    """
    path = find_checkpoint(path)
    ckpt = read_checkpoint(path)
    name = ckpt["model_name"]
    if name not in MODELS:
        raise DataError(path, f"network {name!r} is not registered in this nmfseg version")
    model = create_model(name, **dict(ckpt["model_kwargs"]))
    load_weights(model, ckpt, path)
    model.to(device).eval()
    return model, ckpt["config"]
