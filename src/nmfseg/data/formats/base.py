"""What a dataset format is: the :class:`DatasetFormat` protocol, the registry, and the
records every format produces (:class:`Case`, :class:`Dataset`, :class:`CaseData`).

A format knows its folder layout and nothing else: whether a folder is one of its datasets
(:meth:`DatasetFormat.detect`), the cases of a dataset (:meth:`DatasetFormat.open`), whether a
path is one of its cases (:meth:`DatasetFormat.open_case`), where a case's files go
(:meth:`DatasetFormat.case_paths`), its metadata file (:meth:`DatasetFormat.write_metadata`) and
problems of the folder as a whole (:meth:`DatasetFormat.dataset_problems`). Reading and checking
the volumes is format-independent (:mod:`nmfseg.data.formats.reading`).
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nmfseg.data.nifti import (
    label_dtype,
    new_nifti,
    save_nifti,
    write_image,
)
from nmfseg.data.schemes import DatasetScheme
from nmfseg.registry import Registry

__all__ = [
    "DATASET",
    "FORMATS",
    "Case",
    "CaseData",
    "Dataset",
    "DatasetFormat",
    "Problem",
    "case_output_name",
    "get_format",
    "list_formats",
    "register_format",
    "subdirs",
    "temporarily_registered_format",
]

#: Case id of problems that belong to no single case.
DATASET = "<dataset>"


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

    A 2D case (files ``X x Y`` or ``X x Y x 1``) has two spatial axes throughout: image
    ``(C, X, Y)``, label ``(X, Y)``, two spacings; :func:`write_label` with its header writes
    a label map in the files' own layout.

    Attributes:
        image: ``(C, X, Y, Z)`` (2D: ``(C, X, Y)``) float32 in the scheme's channel order.
        label: ``(X, Y, Z)`` (2D: ``(X, Y)``) int16 label map, or None.
        affine: ``(4, 4)`` voxel -> world (mm) matrix of the reference (first) image.
        header: NIfTI header of the reference image (pass it to :func:`write_label`).
        spacing: voxel size in mm along each spatial axis.
        shape: original spatial shape ``(X, Y, Z)`` (2D: ``(X, Y)``).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: Any
    spacing: tuple[float, ...]
    shape: tuple[int, ...]


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


@dataclass
class Problem:
    """One problem of a dataset: the case, the file (None if no single file), what is wrong."""

    case_id: str
    path: Path | None
    problem: str

    def message(self, root: Path | None = None) -> str:
        """The line that reports it: ``CASE: FILE: problem``, with FILE relative to ``root``
        when inside it.

        Examples::

            >>> Problem("case1", Path("/data/case1/t1.nii.gz"), "is empty").message(Path("/data"))
            'case1: case1/t1.nii.gz: is empty'
        """
        where = self.path
        if where is not None and root is not None and Path(where).is_relative_to(root):
            where = Path(where).relative_to(root)
        return (
            f"{self.case_id}: {where}: {self.problem}"
            if where
            else f"{self.case_id}: {self.problem}"
        )

    def describe(self, root: Path | None = None) -> str:
        """Deprecated name of :meth:`message`."""
        warnings.warn(
            "Problem.describe is deprecated; use Problem.message", DeprecationWarning, stacklevel=2
        )
        return self.message(root)


def case_output_name(case: Case) -> str:
    """File name of a prediction for this case: ``CASE.nii.gz``.

    That is the nnU-Net output name and the BraTS / ISLES'22 submission name
    (``BraTS2021_00000.nii.gz``, ``BraTS-GLI-00000-000.nii.gz``, ``sub-strokecase0001.nii.gz``).

    Examples::

        >>> case_output_name(Case("BraTS-GLI-00000-000", []))
        'BraTS-GLI-00000-000.nii.gz'
    """
    return f"{case.case_id}.nii.gz"


def subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class DatasetFormat:
    """One on-disk dataset layout. Subclass it, fill in the class attributes and the methods
    that raise ``NotImplementedError``, and register an instance with :func:`register_format`.

    Attributes:
        name: The format's name (``--format NAME``).
        layout: One line: what a dataset folder of this format looks like.
        scheme: The format's fixed label scheme; ``None`` when every dataset carries its own
            in its metadata (nnU-Net), which :meth:`open` then reads.
        detection_order: Where the format is tried when a folder's format is detected (lower
            first): the specific layouts before the general ones that would also match them
            (nnU-Net's ``CASE_0000`` files match many folders, so it comes last).
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    scheme: ClassVar[DatasetScheme | None] = None
    detection_order: ClassVar[int] = 50

    # -- reading ----------------------------------------------------------------------------

    def detect(self, root: Path) -> bool:
        """Whether ``root`` is a dataset of this format (from file names, at most one header)."""
        raise NotImplementedError

    def open(self, root: Path, scheme: DatasetScheme | None = None) -> Dataset:
        """The dataset in ``root`` (cases sorted by id); ``scheme`` for formats without one."""
        raise NotImplementedError

    def open_case(self, path: Path, scheme: DatasetScheme | None = None) -> Case | None:
        """``path`` as one case of this format, or None if it is not one."""
        return None

    def dataset_problems(self, dataset: Dataset) -> list[Problem]:
        """Problems of the folder as a whole (metadata, stray files); none by default."""
        return []

    # -- writing ----------------------------------------------------------------------------

    def case_id(self, index: int, prefix: str = "case") -> str:
        """The id of case ``index`` (0-based) in this format's own naming (phantoms, toys)."""
        return f"{prefix}_{index + 1:03d}"

    def case_paths(
        self, root: Path, case_id: str, scheme: DatasetScheme
    ) -> tuple[list[Path], Path]:
        """Where a case's files go: image paths (one per channel, or one 4D file) and label."""
        raise NotImplementedError

    def write_metadata(
        self, root: Path, scheme: DatasetScheme, name: str | None, description: str
    ) -> Path | None:
        """Write the dataset's metadata for the cases already in ``root``; None if it has none."""
        return None

    def resolve_scheme(self, scheme: DatasetScheme | None) -> DatasetScheme:
        """The scheme a dataset of this format is written in."""
        if self.scheme is not None:
            return self.scheme
        if scheme is None:
            raise ValueError(f"the {self.name} format needs a scheme (channels and labels)")
        return scheme

    def write_case(
        self,
        root: Path,
        case_id: str,
        image: np.ndarray,
        label: np.ndarray | None = None,
        affine: np.ndarray | None = None,
        scheme: DatasetScheme | None = None,
    ) -> list[Path]:
        """Write one case in this layout (images float32, labels uint8 or int16); returns the
        files written, images first."""
        scheme = self.resolve_scheme(scheme)
        image = np.asarray(image, dtype=np.float32)
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if image.ndim != 4 or image.shape[0] != scheme.in_channels:
            raise ValueError(
                f"{self.name} images are (C={scheme.in_channels}, X, Y, Z) in the order "
                f"{scheme.channels}; got shape {image.shape}"
            )
        if label is not None:
            label = np.asarray(label)
            if label.shape != image.shape[1:]:
                raise ValueError(f"label shape {label.shape} != image shape {image.shape[1:]}")
            label = label.astype(label_dtype(label))
        images, label_path = self.case_paths(Path(root), case_id, scheme)
        if len(images) == 1:
            write_image(images[0], image, affine)  # one 4D channels-last file
        else:
            for path, channel in zip(images, image, strict=True):
                write_image(path, channel, affine)
        if label is None:
            return images
        save_nifti(new_nifti(label, affine), label_path)
        return [*images, label_path]


FORMATS: Registry[DatasetFormat] = Registry("dataset format")


def register_format(fmt: DatasetFormat) -> DatasetFormat:
    """Register a format under ``fmt.name``; when a folder's format is detected, formats are
    tried by their ``detection_order`` (then by name), whatever order they were registered in."""
    FORMATS.add(fmt.name, fmt)
    return fmt


def temporarily_registered_format(fmt: DatasetFormat) -> AbstractContextManager[DatasetFormat]:
    """Register ``fmt`` inside a ``with`` block only (tests, experiments)."""
    return FORMATS.temporarily(fmt.name, fmt)


def get_format(name: str) -> DatasetFormat:
    """The registered format ``name``.

    Raises:
        ConfigError: Unknown name (the message lists the registered formats).
    """
    return FORMATS.get(name)


def list_formats() -> list[str]:
    """Names of the registered formats, in detection order (``DatasetFormat.detection_order``).

    Examples::

        >>> list_formats()
        ['brats2021', 'brats2023', 'isles22', 'msd_brats', 'nnunet']
    """
    return sorted(FORMATS.in_order(), key=lambda n: (FORMATS.get(n).detection_order, n))
