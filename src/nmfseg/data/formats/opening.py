"""Opening datasets and cases of any registered format, and writing them.

:func:`open_dataset` detects the format of a folder (the formats are asked in registration
order, :meth:`~nmfseg.data.formats.base.DatasetFormat.detect`), :func:`open_case` opens one case
for prediction, :func:`open_input` either. :func:`write_case` and :func:`write_dataset_metadata`
write the real on-disk layouts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nmfseg.data.formats.base import Case, Dataset, get_format, list_formats, subdirs
from nmfseg.data.formats.decathlon import DatasetJson
from nmfseg.data.nifti import NIFTI_ENDINGS
from nmfseg.data.schemes import SCHEMES, DatasetScheme
from nmfseg.errors import DataError

__all__ = [
    "detect_format",
    "open_case",
    "open_dataset",
    "open_input",
    "write_case",
    "write_dataset_metadata",
]


def _detect(root: Path) -> str | None:
    for name in list_formats():
        if get_format(name).detect(root):
            return name
    found = DatasetJson.find(root)
    if found is not None:
        raise DataError(found.path, "has neither 'channel_names' (nnU-Net v2) nor 'modality' (MSD)")
    return None


def detect_format(root: str | Path) -> str:
    """The format of a dataset folder, from file names (and at most one header).

    Raises:
        DataError: Naming the folder and what was looked for.

    Examples::

        >>> import tempfile
        >>> from nmfseg.phantoms.toy import make_toy_dataset
        >>> detect_format(make_toy_dataset(Path(tempfile.mkdtemp()), "brats2023", n_cases=1))
        'brats2023'
    """
    root = Path(root)
    fmt = _detect(root)
    if fmt is not None:
        return fmt
    hint = ""
    for sub in subdirs(root)[:20]:
        try:
            found = _detect(sub)
        except DataError:
            found = None
        if found is not None:
            hint = f"; it contains a {found} dataset: did you mean {sub}?"
            break
    layouts = "; ".join(f"{n}: {get_format(n).layout}" for n in list_formats())
    raise DataError(root, f"no dataset format found (looked for {layouts}){hint}")


def open_dataset(
    root: str | Path, fmt: str | None = None, scheme: DatasetScheme | None = None
) -> Dataset:
    """Open a dataset folder in any registered format.

    Args:
        root: The dataset folder (or the ``imagesTr``/``imagesTs`` folder of an MSD or
            nnU-Net dataset, or a bare folder of such images).
        fmt: A registered format name; detected from the file names when None.
        scheme: Only for a bare nnU-Net images folder without ``dataset.json``.

    Raises:
        DataError: Missing folder, or no format recognised (naming what was looked for).
        ConfigError: ``fmt`` is not a registered format.

    Examples::

        >>> import tempfile
        >>> from nmfseg.phantoms.toy import make_toy_dataset
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
    format_ = get_format(fmt if fmt is not None else detect_format(root))
    return format_.open(root, scheme)


def open_case(
    path: str | Path, fmt: str | None = None, scheme: DatasetScheme | None = None
) -> Case:
    """Open one case for prediction.

    ``path`` is a BraTS 2021/2023 case folder, an ISLES'22 subject folder (``sub-*``; its
    mask is found under ``../derivatives`` when present), an MSD 4D image file (its label is
    found in a sibling ``labelsTr``) or any channel file ``CASE_0000.nii.gz`` of an nnU-Net
    case (the other channels are its siblings; the scheme comes from the ``dataset.json``
    one or two folders up, or ``scheme=``), or a case of any other registered format.

    Returns:
        A :class:`Case` with ``fmt`` and ``scheme`` set.

    Raises:
        DataError: ``path`` is missing or is no case of the format(s) asked.

    Examples::

        >>> import tempfile
        >>> from nmfseg.phantoms.toy import make_toy_dataset
        >>> root = make_toy_dataset(Path(tempfile.mkdtemp()), "brats2021", n_cases=1)
        >>> open_case(root / "BraTS2021_00000").image_paths[2].name
        'BraTS2021_00000_t1ce.nii.gz'
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "no such file or folder")
    names = [fmt] if fmt is not None else list_formats()
    for name in names:
        case = get_format(name).open_case(path, scheme)
        if case is not None:
            return case
    if path.is_file() and not path.name.endswith(NIFTI_ENDINGS):
        raise DataError(path, "not a NIfTI file (.nii.gz or .nii)")
    kind = "folder" if path.is_dir() else "file"
    if fmt is not None:
        raise DataError(path, f"this {kind} is not a {fmt} case ({get_format(fmt).layout})")
    raise DataError(
        path,
        f"not a case {kind}: expected a BraTS case folder (CASE_flair.nii.gz / "
        "CASE-t2f.nii.gz), an ISLES'22 subject (ses-*/dwi/*_dwi.nii.gz), an MSD 4D file or an "
        "nnU-Net CASE_0000.nii.gz",
    )


def open_input(
    path: str | Path, fmt: str | None = None, scheme: DatasetScheme | None = None
) -> Dataset:
    """A dataset folder, or a single case (:func:`open_case`) as a one-case :class:`Dataset`.

    Examples::

        >>> import tempfile
        >>> from nmfseg.phantoms.toy import make_toy_dataset
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
        fmt: A registered format name.
        root: Dataset folder.
        case_id: ``BRATS_001`` / ``BraTS2021_00000`` / ``BraTS-GLI-00000-000`` /
            ``sub-strokecase0001`` / any nnU-Net id.
        image: ``(C, X, Y, Z)`` in the scheme's channel order.
        label: ``(X, Y, Z)`` label map in the scheme's labels, or None.
        affine: ``(4, 4)`` voxel -> mm matrix (identity if None).
        scheme: For formats without a fixed scheme (nnU-Net), the dataset's scheme (default
            for nnU-Net: the template ``SCHEMES["nnunet"]``).

    Returns:
        The written files, images first.

    Examples::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> files = write_case("brats2023", root, "BraTS-GLI-00001-000", np.ones((4, 8, 8, 8)))
        >>> [f.name for f in files][:2]
        ['BraTS-GLI-00001-000-t2f.nii.gz', 'BraTS-GLI-00001-000-t1n.nii.gz']
    """
    return get_format(fmt).write_case(
        Path(root), case_id, image, label, affine, _scheme(fmt, scheme)
    )


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
    format_ = get_format(fmt)
    scheme = format_.resolve_scheme(_scheme(fmt, scheme))
    return format_.write_metadata(Path(root), scheme, name, description)


def _scheme(fmt: str, scheme: DatasetScheme | None) -> DatasetScheme | None:
    if scheme is None and get_format(fmt).scheme is None and fmt in SCHEMES:
        return SCHEMES[fmt]  # the nnU-Net template scheme
    return scheme
