"""NIfTI and JSON files: reading with errors that name the file, atomic writing, checks.

Every reader raises :class:`~nmfseg.errors.DataError` naming the file (missing, not NIfTI,
corrupt data); every writer writes a temporary file in the target folder and renames it, so
no half-written output is ever left under the final name. The dataset formats built on these
are in :mod:`nmfseg.data.formats`.

An image is 3D ``(X, Y, Z)`` or 2D ``(X, Y)``: a 2D NIfTI file, or a 3D one with a single
slice ``(X, Y, 1)`` (nnU-Net's way of storing 2D data as NIfTI), is read as a 2D image
(:func:`squeeze_image`, :func:`spatial_shape`, :func:`image_spacing`), and an array written
with a reference header takes that header's own layout back (:func:`new_nifti`), so a
prediction has its input's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import DataError
from nmfseg.fileio import atomic_path, short_error

__all__ = [
    "AFFINE_ATOL",
    "NIFTI_ENDINGS",
    "check_label_values",
    "compare_geometry",
    "image_spacing",
    "label_dtype",
    "load_nifti",
    "new_nifti",
    "nifti_files",
    "nifti_path",
    "nonfinite_count",
    "read_nifti",
    "save_nifti",
    "spatial_shape",
    "squeeze_image",
    "strip_nifti_ending",
    "write_image",
    "write_label",
]

NIFTI_ENDINGS = (".nii.gz", ".nii")
AFFINE_ATOL = 1e-3  # mm: channels and labels of a case must agree to this tolerance


def strip_nifti_ending(name: str) -> str:
    """``name`` without ``.nii.gz`` / ``.nii`` (unchanged if it has neither)."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def nifti_path(stem: Path) -> Path:
    """``stem.nii.gz`` if it (or ``stem.nii``) exists, else the ``.nii.gz`` path."""
    for ending in NIFTI_ENDINGS:
        path = stem.with_name(stem.name + ending)
        if path.is_file():
            return path
    return stem.with_name(stem.name + NIFTI_ENDINGS[0])


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder``, sorted, hidden ones left out."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS) and p.is_file()
    )


def load_nifti(path: Path) -> Any:
    """Open a NIfTI file lazily (header only); DataError if missing or not NIfTI."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(path)
    except Exception as err:
        raise DataError(path, f"cannot read NIfTI header ({short_error(err)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(path, f"is a {type(img).__name__}, not a NIfTI image")
    return img


def read_nifti(path: Path, dtype: Any = np.float32) -> tuple[np.ndarray, Any]:
    """Read a whole NIfTI file: ``(array, image)``; DataError naming the file on failure.

    Examples::

        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.nii.gz"
        >>> write_image(p, np.ones((2, 3, 4)), np.eye(4))
        >>> read_nifti(p)[0].shape
        (2, 3, 4)
    """
    img = load_nifti(path)
    try:
        data = np.asarray(img.dataobj)
    except Exception as err:
        problem = f"cannot read NIfTI data, file corrupt? ({short_error(err)})"
        raise DataError(path, problem) from None
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, img


def spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial shape of an image whose file has array shape ``shape``, as it is read.

    The first three axes (a fourth holds the channels of an MSD file), without trailing
    singleton axes down to two: ``(X, Y, 1)`` and ``(X, Y, 1, C)`` are 2D images ``(X, Y)``.

    Examples::

        >>> spatial_shape((240, 240, 155, 4)), spatial_shape((512, 512, 1)), spatial_shape((64, 48))
        ((240, 240, 155), (512, 512), (64, 48))
    """
    out = tuple(int(n) for n in shape[:3])
    while len(out) > 2 and out[-1] == 1:
        out = out[:-1]
    return out


def image_spacing(header: Any) -> tuple[float, ...]:
    """Voxel size (mm, rounded to 1e-6: float32 in the header) along the axes of
    :func:`spatial_shape`: three values for a 3D volume, two for a 2D image.

    Examples::

        >>> hdr = nib.Nifti1Header()
        >>> hdr.set_data_shape((64, 48, 1))
        >>> hdr.set_zooms((0.5, 0.5, 2.0))
        >>> image_spacing(hdr)
        (0.5, 0.5)
    """
    dims = len(spatial_shape(header.get_data_shape()))
    return tuple(round(float(z), 6) for z in header.get_zooms()[:dims])


def squeeze_image(data: np.ndarray, path: Path | str) -> np.ndarray:
    """Drop trailing singleton axes down to 2D; DataError naming ``path`` unless a 2D image
    or a 3D volume remains.

    Examples::

        >>> squeeze_image(np.zeros((64, 48, 1)), "x.nii.gz").shape
        (64, 48)
        >>> squeeze_image(np.zeros((4, 5, 6, 1)), "x.nii.gz").shape
        (4, 5, 6)
    """
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 2:
        raise DataError(
            path, f"is a {data.ndim}D array {data.shape}; a 2D image or a 3D volume is expected"
        )
    if data.ndim != 2 and data.ndim != 3:
        raise DataError(path, f"has shape {data.shape}; expected one 2D image or 3D volume")
    return data


