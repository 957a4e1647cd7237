"""The registry of token mixers (see :mod:`nmfseg.mixers`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from torch import nn

from nmfseg.registry import Registry

__all__ = ["create_mixer", "list_mixers", "register_mixer", "temporarily_registered_mixer"]

MixerBuilder = Callable[..., nn.Module | None]
MIXERS: Registry[MixerBuilder] = Registry("mixer")


def register_mixer(name: str) -> Callable[[MixerBuilder], MixerBuilder]:
    """Register a mixer constructor under ``name`` (a decorator).

    The constructor is called as ``fn(channels, spatial_dims=..., dropout=..., **kwargs)``
    and returns the mixer module (or ``None`` for no mixer).
    """
    return MIXERS.decorator(name)


def temporarily_registered_mixer(name: str, fn: MixerBuilder) -> AbstractContextManager[Any]:
    """Register ``fn`` as mixer ``name`` inside a ``with`` block only (tests, experiments)."""
    return MIXERS.temporarily(name, fn)


def list_mixers() -> list[str]:
    """Names of the registered mixers, sorted."""
    return MIXERS.names()


def create_mixer(
    name: str, channels: int, spatial_dims: int = 3, dropout: float = 0.0, **kwargs: Any
) -> nn.Module | None:
    """Build mixer ``name`` for ``channels`` channels.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered names).
    """
    return MIXERS.get(name)(channels, spatial_dims=spatial_dims, dropout=dropout, **kwargs)


@register_mixer("none")
def _no_mixer(channels: int, spatial_dims: int = 3, dropout: float = 0.0) -> None:
    del channels, spatial_dims, dropout
