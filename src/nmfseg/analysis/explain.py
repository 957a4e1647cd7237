"""``nmfseg explain``: the NMF components of a trained Factorizer on one case (paper Fig. 6).

:func:`explain_case` runs the model on a case exactly as ``nmfseg predict`` does (same
preprocessing, same sliding window), with the factors of the chosen NMF layers recorded in
every window and turned into maps on the input's own grid (:mod:`nmfseg.analysis.maps`:
dematricized, resampled back through every down-sampling, blended like the predictions, the
crop undone). It writes into the output folder:

- ``maps/layerLL_headHH_compC.nii.gz``: one float32 map per (layer, head, component), with
  the input's affine and header, so it opens over the scan in any viewer;
- ``components.png``: the modalities and the ground truth in the first row, then the
  components of each chosen layer overlaid on the axial slice through the lesion (the
  largest ground-truth area, else the largest predicted area; a 2D image is its own slice);
- ``components.json``: per map the layer, head, component, stage and level, the matricize
  window and its partitions (key ``views``), the value range and the file, with the model
  and the settings;
- ``ranks.json`` and ``ranks.csv`` for greedy-rank NMF layers: how many windows x heads
  took each rank (:mod:`nmfseg.analysis.ranks`; ``nmfseg explain`` prints a line).

Layers are done in groups (one sliding-window pass each, at most ``max_maps`` maps held in
memory); ``components.json`` is rewritten after each group, so an interrupted run resumes
with the layers whose maps are all on disk.

Examples::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nmfseg.inference import Ensemble, Predictor
    >>> from nmfseg.models import Factorizer
    >>> from nmfseg.phantoms.toy import make_toy_dataset
    >>> tmp = Path(tempfile.mkdtemp())
    >>> root = make_toy_dataset(tmp / "isles", "isles22", n_cases=1, shape=(12, 10, 9))
    >>> net = Factorizer(3, 2, 1, (8, 16), head_dim=4, window_size=4, deep_supervision=False)
    >>> p = Predictor(Ensemble([net], [], (8, 8, 8), 2, 1))
    >>> result = explain_case(p, root, tmp / "explain", layers="first,last")
    >>> len(result.components), result.panel.name
    (4, 'components.png')
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from nmfseg.analysis.figures import axial_slice, component_panel
from nmfseg.analysis.maps import LayerInfo, component_maps, group_layers, layer_infos
from nmfseg.analysis.ranks import RankCollector
from nmfseg.data.formats import Case, CaseData, load_case, open_input
from nmfseg.data.nifti import check_label_values, read_nifti, squeeze_image, write_image
from nmfseg.data.preprocess import preprocess_case, restore
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import check_writable, read_json, write_json
from nmfseg.inference.predictor import Predictor
from nmfseg.inference.settings import parse_layers

__all__ = ["MANIFEST", "Explanation", "explain_case", "map_name", "open_one_case", "resolution"]

MANIFEST = "components.json"


@dataclass
class Explanation:
    """What :func:`explain_case` wrote.

    Attributes:
        folder: The output folder.
        components: One entry per map, as in ``components.json``.
        panel: The PNG panel (``None`` when not asked for).
        reused: Layers whose maps were already on disk from an interrupted run.
        ranks: The ranks greedy-rank NMF layers chose (``ranks.json``'s entries).
    """

    folder: Path
    components: list[dict[str, Any]] = field(default_factory=list)
    panel: Path | None = None
    reused: list[int] = field(default_factory=list)
    ranks: list[dict[str, Any]] = field(default_factory=list)


def map_name(layer: int, head: int, component: int) -> str:
    """File name of one map.

    Examples::

        >>> map_name(3, 12, 0)
        'layer03_head12_comp0.nii.gz'
    """
    return f"layer{layer:02d}_head{head:02d}_comp{component}.nii.gz"


def open_one_case(path: str | Path | Case, scheme: DatasetScheme | None = None) -> Case:
    """The case ``path`` names (a case folder or file, or a dataset folder of one case).

    Raises:
        DataError: ``path`` is no case, or a dataset of several cases.
    """
    if isinstance(path, Case):
        return path
    dataset = open_input(path, scheme=scheme)
    if len(dataset.cases) != 1:
        first = ", ".join(dataset.case_ids[:3])
        raise DataError(
            path,
            f"is a {dataset.fmt} dataset of {len(dataset.cases)} cases ({first}, ...); "
            "explain takes one case: give its folder or file",
        )
    return dataset.cases[0]


def _ground_truth(
    data: CaseData, case: Case, gt: str | Path | None
) -> tuple[np.ndarray | None, Path | None]:
    """The label map to show (``--gt``, else the case's own label if it has one)."""
    path = Path(gt) if gt is not None else case.label_path
    if path is None or (gt is None and not Path(path).is_file()):
        return None, None
    label, _ = read_nifti(path, dtype=None)
    label = squeeze_image(label, path)
    if label.shape != data.image.shape[1:]:
        raise DataError(path, f"has shape {label.shape} but the image has {data.image.shape[1:]}")
    assert case.scheme is not None
    checked, problem = check_label_values(label, case.scheme)
    if checked is None:
        raise DataError(path, problem)
    return checked, Path(path)


def _key(predictor: Predictor, case: Case, gt: Path | None) -> dict:
    """What must be equal for maps on disk to be reused."""
    settings = predictor.resolved_settings()
    return {
        "model": predictor.model_name,
        "checkpoints": [str(Path(p).resolve()) for p in predictor.ensemble.sources],
        "case": case.case_id,
        "images": [str(Path(p).resolve()) for p in case.image_paths],
        "ground_truth": str(gt.resolve()) if gt is not None else None,
        "settings": {k: settings[k] for k in ("patch_size", "overlap", "blend", "sw_batch_size")},
    }


def _previous(out: Path, key: dict) -> tuple[dict[int, list[dict]], int | None]:
    """Entries of layers whose maps are all on disk from an earlier run with the same key."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return {}, None
    try:
        old = read_json(manifest)
    except DataError:
        return {}, None
    if {k: old.get(k) for k in key} != key:
        return {}, None
    done: dict[int, list[dict]] = {}
    for entry in old.get("components", []):
        done.setdefault(int(entry["layer"]), []).append(entry)
    complete = {
        layer: entries
        for layer, entries in done.items()
        if all((out / e["file"]).is_file() for e in entries)
    }
    return complete, old.get("slice")


def explain_case(
    predictor: Predictor,
    case: str | Path | Case,
    out: str | Path,
    layers: str | Sequence[int] = "first,last",
    gt: str | Path | None = None,
    *,
    write_maps: bool = True,
    panel: str | None = "components.png",
    max_maps: int = 32,
    progress: bool = False,
) -> Explanation:
    """Write the NMF component maps of one case (see the module docstring).

    Args:
        predictor: A Factorizer (its first network is explained: load one fold).
        case: A case folder or file (any format ``nmfseg predict`` takes), or a :class:`Case`.
        out: Output folder.
        layers: NMF layers (:func:`~nmfseg.inference.settings.parse_layers`:
            ``first,last``, ``all``, ``0,3,8``, ``0-4``).
        gt: A label file to show (default: the case's own label, if it has one).
        write_maps: Write the NIfTI maps and ``components.json`` (``False``: only the panel).
        panel: File name of the PNG panel in ``out`` (``None``: no panel).
        max_maps: Most maps held in memory at once (one sliding-window pass per group).
        progress: A line per sliding-window pass on stderr.

    Raises:
        ConfigError: A network without NMF layers, or a bad ``layers``.
        DataError: An unreadable case or ground truth, or one that does not fit the model, or
            an output folder that cannot be written (checked before any work).
    """
    if not predictor.has_nmf:
        raise ConfigError(
            f"the network {predictor.model_name} has no NMF layers; explain shows the NMF "
            "components of Factorizers"
        )
    net = predictor.ensemble.models[0]
    infos = layer_infos(net)
    chosen = parse_layers(layers, len(infos), option="--layers")
    if not chosen:
        raise ConfigError(f"--layers {layers!r}: choose at least one NMF layer")
    check_writable(out, what="component maps")  # before any work
    case = open_one_case(case, predictor.ensemble.scheme)
    data = _load_fitting_case(predictor, case)
    truth, gt_path = _ground_truth(data, case, gt)
    pre = predictor.ensemble.preprocessing
    x, _, crop = preprocess_case(
        data.image, where=case.case_id, spacing=data.spacing, preprocessing=pre
    )
    out = Path(out)
    key = _key(predictor, case, gt_path)
    done, z = _previous(out, key) if write_maps else ({}, None)
    if truth is not None and z is None:
        z = _lesion_slice(truth > 0)
    result = Explanation(out, reused=[i for i in chosen if i in done])
    slices = {  # the panel's slices of the layers an earlier run wrote
        i: [(_short(e), _plane(_read_map(out / e["file"]), z)) for e in done[i]]
        for i in result.reused
    }
    maps = _MapWriter(out, data, crop, done, write_maps)
    groups = group_layers([infos[i] for i in chosen if i not in done], max_maps)
    ranks = RankCollector(net, chosen)  # greedy-rank NMF layers: counted in the first pass
    for g, group in enumerate(groups, start=1):
        if progress:
            _say_pass(g, len(groups), group)
        with ranks.collecting():
            probs, group_maps, geometry = component_maps(
                predictor, x, group, probabilities=z is None
            )
        if z is None:  # no ground truth: the slice with the largest predicted area
            assert probs is not None
            z = _lesion_slice((restore(probs, crop) >= predictor.threshold).any(0))
        slices.update(maps.add(group, group_maps, geometry, z))
        if write_maps:
            _write_manifest(out, key, done, z)
    result.components = [e for i in chosen for e in done[i]]
    result.ranks = ranks.write(out) if write_maps else [t.to_dict() for t in ranks.tables()]
    if panel is not None:
        assert z is not None
        result.panel = _panel(out / panel, data, case, truth, infos, chosen, slices, z, predictor)
    return result


def _load_fitting_case(predictor: Predictor, case: Case) -> CaseData:
    """The case's images (its label unread), refused in one line when the model cannot take
    them: another number of channels, or another number of dims."""
    data = load_case(dataclasses.replace(case, label_path=None))
    if data.image.shape[0] != predictor.ensemble.in_channels:
        raise DataError(
            case.image_paths[0],
            f"case {case.case_id} has {data.image.shape[0]} channels but the model expects "
            f"{predictor.ensemble.in_channels}",
        )
    if data.image.ndim - 1 != len(predictor.patch_size):
        raise DataError(
            case.image_paths[0],
            f"case {case.case_id} is a {data.image.ndim - 1}D image but {predictor.model_name} "
            f"is a {len(predictor.patch_size)}D network",
        )
    return data


def _say_pass(g: int, passes: int, group: list[LayerInfo]) -> None:
    """The line of one sliding-window pass: its layers and how many maps they give."""
    names = ", ".join(str(i.index) for i in group)
    count = sum(i.n_maps for i in group)
    tqdm.write(f"[explain] pass {g}/{passes}: layer(s) {names}, {count} maps", file=sys.stderr)


@dataclass
class _MapWriter:
    """Where the maps of one case go: the output folder, the case's own grid (restored from
    the preprocessing's ``crop``) and the entries of every layer done so far."""

    out: Path
    data: CaseData
    crop: Any
    done: dict[int, list[dict]]
    write: bool

    def add(
        self, group: list[LayerInfo], maps: Any, geometry: dict[int, Any], z: int | None
    ) -> dict[int, list[tuple[str, np.ndarray]]]:
        """Restore one pass's maps to the case's grid, write them (with ``write``), record
        their entries in ``done``; the panel's slice ``z`` of each, per layer."""
        slices: dict[int, list[tuple[str, np.ndarray]]] = {}
        k = 0
        for info in group:
            slices[info.index] = []
            for head in range(info.heads):
                for comp in range(info.rank):
                    full = restore(maps[k], self.crop, fill=0.0)
                    entry = _entry(info, head, comp, full, geometry.get(info.index))
                    if self.write:
                        image = self.out / entry["file"]
                        write_image(image, full, self.data.affine, self.data.header)
                    slices[info.index].append((_short(entry), _plane(full, z)))
                    self.done.setdefault(info.index, []).append(entry)
                    k += 1
        return slices


def _lesion_slice(mask: np.ndarray) -> int:
    """The axial slice the panel shows: :func:`axial_slice` of a volume; 0 for a 2D image."""
    return axial_slice(mask, mask.shape[-1]) if mask.ndim == 3 else 0


def _plane(array: np.ndarray, z: int | None) -> np.ndarray:
    """Slice ``z`` of a volume ``(X, Y, Z)``; a 2D image ``(X, Y)`` as it is."""
    return array[..., z] if array.ndim == 3 else array


def _read_map(path: Path) -> np.ndarray:
    """A map written by an earlier run, on the image's grid (2D for a 2D image)."""
    return squeeze_image(np.asarray(nib.load(path).dataobj, np.float32), path)


def _short(entry: dict[str, Any]) -> str:
    return f"head {entry['head']}" + (f" comp {entry['component']}" if entry["rank"] > 1 else "")


def _entry(
    info: LayerInfo, head: int, comp: int, data: np.ndarray, geometry: Any
) -> dict[str, Any]:
    return {
        "layer": info.index,
        "head": head,
        "component": comp,
        "rank": info.rank,
        "stage": info.stage,
        "level": info.level,
        "matricize": info.matricize,
        "window": list(geometry.window) if geometry is not None else None,
        "views": geometry.partitions if geometry is not None else None,  # key of 0.1
        "min": float(data.min()),
        "max": float(data.max()),
        "file": f"maps/{map_name(info.index, head, comp)}",
    }


def _write_manifest(out: Path, key: dict, done: dict[int, list[dict]], z: int | None) -> None:
    write_json(
        out / MANIFEST,
        {
            **key,
            "slice": z,
            "components": [e for layer in sorted(done) for e in done[layer]],
        },
    )


def _panel(
    path: Path,
    data: CaseData,
    case: Case,
    truth: np.ndarray | None,
    infos: list[LayerInfo],
    chosen: list[int],
    slices: dict[int, list[tuple[str, np.ndarray]]],
    z: int,
    predictor: Predictor,
) -> Path:
    assert case.scheme is not None
    names = list(case.scheme.channels) or [f"channel {c}" for c in range(len(data.image))]
    modalities = [(name, _plane(data.image[c], z)) for c, name in enumerate(names)]
    rows = []
    for i in chosen:
        info = infos[i]
        rows.append((f"layer {i}, {info.stage}\n{resolution(info.level)}", slices[i]))
    shown = max(len(modalities) + (truth is not None), 8)
    every = "" if all(len(slices[i]) <= shown for i in chosen) else "; every map is in maps/"
    where = f"axial slice {z}" if data.image.ndim == 4 else "2D image"
    return component_panel(
        path,
        modalities,
        _plane(truth, z) if truth is not None else None,
        rows,
        _plane(data.image[0], z),
        max_columns=shown,
        title=f"{predictor.model_name}: NMF components, case {case.case_id}, {where}{every}",
    )


def resolution(level: int) -> str:
    """The feature map's resolution at a U-Net level, in words.

    Examples::

        >>> resolution(0), resolution(3)
        ('full resolution', '1/8 resolution')
    """
    return "full resolution" if level == 0 else f"1/{2**level} resolution"
