"""The demo's settings: ``configs/demo.yaml`` (or a YAML file with the same sections).

Sections: ``data`` (phantoms), ``fold``, ``train`` (training config keys, dotted or nested),
``models`` (network name -> constructor overrides) and ``model_train`` (network name -> the
``train`` keys that differ for it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nmfseg.errors import ConfigError, DataError

__all__ = ["load_demo_config", "model_train_config", "set_demo_steps"]


def load_demo_config(path: str | Path | None = None) -> dict[str, Any]:
    """The demo settings: ``configs/demo.yaml`` or a YAML file with the same sections."""
    if path is None:
        text = resources.files("nmfseg").joinpath("configs/demo.yaml").read_text()
        where = "configs/demo.yaml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise DataError(path, f"cannot read the demo config ({err.strerror})") from None
        where = str(path)
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None
    for key in ("data", "train", "models"):
        if not isinstance(cfg, dict) or not isinstance(cfg.get(key), dict):
            raise ConfigError(f"{where}: missing the '{key}' section")
    own = cfg.get("model_train")
    if own is not None:
        if not isinstance(own, dict):
            raise ConfigError(f"{where}: 'model_train' must map model names to train settings")
        for name, section in own.items():
            if name not in cfg["models"]:
                raise ConfigError(
                    f"{where}: model_train.{name}: not a model of the 'models' section "
                    f"({', '.join(cfg['models'])})"
                )
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{where}: model_train.{name} must be a mapping of train keys")
    return cfg


def model_train_config(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``train`` section with the ``model_train[name]`` overrides merged in (deeply)."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    return merge(cfg["train"], (cfg.get("model_train") or {}).get(name) or {})


def set_demo_steps(cfg: dict[str, Any], steps: int) -> None:
    """Make every model train ``steps`` steps (``--steps``), in place.

    The value replaces ``train.steps`` and any ``model_train.<name>.steps``; every warm-up is
    capped at a tenth of it.

    Examples::

        >>> cfg = {"train": {"steps": 600, "scheduler": {"warmup_steps": 30}},
        ...        "model_train": {"segresnet_brats": {"steps": 900}}}
        >>> set_demo_steps(cfg, 100)
        >>> model_train_config(cfg, "segresnet_brats")["steps"], cfg["train"]["scheduler"]
        (100, {'warmup_steps': 10})
    """
    steps = int(steps)
    cfg["train"]["steps"] = steps
    own = [v for v in (cfg.get("model_train") or {}).values() if isinstance(v, dict)]
    for section in own:
        section.pop("steps", None)
    for section in [cfg["train"], *own]:
        sched = section.get("scheduler")
        if isinstance(sched, dict) and "warmup_steps" in sched:
            sched["warmup_steps"] = min(int(sched["warmup_steps"]), steps // 10)
