"""How a dataset's cases are preprocessed: intensity normalization per channel, spacing, axes.

:class:`Preprocessing` is the plain-data description a training run stores in its config
(``config["dataset"]["preprocessing"]``, its :meth:`~Preprocessing.to_dict`) and prediction
reads back; a config without it means :meth:`Preprocessing.default` (the paper's rule for
every channel, no resampling, no transpose: what nmfseg did before the section existed).

Each channel has a :class:`ChannelNorm`, chosen from the channel's name by
:func:`norm_scheme_for` (nnU-Net v2's rule):

- ``"zscore_nonzero"`` (any MRI sequence: FLAIR, T1, DWI, ADC, ...): z-score over the
  case's own nonzero voxels; zero voxels stay 0 (the paper's §4.2 rule).
- ``"zscore"`` (a channel named ``zscore``): z-score over all voxels of the case.
- ``"ct"`` (a channel named ``CT``): clip to the 0.5 and 99.5 percentiles of the
  training set's foreground voxels (label > 0), then subtract that foreground's mean and
  divide by its standard deviation (nnU-Net's ``CTNormalization``); the four numbers are
  computed once per run by :func:`ct_norm` and stored.
- ``"none"`` (a channel named ``noNorm``): intensities as they are (as float32).

Every scheme computes its statistics in float64 and returns float32. A standard deviation
of 0 (a constant channel) divides by 1, so the channel is only shifted.

Examples::

    >>> import numpy as np
    >>> [norm_scheme_for(n) for n in ("ct", "FLAIR", "noNorm", "zscore")]
    ['ct', 'zscore_nonzero', 'none', 'zscore']
    >>> ct = ChannelNorm("ct", lower=-100.0, upper=300.0, mean=50.0, std=100.0)
    >>> ct.apply(np.array([-1000.0, 50.0, 2000.0])).tolist()
    [-1.5, 0.0, 2.5]
    >>> p = Preprocessing((ct, ChannelNorm("zscore_nonzero")), target_spacing=(1.0, 1.0, 3.0))
    >>> Preprocessing.from_dict(p.to_dict()) == p
    True
    >>> Preprocessing.default(2).to_dict()["target_spacing"] is None
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nmfseg.errors import ConfigError

__all__ = [
    "CT_PERCENTILES",
    "FOREGROUND_SAMPLES",
    "SCHEMES",
    "ChannelNorm",
    "Preprocessing",
    "ct_norm",
    "norm_scheme_for",
    "normalize_channels",
    "sample_foreground",
]

SCHEMES = ("zscore_nonzero", "zscore", "ct", "none")
CT_PERCENTILES = (0.5, 99.5)
FOREGROUND_SAMPLES = 10_000  # voxels drawn per case and channel for the CT statistics (nnU-Net)
_CT_FIELDS = ("lower", "upper", "mean", "std")


def norm_scheme_for(channel_name: str) -> str:
    """The normalization scheme of a channel, from its name (nnU-Net v2's rule).

    ``CT`` -> ``"ct"``, ``noNorm`` -> ``"none"``, ``zscore`` -> ``"zscore"`` (names compared
    case-insensitively, surrounding blanks ignored); any other name (an MRI sequence:
    FLAIR, T1, T1ce, T2, DWI, ADC, ...) -> ``"zscore_nonzero"``, the paper's rule.

    Examples::

        >>> norm_scheme_for("CT"), norm_scheme_for("t1ce"), norm_scheme_for("NONORM")
        ('ct', 'zscore_nonzero', 'none')
    """
    key = str(channel_name).strip().lower()
    return {"ct": "ct", "nonorm": "none", "zscore": "zscore"}.get(key, "zscore_nonzero")


def _zscore(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    std = values.std()
    return ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


@dataclass(frozen=True)
class ChannelNorm:
    """The normalization of one channel.

    Attributes:
        scheme: ``"zscore_nonzero"``, ``"zscore"``, ``"ct"`` or ``"none"`` (module docstring).
        lower: ``ct`` only: lower clip value (0.5 percentile of the training foreground).
        upper: ``ct`` only: upper clip value (99.5 percentile).
        mean: ``ct`` only: mean of the training foreground.
        std: ``ct`` only: standard deviation of the training foreground (> 0).
    """

    scheme: str
    lower: float | None = None
    upper: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown normalization {self.scheme!r}; use one of {SCHEMES}")
        values = [getattr(self, f) for f in _CT_FIELDS]
        if self.scheme != "ct":
            if any(v is not None for v in values):
                raise ValueError(f"{self.scheme!r} takes no lower/upper/mean/std")
            return
        if any(v is None or not math.isfinite(v) for v in values):
            raise ValueError(f"'ct' needs finite lower, upper, mean and std, got {values}")
        for f in _CT_FIELDS:  # plain floats, so that to_dict() is JSON and YAML
            object.__setattr__(self, f, float(getattr(self, f)))
        if not self.lower <= self.upper:  # type: ignore[operator]
            raise ValueError(f"'ct' needs lower <= upper, got {self.lower} > {self.upper}")
        if not self.std > 0:  # type: ignore[operator]
            raise ValueError(f"'ct' needs std > 0, got {self.std}")

    def apply(self, channel: np.ndarray) -> np.ndarray:
        """The normalized ``channel`` (any shape) as a new float32 array."""
        if self.scheme == "none":
            return np.array(channel, dtype=np.float32, copy=True)
        if self.scheme == "zscore":
            return _zscore(np.asarray(channel))
        if self.scheme == "ct":
            clipped = np.clip(np.asarray(channel, dtype=np.float64), self.lower, self.upper)
            return ((clipped - self.mean) / self.std).astype(np.float32)  # type: ignore[operator]
        out = np.array(channel, dtype=np.float32, copy=True)
        mask = out != 0
        if mask.any():
            out[mask] = _zscore(out[mask])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form: ``{"scheme": ...}`` plus the four numbers for ``ct``."""
        if self.scheme != "ct":
            return {"scheme": self.scheme}
        return {"scheme": self.scheme, **{f: getattr(self, f) for f in _CT_FIELDS}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChannelNorm:
        """Inverse of :meth:`to_dict` (``ValueError`` on a bad entry)."""
        unknown = set(d) - {"scheme", *_CT_FIELDS}
        if unknown or "scheme" not in d:
            raise ValueError(f"a channel normalization is {{scheme, {', '.join(_CT_FIELDS)}}}")
        return cls(**dict(d))


def _tuple(value: Any, kind: type, what: str) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a list, got {value!r}")
    return tuple(kind(v) for v in value)


@dataclass(frozen=True)
class Preprocessing:
    """What is done to every case before the network sees it (and undone after).

    A case is transposed (if ``transpose``), cropped to the nonzero box of all its
    channels, resampled to ``target_spacing`` (if set and different from the case's
    spacing) and normalized channel by channel
    (:func:`nmfseg.data.preprocess.preprocess_case`); prediction resamples the
    probabilities back, uncrops and transposes back.

    Attributes:
        normalization: one :class:`ChannelNorm` per input channel, in channel order.
        target_spacing: voxel size in mm, per spatial axis in the order the network sees
            (after ``transpose``); ``None`` keeps every case's own grid.
        transpose: spatial axis order the network sees (a permutation, e.g. ``(2, 1, 0)``);
            ``None`` keeps the axes as read.
    """

    normalization: tuple[ChannelNorm, ...]
    target_spacing: tuple[float, ...] | None = None
    transpose: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        norms = tuple(self.normalization)
        if not norms or not all(isinstance(n, ChannelNorm) for n in norms):
            raise ValueError("normalization must be one ChannelNorm per channel (at least one)")
        object.__setattr__(self, "normalization", norms)
        spacing = _tuple(self.target_spacing, float, "target_spacing")
        if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"target_spacing must be positive and finite, got {spacing}")
        object.__setattr__(self, "target_spacing", spacing)
        order = _tuple(self.transpose, int, "transpose")
        if order is not None and sorted(order) != list(range(len(order))):
            raise ValueError(f"transpose must be a permutation of 0..n-1, got {order}")
        object.__setattr__(self, "transpose", order)
        if spacing is not None and order is not None and len(spacing) != len(order):
            raise ValueError(f"target_spacing {spacing} and transpose {order} differ in length")

    @classmethod
    def default(cls, in_channels: int) -> Preprocessing:
        """The paper's rule for every channel, no resampling, no transpose (nmfseg <= 0.x).

        Examples::

            >>> Preprocessing.default(2).normalization[1].scheme
            'zscore_nonzero'
        """
        return cls(tuple(ChannelNorm("zscore_nonzero") for _ in range(int(in_channels))))

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return len(self.normalization)

    @property
    def schemes(self) -> tuple[str, ...]:
        """The scheme of each channel."""
        return tuple(n.scheme for n in self.normalization)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON and YAML), stored as ``config["dataset"]["preprocessing"]``."""
        return {
            "normalization": [n.to_dict() for n in self.normalization],
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
            "transpose": None if self.transpose is None else list(self.transpose),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "preprocessing") -> Preprocessing:
        """Inverse of :meth:`to_dict`; a bad section is a :class:`ConfigError` naming ``where``."""
        try:
            if not isinstance(d, Mapping):
                raise ValueError(f"must be a mapping, got {type(d).__name__}")
            unknown = set(d) - {"normalization", "target_spacing", "transpose"}
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
            norms = d.get("normalization")
            if isinstance(norms, str | bytes | Mapping) or not isinstance(norms, Iterable):
                raise ValueError("normalization must be a list, one entry per channel")
            return cls(
                tuple(ChannelNorm.from_dict(n) for n in norms),
                d.get("target_spacing"),
                d.get("transpose"),
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing of a run config (``default`` when it has no such section).

        Examples::

            >>> cfg = {"dataset": {"channels": ["FLAIR", "T1"]}}
            >>> Preprocessing.from_config(cfg) == Preprocessing.default(2)
            True
        """
        dataset = config.get("dataset") or {}
        section = dataset.get("preprocessing")
        if section is None:
            return cls.default(len(dataset.get("channels") or ()) or 1)
        return cls.from_dict(section, where="config dataset.preprocessing")


