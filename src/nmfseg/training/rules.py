"""What every value of a training config may be: one declaration per key.

:data:`RULES` maps each key of the recipe (dotted for nested sections,
``augmentation.*.prob`` for every augmentation) to a rule. A rule is a small typed value
that checks a value and returns its normal form (``[0.9, 0.999]`` as floats, a cube patch
as three sizes, ``"none"`` precision as ``None``) or raises :class:`BadValue` with the
problem in the words a user reads; :func:`nmfseg.training.config.validate_config` applies
every rule and names the option that set the key. A new config key is one line here (and
its default in ``configs/default.yaml``).

Examples::

    >>> Int(1).check(3), Number(0.0, low_open=True).check(1e-4)
    (3, 0.0001)
    >>> Int(1).check(0)
    Traceback (most recent call last):
    ...
    nmfseg.training.rules.BadValue: must be an integer >= 1
    >>> Span(0.0, low_open=True).check([0.7, 1.3]), Patch().check(16)
    ([0.7, 1.3], [16, 16, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RULES",
    "BadValue",
    "Choice",
    "Device",
    "Flag",
    "Int",
    "Mapping",
    "Number",
    "Optional",
    "Pair",
    "Patch",
    "Precision",
    "Span",
    "Weights",
]


class BadValue(ValueError):
    """A value its rule refuses; the message is the problem (``must be ...``)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Int:
    """An integer ``>= low``."""

    low: int

    def check(self, value: Any) -> int:
        if not _is_int(value) or value < self.low:
            raise BadValue(f"must be an integer >= {self.low}")
        return int(value)


@dataclass(frozen=True)
class Number:
    """A finite number in ``[low, high]`` (either end open)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any) -> Any:
        ok = _is_num(value) and (value > self.low if self.low_open else value >= self.low)
        if not (ok and (value < self.high if self.high_open else value <= self.high)):
            lo, hi = ("(" if self.low_open else "["), (")" if self.high_open else "]")
            raise BadValue(f"must be a number in {lo}{self.low}, {self.high}{hi}")
        return value


@dataclass(frozen=True)
class Span:
    """A range ``[a, b]`` of numbers with ``a <= b`` and ``a`` above ``low``; as floats."""

    low: float
    low_open: bool = False

    def check(self, value: Any) -> list[float]:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_num, value))
        if not (ok and value[0] <= value[1] and (value[0] > self.low if self.low_open else
                                                  value[0] >= self.low)):  # fmt: skip
            bound = f"> {self.low}" if self.low_open else f">= {self.low}"
            raise BadValue(f"must be a range [low, high] with low <= high and low {bound}")
        return [float(v) for v in value]


@dataclass(frozen=True)
class Pair:
    """Two numbers in ``[0, 1)`` (AdamW's betas); as floats."""

    def check(self, value: Any) -> list[float]:
        if not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_num(b) and 0 <= b < 1 for b in value)
        ):
            raise BadValue("must be two numbers in [0, 1)")
        return [float(b) for b in value]


@dataclass(frozen=True)
class Weights:
    """A non-empty list of weights ``>= 0``, not all 0; as floats."""

    def check(self, value: Any) -> list[float]:
        if not (
            isinstance(value, (list, tuple))
            and value
            and all(_is_num(w) and w >= 0 for w in value)
            and any(w > 0 for w in value)
        ):
            raise BadValue("must be a list of weights >= 0, not all 0")
        return [float(w) for w in value]


@dataclass(frozen=True)
class Patch:
    """2 or 3 positive sizes, one size for a cube, or ``None`` (the preset's patch)."""

    def check(self, value: Any) -> list[int] | None:
        if value is None:
            return None
        patch = [value] * 3 if _is_int(value) else value
        if (
            not isinstance(patch, (list, tuple))
            or len(patch) not in (2, 3)
            or not all(_is_int(p) and p >= 1 for p in patch)
        ):
            raise BadValue("must be 2 or 3 positive integers (or one for a cube)")
        return [int(p) for p in patch]


@dataclass(frozen=True)
class Choice:
    """One of ``choices``."""

    choices: tuple[Any, ...]

    def check(self, value: Any) -> Any:
        if value not in self.choices:
            shown = ", ".join("null" if c is None else str(c) for c in self.choices)
            raise BadValue(f"must be one of {shown}")
        return value


@dataclass(frozen=True)
class Flag:
    """``true`` or ``false``."""

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise BadValue("must be true or false")
        return value


@dataclass(frozen=True)
class Optional:
    """``None``, or a value of ``rule``."""

    rule: Any

    def check(self, value: Any) -> Any:
        return None if value is None else self.rule.check(value)


@dataclass(frozen=True)
class Device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``None`` (CUDA when available)."""

    def check(self, value: Any) -> str | None:
        if value is not None and not (
            isinstance(value, str) and (value in ("cpu", "cuda") or value.startswith("cuda:"))
        ):
            raise BadValue("must be cpu, cuda or cuda:N")
        return value


@dataclass(frozen=True)
class Precision:
    """``bf16``, or none (``None``, ``"none"``, ``"fp32"``, ``false``: as ``None``)."""

    def check(self, value: Any) -> str | None:
        if value in ("none", "fp32", False, None):
            return None
        if value != "bf16":
            raise BadValue("must be bf16 or none")
        return value


@dataclass(frozen=True)
class Mapping:
    """A mapping (free keys, checked by their consumer: the network's constructor)."""

    def check(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise BadValue("must be a mapping")
        return value


#: Every checked key of a training config and its rule, in the order they are checked.
RULES: dict[str, Any] = {
    "patch_size": Patch(),
    "workers": Optional(Int(0)),  # None: the device's default (nmfseg.training.cores)
    "batch_size": Int(1),
    "steps": Int(1),
    "seed": Int(0),
    "val_every": Int(1),
    "checkpoint_every": Int(1),
    "log_every": Int(1),
    "n_folds": Int(2),
    "optimizer.lr": Number(0.0, low_open=True),
    "optimizer.weight_decay": Number(0.0),
    "optimizer.betas": Pair(),
    "optimizer.grad_clip": Optional(Number(0.0, low_open=True)),
    "scheduler.warmup_steps": Int(0),
    "loss.dice_eps": Number(0.0, low_open=True),
    "loss.ds_weights": Weights(),
    "loss.ds_target": Choice(("nearest", "avg")),
    "augmentation.*.prob": Number(0.0, 1.0),
    "augmentation.affine.rotate_deg": Span(-180.0),
    "augmentation.affine.scale": Span(0.0, low_open=True),
    "augmentation.noise.variance": Span(0.0),
    "augmentation.smooth.sigma": Span(0.0, low_open=True),
    "augmentation.scale_intensity.factor": Span(0.0),
    "augmentation.shift_intensity.offset": Span(-math.inf, low_open=True),
    "augmentation.contrast.gamma": Span(0.0, low_open=True),
    "validation.overlap": Number(0.0, 1.0, high_open=True),
    "validation.mode": Choice(("gaussian", "constant")),
    "validation.sw_batch_size": Int(1),
    "validation.threshold": Number(0.0, 1.0, low_open=True, high_open=True),
    "device": Device(),
    "amp": Precision(),
    "compile": Flag(),
    "deterministic": Flag(),
    "grad_checkpointing": Flag(),
    "model_args": Mapping(),
}
