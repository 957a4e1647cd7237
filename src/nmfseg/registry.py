"""A name -> object table, the one behind every "by name" choice of nmfseg.

Mixers (:mod:`nmfseg.mixers`), blocks (:mod:`nmfseg.blocks`), networks
(:mod:`nmfseg.models`) and dataset formats (:mod:`nmfseg.data.formats`) are each a
:class:`Registry`. Names keep configs and checkpoints plain data (a network stores
``mixer="nmf"``, never a class), and an unknown name is one :class:`~nmfseg.errors.ConfigError`
that lists the known ones.

Examples::

    >>> colours = Registry("colour")
    >>> colours.add("red", "#f00")
    >>> colours.get("red"), colours.names()
    ('#f00', ['red'])
    >>> with colours.temporarily("blue", "#00f"):
    ...     colours.names()
    ['blue', 'red']
    >>> colours.get("green")
    Traceback (most recent call last):
    ...
    nmfseg.errors.ConfigError: unknown colour 'green'; registered colours: red
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from nmfseg.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind by name.

    Args:
        kind: What the objects are, for messages (``"mixer"``, ``"dataset format"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``.

        Raises:
            ValueError: The name is taken.
        """
        if name in self._entries:
            raise ValueError(f"a {self.kind} named {name!r} is already registered.")
        self._entries[name] = obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator(name)`` registers the decorated object under ``name``."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def remove(self, name: str) -> None:
        """Forget ``name`` (no error if it is not registered)."""
        self._entries.pop(name, None)

    @contextmanager
    def temporarily(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` under ``name`` inside the ``with`` block only (tests, experiments)."""
        self.add(name, obj)
        try:
            yield obj
        finally:
            self.remove(name)

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
            ConfigError: ``name`` is not registered (the message lists the registered names).
        """
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted; ``pattern`` is a shell-style filter."""
        names = sorted(self._entries)
        return names if pattern is None else fnmatch.filter(names, pattern)

    def in_order(self) -> list[str]:
        """Registered names in registration order (e.g. the order formats are detected in)."""
        return list(self._entries)
