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
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from scipy import ndimage

from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import read_json
from nmfseg.text import is_number, split_list

__all__ = [
    "POSTPROCESSING",
    "PostProcessing",
    "option_words",
    "read_postprocessing",
    "saved_postprocessing",
]

#: The file ``nmfseg postprocess-search`` writes into a run folder.
POSTPROCESSING = "postprocessing.json"

_CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connectivity in 3D
_WORDS = "expected none, largest:REGION[,REGION] or min-size:REGION=VOXELS"


def _unknown_region(name: str, regions: Sequence[str]) -> str | None:
    """The problem with region ``name`` of a model with ``regions`` (None: none)."""
    if name in regions:
        return None
    return f"no region {name!r}; the model's regions are {', '.join(regions) or 'unknown'}"


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
            ConfigError: A word or region name that is not understood, a gap in a list, or
                ``none`` together with a rule (naming the option).
        """
        words = [str(spec).strip() for spec in specs]
        rules = [w for w in words if w != "none"]
        if rules and len(rules) < len(words):
            raise ConfigError(
                f"--postprocess none --postprocess {rules[0]}: 'none' cannot be combined with "
                "a rule; give the rules alone, or none alone"
            )
        largest: list[str] = []
        min_size: dict[str, int] = {}
        for spec in rules:
            kind, _, rest = spec.partition(":")
            if kind not in ("largest", "min-size") or not rest.strip():
                raise ConfigError(f"--postprocess {spec!r}: {_WORDS}")
            for item in split_list(rest, "--postprocess", shown=spec):  # a gap is a typo
                name, _, value = (part.strip() for part in item.partition("="))
                problem = _unknown_region(name, regions)
                if problem:
                    raise ConfigError(f"--postprocess {spec!r}: {problem}")
                if kind == "largest":
                    largest.append(name)
                elif is_number(value) and int(value) > 0:
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
    def from_dict(
        cls, d: Any, regions: Sequence[str] | None = None, where: str | Path = "postprocess"
    ) -> PostProcessing:
        """Read :meth:`to_dict`'s form, checked as strictly as the command line's words.

        Args:
            d: ``{"largest": [REGION, ...], "min_size": {REGION: VOXELS}}``.
            regions: The model's regions; every name must be one of them (not checked when
                None).
            where: What the error names (the file it was read from).

        Raises:
            DataError: Naming ``where``: not that form, an unknown region, a size below 1.

        Examples::

            >>> PostProcessing.from_dict({"largest": ["WT"]}, ["ET", "TC", "WT"]).words()
            ['largest:WT']
            >>> PostProcessing.from_dict({"largest": "WT"})
            Traceback (most recent call last):
            ...
            nmfseg.errors.DataError: postprocess: largest: expected a list of region names, got 'WT'
        """

        def fail(field: str, problem: str) -> NoReturn:
            raise DataError(where, f"{field}: {problem}")

        if not isinstance(d, Mapping):
            fail("postprocess", f"expected {{'largest': [...], 'min_size': {{...}}}}, got {d!r}")
        unknown = sorted(set(map(str, d)) - {"largest", "min_size"})
        if unknown:
            fail(unknown[0], "not a post-processing rule (expected largest, min_size)")
        largest, sizes = d.get("largest", []), d.get("min_size", {})
        if not isinstance(largest, list) or not all(isinstance(r, str) for r in largest):
            fail("largest", f"expected a list of region names, got {largest!r}")
        if not isinstance(sizes, Mapping) or not all(
            type(v) is int and v >= 1 for v in sizes.values()
        ):
            fail("min_size", f"expected region -> voxel count >= 1, got {sizes!r}")
        for name in [*largest, *sizes]:
            problem = _unknown_region(name, regions) if regions is not None else None
            if problem:
                fail("postprocess", problem)
        return cls(tuple(dict.fromkeys(largest)), {str(k): v for k, v in sizes.items()})

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


def option_words(pp: PostProcessing) -> str:
    """``pp`` as ``nmfseg predict`` options (the option repeated for each word).

    Examples::

        >>> option_words(PostProcessing(("WT",), {"ET": 50}))
        '--postprocess largest:WT --postprocess min-size:ET=50'
    """
    return " ".join(f"--postprocess {word}" for word in pp.words())


def read_postprocessing(path: str | Path, regions: Sequence[str]) -> PostProcessing:
    """The setting saved by ``nmfseg postprocess-search``, checked for a model of ``regions``.

    Raises:
        DataError: Naming the file: unreadable, not such a file, made for other regions, or
            a rule the command line would refuse.
    """
    record = read_json(path)
    if "postprocess" not in record:
        raise DataError(path, "no 'postprocess' entry: not written by nmfseg postprocess-search")
    made_for = record.get("regions")
    if made_for is not None and (
        not isinstance(made_for, list) or not all(isinstance(r, str) for r in made_for)
    ):
        raise DataError(path, f"regions: expected a list of region names, got {made_for!r}")
    if made_for is not None and regions and set(made_for) != set(regions):
        raise DataError(
            path,
            f"made for a model of regions {', '.join(made_for) or 'none'}, but this model "
            f"predicts {', '.join(regions)}: run nmfseg postprocess-search for this model",
        )
    return PostProcessing.from_dict(record["postprocess"], regions, path)


def saved_postprocessing(
    sources: Sequence[str | Path], regions: Sequence[str], export: Mapping[str, Any] | None = None
) -> PostProcessing:
    """``--postprocess auto``: the ``postprocessing.json`` of the run whose checkpoints are
    ``sources`` (in the run folder or a fold folder), checked by :func:`read_postprocessing`.

    Args:
        sources: The model's checkpoint files.
        regions: The model's regions.
        export: The metadata of an ONNX model (``nmfseg export``), which carries no
            post-processing: the error then gives the rules of the run it was exported from.

    Raises:
        ConfigError: No such file, or an ONNX model (saying what to pass instead).
        DataError: The file is not valid for this model.
    """
    if export is not None:
        source = (
            (export.get("source") or {}).get("checkpoint") if isinstance(export, dict) else None
        )
        run = [Path(source).parent, Path(source).parent.parent] if source else []
        saved = next((f / POSTPROCESSING for f in run if (f / POSTPROCESSING).is_file()), None)
        rules = (
            f"{option_words(read_postprocessing(saved, regions))} (from {saved})"
            if saved
            else (f"--postprocess with the rules ('words') of RUN/{POSTPROCESSING} of its run")
        )
        raise ConfigError(
            f"--postprocess auto: an ONNX model does not carry its run's post-processing; "
            f"pass {rules}"
        )
    folds = {Path(p).parent for p in sources}
    places = [f / POSTPROCESSING for f in sorted({f.parent for f in folds} | folds)]
    saved = next((p for p in places if p.is_file()), None)
    if saved is None:
        raise ConfigError(
            f"--postprocess auto: no {POSTPROCESSING} next to the model's folds; run "
            "nmfseg postprocess-search first"
        )
    return read_postprocessing(saved, regions)
