"""Reading a case and validating it: the one routine behind :func:`load_case` and check-data.

:func:`read_case` reads every file of a case and checks, in this order: files present and
readable (a truncated ``.nii.gz`` is caught), the number of channels (an MSD 4D file with 3
volumes, a missing BraTS modality), every channel and the label on the same grid (shape equal,
affine equal to :data:`~nmfseg.data.nifti.AFFINE_ATOL` mm), no NaN/Inf, integer label values
that the scheme allows. Without a ``report`` callback the first problem raises
:class:`~nmfseg.errors.DataError` naming the file (that is :func:`load_case`); with one, every
problem is reported and the reading goes on as far as it can (that is
:func:`nmfseg.data.checks.check_case`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from nmfseg.data.formats.base import Case, CaseData
from nmfseg.data.nifti import (
    check_label_values,
    compare_geometry,
    image_spacing,
    load_nifti,
    nonfinite_count,
    read_nifti,
    spatial_shape,
    squeeze_image,
)
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import DataError

__all__ = ["Report", "load_case", "read_case"]

#: ``report(where, problem)``: a problem of a file (or of the case, ``where=None``).
Report = Callable[[Path | str | None, str], None]


class _Reader:
    """One reading of one case; :meth:`add` raises or reports, and counts."""

    def __init__(self, case: Case, scheme: DatasetScheme, report: Report | None) -> None:
        self.case, self.scheme, self.report = case, scheme, report
        self.problems = 0
        self.ref = None
        self.ref_path: Path | None = None

    def add(self, where: Path | str | None, problem: str) -> None:
        self.problems += 1
        if self.report is None:
            raise DataError(where if where is not None else self.case.case_id, problem)
        self.report(where, problem)

    def four_d(self, keep: bool) -> np.ndarray | None:
        """An MSD case: one 4D file, channels last."""
        n, path = self.scheme.in_channels, self.case.image_paths[0]
        try:
            shape = load_nifti(path).shape
        except DataError as err:
            self.add(err.where, err.problem)
            return None
        if len(shape) != 4 or shape[-1] != n:
            channels = f"{n} channels ({', '.join(self.scheme.channels)})"
            if len(shape) < 3:
                self.add(
                    path,
                    f"is a {len(shape)}D image {shape}; a 3D volume (or a 2D image X x Y x 1) "
                    f"of {channels} is expected",
                )
            else:
                found = shape[-1] if len(shape) == 4 else 1
                self.add(path, f"has {found} channel(s), expected {channels}")
            return None
        try:
            data, self.ref = read_nifti(path)
        except DataError as err:
            self.add(err.where, err.problem)
            return None
        self.ref_path = path
        for c in range(n):
            if bad := nonfinite_count(data[..., c]):
                self.add(path, f"channel {c} contains {bad} NaN/Inf voxel(s)")
        if not keep:
            return None
        image = np.moveaxis(data, -1, 0).reshape(n, *spatial_shape(shape))  # (X, Y, 1, C): 2D
        return np.ascontiguousarray(image)

    def channels(self, keep: bool) -> np.ndarray | None:
        """One file per channel (a 3D volume or a 2D image)."""
        n, paths = self.scheme.in_channels, self.case.image_paths
        if len(paths) != n:
            where = paths[0].parent if paths else None
            self.add(where, f"case {self.case.case_id} has {len(paths)} image files, expected {n}")
        image = None
        for c, (channel, path) in enumerate(zip(self.scheme.channels, paths, strict=False)):
            try:
                data, img = read_nifti(path)
                data = squeeze_image(data, path)
            except DataError as err:
                missing = err.problem == "file not found"
                self.add(
                    err.where,
                    f"missing {channel} image (file not found)" if missing else err.problem,
                )
                continue
            if self.ref is None:
                self.ref, self.ref_path = img, path
                image = np.empty((n, *data.shape), np.float32) if keep else None
            elif problem := compare_geometry(img, self.ref, self.ref_path, data.shape):
                self.add(path, problem)
                continue
            if bad := nonfinite_count(data):
                self.add(path, f"contains {bad} NaN/Inf voxel(s)")
            if image is not None:
                image[c] = data
        return image

    def label(self) -> np.ndarray | None:
        path = self.case.label_path
        if path is None:
            return None
        try:
            raw, img = read_nifti(path, dtype=None)
            raw = squeeze_image(raw, path)
        except DataError as err:
            missing = err.problem == "file not found"
            self.add(err.where, "missing label (file not found)" if missing else err.problem)
            return None
        if self.ref is not None and (
            problem := compare_geometry(img, self.ref, self.ref_path, raw.shape)
        ):
            self.add(path, problem)
        label, problem = check_label_values(raw, self.scheme)
        if label is None:
            self.add(path, problem)
        return label


def read_case(
    case: Case,
    scheme: DatasetScheme | None = None,
    report: Report | None = None,
    *,
    keep: bool = True,
) -> CaseData | None:
    """Read and validate a case (see the module docstring).

    Args:
        case: A case from :func:`~nmfseg.data.formats.open_dataset` or
            :func:`~nmfseg.data.formats.open_case`.
        scheme: Defaults to ``case.scheme``.
        report: Called with every problem; ``None`` raises at the first.
        keep: Assemble and return the data (``False`` only checks, holding one file at a time).

    Returns:
        The case's data, or ``None`` if ``keep`` is false or a problem was reported.

    Raises:
        DataError: Without ``report``, at the first problem, naming the file.
    """
    scheme = scheme if scheme is not None else case.scheme
    if scheme is None:
        raise ValueError(f"case {case.case_id!r} has no scheme; pass scheme=")
    reader = _Reader(case, scheme, report)
    if len(case.image_paths) == 1 and scheme.in_channels > 1:
        image = reader.four_d(keep)
    else:
        image = reader.channels(keep)
    label = reader.label()
    if not keep or reader.problems or image is None or reader.ref is None:
        return None
    header = reader.ref.header.copy()
    spacing = image_spacing(header)
    return CaseData(
        case.case_id,
        image,
        label,
        np.asarray(reader.ref.affine, dtype=np.float64),
        header,
        spacing,  # type: ignore[arg-type]
        tuple(int(s) for s in image.shape[1:]),  # type: ignore[arg-type]
    )


def load_case(case: Case, scheme: DatasetScheme | None = None) -> CaseData:
    """Read a case: channels-first float32 image in scheme order, label, geometry.

    Args:
        case: A case from :func:`~nmfseg.data.formats.open_dataset` /
            :func:`~nmfseg.data.formats.open_case`.
        scheme: Defaults to ``case.scheme``.

    Raises:
        DataError: Naming the file: missing, unreadable or corrupt, wrong channel count,
            shape or affine different from the first channel's, NaN/Inf voxels, label values
            outside the scheme.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.formats import open_dataset
        >>> from nmfseg.phantoms.toy import make_toy_dataset
        >>> ds = open_dataset(make_toy_dataset(Path(tempfile.mkdtemp()), "msd_brats", n_cases=1))
        >>> data = load_case(ds.cases[0])
        >>> data.image.shape, data.label.shape, data.spacing
        ((4, 32, 32, 32), (32, 32, 32), (1.2, 1.0, 1.5))
    """
    data = read_case(case, scheme)
    assert data is not None  # read_case raises on any problem without a report
    return data
