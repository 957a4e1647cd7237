"""Readers and writers for the five on-disk dataset formats.

=========== =====================================================================================
format      layout (``ROOT/...``)
=========== =====================================================================================
msd_brats   ``dataset.json``, ``imagesTr/BRATS_001.nii.gz`` (4D, channels last),
            ``labelsTr/BRATS_001.nii.gz``
brats2021   ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``
brats2023   ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz``
isles22     ``sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_{dwi,adc}.nii.gz``,
            ``derivatives/sub-strokecase0001/ses-0001/sub-strokecase0001_ses-0001_msk.nii.gz``
            (subjects may also sit under ``rawdata/``)
nnunet      ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
            ``imagesTr/CASE_0000.nii.gz`` (one file per channel), ``labelsTr/CASE.nii.gz``
=========== =====================================================================================

:func:`open_dataset` detects the format from file names alone (no volume is read), lists the
cases and builds the :class:`~nmfseg.data.schemes.DatasetScheme` (from ``dataset.json`` for
nnU-Net). It also opens an ``imagesTr``/``imagesTs`` folder of an MSD or nnU-Net dataset, and
a bare folder of MSD 4D images or nnU-Net ``CASE_0000.nii.gz`` files (the latter with
``scheme=``). :func:`open_case` opens one case for prediction: a BraTS case folder, an ISLES
subject folder, an MSD 4D file or one channel file ``CASE_0000.nii.gz`` of an nnU-Net case.

:func:`load_case` reads a case as a channels-first float32 array in the scheme's channel
order; every problem (missing, unreadable, wrong geometry, NaN, bad label) is a
:class:`~nmfseg.errors.DataError` naming the file. :func:`write_case` and
:func:`write_dataset_metadata` write NIfTI files atomically (file-level helpers:
:mod:`nmfseg.data.nifti`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmfseg.data.nifti import (
    NIFTI_ENDINGS,
    check_label_values,
    compare_geometry,
    label_dtype,
    load_nifti,
    new_nifti,
    nifti_files,
    nifti_path,
    nonfinite_count,
    read_nifti,
    save_nifti,
    squeeze_3d,
    strip_nifti_ending,
    write_image,
)
from nmfseg.data.schemes import SCHEMES, DatasetScheme, scheme_from_nnunet_json
from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import read_json, write_json

__all__ = [
    "FORMATS",
    "Case",
    "CaseData",
    "Dataset",
    "case_output_name",
    "detect_format",
    "load_case",
    "open_case",
    "open_dataset",
    "open_input",
    "write_case",
    "write_dataset_metadata",
]

FORMATS = ("msd_brats", "brats2021", "brats2023", "isles22", "nnunet")
_BRATS_SEP = {"brats2021": "_", "brats2023": "-"}
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.nii)$")
_ISLES_SESSION = "ses-0001"


@dataclass
class Case:
    """One case on disk: its id, image files in scheme channel order, label file.

    ``image_paths`` holds one path per channel, or a single 4D channels-last file (MSD).
    ``label_path`` is None for unlabelled cases; it may name a file that does not exist
    (``nmfseg check-data`` reports it).
    """

    case_id: str
    image_paths: list[Path]
    label_path: Path | None = None
    fmt: str = ""
    scheme: DatasetScheme | None = None


@dataclass
class CaseData:
    """A loaded case.

    Attributes:
        image: ``(C, X, Y, Z)`` float32 in the scheme's channel order.
        label: ``(X, Y, Z)`` int16 label map, or None.
        affine: ``(4, 4)`` voxel -> world (mm) matrix of the reference (first) image.
        header: NIfTI header of the reference image (pass it to :func:`write_label`).
        spacing: voxel size in mm along X, Y, Z.
        shape: original spatial shape ``(X, Y, Z)``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: Any
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]


