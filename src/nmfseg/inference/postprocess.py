"""Optional post-processing of predicted region masks (off by default: the paper uses none).

Two operations, per region, on the thresholded masks in the original grid (26-connectivity):

- ``largest``: keep only the largest connected component of the region (nnU-Net's
  "remove all but the largest component");
- ``min_size``: remove the region's connected components smaller than a number of voxels.
  For BraTS' ET this is the small-enhancing-tumour rule: an ET component below the threshold
  is relabelled necrosis, because its voxels stay in TC (and WT).

Voxels removed from a region are also removed from every region nested in it (whose labels
are a subset of its labels: ET in TC in WT for BraTS), outer regions first, so the masks stay
nested and write back as labels without contradiction.

A :class:`PostProcessing` is written as command-line words (``largest:WT,TC``,
``min-size:ET=200``), and saved as JSON by ``nmfseg postprocess-search``
(:mod:`nmfseg.analysis.postprocess`) for ``nmfseg predict --postprocess auto``.

Examples::

    >>> import numpy as np
    >>> from nmfseg.data.schemes import SCHEMES
    >>> pp = PostProcessing.parse(["min-size:ET=3"], SCHEMES["brats2021"].region_names)
    >>> regions = np.zeros((3, 6, 6, 6), bool)   # ET, TC, WT
    >>> regions[:, :3, :3, :3] = True            # a tumour with 27 ET voxels
    >>> regions[0, 5, 5, 5] = regions[1, 5, 5, 5] = regions[2, 5, 5, 5] = True  # one ET speck
    >>> out = pp.apply(regions, SCHEMES["brats2021"])
    >>> int(out[0].sum()), int(out[1].sum())     # the speck leaves ET, stays in TC
    (27, 28)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import ConfigError

__all__ = ["POSTPROCESSING", "PostProcessing"]

#: The file ``nmfseg postprocess-search`` writes into a run folder.
POSTPROCESSING = "postprocessing.json"

_CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connectivity in 3D


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labelled components of ``mask`` and their sizes (index 0: background)."""
    structure = _CONNECTIVITY if mask.ndim == 3 else np.ones((3,) * mask.ndim, bool)
    labels, _ = ndimage.label(mask, structure=structure)
    return labels, np.bincount(labels.ravel())


@dataclass(frozen=True)
class PostProcessing:
    """Which regions are cleaned, and how.

    Attributes:
        largest: Regions reduced to their largest connected component.
        min_size: Region -> the smallest connected component (in voxels) that is kept.
    """

    largest: tuple[str, ...] = ()
    min_size: Mapping[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether this changes nothing."""
        return not self.largest and not self.min_size

    @classmethod
    def parse(cls, specs: Sequence[str], regions: Sequence[str]) -> PostProcessing:
        """Read ``--postprocess`` words: ``none``, ``largest:R[,R]``, ``min-size:R=N[,R=N]``.

        Raises:
            ConfigError: A word or region name that is not understood (naming the option).
        """
        largest: list[str] = []
        min_size: dict[str, int] = {}
        for spec in specs:
            kind, _, rest = spec.strip().partition(":")
            if kind == "none" and not rest:
                continue
            items = [i.strip() for i in rest.split(",") if i.strip()]
            if kind not in ("largest", "min-size") or not items:
                raise ConfigError(
                    f"--postprocess {spec!r}: expected none, largest:REGION[,REGION] or "
                    "min-size:REGION=VOXELS"
                )
            for item in items:
                name, _, value = item.partition("=")
                if name not in regions:
                    raise ConfigError(
                        f"--postprocess {spec!r}: no region {name!r}; the model's regions are "
                        f"{', '.join(regions)}"
                    )
                if kind == "largest":
                    largest.append(name)
                elif value.isdigit() and int(value) > 0:
                    min_size[name] = int(value)
                else:
                    raise ConfigError(f"--postprocess {spec!r}: {item!r} needs a voxel count >= 1")
        return cls(tuple(dict.fromkeys(largest)), min_size)

    def words(self) -> list[str]:
        """The ``--postprocess`` words of this setting (``["none"]`` if empty).

        Examples::

            >>> PostProcessing(("WT",), {"ET": 50}).words()
            ['largest:WT', 'min-size:ET=50']
        """
        words = [f"largest:{','.join(self.largest)}"] if self.largest else []
        if self.min_size:
            words.append("min-size:" + ",".join(f"{k}={v}" for k, v in self.min_size.items()))
        return words or ["none"]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (inverse of :meth:`from_dict`)."""
        return {"largest": list(self.largest), "min_size": dict(self.min_size)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PostProcessing:
        """Read :meth:`to_dict`'s form."""
        sizes = {str(k): int(v) for k, v in dict(d.get("min_size", {})).items()}
        return cls(tuple(str(r) for r in d.get("largest", [])), sizes)

    def apply(self, regions: np.ndarray, scheme: DatasetScheme) -> np.ndarray:
        """Clean ``regions (R, *spatial)`` (bool or 0/1, in ``scheme.regions`` order).

        Returns:
            A new bool array; regions nested in a cleaned one lose the same voxels.
        """
        out = np.asarray(regions).astype(bool, copy=True)
        if self.empty:
            return out
        names = list(scheme.regions)
        labels = {n: set(scheme.regions[n]) for n in names}
        # outer regions first, so that what they lose is taken from the inner ones too
        for name in sorted(names, key=lambda n: -len(labels[n])):
            if name not in self.largest and name not in self.min_size:
                continue
            i = names.index(name)
            comp, sizes = _components(out[i])
            keep = np.zeros(len(sizes), bool)
            if len(sizes) > 1:
                keep[1:] = sizes[1:] >= self.min_size.get(name, 0)
                if name in self.largest:
                    keep[1:] &= np.arange(1, len(sizes)) == np.argmax(sizes[1:]) + 1
            removed = out[i] & ~keep[comp]
            if not removed.any():
                continue
            for j, other in enumerate(names):
                if labels[other] <= labels[name]:
                    out[j] &= ~removed
        return out
