"""Training data: a preprocessed case cache and a deterministic stream of patches.

**Cache.** Every labelled case is loaded once, preprocessed exactly as prediction does it
(:func:`nmfseg.data.preprocess.preprocess_case` with the run's
:class:`~nmfseg.data.normalization.Preprocessing`: crop to the image's nonzero box, resample
to the target spacing if any, normalize each channel; by default the paper's z-score on
nonzero voxels), its label turned into regions
(:func:`nmfseg.data.schemes.labels_to_regions`) and stored as ``.npy`` files under
``RUN_DIR/<dataset>/preprocessed/`` (shared by every model and fold; a preprocessing other
than the default gets its own subfolder ``preprocessed/<key>/``, named by a hash of its
settings, so runs with different CT statistics or spacings never share entries). Training
reads the files memory-mapped, so only the patches are read and memory does not grow with
the dataset. An entry is reused while the source files keep their size and modification time
and it was made with the same preprocessing (part of the entry's fingerprint).

**Patches.** The ``k``-th sample a process draws is a pure function of
``(seed, global sample index)``; the global index of sample ``i`` of step ``s`` on rank
``r`` is ``g = s * batch_size + r * (batch_size / world_size) + i``. So the patches of a
step are the same whatever the number of DataLoader workers, the order they finish in,
or whether the run was interrupted and resumed at step ``s``; and each rank draws
different patches. The case of sample ``g`` is ``perm_e[g mod n]`` where ``perm_e`` is a
seeded permutation of the ``n`` training cases for "epoch" ``e = g // n`` (every case is
seen once per epoch, like a distributed sampler); the patch position and the
augmentations are drawn from a generator seeded with ``(seed, g)``.

Examples::

    >>> from nmfseg.training.data import derive_seed
    >>> derive_seed(42, 2, 0) == derive_seed(42, 2, 0) != derive_seed(42, 2, 1)
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from nmfseg.data.formats import Case, load_case
from nmfseg.data.normalization import Preprocessing
from nmfseg.data.preprocess import crop, preprocess_case
from nmfseg.data.schemes import DatasetScheme, labels_to_regions
from nmfseg.data.transforms import augment, build_augmentation, random_patch
from nmfseg.errors import DataError
from nmfseg.fileio import atomic_open, write_json

__all__ = [
    "CACHE_VERSION",
    "PatchDataset",
    "PreparedCase",
    "cache_folder",
    "derive_seed",
    "prepare_case",
]

CACHE_VERSION = 1
# Streams derived from the run seed; any new use of randomness gets its own tag.
TAG_INIT, TAG_ORDER, TAG_SAMPLE, TAG_STEP = 0, 1, 2, 3


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for the stream named by ``keys`` (tag, step, rank, ...) of run ``seed``."""
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1)[0])


