"""Training configuration: the paper's recipe as YAML, overrides, validation.

A training config is a plain nested ``dict`` that round-trips through YAML. It is built in
three layers, later ones winning:

1. the packaged recipe for the dataset (``nmfseg/configs/brats.yaml``, ``isles.yaml`` or
   ``default.yaml``, named by the dataset's scheme, ``DatasetScheme.recipe``), or for a 2D
   network ``2d.yaml`` whatever the dataset (the dataset recipes hold 3D patches);
2. a user YAML file (``nmfseg train --config my.yaml``), holding any subset of the keys;
3. single values from the command line (``--steps 500``, ``--set augmentation.flip.prob=0``).

Unknown keys are refused (a typo must not silently train with the default), and
:func:`validate_config` checks every value, naming the option that set it. The resolved
config, with the model, dataset and fold filled in by the trainer, is saved as
``config.yaml`` next to the checkpoints and inside every checkpoint.

Examples::

    >>> from nmfseg.training.config import load_recipe, apply_overrides, validate_config
    >>> cfg = load_recipe("brats")
    >>> cfg["patch_size"], cfg["optimizer"]["lr"], cfg["augmentation"]["noise"]["variance"]
    ([128, 128, 128], 0.0001, [0.0, 0.1])
    >>> cfg = apply_overrides(cfg, {"steps": 10, "augmentation.flip.prob": 0.0})
    >>> validate_config(cfg)["augmentation"]["flip"]["prob"]
    0.0
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nmfseg.errors import ConfigError
from nmfseg.fileio import write_text
from nmfseg.text import split_list
from nmfseg.training.rules import RULES, BadValue

__all__ = [
    "RECIPES",
    "apply_overrides",
    "flatten_config",
    "load_recipe",
    "load_yaml",
    "merge_config",
    "parse_value",
    "save_config",
    "validate_config",
]

RECIPES = ("brats", "isles", "2d", "default")

# Keys the trainer fills in; a user YAML may not set them (they come from the data and CLI).
RESOLVED_KEYS = ("model", "dataset", "fold", "split")
# Free-form sections whose keys are not checked here (checked by the network constructor).
FREE_KEYS = ("model_args",)


def load_recipe(name: str) -> dict[str, Any]:
    """The packaged recipe: ``configs/default.yaml`` merged with ``configs/<name>.yaml``."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")

    def read(recipe: str) -> dict[str, Any]:
        path = resources.files("nmfseg").joinpath("configs", f"{recipe}.yaml")
        return yaml.safe_load(path.read_text("utf-8")) or {}

    cfg = read("default")
    if name != "default":
        cfg = merge_config(cfg, read(name), where=f"configs/{name}.yaml")
    cfg.setdefault("model_args", {})
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a user config file; any problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must hold a mapping of config keys")
    return data


def merge_config(
    base: Mapping[str, Any], override: Mapping[str, Any], where: str = "config"
) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``, refusing keys ``base`` does not have."""
    out = copy.deepcopy(dict(base))
    _merge_into(out, override, where, prefix="")
    return out


def _merge_into(dst: dict[str, Any], src: Mapping[str, Any], where: str, prefix: str) -> None:
    for key, value in src.items():
        path = f"{prefix}{key}"
        if path in RESOLVED_KEYS:
            raise ConfigError(f"{where}: '{path}' is set by nmfseg (from --model / the data)")
        if key not in dst:
            raise ConfigError(f"{where}: unknown config key '{path}'")
        if path in FREE_KEYS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: '{path}' must be a mapping")
            dst[key] = {**dst[key], **copy.deepcopy(dict(value))}
        elif isinstance(dst[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: '{path}' must be a mapping of its keys")
            _merge_into(dst[key], value, where, prefix=f"{path}.")
        else:
            dst[key] = copy.deepcopy(value)


def apply_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``{"optimizer.lr": 3e-4}``) in a copy of ``cfg``; unknown keys refused."""
    out = copy.deepcopy(dict(cfg))
    for dotted, value in overrides.items():
        nested: dict[str, Any] = {}
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        _merge_into(out, nested, where=f"--set {dotted}", prefix="")
    return out


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``: the dotted keys that
    overrides and ``--set`` use; a free-form section (``model_args``) stays one value.

    Examples::

        >>> flatten_config({"steps": 5, "optimizer": {"lr": 0.1}, "model_args": {"c": 1}})
        {'steps': 5, 'optimizer.lr': 0.1, 'model_args': {'c': 1}}
    """
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in FREE_KEYS:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_value(text: str, option: str = "value") -> Any:
    """Parse one command-line value: YAML scalars, and comma lists (``8,16,32`` -> list).

    A comma list with an empty item (``8,,16``, a trailing comma) is refused, as every comma
    list nmfseg reads (:func:`nmfseg.text.split_list`).

    Examples::

        >>> parse_value("8,16,32"), parse_value("1e-3"), parse_value("false"), parse_value("swin")
        ([8, 16, 32], 0.001, False, 'swin')
        >>> parse_value("8,,16", "--model-arg channels")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --model-arg channels '8,,16': an empty item in the comma list
    """
    text = text.strip()
    if "," in text and not text.startswith(("[", "{")):
        return [parse_value(t) for t in split_list(text, option)]
    for number in (int, float):  # YAML 1.1 would read "1e-3" as a string
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# --------------------------------------------------------------------------------- validation


def _keys(cfg: Mapping[str, Any], pattern: str) -> list[str]:
    """The keys of ``cfg`` a rule's key names (``*`` stands for every key of its section)."""
    head, star, tail = pattern.partition(".*.")
    if not star:
        return [pattern]
    node: Any = cfg
    for part in head.split("."):
        node = node[part]
    return [f"{head}.{name}.{tail}" for name in node]


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value


def validate_config(
    cfg: Mapping[str, Any], sources: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Check every value of a (merged) config against its rule; return a normalized copy.

    The rules are declared in :data:`nmfseg.training.rules.RULES`, one per key.

    Args:
        cfg: a config built from a recipe (all keys present).
        sources: optional map from a config key to the option that set it (e.g.
            ``{"patch_size": "--patch-size"}``), so errors name what the user typed.

    Raises:
        ConfigError: one line naming the key (or option), the rule and the bad value.

    Examples::

        >>> cfg = validate_config(load_recipe("isles"))
        >>> cfg["optimizer"]["betas"], cfg["amp"]
        ([0.9, 0.999], None)
        >>> validate_config({**cfg, "steps": 0}, {"steps": "--steps"})
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --steps: must be an integer >= 1, got 0
    """
    cfg = copy.deepcopy(dict(cfg))
    cfg.setdefault("model_args", {})
    for pattern, rule in RULES.items():
        for key in _keys(cfg, pattern):
            value = _get(cfg, key)
            try:
                _set(cfg, key, rule.check(value))
            except BadValue as err:
                label = (sources or {}).get(key, key)
                raise ConfigError(f"{label}: {err}, got {value!r}") from None
    return cfg


def save_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (temp file in the same folder, then rename)."""
    write_text(path, yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None))


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively, so YAML stays plain (no python/tuple tags)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
