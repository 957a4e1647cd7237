"""The Decathlon layout that MSD and nnU-Net share: a ``dataset.json`` beside ``imagesTr`` /
``labelsTr`` (and ``imagesTs`` / ``labelsTs``).

:class:`DecathlonFormat` is the base of such formats: it finds the ``dataset.json`` of a
dataset folder or of its images folder (:class:`DatasetJson`), resolves the images and labels
folders (:meth:`DecathlonFormat.case_folders`) and checks the folder against its
``dataset.json`` (:meth:`DecathlonFormat.json_problems`). A subclass says how a case's
files are named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmfseg.data.formats.base import DATASET, Dataset, DatasetFormat, Problem
from nmfseg.data.nifti import nifti_files, strip_nifti_ending
from nmfseg.errors import DataError
from nmfseg.fileio import read_json

__all__ = ["CHANNEL_FILE", "DatasetJson", "DecathlonFormat", "sibling_label"]

#: ``CASE_0000.nii.gz``: one channel of an nnU-Net case.
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.nii)$")

_LABELS = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}


@dataclass(frozen=True)
class DatasetJson:
    """The ``dataset.json`` of a Decathlon-layout dataset, and which images folder is meant.

    Attributes:
        folder: The dataset folder (it holds ``dataset.json``).
        images: The images folder: ``imagesTr`` for the dataset folder itself, else the
            ``imagesTr`` / ``imagesTs`` folder that was given.
        meta: The content of ``dataset.json``.

    Examples::

        >>> import tempfile
        >>> from nmfseg.fileio import write_json
        >>> root = Path(tempfile.mkdtemp())
        >>> write_json(root / "dataset.json", {"numTraining": 0})
        >>> found = DatasetJson.find(root / "imagesTs")
        >>> found.images.name, found.labels.name, found.training
        ('imagesTs', 'labelsTs', False)
        >>> DatasetJson.find(root / "elsewhere") is None
        True
    """

    folder: Path
    images: Path
    meta: dict[str, Any]

    @classmethod
    def find(cls, root: Path) -> DatasetJson | None:
        """The ``dataset.json`` of a dataset folder or of its ``imagesTr``/``imagesTs`` folder;
        None if there is none."""
        if (root / "dataset.json").is_file():
            return cls(root, root / "imagesTr", read_json(root / "dataset.json"))
        if root.name in _LABELS and (root.parent / "dataset.json").is_file():
            return cls(root.parent, root, read_json(root.parent / "dataset.json"))
        return None

    @property
    def path(self) -> Path:
        """The ``dataset.json`` file."""
        return self.folder / "dataset.json"

    @property
    def labels(self) -> Path:
        """The labels folder that goes with :attr:`images` (``labelsTr`` / ``labelsTs``)."""
        return self.folder / _LABELS[self.images.name]

    @property
    def training(self) -> bool:
        """Whether :attr:`images` is the training folder (``imagesTr``)."""
        return self.images.name == "imagesTr"


def sibling_label(image: Path, name: str) -> Path | None:
    """``../labelsTr/name`` for a file in ``imagesTr`` (``labelsTs`` for ``imagesTs``), if it
    exists."""
    folder = _LABELS.get(image.parent.name)
    label = image.parent.parent / folder / name if folder else None
    return label if label is not None and label.is_file() else None


class DecathlonFormat(DatasetFormat):
    """A format whose datasets are a ``dataset.json`` beside ``imagesTr`` / ``labelsTr``
    (MSD, nnU-Net); also opened from the images folder, or from a bare folder of images."""

    def case_folders(self, root: Path, found: DatasetJson | None) -> tuple[Path, Path | None]:
        """The images folder of ``root`` and its labels folder (None when it holds no labels).

        Raises:
            DataError: The images folder does not exist.
        """
        images = root if found is None else found.images
        if not images.is_dir():
            raise DataError(images, "images folder not found")
        labels = None if found is None else found.labels
        return images, labels if labels is not None and nifti_files(labels) else None

    def dataset_problems(self, dataset: Dataset) -> list[Problem]:
        found = DatasetJson.find(dataset.root)
        return [] if found is None else self.json_problems(dataset, found)

    def json_problems(self, dataset: Dataset, found: DatasetJson) -> list[Problem]:
        """Problems of a dataset against its ``dataset.json``: ``numTraining`` that does not
        match, training files listed but missing, label files without images. A subclass adds
        its own by extending this."""
        problems: list[Problem] = []
        expected, n_cases = found.meta.get("numTraining"), len(dataset.cases)
        if found.training and expected is not None and expected != n_cases:
            problem = f"numTraining is {expected} but {n_cases} training cases were found"
            problems.append(Problem(DATASET, found.path, problem))
        for entry in found.meta.get("training", []) if found.training else []:
            for key in ("image", "label"):
                value = entry.get(key) if isinstance(entry, dict) else None
                if isinstance(value, str) and not (found.folder / value).is_file():
                    problem = f"listed in dataset.json as a training {key} but the file is missing"
                    case_id = strip_nifti_ending(Path(value).name)
                    problems.append(Problem(case_id, found.folder / value, problem))
        labels = next((c.label_path for c in dataset.cases if c.label_path is not None), None)
        if dataset.has_labels and labels is not None:
            ids = set(dataset.case_ids)
            for path in nifti_files(labels.parent):
                if strip_nifti_ending(path.name) not in ids:
                    problems.append(Problem(DATASET, path, "label file without images"))
        return problems
