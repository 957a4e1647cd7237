"""Synthetic BraTS- and ISLES'22-like MRI and head-CT datasets, in the real on-disk formats.

Real BraTS and ISLES data need a registration and a download; these phantoms need neither.
They are built from the MNI152 template and tissue maps shipped inside the ``nilearn`` wheel
(see :mod:`nmfseg.phantoms.anatomy`), with tumours (:mod:`nmfseg.phantoms.brats`) or
infarcts (:mod:`nmfseg.phantoms.isles`) and a scanner model (pose, bias, gain, Rician
noise, skull stripping), or as non-contrast head CT (:mod:`nmfseg.phantoms.ct`: Hounsfield
units stored as int16, a skull, haemorrhages, a clinical voxel size per case). They are not
real patients: use them to check that a pipeline runs and learns, not to claim clinical
accuracy.

:func:`synthesize_dataset` writes a whole dataset with the readers' own layout
(:func:`nmfseg.data.formats.write_case`), labels in the format's scheme
(:data:`nmfseg.data.schemes.SCHEMES`), a manifest ``synth.json`` and a figure
``overview.png``. Case ``i`` of a dataset seeded ``s`` is generated from the seed
``(s, i)`` alone, so datasets are byte-for-byte reproducible whatever the number of workers.

Grid: 2 mm isotropic by default (the nilearn 2 mm MNI grid, 99 x 117 x 95). ``spacing``
coarsens it (4 mm: about 50 x 59 x 48, ~8x fewer voxels, for quick tests and demos) and
``shape`` crops/pads it about the brain (e.g. ``(64, 64, 64)`` at 3 mm). CT cases are
generated on that grid (1 mm by default) and resampled to their own voxel size, the
clinical one times ``spacing`` (so 3–4 mm gives the same spread of sizes, coarser).
``brats2d`` cases are 2D: one axial slice of a BraTS phantom on that grid, resampled to
``size × size`` pixels (512 by default; :mod:`nmfseg.phantoms.slices`).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nmfseg import __version__
from nmfseg.data.formats import get_format, list_formats, write_case, write_dataset_metadata
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import write_json
from nmfseg.phantoms.anatomy import SynthCase, load_anatomy, prime_anatomy
from nmfseg.phantoms.brats import BRATS_CHANNELS, BRATS_REGIONS, ED, ET, NCR, synth_brats_case
from nmfseg.phantoms.ct import (
    CT_CHANNELS,
    CT_REGIONS,
    HAEMORRHAGE,
    OEDEMA,
    synth_ct_case,
    write_ct_case,
)
from nmfseg.phantoms.isles import ISLES_CHANNELS, ISLES_REGIONS, LESION, synth_isles_case
from nmfseg.phantoms.overview import save_overview
from nmfseg.phantoms.slices import SLICE_SIZE, lesion_slice, synth_brats_slice

__all__ = [
    "KINDS",
    "MANIFEST",
    "PHANTOM_REVISION",
    "SynthCase",
    "case_id_for",
    "phantom_formats",
    "save_overview",
    "synth_brats_case",
    "synth_ct_case",
    "synth_isles_case",
    "synthesize_dataset",
    "to_scheme_labels",
]

#: Name of the manifest written next to the cases; ``overwrite`` only clears folders with one.
MANIFEST = "synth.json"
OVERVIEW = "overview.png"
#: Revision of the phantom model, written to the manifest. Bumped whenever the same seed
#: gives different images or labels, so that cached phantom sets are regenerated.
PHANTOM_REVISION = 2

#: What each kind of phantom is: generator, internal regions, channels, the default format,
#: internal label names and overlay colours, the prefix of case ids in formats without their
#: own naming, and the scheme used in formats without a fixed one (nnU-Net v2): BraTS
#: region-based (labels 1 = edema, 2 = necrosis / non-enhancing core, 3 = enhancing; regions WT,
#: TC, ET painted in that order, as nnU-Net's own BraTS conversion), ISLES one lesion label,
#: CT two disjoint labels (haemorrhage, oedema); channels in the generator's order. A kind can
#: be written in every registered format whose fixed scheme has its regions, and in those
#: without a fixed scheme. Optional: ``spacing`` (the default of ``synthesize_dataset``, else
#: 2 mm), ``write`` (how a case is stored, else float32 through ``write_case``), ``window``
#: (the overview's display range, else 0 to the 99.5th percentile), ``size`` (2D kinds: the
#: default pixels per side, passed to the generator).
KINDS: dict[str, dict[str, Any]] = {
    "brats": {
        "generate": synth_brats_case,
        "regions": BRATS_REGIONS,
        "channels": BRATS_CHANNELS,
        "default_format": "msd_brats",
        "labels": {NCR: ("NCR", "#e8412c"), ED: ("ED", "#3cc43c"), ET: ("ET", "#ffe119")},
        "case_prefix": "BRATS",
        "scheme": DatasetScheme(
            name="nnunet",
            channels=BRATS_CHANNELS,
            labels=(0, 1, 2, 3),
            regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
            region_labels={"WT": 1, "TC": 2, "ET": 3},
        ),
    },
    "isles": {
        "generate": synth_isles_case,
        "regions": ISLES_REGIONS,
        "channels": ISLES_CHANNELS,
        "default_format": "isles22",
        "labels": {LESION: ("lesion", "#e8412c")},
        "case_prefix": "ISLES",
        "scheme": DatasetScheme(
            name="nnunet",
            channels=ISLES_CHANNELS,
            labels=(0, 1),
            regions={"lesion": (1,)},
            region_labels={"lesion": 1},
        ),
    },
    "ct": {
        "generate": synth_ct_case,
        "regions": CT_REGIONS,
        "channels": CT_CHANNELS,
        "default_format": "nnunet",
        "labels": {HAEMORRHAGE: ("haemorrhage", "#e8412c"), OEDEMA: ("oedema", "#3cc43c")},
        "case_prefix": "CT",
        "scheme": DatasetScheme(
            name="nnunet",
            channels=CT_CHANNELS,
            labels=(0, 1, 2),
            regions={"haemorrhage": (1,), "oedema": (2,)},
            region_labels={"haemorrhage": 1, "oedema": 2},
        ),
        "spacing": 1.0,
        "write": write_ct_case,
        "window": (0.0, 80.0),  # the brain window (W80, L40)
    },
}
KINDS["brats2d"] = {
    **KINDS["brats"],
    "generate": synth_brats_slice,
    "default_format": "nnunet",
    "case_prefix": "BRATS2D",
    "size": SLICE_SIZE,
}
_FORMAT_ALIASES = {"msd": "msd_brats"}


def phantom_formats(kind: str) -> list[str]:
    """The registered formats phantoms of ``kind`` can be written in (default first).

    Examples::

        >>> phantom_formats("isles")
        ['isles22', 'nnunet']
    """
    regions = set(KINDS[kind]["regions"])
    names = [
        n
        for n in list_formats()
        if (s := get_format(n).scheme) is None or set(s.regions) == regions
    ]
    default = KINDS[kind]["default_format"]
    return [default, *(n for n in names if n != default)]


def _scheme(kind: str, fmt: str) -> DatasetScheme:
    """The label scheme phantoms of ``kind`` are written in for format ``fmt``."""
    return get_format(fmt).scheme or KINDS[kind]["scheme"]


def case_id_for(fmt: str, index: int, kind: str = "brats") -> str:
    """The case id of case ``index`` (0-based) in a format's own naming.

    Examples::

        >>> [case_id_for(f, 0) for f in ("msd_brats", "brats2021", "brats2023", "isles22")]
        ['BRATS_001', 'BraTS2021_00000', 'BraTS-GLI-00000-000', 'sub-strokecase0001']
        >>> case_id_for("nnunet", 0, "isles")
        'ISLES_001'
    """
    return get_format(fmt).case_id(index, KINDS[kind]["case_prefix"])


def to_scheme_labels(
    label: np.ndarray, regions: dict[str, tuple[int, ...]], scheme: Any
) -> np.ndarray:
    """Rewrite internal label codes as a scheme's label values.

    Each internal code is matched to the one scheme label that belongs to exactly the same
    regions (NCR is in TC and WT, ED only in WT, ET in ET, TC and WT), so nothing but the
    scheme's own ``regions`` table is needed.

    Args:
        label: Internal label map.
        regions: Internal region -> codes, e.g.
            :data:`~nmfseg.phantoms.brats.BRATS_REGIONS`.
        scheme: A :class:`~nmfseg.data.schemes.DatasetScheme` with the same region names.

    Returns:
        The label map in the scheme's values (uint8).

    Examples::

        >>> from nmfseg.data.schemes import SCHEMES
        >>> lab = np.array([0, NCR, ED, ET])
        >>> to_scheme_labels(lab, BRATS_REGIONS, SCHEMES["msd_brats"]).tolist()
        [0, 2, 1, 3]
        >>> to_scheme_labels(lab, BRATS_REGIONS, SCHEMES["brats2021"]).tolist()
        [0, 1, 2, 4]
    """
    if set(regions) != set(scheme.regions):
        raise ValueError(
            f"scheme {scheme.name!r} has regions {tuple(scheme.regions)}, the phantoms "
            f"have {tuple(regions)}"
        )
    codes = sorted({c for cs in regions.values() for c in cs})
    lut = np.zeros(max(codes) + 1, dtype=np.uint8)
    for code in codes:
        member = {r for r, cs in regions.items() if code in cs}
        matches = [
            v
            for v in scheme.labels
            if v != 0 and {r for r, vs in scheme.regions.items() if v in vs} == member
        ]
        if len(matches) != 1:
            raise ValueError(
                f"scheme {scheme.name!r} has {len(matches)} labels in exactly the regions "
                f"{sorted(member)}; expected one"
            )
        lut[code] = matches[0]
    return lut[np.asarray(label)]


def _make_case(job: dict[str, Any]) -> dict[str, Any]:
    """Generate, convert and write one case (runs in a worker process)."""
    spec = KINDS[job["kind"]]
    size = {"size": job["size"]} if "size" in spec else {}
    case: SynthCase = spec["generate"](
        (job["seed"], job["index"]), spacing=job["spacing"], shape=job["shape"], **size
    )
    scheme = _scheme(job["kind"], job["fmt"])
    label = to_scheme_labels(case.label, spec["regions"], scheme)
    write = spec.get("write", write_case)
    write(job["fmt"], job["out"], job["case_id"], case.image, label, case.affine, scheme=scheme)
    voxel_ml = float(abs(np.linalg.det(case.affine[:3, :3]))) / 1000.0
    counts = np.bincount(case.label.ravel(), minlength=max(spec["labels"]) + 1)
    result: dict[str, Any] = {
        "case_id": job["case_id"],
        "seed": [job["seed"], job["index"]],
        "volume_ml": {
            name: round(float(counts[c]) * voxel_ml, 3) for c, (name, _) in spec["labels"].items()
        },
    }
    if "spacing" in spec:  # kinds whose cases have their own voxel size
        result["spacing_mm"] = [
            round(float(v), 6) for v in np.linalg.norm(case.affine[:3, :3], axis=0)
        ]
    if job["keep_slice"]:
        z = lesion_slice(case.label, case.image[0] > 0)
        result["slice"] = (z, case.image[:, :, :, z].copy(), case.label[:, :, z].copy())
    return result


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``, or empty it if ``overwrite`` and it holds an earlier phantom set."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(out, "is not empty; choose a new folder or pass --overwrite")
        if not (out / MANIFEST).is_file():
            raise DataError(
                out,
                f"is not empty and holds no {MANIFEST} (not written by nmfseg synth); "
                "refusing to delete it, choose another folder",
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def synthesize_dataset(
    kind: str,
    out: str | Path,
    n_cases: int,
    seed: int = 0,
    fmt: str | None = None,
    spacing: float | None = None,
    shape: Sequence[int] | None = None,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    overview: int = 4,
    size: int | None = None,
) -> Path:
    """Write a synthetic BraTS-, ISLES'22- or head-CT-like dataset in a real on-disk format.

    Args:
        kind: ``"brats"`` (FLAIR, T1, T1Gd, T2; NCR/ED/ET), ``"brats2d"`` (the same, 2D: one
            axial slice per case at ``size`` x ``size`` pixels, stored as ``X x Y x 1``),
            ``"isles"`` (DWI, ADC; lesion) or ``"ct"`` (CT in HU; haemorrhage, oedema; each
            case its own voxel size).
        out: Dataset folder to create; must be empty or absent (see ``overwrite``).
        n_cases: Number of cases.
        seed: Dataset seed; case ``i`` uses the seed ``(seed, i)``.
        fmt: ``"msd"``/``"msd_brats"`` (default for brats), ``"brats2021"``, ``"brats2023"``,
            ``"isles22"`` (default for isles), or ``"nnunet"`` (nnU-Net v2 raw, any kind, the
            default for ct and brats2d; name the folder ``DatasetNNN_Name`` if nnU-Net itself
            is to read it).
        spacing: Isotropic voxel size in mm (>= 1; 3–4 for quick runs; default 2). For ct
            the generation grid and the scale of each case's clinical voxel size (default 1:
            0.70–1.0 mm in-plane, 1–5 mm slices).
        shape: Optional grid size ``(X, Y, Z)``, cropped/padded about the brain (for ct the
            generation grid's; each case's shape follows from its voxel size).
        workers: Processes generating cases in parallel (the result does not depend on it).
        progress: Show a tqdm progress bar.
        overwrite: Empty ``out`` first if it holds an earlier ``nmfseg synth`` dataset (one
            with a ``synth.json``); other non-empty folders are never deleted.
        overview: Number of cases shown in ``overview.png`` (0: no figure).
        size: 2D kinds: pixels per side of the slices (at least 16; default 512).

    Returns:
        The dataset folder, readable with :func:`nmfseg.data.formats.open_dataset`.

    Raises:
        ConfigError: Unknown kind or format, or a bad number.
        DataError: ``out`` is not empty.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.formats import open_dataset
        >>> root = synthesize_dataset("isles", tempfile.mkdtemp() + "/isles", 2,
        ...                           spacing=4.0, progress=False, overview=0)
        >>> ds = open_dataset(root)
        >>> ds.fmt, ds.case_ids
        ('isles22', ['sub-strokecase0001', 'sub-strokecase0002'])
    """
    req = _check_request(kind, fmt, n_cases, seed, spacing, shape, workers, size)
    out = Path(out).expanduser()
    _prepare_out(out, overwrite)
    manifest = _manifest(req)
    write_json(out / MANIFEST, manifest)
    results = _run_jobs(_jobs(req, out, overview), kind, workers, progress)
    write_dataset_metadata(
        req.fmt,
        out,
        scheme=_scheme(kind, req.fmt),
        name=f"nmfseg {kind} phantoms",
        description="synthetic phantoms (nmfseg synth)",
    )
    if overview > 0:
        _draw_overview(out, results, KINDS[kind])
    manifest |= {"complete": True, "cases": results}
    write_json(out / MANIFEST, json.loads(json.dumps(manifest)))
    return out


@dataclass(frozen=True)
class _Request:
    """The checked options of a dataset, shared by its manifest and every case job."""

    kind: str
    fmt: str
    seed: int
    n_cases: int
    spacing: float
    shape: tuple[int, ...] | None
    size: int | None


def _check_request(
    kind: str,
    fmt: str | None,
    n_cases: int,
    seed: int,
    spacing: float | None,
    shape: Sequence[int] | None,
    workers: int,
    size: int | None,
) -> _Request:
    """Check the options (a bad one raises ConfigError) and fill in their defaults."""
    if kind not in KINDS:
        raise ConfigError(f"unknown phantom kind {kind!r}; choose from {', '.join(KINDS)}")
    fmt = _resolve_format(kind, fmt)
    if int(n_cases) < 1:
        raise ConfigError(f"--cases must be at least 1, got {n_cases}")
    if int(seed) < 0:
        raise ConfigError(f"--seed must be a nonnegative integer, got {seed}")
    spacing = float(KINDS[kind].get("spacing", 2.0) if spacing is None else spacing)
    if not np.isfinite(spacing) or spacing < 1.0:
        raise ConfigError(f"--spacing must be at least 1 mm, got {spacing}")
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 8:
            raise ConfigError(f"--shape must be three sizes of at least 8 voxels, got {shape}")
    if int(workers) < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    return _Request(kind, fmt, int(seed), int(n_cases), spacing, shape, _resolve_size(kind, size))


def _resolve_format(kind: str, fmt: str | None) -> str:
    """The registered format to write (the kind's default when None); refuse one that can't."""
    formats = phantom_formats(kind)
    given, fmt = fmt, _FORMAT_ALIASES.get(fmt, fmt) if fmt is not None else formats[0]
    if fmt not in formats:
        names = ", ".join(("msd" if f == "msd_brats" else f) for f in formats)
        raise ConfigError(f"--format {given!r} cannot hold {kind} phantoms; choose from {names}")
    return fmt


def _resolve_size(kind: str, size: int | None) -> int | None:
    """The pixels per side of 2D kinds (the kind's default when None); None for 3D kinds."""
    spec = KINDS[kind]
    if size is not None and "size" not in spec:
        takes = ", ".join(k for k, v in KINDS.items() if "size" in v)
        raise ConfigError(f"--size sets the pixels of 2D phantoms ({takes}), not of {kind}")
    size = int(spec["size"] if size is None else size) if "size" in spec else None
    if size is not None and size < 16:
        raise ConfigError(f"--size must be at least 16 pixels, got {size}")
    return size


def _manifest(req: _Request) -> dict[str, Any]:
    """The manifest of a dataset being written (``complete`` until every case is)."""
    return {
        "generator": "nmfseg synth",
        "version": __version__,
        "revision": PHANTOM_REVISION,
        "complete": False,  # until every case is written (an interrupted run can be overwritten)
        "kind": req.kind,
        "format": req.fmt,
        "seed": req.seed,
        "n_cases": req.n_cases,
        "spacing_mm": req.spacing,
        "shape": list(req.shape) if req.shape is not None else None,
        "channels": list(KINDS[req.kind]["channels"]),
        **({"size": req.size} if req.size is not None else {}),
    }


def _jobs(req: _Request, out: Path, overview: int) -> list[dict[str, Any]]:
    """One ``_make_case`` job per case; the first ``overview`` keep a slice for the figure."""
    base = {**asdict(req), "out": str(out)}
    return [
        dict(base, index=i, case_id=case_id_for(req.fmt, i, req.kind), keep_slice=i < overview)
        for i in range(req.n_cases)
    ]


def _run_jobs(
    jobs: list[dict[str, Any]], kind: str, workers: int, progress: bool
) -> list[dict[str, Any]]:
    """Generate and write every case, here or in ``workers`` processes; results in case order."""
    results: list[dict[str, Any]] = [{}] * len(jobs)
    bar = tqdm(total=len(jobs), desc=f"synth {kind}", unit="case", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                results[job["index"]] = _make_case(job)
                bar.update()
        else:
            _run_parallel(jobs, results, int(workers), bar.update)
    finally:
        bar.close()
    return results


def _draw_overview(out: Path, results: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    """Draw ``overview.png`` from the slices the cases kept (and drop them from the results)."""
    slices = [(r["case_id"], *r.pop("slice")) for r in results if "slice" in r]
    save_overview(out / OVERVIEW, slices, spec["channels"], spec["labels"], spec.get("window"))


def _run_parallel(
    jobs: list[dict[str, Any]], results: list[dict[str, Any]], workers: int, tick: Callable
) -> None:
    """Run ``_make_case`` over ``jobs`` in spawned processes (safe after importing torch)."""
    job = jobs[0]
    key = (job["spacing"], job["shape"])
    anatomy = {key: load_anatomy(*key)}  # loaded once here, sent to the workers
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=ctx,
        initializer=prime_anatomy,
        initargs=(anatomy,),
    ) as pool:
        futures = {pool.submit(_make_case, job): job["index"] for job in jobs}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            tick()