def compare_geometry(img: Any, ref: Any, ref_path: Path, shape: tuple | None = None) -> str | None:
    """Why ``img`` does not share the reference image's grid, or None if it does.

    Spatial shapes (:func:`spatial_shape`) must be equal, affines equal to
    :data:`AFFINE_ATOL` mm.
    """
    shape = spatial_shape(tuple(shape) if shape is not None else img.shape)
    ref_shape = spatial_shape(ref.shape)
    if len(shape) != len(ref_shape):
        what = {2: "a 2D image", 3: "a 3D volume"}
        return (
            f"is {what[len(shape)]} {shape}, {Path(ref_path).name} {what[len(ref_shape)]} "
            f"{ref_shape}: the files of a case must all be 2D or all 3D"
        )
    if shape != ref_shape:
        return f"shape {shape} differs from {Path(ref_path).name}'s {ref_shape}"
    diff = float(np.abs(np.asarray(img.affine) - np.asarray(ref.affine)).max())
    if not diff <= AFFINE_ATOL:
        return f"affine differs from {Path(ref_path).name}'s (max difference {diff:.4g})"
    return None


def nonfinite_count(data: np.ndarray) -> int:
    """Number of NaN/Inf voxels (0 for integer arrays)."""
    if not np.issubdtype(data.dtype, np.floating):
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def check_label_values(label: np.ndarray, scheme: DatasetScheme) -> tuple[np.ndarray | None, str]:
    """Validate a raw label array: ``(int16 labels, "")`` or ``(None, problem)``."""
    if np.issubdtype(label.dtype, np.floating):
        if nonfinite_count(label):
            return None, f"contains {nonfinite_count(label)} NaN/Inf voxel(s)"
        if not np.array_equal(label, np.round(label)):
            return None, "has non-integer label values"
    if label.size and (label.min() < 0 or label.max() > np.iinfo(np.int16).max):
        bad = sorted({int(label.min()), int(label.max())} - set(scheme.labels))
        return None, f"label values {bad} are not in the {scheme.name} scheme {scheme.labels}"
    label = label.astype(np.int16)
    present = np.flatnonzero(np.bincount(label.ravel())) if label.size else np.array([])
    bad = sorted(set(present.tolist()) - set(scheme.labels))
    if bad:
        return None, f"label values {bad} are not in the {scheme.name} scheme {scheme.labels}"
    return label, ""


def save_nifti(img: Any, path: Path) -> None:
    """Save a nibabel image atomically (:func:`nmfseg.fileio.atomic_path`)."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def new_nifti(data: np.ndarray, affine: np.ndarray, header: Any = None) -> Any:
    """A NIfTI-1 (or NIfTI-2, after such a header) image of ``data``; without a header
    the qform and sform are set to ``affine`` and the units to mm.

    With a header, spatial data of the header's :func:`spatial_shape` takes the header's own
    layout back: a 2D ``(X, Y)`` array written after an ``(X, Y, 1)`` header is ``(X, Y, 1)``.

    Examples::

        >>> ref = nib.Nifti1Image(np.zeros((6, 5, 1), np.float32), np.eye(4))
        >>> new_nifti(np.ones((6, 5), np.uint8), np.eye(4), ref.header).shape
        (6, 5, 1)
    """
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    header = header.copy() if header is not None else None
    if header is not None:
        own = tuple(int(n) for n in header.get_data_shape()[:3])
        if data.shape != own and data.shape == spatial_shape(own):
            data = data.reshape(own)
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(None, None)
    img = klass(data, np.asarray(affine, dtype=np.float64), header=header)
    if header is None:
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    return img


def label_dtype(label: np.ndarray) -> Any:
    """uint8 when every label fits, else int16."""
    return np.uint8 if label.size == 0 or (label.min() >= 0 and label.max() <= 255) else np.int16


def write_label(path: Path, label: np.ndarray, reference_header: Any, affine=None) -> Path:
    """Write a label map with the reference image's header (and affine), atomically.

    Args:
        path: output file (``.nii.gz``).
        label: ``(X, Y, Z)`` or ``(X, Y)`` integer label map.
        reference_header: header of the image it belongs to (``CaseData.header``); a 4D MSD
            header is fine, the written file is 3D (a 2D label takes the reference's layout,
            ``(X, Y)`` or ``(X, Y, 1)``).
        affine: defaults to the reference header's affine.

    Examples::

        >>> import tempfile
        >>> hdr = nib.Nifti1Header()
        >>> p = write_label(Path(tempfile.mkdtemp()) / "c.nii.gz", np.ones((2, 2, 2)), hdr)
        >>> nib.load(p).get_data_dtype()
        dtype('uint8')
    """
    label = np.asarray(label)
    if label.ndim not in (2, 3):
        raise ValueError(f"label must be 3D (X, Y, Z) or 2D (X, Y), got shape {label.shape}")
    label = label.astype(label_dtype(label))
    affine = reference_header.get_best_affine() if affine is None else affine
    save_nifti(new_nifti(label, affine, reference_header), Path(path))
    return Path(path)


def write_image(path: Path, data: np.ndarray, affine: np.ndarray, header: Any = None) -> None:
    """Write ``(X, Y, Z)``, ``(X, Y)`` or channels-first ``(C, X, Y, Z)`` data (stored
    channels last; with a ``header``, in its layout: :func:`new_nifti`).

    The dtype is kept (use float32 for images and probabilities).
    """
    data = np.asarray(data)
    if data.ndim == 4:
        data = np.ascontiguousarray(np.moveaxis(data, 0, -1))
    elif data.ndim not in (2, 3):
        raise ValueError(f"expected (X, Y, Z), (X, Y) or (C, X, Y, Z) data, got shape {data.shape}")
    save_nifti(new_nifti(data, affine, header), Path(path))
