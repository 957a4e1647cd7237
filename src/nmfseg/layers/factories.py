"""Norm and activation layers from MONAI-style specs: ``"name"`` or ``("name", {kwargs})``.

The same vocabulary as MONAI's ``get_norm_layer`` / ``get_act_layer`` (``norm=("group",
{"num_groups": 8})``, ``act="leakyrelu"``), written here in a few lines because importing
MONAI's factories costs about two seconds at every ``import nmfseg.models``, and because the
paper's GroupNorm has a fixed *group size* (8 channels per group, ``("group", {"group_size":
8})``, the default) rather than a fixed number of groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["ActSpec", "NormSpec", "make_act", "make_norm"]

NormSpec = str | Sequence[Any]
ActSpec = str | Sequence[Any]

_ACTS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "relu": (nn.ReLU, {"inplace": True}),
    "leakyrelu": (nn.LeakyReLU, {"negative_slope": 0.01, "inplace": True}),
    "prelu": (nn.PReLU, {}),
    "elu": (nn.ELU, {"inplace": True}),
    "gelu": (nn.GELU, {}),
}
_NORMS = ("group", "instance", "batch")


def _split(spec: str | Sequence[Any], name: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``("name", {kwargs})`` (MONAI's form; a list from a config file too)."""
    if isinstance(spec, str):
        return spec.lower(), {}
    if (
        isinstance(spec, Sequence)
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], Mapping)
    ):
        return spec[0].lower(), dict(spec[1])
    raise ValueError(f"{name} should be a name or a (name, {{arguments}}) pair, got {spec!r}.")


def make_norm(norm: NormSpec, channels: int, spatial_dims: int = 3) -> nn.Module:
    """A norm layer over ``channels`` channels from a MONAI-style spec.

    Args:
        norm: ``"group"`` (groups of 8 channels), ``("group", {"group_size": k})`` (groups
            of ``k`` channels), ``("group", {"num_groups": g})`` (``g`` groups),
            ``"instance"`` (affine) or ``"batch"``, optionally with keyword arguments of
            the torch layer (``eps``, ``affine``...).
        channels: Number of channels.
        spatial_dims: 2 or 3 (for InstanceNorm and BatchNorm).

    Raises:
        ValueError: Unknown norm, or a group size that does not divide ``channels``.

    Examples::

        >>> make_norm("group", 32).num_groups  # groups of 8 channels
        4
        >>> make_norm(("group", {"num_groups": 8}), 32).num_groups
        8
        >>> norm = make_norm("instance", 16, spatial_dims=2)
        >>> type(norm).__name__, norm.affine
        ('InstanceNorm2d', True)
    """
    name, kwargs = _split(norm, "norm")
    if name not in _NORMS:
        raise ValueError(f"norm should be one of {_NORMS} (or (name, {{...}})), got {norm!r}.")
    if name == "group":
        size = kwargs.pop("group_size", None)
        groups = kwargs.pop("num_groups", None)
        if size is not None and groups is not None:
            raise ValueError(f"norm should give group_size or num_groups, not both: {norm!r}.")
        if groups is None:
            size = 8 if size is None else size
            if not isinstance(size, int) or size < 1 or channels % size:
                raise ValueError(
                    f"norm group_size should be a positive int dividing the {channels} "
                    f"channels, got {size!r}."
                )
            groups = channels // size
        if not isinstance(groups, int) or groups < 1 or channels % groups:
            raise ValueError(
                f"norm num_groups should be a positive int dividing the {channels} channels, "
                f"got {groups!r}."
            )
        return nn.GroupNorm(groups, channels, **kwargs)
    dims = {2: "2d", 3: "3d"}[spatial_dims]
    if name == "instance":
        return getattr(nn, f"InstanceNorm{dims}")(channels, **{"affine": True, **kwargs})
    return getattr(nn, f"BatchNorm{dims}")(channels, **kwargs)


def make_act(act: ActSpec) -> nn.Module:
    """An activation from a MONAI-style spec: a name of :data:`_ACTS` (``"leakyrelu"``,
    ``"relu"``, ``"prelu"``, ``"elu"``, ``"gelu"``), optionally with keyword arguments.

    Raises:
        ValueError: Unknown activation.

    Examples::

        >>> make_act("leakyrelu").negative_slope, make_act(("leakyrelu", {"negative_slope": 0.2}))
        (0.01, LeakyReLU(negative_slope=0.2, inplace=True))
    """
    name, kwargs = _split(act, "act")
    if name not in _ACTS:
        raise ValueError(f"act should be one of {tuple(_ACTS)} (or (name, {{...}})), got {act!r}.")
    cls, defaults = _ACTS[name]
    return cls(**{**defaults, **kwargs})