@dataclass(frozen=True)
class PreparedCase:
    """A preprocessed case in the cache.

    Attributes:
        case_id: the dataset's case id.
        image_path: ``(C, x, y, z)`` float32 ``.npy`` (cropped, resampled, normalized).
        regions_path: ``(R, x, y, z)`` uint8 ``.npy`` region masks.
        spacing: voxel size in mm of the cached arrays (the target spacing when the case
            was resampled).
        outside: per region, the label voxels lying outside the crop box (almost always 0;
            counted so that validation Dice equals Dice in the original grid; in voxels of
            the cached grid, rounded, when the case was resampled).
    """

    case_id: str
    image_path: Path
    regions_path: Path
    spacing: tuple[float, ...]
    outside: tuple[int, ...]

    def load(self, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(image, regions)``; memory-mapped read-only when ``mmap``."""
        mode = "r" if mmap else None
        return np.load(self.image_path, mmap_mode=mode), np.load(self.regions_path, mmap_mode=mode)


def _fingerprint(case: Case, preprocessing: Preprocessing | None) -> dict[str, Any]:
    files = [*case.image_paths, *([case.label_path] if case.label_path else [])]
    out = []
    for path in files:
        try:
            st = Path(path).stat()
            out.append([str(path), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(path), None, None])
    fingerprint: dict[str, Any] = {"version": CACHE_VERSION, "case_id": case.case_id, "files": out}
    if preprocessing is not None:
        fingerprint["preprocessing"] = preprocessing.to_dict()
    return fingerprint


def cache_folder(cache_dir: Path, preprocessing: Preprocessing | None) -> Path:
    """Where the entries of ``preprocessing`` live: ``cache_dir`` for the default (the
    paper's rule, no resampling: the entries of nmfseg before preprocessings existed),
    else ``cache_dir/<key>`` with ``key`` a hash of its settings.

    Examples::

        >>> from nmfseg.data.normalization import ChannelNorm
        >>> cache_folder(Path("pre"), Preprocessing.default(2)).as_posix()
        'pre'
        >>> ct = Preprocessing((ChannelNorm("ct", -100, 300, 40, 80),))
        >>> cache_folder(Path("pre"), ct) == cache_folder(Path("pre"), ct) != Path("pre")
        True
    """
    if preprocessing is None or preprocessing == Preprocessing.default(preprocessing.in_channels):
        return cache_dir
    text = json.dumps(preprocessing.to_dict(), sort_keys=True)
    return cache_dir / hashlib.sha256(text.encode()).hexdigest()[:12]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as fh:
        np.save(fh, array)


def _safe_name(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)


def prepare_case(
    case: Case, scheme: DatasetScheme, cache_dir: Path, preprocessing: Preprocessing | None = None
) -> PreparedCase:
    """Preprocess one labelled case into the cache (or reuse a valid cache entry).

    Args:
        case: a labelled case of the dataset.
        scheme: the dataset's label scheme.
        cache_dir: the dataset's cache, ``RUN_DIR/<dataset>/preprocessed``; the entry goes
            into :func:`cache_folder` of it.
        preprocessing: the run's (``None``: the default, the paper's rule).

    Raises:
        DataError: the case has no label, or its files fail the reader's checks.
    """
    if preprocessing is not None and preprocessing == Preprocessing.default(
        preprocessing.in_channels
    ):
        preprocessing = None  # the same arrays; keep the entries made before this option
    cache_dir = cache_folder(cache_dir, preprocessing)
    name = _safe_name(case.case_id)
    meta_path = cache_dir / f"{name}.json"
    image_path, regions_path = cache_dir / f"{name}_image.npy", cache_dir / f"{name}_regions.npy"
    fingerprint = _fingerprint(case, preprocessing)
    if meta_path.is_file() and image_path.is_file() and regions_path.is_file():
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            if meta.get("fingerprint") == fingerprint:
                return PreparedCase(
                    case.case_id,
                    image_path,
                    regions_path,
                    tuple(meta["spacing"]),
                    tuple(meta["outside"]),
                )
        except (OSError, ValueError, KeyError):
            pass  # stale or broken entry: rebuild it
    if case.label_path is None:
        raise DataError(case.case_id, "case has no label file; training needs labels")
    data = load_case(case, scheme)
    if data.label is None:
        raise DataError(case.case_id, "case has no label; training needs labels")
    image, label, record = preprocess_case(
        data.image,
        data.label,
        where=case.case_id,
        spacing=data.spacing,
        preprocessing=preprocessing,
    )
    regions = labels_to_regions(label, scheme)
    spacing = tuple(data.spacing if preprocessing is None else record.spacing)
    total = labels_to_regions(data.label, scheme).reshape(len(regions), -1).sum(1)
    if preprocessing is None or not record.resampled:
        inside = regions.reshape(len(regions), -1).sum(1)
    else:  # count inside the box on the original grid; convert to voxels of the new grid
        cut = labels_to_regions(
            crop(_transposed(data.label, record.transpose), record.crop), scheme
        )
        inside = cut.reshape(len(regions), -1).sum(1)
        spacing = tuple(preprocessing.target_spacing)  # type: ignore[arg-type]
    scale = float(np.prod(data.spacing)) / float(np.prod(spacing))
    outside = tuple(round(int(t - r) * scale) for t, r in zip(total, inside, strict=True))
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save_npy(image_path, np.ascontiguousarray(image, dtype=np.float32))
    _save_npy(regions_path, np.ascontiguousarray(regions, dtype=np.uint8))
    meta = {
        "fingerprint": fingerprint,
        "spacing": list(spacing),
        "outside": list(outside),
        "crop": record.to_dict(),
    }
    write_json(meta_path, meta)
    return PreparedCase(case.case_id, image_path, regions_path, spacing, outside)


def _transposed(label: np.ndarray, order: tuple[int, ...] | None) -> np.ndarray:
    return label if order is None else label.transpose(order)


class PatchDataset(TorchDataset):
    """The training samples of one process, indexed by local sample number.

    Item ``k`` (``k = step * per_rank + i``) is ``{"image": float32 (C, *patch), "label":
    uint8 (R, *patch)}``, a pure function of ``(seed, g)`` with ``g`` the global sample
    index (module docstring). Use it with a sampler that starts at
    ``first_step * per_rank`` (``range`` works) and ``batch_size=per_rank``.

    Args:
        cases: training cases of the fold (cache entries).
        patch_size: spatial patch size.
        augmentation: the config's ``augmentation`` section.
        seed: run seed.
        batch_size: global batch size (all ranks together).
        rank: this process's rank.
        world_size: number of processes (must divide ``batch_size``).
        length: number of local samples (``steps * per_rank``).
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch_size: Sequence[int],
        augmentation: Mapping[str, Any],
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        length: int | None = None,
    ) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one case.")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} ranks.")
        self.cases = list(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.pipeline = build_augmentation(augmentation, spatial_dims=len(self.patch_size))
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.per_rank = self.batch_size // world_size
        self.length = length if length is not None else 2**62

    def __len__(self) -> int:
        return self.length

    def global_index(self, k: int) -> int:
        """Global sample index of local sample ``k``."""
        step, i = divmod(int(k), self.per_rank)
        return step * self.batch_size + self.rank * self.per_rank + i

    def case_of(self, g: int) -> int:
        """Index (into ``cases``) of the case of global sample ``g``."""
        n = len(self.cases)
        epoch, pos = divmod(int(g), n)
        rng = np.random.default_rng(derive_seed(self.seed, TAG_ORDER, epoch))
        return int(rng.permutation(n)[pos])

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        g = self.global_index(k)
        case = self.cases[self.case_of(g)]
        rng = np.random.default_rng(derive_seed(self.seed, TAG_SAMPLE, g))
        image, regions = case.load(mmap=True)
        x, y = random_patch(image, regions, self.patch_size, rng)
        x_t, y_t = augment(self.pipeline, x, y, seed=int(rng.integers(0, 2**32)))
        return {"image": x_t, "label": y_t}