@dataclass
class Dataset:
    """A dataset folder: its format, scheme and cases (sorted by id)."""

    root: Path
    fmt: str
    scheme: DatasetScheme
    cases: list[Case]
    has_labels: bool

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def name(self) -> str:
        """Folder name of the dataset (``Task01_BrainTumour``, ``Dataset137_BraTS2021``...)."""
        return (self.root.parent if self.root.name in ("imagesTr", "imagesTs") else self.root).name

    @property
    def case_ids(self) -> list[str]:
        """Case ids in dataset order."""
        return [c.case_id for c in self.cases]

    def get(self, case_id: str) -> Case:
        """The case with this id (``KeyError`` if absent)."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)


# --------------------------------------------------------------------------- folders


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# --------------------------------------------------------------------------- detection


def _json_base(root: Path) -> tuple[Path, str] | None:
    """``(folder with dataset.json, images folder name)`` for a dataset or its images folder."""
    if (root / "dataset.json").is_file():
        return root, "imagesTr"
    if root.name in ("imagesTr", "imagesTs") and (root.parent / "dataset.json").is_file():
        return root.parent, root.name
    return None


def _isles_subjects_dir(root: Path) -> Path:
    raw = root / "rawdata"
    return raw if raw.is_dir() and any(raw.glob("sub-*")) else root


def _detect(root: Path) -> str | None:
    base = _json_base(root)
    if base is not None:
        meta = read_json(base[0] / "dataset.json")
        if "channel_names" in meta:
            return "nnunet"
        if "modality" in meta:  # MSD, or an nnU-Net v1 dataset (3D files per channel)
            images = base[0] / base[1]
            v1 = any(_CHANNEL_FILE.match(p.name) for p in nifti_files(images))
            return "nnunet" if v1 else "msd_brats"
        raise DataError(
            base[0] / "dataset.json",
            "has neither 'channel_names' (nnU-Net v2) nor 'modality' (MSD)",
        )
    for sub in _subdirs(root):
        for fmt, sep in _BRATS_SEP.items():
            channel = SCHEMES[fmt].channels[0]
            if nifti_path(sub / f"{sub.name}{sep}{channel}").is_file():
                return fmt
    subjects = _isles_subjects_dir(root)
    for sub in sorted(subjects.glob("sub-*")):
        if any(sub.glob("ses-*/dwi/*_dwi.nii*")):
            return "isles22"
    files = nifti_files(root)
    if any(_CHANNEL_FILE.match(p.name) for p in files):
        return "nnunet"
    if files and len(load_nifti(files[0]).shape) == 4:
        return "msd_brats"
    return None


def detect_format(root: str | Path) -> str:
    """The format of a dataset folder, from file names (and at most one header).

    Raises:
        DataError: naming the folder and what was looked for.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.toy import make_toy_dataset
        >>> detect_format(make_toy_dataset(Path(tempfile.mkdtemp()), "brats2023", n_cases=1))
        'brats2023'
    """
    root = Path(root)
    fmt = _detect(root)
    if fmt is not None:
        return fmt
    hint = ""
    for sub in _subdirs(root)[:20]:
        try:
            found = _detect(sub)
        except DataError:
            found = None
        if found is not None:
            hint = f"; it contains a {found} dataset: did you mean {sub}?"
            break
    raise DataError(
        root,
        "no dataset format found: looked for dataset.json (MSD / nnU-Net), BraTS case folders "
        "(CASE/CASE_flair.nii.gz, CASE/CASE-t2f.nii.gz), ISLES'22 subjects "
        "(sub-*/ses-*/dwi/*_dwi.nii.gz) and images (CASE_0000.nii.gz, 4D MSD files)" + hint,
    )


# --------------------------------------------------------------------------- opening


def _open_json_format(root: Path, fmt: str, scheme: DatasetScheme | None) -> Dataset:
    base = _json_base(root)
    meta: dict | None = None
    ending = ".nii.gz"
    if base is None:  # a bare images folder (e.g. nnU-Net imagesTs copied elsewhere)
        images, labels = root, None
    else:
        images = base[0] / base[1]
        labels = base[0] / ("labelsTr" if base[1] == "imagesTr" else "labelsTs")
        meta = read_json(base[0] / "dataset.json")
    meta_path = base[0] / "dataset.json" if base is not None else root
    if fmt == "msd_brats":
        scheme = SCHEMES["msd_brats"]
        if meta is not None and "modality" in meta:
            modality = meta["modality"]
            found = tuple(str(modality[k]) for k in sorted(modality, key=lambda k: int(k)))
            if tuple(c.lower() for c in found) != tuple(c.lower() for c in scheme.channels):
                raise DataError(
                    meta_path,
                    f"modalities {found} are not MSD Task01_BrainTumour's {scheme.channels}; "
                    "other MSD tasks can be converted to the nnU-Net format",
                )
    elif meta is not None:
        scheme = scheme_from_nnunet_json(meta, meta_path)
        ending = str(meta.get("file_ending", ".nii.gz"))
        if ending not in NIFTI_ENDINGS:
            raise DataError(meta_path, f"file_ending {ending!r} is not supported (NIfTI only)")
    elif scheme is None:
        raise DataError(
            root,
            "nnU-Net images without a dataset.json next to them: pass the scheme (channel "
            "names and labels), e.g. the one stored with the trained model",
        )
    if not images.is_dir():
        raise DataError(images, "images folder not found")
    has_labels = labels is not None and labels.is_dir() and bool(nifti_files(labels))
    cases: list[Case] = []
    if fmt == "msd_brats":
        for path in nifti_files(images):
            cid = strip_nifti_ending(path.name)
            label = nifti_path(labels / cid) if has_labels else None
            cases.append(Case(cid, [path], label, fmt, scheme))
    else:
        ids = sorted({m["case"] for p in nifti_files(images) if (m := _CHANNEL_FILE.match(p.name))})
        for cid in ids:
            paths = [images / f"{cid}_{i:04d}{ending}" for i in range(scheme.in_channels)]
            label = labels / f"{cid}{ending}" if has_labels else None
            cases.append(Case(cid, paths, label, fmt, scheme))
    return Dataset(root, fmt, scheme, cases, has_labels)


def _brats_case(folder: Path, fmt: str) -> Case:
    sep, scheme, cid = _BRATS_SEP[fmt], SCHEMES[fmt], folder.name
    paths = [nifti_path(folder / f"{cid}{sep}{c}") for c in scheme.channels]
    return Case(cid, paths, nifti_path(folder / f"{cid}{sep}seg"), fmt, scheme)


def _open_brats(root: Path, fmt: str) -> Dataset:
    sep = _BRATS_SEP[fmt]
    cases = [
        _brats_case(d, fmt)
        for d in _subdirs(root)
        if any(
            nifti_path(d / f"{d.name}{sep}{s}").is_file() for s in (*SCHEMES[fmt].channels, "seg")
        )
    ]
    has_labels = any(c.label_path is not None and c.label_path.is_file() for c in cases)
    for case in cases:
        if not has_labels:
            case.label_path = None
    return Dataset(root, fmt, SCHEMES[fmt], cases, has_labels)


def _isles_case(subject: Path, derivatives: Path | None) -> Case:
    sub = subject.name
    sessions = sorted(p.name for p in subject.glob("ses-*") if p.is_dir())
    ses = sessions[0] if sessions else _ISLES_SESSION
    paths = [
        nifti_path(subject / ses / "dwi" / f"{sub}_{ses}_{c}") for c in SCHEMES["isles22"].channels
    ]
    label = nifti_path(derivatives / sub / ses / f"{sub}_{ses}_msk") if derivatives else None
    return Case(sub, paths, label, "isles22", SCHEMES["isles22"])


def _open_isles(root: Path) -> Dataset:
    derivatives = root / "derivatives"
    has_labels = derivatives.is_dir() and any(derivatives.glob("sub-*"))
    subjects = [p for p in sorted(_isles_subjects_dir(root).glob("sub-*")) if p.is_dir()]
    cases = [_isles_case(s, derivatives if has_labels else None) for s in subjects]
    return Dataset(root, "isles22", SCHEMES["isles22"], cases, has_labels)


def open_dataset(
    root: str | Path, fmt: str | None = None, scheme: DatasetScheme | None = None
) -> Dataset:
    """Open a dataset folder in any supported format.

    Args:
        root: the dataset folder (or the ``imagesTr``/``imagesTs`` folder of an MSD or
            nnU-Net dataset, or a bare folder of such images).
        fmt: one of :data:`FORMATS`; detected from the file names when None.
        scheme: only for a bare nnU-Net images folder without ``dataset.json``.

    Raises:
        DataError: missing folder, or no format recognised (naming what was looked for).

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.toy import make_toy_dataset
        >>> ds = open_dataset(make_toy_dataset(Path(tempfile.mkdtemp()), "isles22", n_cases=2))
        >>> ds.fmt, ds.case_ids, ds.scheme.channels
        ('isles22', ['sub-strokecase0001', 'sub-strokecase0002'], ('dwi', 'adc'))
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(root, "no such folder")
    if not root.is_dir():
        raise DataError(
            root, "is a file, not a dataset folder (a single case opens with open_case)"
        )
    if fmt is None:
        fmt = detect_format(root)
    elif fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt in ("msd_brats", "nnunet"):
        return _open_json_format(root, fmt, scheme)
    if fmt == "isles22":
        return _open_isles(root)
    return _open_brats(root, fmt)


