"""The one table of channel orders and label -> region maps.

Every dataset format nmfseg reads has a :class:`DatasetScheme`: the modalities in the order
the network sees them (``channels``), the label values allowed in its label files
(``labels``), and the regions the network predicts (``regions``, multi-label sigmoid
outputs). BraTS-like schemes predict the nested regions ET ⊂ TC ⊂ WT; ISLES'22 predicts one
"lesion" region. :func:`labels_to_regions` turns a label map into region targets and
:func:`regions_to_labels` writes predicted regions back in the dataset's own labels.

The channel order is the paper's (FLAIR, T1, T1Gd, T2 for BraTS; DWI, ADC for ISLES'22) in
every BraTS flavour, so a model trained on one flavour reads the others in the same order.

=========== ======================= ============= ====================================
scheme      channels                labels        regions
=========== ======================= ============= ====================================
msd_brats   FLAIR, T1w, t1gd, T2w   0, 1, 2, 3    ET={3}, TC={2,3}, WT={1,2,3}
brats2021   flair, t1, t1ce, t2     0, 1, 2, 4    ET={4}, TC={1,4}, WT={1,2,4}
brats2023   t2f, t1n, t1c, t2w      0, 1, 2, 3    ET={3}, TC={1,3}, WT={1,2,3}
isles22     dwi, adc                0, 1          lesion={1}
nnunet      from dataset.json       from labels   one per label, or nnU-Net regions
=========== ======================= ============= ====================================

For BraTS 2021/2023 and ISLES'22 the channel names are also the file-name suffixes
(``BraTS2021_00000_t1ce.nii.gz``). ``SCHEMES["nnunet"]`` is only a template (nnU-Net's own
region-based BraTS conversion); a real nnU-Net dataset gets its scheme from its
``dataset.json`` through :func:`scheme_from_nnunet_json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.errors import ConfigError, DataError

__all__ = [
    "SCHEMES",
    "DatasetScheme",
    "get_scheme",
    "labels_to_regions",
    "regions_to_labels",
    "scheme_from_nnunet_json",
    "scheme_to_nnunet_json",
]


@dataclass(frozen=True)
class DatasetScheme:
    """Channel order, label values and label -> region map of one dataset format.

    Args:
        name: format name, a key of :data:`SCHEMES` (or ``"nnunet"``).
        channels: modality names in the network's input order.
        labels: label values allowed in label files, background 0 included.
        regions: ordered ``region name -> label values``; the network's output channels.
        region_labels: the label written for each region when predictions go back to labels.
        write_order: regions in painting order (later regions overwrite earlier ones, like
            nnU-Net's ``regions_class_order``); defaults to the order of ``regions``.
        label_names: optional human-readable name of each label value.
        ignore_label: nnU-Net's "ignore" label, allowed in label files but part of no region.
        stratify_by_volume: whether cross-validation folds are stratified by foreground volume.
        recipe: the packaged training recipe for this kind of data (``"brats"``,
            ``"isles"``, ``"default"``: ``nmfseg/configs/<recipe>.yaml``).

    Examples::

        >>> scheme = SCHEMES["brats2021"]
        >>> scheme.channels
        ('flair', 't1', 't1ce', 't2')
        >>> scheme.regions["TC"]
        (1, 4)
        >>> scheme.out_channels
        3
    """

    name: str
    channels: tuple[str, ...]
    labels: tuple[int, ...]
    regions: dict[str, tuple[int, ...]]
    region_labels: dict[str, int]
    write_order: tuple[str, ...] = ()
    label_names: dict[int, str] = field(default_factory=dict)
    ignore_label: int | None = None
    stratify_by_volume: bool = False
    recipe: str = "default"

    def __post_init__(self) -> None:
        if 0 not in self.labels:
            raise ValueError(f"scheme {self.name!r}: labels {self.labels} must include 0")
        if not self.channels or not self.regions:
            raise ValueError(f"scheme {self.name!r} needs at least one channel and one region")
        if set(self.region_labels) != set(self.regions):
            raise ValueError(f"scheme {self.name!r}: region_labels must name every region")
        for region, values in self.regions.items():
            if not set(values) <= set(self.labels) - {0}:
                raise ValueError(
                    f"scheme {self.name!r}: region {region!r} uses labels {values} that are not "
                    f"foreground labels of the scheme {self.labels}"
                )
            if self.region_labels[region] not in values:
                raise ValueError(
                    f"scheme {self.name!r}: region {region!r} is written as label "
                    f"{self.region_labels[region]}, which is not one of its labels {values}"
                )
        if not self.write_order:
            object.__setattr__(self, "write_order", tuple(self.regions))
        if sorted(self.write_order) != sorted(self.regions):
            raise ValueError(f"scheme {self.name!r}: write_order must list every region once")

    @property
    def in_channels(self) -> int:
        """Number of input channels (modalities)."""
        return len(self.channels)

    @property
    def out_channels(self) -> int:
        """Number of output channels (regions)."""
        return len(self.regions)

    @property
    def region_names(self) -> tuple[str, ...]:
        """Region names in output-channel order."""
        return tuple(self.regions)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (e.g. for checkpoints); inverse of :meth:`from_dict`.

        Examples::

            >>> s = SCHEMES["isles22"]
            >>> DatasetScheme.from_dict(s.to_dict()) == s
            True
        """
        return {
            "name": self.name,
            "channels": list(self.channels),
            "labels": list(self.labels),
            "regions": {k: list(v) for k, v in self.regions.items()},
            "region_labels": dict(self.region_labels),
            "write_order": list(self.write_order),
            "label_names": {str(k): v for k, v in self.label_names.items()},
            "ignore_label": self.ignore_label,
            "stratify_by_volume": self.stratify_by_volume,
            "recipe": self.recipe,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetScheme:
        """Rebuild a scheme written by :meth:`to_dict`."""
        return cls(
            name=str(d["name"]),
            channels=tuple(d["channels"]),
            labels=tuple(int(v) for v in d["labels"]),
            regions={k: tuple(int(x) for x in v) for k, v in d["regions"].items()},
            region_labels={k: int(v) for k, v in d["region_labels"].items()},
            write_order=tuple(d.get("write_order", ())),
            label_names={int(k): v for k, v in d.get("label_names", {}).items()},
            ignore_label=d.get("ignore_label"),
            stratify_by_volume=bool(d.get("stratify_by_volume", False)),
            recipe=str(d.get("recipe", "default")),
        )


def _brats(name: str, channels: tuple[str, ...], ncr: int, ed: int, et: int, names: dict):
    labels = tuple(sorted((0, ncr, ed, et)))
    return DatasetScheme(
        name=name,
        channels=channels,
        labels=labels,
        regions={"ET": (et,), "TC": tuple(sorted((ncr, et))), "WT": labels[1:]},
        region_labels={"ET": et, "TC": ncr, "WT": ed},
        write_order=("WT", "TC", "ET"),
        label_names=names,
        recipe="brats",
    )


SCHEMES: dict[str, DatasetScheme] = {
    # MSD Task01_BrainTumour: one 4D file per case, channels last.
    "msd_brats": _brats(
        "msd_brats",
        ("FLAIR", "T1w", "t1gd", "T2w"),
        ncr=2,
        ed=1,
        et=3,
        names={0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    ),
    "brats2021": _brats(
        "brats2021",
        ("flair", "t1", "t1ce", "t2"),
        ncr=1,
        ed=2,
        et=4,
        names={0: "background", 1: "NCR/NET", 2: "ED", 4: "ET"},
    ),
    "brats2023": _brats(
        "brats2023",
        ("t2f", "t1n", "t1c", "t2w"),
        ncr=1,
        ed=2,
        et=3,
        names={0: "background", 1: "NCR", 2: "ED", 3: "ET"},
    ),
    "isles22": DatasetScheme(
        name="isles22",
        channels=("dwi", "adc"),
        labels=(0, 1),
        regions={"lesion": (1,)},
        region_labels={"lesion": 1},
        label_names={0: "background", 1: "lesion"},
        stratify_by_volume=True,
        recipe="isles",
    ),
    # Template only: nnU-Net's own region-based BraTS conversion (Dataset137). Real nnU-Net
    # datasets get their scheme from dataset.json (scheme_from_nnunet_json).
    "nnunet": DatasetScheme(
        name="nnunet",
        channels=("T1", "T1ce", "T2", "Flair"),
        labels=(0, 1, 2, 3),
        regions={"whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)},
        region_labels={"whole tumor": 1, "tumor core": 2, "enhancing tumor": 3},
        label_names={0: "background"},
    ),
}


def get_scheme(name: str) -> DatasetScheme:
    """The scheme of a format name, or a ``ConfigError`` listing the known names.

    Examples::

        >>> get_scheme("isles22").regions
        {'lesion': (1,)}
    """
    if name not in SCHEMES:
        raise ConfigError(f"unknown dataset format {name!r}; choose from {', '.join(SCHEMES)}")
    return SCHEMES[name]


def labels_to_regions(label: np.ndarray, scheme: DatasetScheme) -> np.ndarray:
    """Turn a label map into one binary mask per region.

    Args:
        label: integer label map of shape ``(*spatial)``.
        scheme: the dataset's scheme.

    Returns:
        ``(R, *spatial)`` uint8 masks in the order of ``scheme.regions``. Values that belong to
        no region (background, the ignore label, unknown values) are 0 in every mask.

    Examples::

        >>> lab = np.array([0, 1, 2, 4])
        >>> labels_to_regions(lab, SCHEMES["brats2021"]).tolist()  # ET, TC, WT
        [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]
    """
    label = np.asarray(label)
    return np.stack([np.isin(label, values) for values in scheme.regions.values()]).astype(np.uint8)


def regions_to_labels(regions: np.ndarray, scheme: DatasetScheme) -> np.ndarray:
    """Write region masks back as a label map in the scheme's own labels.

    Regions are painted in ``scheme.write_order``; later ones overwrite earlier ones. For
    BraTS that is WT, then TC, then ET: WT-only voxels get the edema label, TC without ET the
    necrosis label and ET the ET label, whatever the masks' nesting. For ISLES'22 a lesion
    voxel gets 1.

    Args:
        regions: ``(R, *spatial)`` masks (bool, or any dtype where nonzero means inside) in the
            order of ``scheme.regions``.
        scheme: the dataset's scheme.

    Returns:
        ``(*spatial)`` label map, uint8 (int16 if a label exceeds 255).

    Examples::

        >>> et, tc, wt = [0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]
        >>> regions_to_labels(np.array([et, tc, wt], bool), SCHEMES["brats2021"]).tolist()
        [0, 1, 2, 4]
        >>> regions_to_labels(np.array([et, tc, wt], bool), SCHEMES["msd_brats"]).tolist()
        [0, 2, 1, 3]
    """
    regions = np.asarray(regions)
    if regions.ndim < 1 or regions.shape[0] != len(scheme.regions):
        raise ValueError(
            f"expected {len(scheme.regions)} region masks ({', '.join(scheme.regions)}) along "
            f"the first axis, got shape {tuple(regions.shape)}"
        )
    dtype = np.uint8 if max(scheme.labels) <= 255 else np.int16
    out = np.zeros(regions.shape[1:], dtype=dtype)
    index = {name: i for i, name in enumerate(scheme.regions)}
    for name in scheme.write_order:
        out[regions[index[name]] != 0] = scheme.region_labels[name]
    return out


def _as_label_values(value: Any, key: str, source: str | Path) -> tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(source, f"label {key!r} has non-integer value {value!r}") from None
    if not out or any(v < 0 for v in out) or any(int(v) != v for v in values):
        raise DataError(source, f"label {key!r} has invalid value {value!r}")
    return out


def scheme_from_nnunet_json(meta: Mapping[str, Any], source: str | Path = "dataset.json"):
    """Build the scheme of an nnU-Net v2 dataset from its ``dataset.json``.

    A plain ``labels`` dict (``{"background": 0, "liver": 1, "tumor": 2}``) gives one region
    per foreground label. A region-based one (``{"background": 0, "whole tumor": [1, 2, 3],
    "tumor core": [2, 3], "enhancing tumor": [3]}``) gives one region per entry and needs
    ``regions_class_order``, the label each region is written as, in painting order. An
    ``"ignore"`` label is allowed in label files but belongs to no region.

    Args:
        meta: the parsed dataset.json.
        source: where it came from, for error messages.

    Raises:
        DataError: a missing or malformed ``channel_names`` / ``labels`` entry.

    Examples::

        >>> meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}
        >>> scheme_from_nnunet_json(meta).regions
        {'liver': (1,)}
    """
    channel_names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channel_names, Mapping) or not channel_names:
        raise DataError(source, "needs a non-empty 'channel_names' dict")
    try:
        order = sorted(channel_names, key=int)
    except ValueError:
        raise DataError(source, "'channel_names' keys must be indices '0', '1', ...") from None
    if [int(k) for k in order] != list(range(len(order))):
        raise DataError(source, f"'channel_names' indices must be 0..{len(order) - 1}")
    channels = tuple(str(channel_names[k]) for k in order)

    labels_meta = meta.get("labels")
    if not isinstance(labels_meta, Mapping) or not labels_meta:
        raise DataError(source, "needs a non-empty 'labels' dict")
    entries = {k: _as_label_values(v, k, source) for k, v in labels_meta.items()}
    ignore = entries.pop("ignore", None)
    if ignore is not None and len(ignore) != 1:
        raise DataError(source, "the 'ignore' label must be a single integer")
    background = [k for k, v in entries.items() if v == (0,)]
    if not background:
        raise DataError(source, "'labels' needs a background entry with value 0")
    for k in background:
        entries.pop(k)
    if not entries:
        raise DataError(source, "'labels' has no foreground label")
    values = sorted({v for vs in entries.values() for v in vs} | {0})
    region_based = any(len(v) > 1 for v in entries.values())
    if region_based:
        class_order = meta.get("regions_class_order")
        if not isinstance(class_order, (list, tuple)) or len(class_order) != len(entries):
            raise DataError(
                source,
                f"region-based 'labels' need 'regions_class_order' with {len(entries)} entries "
                "(the label each region is written as)",
            )
        region_labels = {k: int(c) for k, c in zip(entries, class_order, strict=True)}
    else:
        region_labels = {k: v[0] for k, v in entries.items()}
    if ignore is not None:
        values = sorted(set(values) | set(ignore))
    label_names = {0: background[0]}
    if not region_based:
        label_names |= {v[0]: k for k, v in entries.items()}
    try:
        return DatasetScheme(
            name="nnunet",
            channels=channels,
            labels=tuple(values),
            regions=dict(entries),
            region_labels=region_labels,
            label_names=label_names,
            ignore_label=ignore[0] if ignore is not None else None,
        )
    except ValueError as err:
        raise DataError(source, str(err)) from None


def scheme_to_nnunet_json(scheme: DatasetScheme) -> dict[str, Any]:
    """The ``channel_names`` / ``labels`` (/ ``regions_class_order``) of a dataset.json.

    Disjoint one-label regions are written as a plain labels dict, anything else as nnU-Net
    region-based labels in painting order. Inverse of :func:`scheme_from_nnunet_json`.

    Examples::

        >>> scheme_to_nnunet_json(SCHEMES["isles22"])["labels"]
        {'background': 0, 'lesion': 1}
    """
    out: dict[str, Any] = {"channel_names": {str(i): c for i, c in enumerate(scheme.channels)}}
    background = scheme.label_names.get(0, "background")
    singles = [v for v in scheme.regions.values() if len(v) == 1]
    plain = len(singles) == len(scheme.regions) and len({v[0] for v in singles}) == len(singles)
    labels: dict[str, Any] = {background: 0}
    if plain:
        labels |= {name: scheme.regions[name][0] for name in scheme.regions}
    else:
        labels |= {name: list(scheme.regions[name]) for name in scheme.write_order}
        out["regions_class_order"] = [scheme.region_labels[n] for n in scheme.write_order]
    if scheme.ignore_label is not None:
        labels["ignore"] = scheme.ignore_label
    out["labels"] = labels
    return out
