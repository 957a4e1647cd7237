"""Training configuration: the paper's recipe as YAML, overrides, validation.

A training config is a plain nested ``dict`` that round-trips through YAML. It is built in
three layers, later ones winning:

1. the packaged recipe for the dataset (``nmfseg/configs/brats.yaml``, ``isles.yaml`` or
   ``default.yaml``, named by the dataset's scheme, ``DatasetScheme.recipe``);
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
import math
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nmfseg.errors import ConfigError
from nmfseg.fileio import write_text

__all__ = [
    "RECIPES",
    "apply_overrides",
    "default_workers",
    "load_recipe",
    "load_yaml",
    "merge_config",
    "parse_value",
    "save_config",
    "validate_config",
]

RECIPES = ("brats", "isles", "default")

# Keys the trainer fills in; a user YAML may not set them (they come from the data and CLI).
RESOLVED_KEYS = ("model", "dataset", "fold", "split")
# Free-form sections whose keys are not checked here (checked by the network constructor).
FREE_KEYS = ("model_args",)


def default_workers() -> int:
    """DataLoader workers when the config leaves them open: the cores this process may use
    (``os.sched_getaffinity``), at most 4.

    Examples::

        >>> 1 <= default_workers() <= 4
        True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


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


def parse_value(text: str) -> Any:
    """Parse one command-line value: YAML scalars, and comma lists (``8,16,32`` -> list).

    Examples::

        >>> parse_value("8,16,32"), parse_value("1e-3"), parse_value("false"), parse_value("swin")
        ([8, 16, 32], 0.001, False, 'swin')
    """
    text = text.strip()
    if "," in text and not text.startswith(("[", "{")):
        return [parse_value(t) for t in text.split(",") if t.strip()]
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


def _label(key: str, sources: Mapping[str, str] | None) -> str:
    return (sources or {}).get(key, key)


def _fail(key: str, sources: Mapping[str, str] | None, problem: str, value: Any) -> None:
    raise ConfigError(f"{_label(key, sources)}: {problem}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int(cfg: dict, key: str, low: int, src: Mapping[str, str] | None) -> None:
    value = _get(cfg, key)
    if not _is_int(value) or value < low:
        _fail(key, src, f"must be an integer >= {low}", value)


def _num(
    cfg: dict,
    key: str,
    src: Mapping[str, str] | None,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    value = _get(cfg, key)
    ok = _is_num(value) and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        _fail(key, src, f"must be a number in {lo}{low}, {high}{hi}", value)


def _range(cfg: dict, key: str, src: Mapping[str, str] | None, low: float, low_open: bool) -> None:
    value = _get(cfg, key)
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_num(v) for v in value)
    ok = ok and value[0] <= value[1] and (value[0] > low if low_open else value[0] >= low)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        _fail(key, src, f"must be a range [low, high] with low <= high and low {bound}", value)
    _set(cfg, key, [float(v) for v in value])


def _choice(cfg: dict, key: str, choices: tuple, src: Mapping[str, str] | None) -> None:
    value = _get(cfg, key)
    if value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        _fail(key, src, f"must be one of {shown}", value)


def _get(cfg: dict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def validate_config(
    cfg: Mapping[str, Any], sources: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Check every value of a (merged) config; return a normalized copy.

    Args:
        cfg: a config built from a recipe (all keys present).
        sources: optional map from a config key to the option that set it (e.g.
            ``{"patch_size": "--patch-size"}``), so errors name what the user typed.

    Raises:
        ConfigError: one line naming the key (or option), the rule and the bad value.
    """
    cfg = copy.deepcopy(dict(cfg))
    src = sources
    patch = cfg.get("patch_size")
    if patch is not None:
        if _is_int(patch):
            patch = [patch] * 3
        if (
            not isinstance(patch, (list, tuple))
            or len(patch) not in (2, 3)
            or not all(_is_int(p) and p >= 1 for p in patch)
        ):
            _fail("patch_size", src, "must be 2 or 3 positive integers (or one for a cube)", patch)
        cfg["patch_size"] = [int(p) for p in patch]
    if cfg["workers"] is None:
        cfg["workers"] = default_workers()
    for key, low in (("batch_size", 1), ("steps", 1), ("seed", 0), ("workers", 0)):
        _int(cfg, key, low, src)
    for key in ("val_every", "checkpoint_every", "log_every"):
        _int(cfg, key, 1, src)
    _int(cfg, "n_folds", 2, src)
    _num(cfg, "optimizer.lr", src, low=0.0, low_open=True)
    _num(cfg, "optimizer.weight_decay", src, low=0.0)
    betas = cfg["optimizer"]["betas"]
    if not (
        isinstance(betas, (list, tuple))
        and len(betas) == 2
        and all(_is_num(b) and 0 <= b < 1 for b in betas)
    ):
        _fail("optimizer.betas", src, "must be two numbers in [0, 1)", betas)
    cfg["optimizer"]["betas"] = [float(b) for b in betas]
    if cfg["optimizer"]["grad_clip"] is not None:
        _num(cfg, "optimizer.grad_clip", src, low=0.0, low_open=True)
    _int(cfg, "scheduler.warmup_steps", 0, src)
    _num(cfg, "loss.dice_eps", src, low=0.0, low_open=True)
    weights = cfg["loss"]["ds_weights"]
    if not (
        isinstance(weights, (list, tuple))
        and weights
        and all(_is_num(w) and w >= 0 for w in weights)
        and any(w > 0 for w in weights)
    ):
        _fail("loss.ds_weights", src, "must be a list of weights >= 0, not all 0", weights)
    cfg["loss"]["ds_weights"] = [float(w) for w in weights]
    _choice(cfg, "loss.ds_target", ("nearest", "avg"), src)
    aug = "augmentation"
    for name in cfg[aug]:
        _num(cfg, f"{aug}.{name}.prob", src, low=0.0, high=1.0)
    _range(cfg, f"{aug}.affine.rotate_deg", src, -180.0, low_open=False)
    _range(cfg, f"{aug}.affine.scale", src, 0.0, low_open=True)
    _range(cfg, f"{aug}.noise.variance", src, 0.0, low_open=False)
    _range(cfg, f"{aug}.smooth.sigma", src, 0.0, low_open=True)
    _range(cfg, f"{aug}.scale_intensity.factor", src, 0.0, low_open=False)
    _range(cfg, f"{aug}.shift_intensity.offset", src, -math.inf, low_open=True)
    _range(cfg, f"{aug}.contrast.gamma", src, 0.0, low_open=True)
    _num(cfg, "validation.overlap", src, low=0.0, high=1.0, high_open=True)
    _choice(cfg, "validation.mode", ("gaussian", "constant"), src)
    _int(cfg, "validation.sw_batch_size", 1, src)
    _num(cfg, "validation.threshold", src, low=0.0, high=1.0, low_open=True, high_open=True)
    device = cfg["device"]
    if device is not None and not (
        isinstance(device, str) and (device in ("cpu", "cuda") or device.startswith("cuda:"))
    ):
        _fail("device", src, "must be cpu, cuda or cuda:N", device)
    if cfg["amp"] in ("none", "fp32", False):
        cfg["amp"] = None
    if cfg["amp"] not in (None, "bf16"):
        _fail("amp", src, "must be bf16 or none", cfg["amp"])
    for key in ("compile", "deterministic", "grad_checkpointing"):
        if not isinstance(cfg[key], bool):
            _fail(key, src, "must be true or false", cfg[key])
    if not isinstance(cfg.get("model_args", {}), dict):
        _fail("model_args", src, "must be a mapping", cfg.get("model_args"))
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