def _sibling_label(image: Path, name: str) -> Path | None:
    """``../labelsTr/name`` for a file in ``imagesTr`` (``labelsTs`` for ``imagesTs``)."""
    folder = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}.get(image.parent.name)
    label = image.parent.parent / folder / name if folder else None
    return label if label is not None and label.is_file() else None


def open_case(path: str | Path, fmt: str | None = None, scheme: DatasetScheme | None = None):
    """Open one case for prediction.

    ``path`` is a BraTS 2021/2023 case folder, an ISLES'22 subject folder (``sub-*``; its
    mask is found under ``../derivatives`` when present), an MSD 4D image file (its label is
    found in a sibling ``labelsTr``) or any channel file ``CASE_0000.nii.gz`` of an nnU-Net
    case (the other channels are its siblings; the scheme comes from the ``dataset.json``
    one or two folders up, or ``scheme=``).

    Returns:
        a :class:`Case` with ``fmt`` and ``scheme`` set.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.toy import make_toy_dataset
        >>> root = make_toy_dataset(Path(tempfile.mkdtemp()), "brats2021", n_cases=1)
        >>> open_case(root / "BraTS2021_00000").image_paths[2].name
        'BraTS2021_00000_t1ce.nii.gz'
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_dir():
        for f, sep in _BRATS_SEP.items():
            if (
                fmt in (None, f)
                and nifti_path(path / f"{path.name}{sep}{SCHEMES[f].channels[0]}").is_file()
            ):
                case = _brats_case(path, f)
                case.label_path = case.label_path if case.label_path.is_file() else None
                return case
        if fmt in (None, "isles22") and any(path.glob("ses-*/dwi/*_dwi.nii*")):
            up = [p / "derivatives" for p in (path.parent, path.parent.parent)]
            derivatives = next((d for d in up if (d / path.name).is_dir()), None)
            return _isles_case(path, derivatives)
        raise DataError(
            path,
            "not a case folder: expected BraTS files (CASE_flair.nii.gz / CASE-t2f.nii.gz) or "
            "an ISLES'22 subject (ses-*/dwi/*_dwi.nii.gz)",
        )
    if not path.name.endswith(NIFTI_ENDINGS):
        raise DataError(path, "not a NIfTI file (.nii.gz or .nii)")
    match = _CHANNEL_FILE.match(path.name)
    if fmt == "nnunet" or (fmt is None and match):
        if not match:
            raise DataError(path, "an nnU-Net channel file is named CASE_0000.nii.gz")
        base = next(
            (b for b in (path.parent, path.parent.parent) if (b / "dataset.json").is_file()), None
        )
        if base is not None:
            scheme = scheme_from_nnunet_json(read_json(base / "dataset.json"), base)
        if scheme is None:
            raise DataError(path, "no dataset.json found next to this nnU-Net case: pass scheme=")
        cid, ending = match["case"], match["ending"]
        paths = [path.parent / f"{cid}_{i:04d}{ending}" for i in range(scheme.in_channels)]
        return Case(cid, paths, _sibling_label(path, f"{cid}{ending}"), "nnunet", scheme)
    if fmt not in (None, "msd_brats"):
        raise DataError(path, f"a single file cannot be a {fmt} case; give the case folder")
    label = _sibling_label(path, path.name)
    return Case(strip_nifti_ending(path.name), [path], label, "msd_brats", SCHEMES["msd_brats"])


def open_input(path: str | Path, fmt: str | None = None, scheme: DatasetScheme | None = None):
    """A dataset folder, or a single case (:func:`open_case`) as a one-case :class:`Dataset`.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.toy import make_toy_dataset
        >>> root = make_toy_dataset(Path(tempfile.mkdtemp()), "msd_brats", n_cases=2)
        >>> len(open_input(root)), len(open_input(root / "imagesTr" / "BRATS_001.nii.gz"))
        (2, 1)
    """
    path = Path(path).expanduser()
    if path.is_dir():
        try:
            case = open_case(path, fmt, scheme)
        except DataError:
            return open_dataset(path, fmt, scheme)
    else:
        case = open_case(path, fmt, scheme)
    assert case.scheme is not None
    return Dataset(path, case.fmt, case.scheme, [case], case.label_path is not None)


# --------------------------------------------------------------------------- loading


def load_case(case: Case, scheme: DatasetScheme | None = None) -> CaseData:
    """Read a case: channels-first float32 image in scheme order, label, geometry.

    Args:
        case: a case from :func:`open_dataset` / :func:`open_case`.
        scheme: defaults to ``case.scheme``.

    Raises:
        DataError: naming the file: missing, unreadable or corrupt, wrong channel count,
            shape or affine different from the first channel's, NaN/Inf voxels, label values
            outside the scheme.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.toy import make_toy_dataset
        >>> ds = open_dataset(make_toy_dataset(Path(tempfile.mkdtemp()), "msd_brats", n_cases=1))
        >>> data = load_case(ds.cases[0])
        >>> data.image.shape, data.label.shape, data.spacing
        ((4, 32, 32, 32), (32, 32, 32), (1.2, 1.0, 1.5))
    """
    scheme = scheme if scheme is not None else case.scheme
    if scheme is None:
        raise ValueError(f"case {case.case_id!r} has no scheme; pass scheme=")
    n = scheme.in_channels
    if len(case.image_paths) == 1 and n > 1:  # MSD: one 4D file, channels last
        path = case.image_paths[0]
        data, ref = read_nifti(path)
        if data.ndim != 4 or data.shape[-1] != n:
            found = data.shape[-1] if data.ndim == 4 else 1
            raise DataError(
                path, f"has {found} channel(s), expected {n} ({', '.join(scheme.channels)})"
            )
        image = np.ascontiguousarray(np.moveaxis(data, -1, 0))
        ref_path = path
        for c in range(n):
            if bad := nonfinite_count(image[c]):
                raise DataError(path, f"channel {c} contains {bad} NaN/Inf voxel(s)")
    else:
        if len(case.image_paths) != n:
            raise DataError(
                case.image_paths[0].parent if case.image_paths else case.case_id,
                f"case {case.case_id} has {len(case.image_paths)} image files, expected {n}",
            )
        ref_path = case.image_paths[0]
        image = ref = None
        for c, path in enumerate(case.image_paths):
            data, img = read_nifti(path)
            data = squeeze_3d(data, path)
            if ref is None:
                ref, image = img, np.empty((n, *data.shape), np.float32)
            elif problem := compare_geometry(img, ref, ref_path, data.shape):
                raise DataError(path, problem)
            if bad := nonfinite_count(data):
                raise DataError(path, f"contains {bad} NaN/Inf voxel(s)")
            image[c] = data
    label = None
    if case.label_path is not None:
        raw, img = read_nifti(case.label_path, dtype=None)
        raw = squeeze_3d(raw, case.label_path)
        if problem := compare_geometry(img, ref, ref_path, raw.shape):
            raise DataError(case.label_path, problem)
        label, problem = check_label_values(raw, scheme)
        if label is None:
            raise DataError(case.label_path, problem)
    header = ref.header.copy()
    spacing = tuple(round(float(z), 6) for z in header.get_zooms()[:3])  # float32 in the header
    return CaseData(
        case.case_id,
        image,
        label,
        np.asarray(ref.affine, dtype=np.float64),
        header,
        spacing,  # type: ignore[arg-type]
        tuple(int(s) for s in image.shape[1:]),  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- writing


def case_output_name(case: Case, fmt: str | None = None) -> str:
    """File name of a prediction for this case: ``CASE.nii.gz``.

    That is the nnU-Net output name and the BraTS / ISLES'22 submission name
    (``BraTS2021_00000.nii.gz``, ``BraTS-GLI-00000-000.nii.gz``, ``sub-strokecase0001.nii.gz``).

    Examples::

        >>> case_output_name(Case("BraTS-GLI-00000-000", []), "brats2023")
        'BraTS-GLI-00000-000.nii.gz'
    """
    del fmt  # the same rule for every format
    return f"{case.case_id}.nii.gz"


def write_case(
    fmt: str,
    root: str | Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    scheme: DatasetScheme | None = None,
) -> list[Path]:
    """Write one case in the real on-disk layout of a format.

    Images are float32 (MSD: one 4D channels-last file), labels uint8 (int16 if a label
    exceeds 255). Write the dataset's metadata afterwards with :func:`write_dataset_metadata`.

    Args:
        fmt: one of :data:`FORMATS`.
        root: dataset folder.
        case_id: ``BRATS_001`` / ``BraTS2021_00000`` / ``BraTS-GLI-00000-000`` /
            ``sub-strokecase0001`` / any nnU-Net id.
        image: ``(C, X, Y, Z)`` in the scheme's channel order.
        label: ``(X, Y, Z)`` label map in the scheme's labels, or None.
        affine: ``(4, 4)`` voxel -> mm matrix (identity if None).
        scheme: for nnU-Net, the dataset's scheme (default: the template ``SCHEMES["nnunet"]``).

    Returns:
        the written files, images first.

    Examples::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> files = write_case("brats2023", root, "BraTS-GLI-00001-000", np.ones((4, 8, 8, 8)))
        >>> [f.name for f in files][:2]
        ['BraTS-GLI-00001-000-t2f.nii.gz', 'BraTS-GLI-00001-000-t1n.nii.gz']
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    scheme = scheme if scheme is not None and fmt == "nnunet" else SCHEMES[fmt]
    root, image = Path(root), np.asarray(image, dtype=np.float32)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if image.ndim != 4 or image.shape[0] != scheme.in_channels:
        raise ValueError(
            f"{fmt} images are (C={scheme.in_channels}, X, Y, Z) in the order "
            f"{scheme.channels}; got shape {image.shape}"
        )
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape[1:]:
            raise ValueError(f"label shape {label.shape} != image shape {image.shape[1:]}")
        label = label.astype(label_dtype(label))
    if fmt == "msd_brats":
        images = [root / "imagesTr" / f"{case_id}.nii.gz"]
        label_path = root / "labelsTr" / f"{case_id}.nii.gz"
    elif fmt == "nnunet":
        images = [root / "imagesTr" / f"{case_id}_{i:04d}.nii.gz" for i in range(len(image))]
        label_path = root / "labelsTr" / f"{case_id}.nii.gz"
    elif fmt == "isles22":
        if not case_id.startswith("sub-"):
            raise ValueError(f"ISLES'22 case ids are BIDS subjects 'sub-...', got {case_id!r}")
        stem = f"{case_id}_{_ISLES_SESSION}"
        dwi = root / case_id / _ISLES_SESSION / "dwi"
        images = [dwi / f"{stem}_{c}.nii.gz" for c in scheme.channels]
        label_path = root / "derivatives" / case_id / _ISLES_SESSION / f"{stem}_msk.nii.gz"
    else:
        sep = _BRATS_SEP[fmt]
        images = [root / case_id / f"{case_id}{sep}{c}.nii.gz" for c in scheme.channels]
        label_path = root / case_id / f"{case_id}{sep}seg.nii.gz"
    if fmt == "msd_brats":
        write_image(images[0], image, affine)
    else:
        for path, channel in zip(images, image, strict=True):
            write_image(path, channel, affine)
    if label is None:
        return images
    save_nifti(new_nifti(label, affine), label_path)
    return [*images, label_path]


