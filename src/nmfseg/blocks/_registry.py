"""The registry of U-Net blocks (see :mod:`nmfseg.blocks`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from torch import nn

from nmfseg.registry import Registry

__all__ = ["create_block", "list_blocks", "register_block", "temporarily_registered_block"]

BlockBuilder = Callable[..., nn.Module]
BLOCKS: Registry[BlockBuilder] = Registry("block")


def register_block(name: str) -> Callable[[BlockBuilder], BlockBuilder]:
    """Register a block constructor ``fn(channels, spatial_dims=..., dropout=..., **kwargs)``
    under ``name`` (a decorator)."""
    return BLOCKS.decorator(name)


def temporarily_registered_block(name: str, fn: BlockBuilder) -> AbstractContextManager[Any]:
    """Register ``fn`` as block ``name`` inside a ``with`` block only."""
    return BLOCKS.temporarily(name, fn)


def list_blocks() -> list[str]:
    """Names of the registered blocks, sorted."""
    return BLOCKS.names()


def create_block(
    name: str, channels: int, spatial_dims: int = 3, dropout: float = 0.0, **kwargs: Any
) -> nn.Module:
    """Build block ``name`` for ``channels`` channels.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered names).
    """
    return BLOCKS.get(name)(channels, spatial_dims=spatial_dims, dropout=dropout, **kwargs)