def normalize_channels(image: np.ndarray, norms: Sequence[ChannelNorm]) -> np.ndarray:
    """``image (C, *spatial)`` normalized channel by channel (a new float32 array).

    Examples::

        >>> import numpy as np
        >>> x = np.array([[[0.0, 1.0, 3.0]], [[1.0, 1.0, 4.0]]])
        >>> normalize_channels(x, [ChannelNorm("zscore_nonzero"), ChannelNorm("none")]).tolist()
        [[[0.0, -1.0, 1.0]], [[1.0, 1.0, 4.0]]]
    """
    if len(norms) != image.shape[0]:
        raise ValueError(f"{len(norms)} channel normalizations for {image.shape[0]} channels")
    out = np.empty(image.shape, np.float32)
    for c, norm in enumerate(norms):
        out[c] = norm.apply(image[c])
    return out


def sample_foreground(
    image: np.ndarray, label: np.ndarray, seed: int = 1234, n: int = FOREGROUND_SAMPLES
) -> np.ndarray:
    """``n`` voxels per channel drawn (with replacement) from the foreground (``label > 0``).

    nnU-Net's fingerprint does the same for its CT statistics. Returns ``(C, n)`` float64,
    or ``(C, 0)`` when the case has no foreground.

    Examples::

        >>> import numpy as np
        >>> image = np.arange(8.0).reshape(1, 2, 2, 2)
        >>> label = (image[0] >= 6).astype(np.uint8)
        >>> sorted(set(sample_foreground(image, label, n=50).ravel().tolist()))
        [6.0, 7.0]
    """
    mask = np.asarray(label) > 0
    values = np.asarray(image)[:, mask].astype(np.float64)
    if values.shape[1] == 0:
        return values
    index = np.random.default_rng(seed).integers(0, values.shape[1], n)
    return values[:, index]


def ct_norm(samples: Sequence[np.ndarray]) -> ChannelNorm:
    """The ``ct`` normalization of foreground voxels pooled over the training cases.

    Args:
        samples: one 1D array of foreground intensities per case (e.g. a row of
            :func:`sample_foreground`).

    Raises:
        ValueError: there is no foreground voxel at all.

    Examples::

        >>> import numpy as np
        >>> norm = ct_norm([np.linspace(-100, 100, 201)])
        >>> norm.lower, norm.upper, norm.mean
        (-99.0, 99.0, 0.0)
    """
    values = np.concatenate([np.asarray(s, np.float64).ravel() for s in samples] or [[]])
    if values.size == 0:
        raise ValueError("no foreground voxels (label > 0) to compute CT statistics from")
    lower, upper = np.percentile(values, CT_PERCENTILES)
    std = float(values.std())
    return ChannelNorm(
        "ct", float(lower), float(upper), float(values.mean()), std if std > 0 else 1.0
    )