def write_dataset_metadata(
    fmt: str,
    root: str | Path,
    scheme: DatasetScheme | None = None,
    name: str | None = None,
    description: str = "written by nmfseg",
) -> Path | None:
    """Write a format's metadata for the cases already in ``root``.

    MSD: ``dataset.json`` as in Task01_BrainTumour (``modality``, ``labels``,
    ``numTraining``, ``training``). nnU-Net: ``dataset.json`` with ``channel_names``,
    ``labels`` (region-based with ``regions_class_order`` when the scheme's regions overlap),
    ``numTraining`` and ``file_ending``. ISLES'22: BIDS ``dataset_description.json`` (also in
    ``derivatives``). BraTS has no metadata file (returns None).

    Examples::

        >>> import json, tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = write_case("nnunet", root, "case_000", np.ones((4, 8, 8, 8)), np.zeros((8, 8, 8)))
        >>> p = write_dataset_metadata("nnunet", root)
        >>> json.loads(p.read_text())["numTraining"]
        1
    """
    from nmfseg.data.schemes import scheme_to_nnunet_json

    root = Path(root)
    if fmt in ("brats2021", "brats2023"):
        return None
    if fmt == "isles22":
        path = root / "dataset_description.json"
        write_json(
            path, {"Name": name or "ISLES 2022", "BIDSVersion": "1.7.0", "DatasetType": "raw"}
        )
        if (root / "derivatives").is_dir():
            write_json(
                root / "derivatives" / "dataset_description.json",
                {
                    "Name": f"{name or 'ISLES 2022'} lesion masks",
                    "BIDSVersion": "1.7.0",
                    "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "nmfseg", "Description": description}],
                },
            )
        return path
    labels = {strip_nifti_ending(p.name) for p in nifti_files(root / "labelsTr")}
    if fmt == "msd_brats":
        s = SCHEMES["msd_brats"]
        ids = [strip_nifti_ending(p.name) for p in nifti_files(root / "imagesTr")]
        test = [strip_nifti_ending(p.name) for p in nifti_files(root / "imagesTs")]
        meta: dict[str, Any] = {
            "name": name or "BRATS",
            "description": description,
            "tensorImageSize": "4D",
            "modality": {str(i): c for i, c in enumerate(s.channels)},
            "labels": {str(k): v for k, v in s.label_names.items()},
            "numTraining": sum(cid in labels for cid in ids),
            "numTest": len(test),
            "training": [
                {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                for c in ids
                if c in labels
            ],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test],
        }
    elif fmt == "nnunet":
        s = scheme if scheme is not None else SCHEMES["nnunet"]
        files = nifti_files(root / "imagesTr")
        ids = {m["case"] for p in files if (m := _CHANNEL_FILE.match(p.name))}
        meta = {"name": name or root.name, "description": description}
        meta |= scheme_to_nnunet_json(s)
        meta |= {"numTraining": len(ids & labels) if labels else len(ids), "file_ending": ".nii.gz"}
    else:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    write_json(root / "dataset.json", meta)
    return root / "dataset.json"
