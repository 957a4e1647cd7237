"""Model registry: build any network by name (timm's ``create_model`` pattern).

A preset is a constructor decorated with :func:`register_model`, which records its default
keyword arguments and its metadata (dataset, channels, training patch size, the paper's
#params/FLOPs). :func:`create_model` merges user overrides over the defaults.

Examples::

    >>> import nmfseg
    >>> "swin_factorizer_brats" in nmfseg.list_models()
    True
    >>> model_info("swin_factorizer_isles")["patch_size"]
    (64, 64, 64)
    >>> net = nmfseg.create_model("local_factorizer_isles", channels=(8, 16, 32, 64, 128))
    >>> net.in_channels, net.out_channels
    (2, 1)
"""

from __future__ import annotations

import copy
import fnmatch
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from nmfseg.errors import ConfigError

__all__ = ["create_model", "list_models", "model_info", "register_model"]

F = TypeVar("F", bound=Callable[..., nn.Module])

_CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, dict[str, Any]] = {}


def register_model(
    fn: F | None = None, *, defaults: dict[str, Any] | None = None, **metadata: Any
) -> Any:
    """Register a model constructor under its function name.

    Use bare (``@register_model``) or with the preset's default keyword arguments and its
    metadata (``@register_model(defaults={...}, dataset="BraTS", ...)``). The decorated
    function, called directly or through :func:`create_model`, receives the defaults
    updated with the caller's keyword arguments.

    Args:
        fn: The constructor, ``fn(**kwargs) -> nn.Module``.
        defaults: Keyword arguments of the preset.
        **metadata: Anything :func:`model_info` should report (e.g. ``dataset``,
            ``in_channels``, ``out_channels``, ``patch_size``, ``paper_params``,
            ``paper_gflops``).
    """

    def decorate(fn: F) -> F:
        name = fn.__name__
        if name in _CONSTRUCTORS:
            raise ValueError(f"a model named {name!r} is already registered.")
        preset = dict(defaults or {})

        @functools.wraps(fn)
        def build(**overrides: Any) -> nn.Module:
            return fn(**{**preset, **overrides})

        _CONSTRUCTORS[name] = build
        _INFO[name] = {"name": name, "defaults": preset, **metadata}
        return build  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell-style filter.

    Examples::

        >>> list_models("*_isles")
        ['global_factorizer_isles', 'local_factorizer_isles', 'swin_factorizer_isles']
    """
    names = sorted(_CONSTRUCTORS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def _check_name(name: str) -> None:
    if name not in _CONSTRUCTORS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def model_info(name: str) -> dict[str, Any]:
    """A copy of a preset's defaults and metadata.

    Keys: ``name``, ``defaults`` (the constructor's keyword arguments), and for the paper's
    presets ``dataset``, ``in_channels``, ``out_channels``, ``patch_size`` (training patch),
    ``paper_params`` and ``paper_gflops`` (Table 1/2, at ``(1, in_channels, *patch_size)``).

    Raises:
        ConfigError: ``name`` is not registered.
    """
    _check_name(name)
    return copy.deepcopy(_INFO[name])


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, with keyword arguments overriding the preset's defaults.

    Raises:
        ConfigError: Unknown name, unknown argument, or a bad argument value (the
            constructor's ``ValueError`` message, prefixed by the model name).
    """
    _check_name(name)
    try:
        return _CONSTRUCTORS[name](**overrides)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ConfigError(f"{name}: {err}") from err
        raise
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from err
