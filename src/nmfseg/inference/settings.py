"""Prediction settings: what ``nmfseg predict`` and :class:`~nmfseg.inference.predictor.Predictor`
can change, checked once, with errors that name the command-line option.

:class:`InferenceSettings` holds the sliding window (overlap, windows per batch, blending),
flip TTA, the threshold, bf16 autocast, ``torch.compile`` and the Factorizer's inference-time
NMF switches (paper §4.5); ``None`` keeps what the model was validated with.
:func:`parse_layers` reads the NMF layer lists of ``--nmf-layers`` and ``explain --layers``.

Examples::

    >>> InferenceSettings(nmf_iters="2", amp="BF16").amp
    'bf16'
    >>> InferenceSettings(overlap=1)
    Traceback (most recent call last):
    ...
    nmfseg.errors.ConfigError: --overlap 1: must be a number in [0, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nmfseg.errors import ConfigError
from nmfseg.nmf import SOLVERS
from nmfseg.text import is_number

__all__ = [
    "AMP_MODES",
    "BLEND_MODES",
    "NMF_SETTINGS",
    "OPTIONS",
    "InferenceSettings",
    "format_layers",
    "parse_layers",
]

AMP_MODES = ("bf16", "none")
BLEND_MODES = ("gaussian", "constant")
#: Setting -> the command-line option that sets it (error messages name the option).
OPTIONS = {
    "tta": "--tta",
    "overlap": "--overlap",
    "sw_batch_size": "--sw-batch-size",
    "blend": "--blend",
    "threshold": "--threshold",
    "amp": "--amp",
    "compile": "--compile",
    "nmf_iters": "--nmf-iters",
    "nmf_rank": "--nmf-rank",
    "nmf_solver": "--nmf-solver",
    "nmf_layers": "--nmf-layers",
    "postprocess": "--postprocess",
}
NMF_SETTINGS = ("nmf_iters", "nmf_rank", "nmf_solver", "nmf_layers")
_LAYER_WORDS = "all, none, first, last, a range 0-4 or a list 0,3,8"
_PP_WORDS = ("largest:", "min-size:")


def format_layers(layers: Sequence[int] | None, n_layers: int | None) -> str:
    """The ``--nmf-layers`` text of a set of layers (all ``n_layers`` of them: ``all``).

    Examples::

        >>> format_layers([0, 1, 2, 5, 7, 8], 9), format_layers([], 9), format_layers(None, 9)
        ('0-2,5,7-8', 'none', 'all')
    """
    if layers is None or (n_layers is not None and list(layers) == list(range(n_layers))):
        return "all"
    if not layers:
        return "none"
    runs: list[list[int]] = []
    for i in sorted(layers):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def parse_layers(
    spec: str | int | Sequence[int], n_layers: int | None, option: str = "--nmf-layers"
) -> list[int]:
    """NMF layer indices (0-based, sorted, unique) named by ``spec``.

    ``spec`` is ``all``, ``none``, ``first``, ``last``, a range ``0-4``, a list ``0,3,8``
    (ranges and words may be mixed: ``first,6-8``) or a sequence of ints. With
    ``n_layers=None`` only the spelling is checked (``all``/``last`` give ``[]``).

    Raises:
        ConfigError: naming ``option``: a bad spelling, or a layer the model does not have.

    Examples::

        >>> parse_layers("0-2,7", 9), parse_layers("first,last", 9), parse_layers("none", 9)
        ([0, 1, 2, 7], [0, 8], [])
        >>> parse_layers("9", 9)
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --nmf-layers '9': there is no NMF layer 9; the model has 9 (0-8)
    """
    known = n_layers if n_layers is not None else 1 << 30
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if not isinstance(spec, str):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            raise ConfigError(f"{option} {spec!r}: not a list of layer indices")
        parts: list[int] = list(spec)
    else:
        parts = []
        for word in spec.replace(" ", "").lower().split(","):
            lo, dash, hi = word.partition("-")
            if word == "all":
                parts += range(n_layers or 0)
            elif word == "none":
                continue
            elif word in ("first", "last"):
                parts.append(0 if word == "first" else (n_layers or 1) - 1)
            elif is_number(lo) and (not dash or is_number(hi)):
                end = int(hi) if dash else int(lo)
                if end < int(lo):
                    raise ConfigError(f"{option} {spec!r}: the range {word} is empty")
                parts += range(int(lo), end + 1)
            else:
                raise ConfigError(f"{option} {spec!r}: not a layer list (use {_LAYER_WORDS})")
    bad = [i for i in parts if not 0 <= i < known]
    if bad:
        raise ConfigError(
            f"{option} {spec if isinstance(spec, str) else list(spec)!r}: there is no NMF "
            f"layer {bad[0]}; the model has {n_layers} (0-{(n_layers or 1) - 1})"
        )
    return sorted(set(parts))


def _number(value: Any, name: str, kind: type, ok: Any, what: str) -> Any:
    """``value`` (a number or the text of one) as ``kind``; ConfigError naming the option."""
    option = OPTIONS[name]
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        number = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {value!r}: must be {what}") from None
    if not ok(number):
        raise ConfigError(f"{option} {value!r}: must be {what}")
    return number


def _choice(value: Any, name: str, choices: Sequence[str]) -> Any:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text not in choices:
        words = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise ConfigError(f"{OPTIONS[name]} {value!r}: must be {words}")
    return text


@dataclass(frozen=True)
class InferenceSettings:
    """How a :class:`Predictor` predicts; ``None`` keeps what the model was validated with.

    Values may be given as numbers or as the text of a command-line option; they are checked
    on construction, and a bad one is a :class:`~nmfseg.errors.ConfigError` naming the option.

    Attributes:
        tta: Average over every combination of flipped spatial axes (8 in 3D, 4 in 2D).
        overlap: Sliding-window overlap in ``[0, 1)`` (config: ``validation.overlap``).
        sw_batch_size: Windows per forward pass, ``>= 1`` (``validation.sw_batch_size``).
        blend: ``"gaussian"`` or ``"constant"`` window blending (``validation.mode``).
        threshold: Probability in ``(0, 1)`` at or above which a voxel is inside a region
            (``validation.threshold``).
        amp: ``"bf16"`` (autocast; the NMF itself stays float32, and on the CPU so do the
            blocks of the Factorizers and Performer, whose fused float32 kernels are faster
            there) or ``"none"``.
        compile: ``torch.compile`` every fold's network.
        nmf_iters: NMF outer iterations ``T >= 0`` (Factorizers only).
        nmf_rank: NMF rank ``R >= 1``.
        nmf_solver: ``"hals"`` or ``"mu"``.
        nmf_layers: The NMF layers that run (:func:`parse_layers`); the others are
            short-circuited.
        postprocess: Post-processing of the region masks: ``--postprocess`` words
            (``largest:WT``, ``min-size:ET=200``, ``none``), ``"auto"`` (the run's
            ``postprocessing.json`` from ``nmfseg postprocess-search``) or a
            :class:`~nmfseg.inference.postprocess.PostProcessing`; ``None``: none.

    Examples::

        >>> InferenceSettings(overlap="0.25", nmf_layers="0-4").overlap
        0.25
        >>> InferenceSettings(blend="linear")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --blend 'linear': must be gaussian or constant
    """

    tta: bool = False
    overlap: float | None = None
    sw_batch_size: int | None = None
    blend: str | None = None
    threshold: float | None = None
    amp: str = "none"
    compile: bool = False
    nmf_iters: int | None = None
    nmf_rank: int | None = None
    nmf_solver: str | None = None
    nmf_layers: str | tuple[int, ...] | None = None
    postprocess: Any = None

    def __post_init__(self) -> None:
        checked = {
            "overlap": _number(
                self.overlap, "overlap", float, lambda v: 0 <= v < 1, "a number in [0, 1)"
            ),
            "sw_batch_size": _number(
                self.sw_batch_size, "sw_batch_size", int, lambda v: v >= 1, "an integer >= 1"
            ),
            "threshold": _number(
                self.threshold, "threshold", float, lambda v: 0 < v < 1, "a number in (0, 1)"
            ),
            "nmf_iters": _number(
                self.nmf_iters, "nmf_iters", int, lambda v: v >= 0, "an integer >= 0"
            ),
            "nmf_rank": _number(
                self.nmf_rank, "nmf_rank", int, lambda v: v >= 1, "an integer >= 1"
            ),
            "blend": _choice(self.blend, "blend", BLEND_MODES),
            "nmf_solver": _choice(self.nmf_solver, "nmf_solver", SOLVERS),
            "amp": _choice("none" if self.amp in (None, False) else self.amp, "amp", AMP_MODES),
        }
        layers = self.nmf_layers
        if layers is not None:
            parse_layers(layers, None)  # the spelling; the range once the model is known
            if not isinstance(layers, str):
                checked["nmf_layers"] = tuple(layers)
        words = self.postprocess
        if isinstance(words, str):
            words = (words,)
        if isinstance(words, list | tuple):
            bad = [w for w in words if not (w in ("auto", "none") or w.startswith(_PP_WORDS))]
            if bad or ("auto" in words and len(words) > 1):
                raise ConfigError(
                    f"--postprocess {(bad or list(words))[0]!r}: expected auto, none, "
                    "largest:REGION[,REGION] or min-size:REGION=VOXELS"
                )
            checked["postprocess"] = tuple(words)
        for key in ("tta", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{OPTIONS[key]}: must be true or false")
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with some settings changed (checked again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown inference setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)
