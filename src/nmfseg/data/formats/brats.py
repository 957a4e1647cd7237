"""BraTS challenge folders: BraTS 2021 (``brats2021``) and BraTS 2023 (``brats2023``).

One folder per case: ``ROOT/BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``
(labels 1 NCR/NET, 2 ED, 4 ET) and
``ROOT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (labels 1 NCR,
2 ED, 3 ET). A case folder on its own is a single case.
"""

from __future__ import annotations

from pathlib import Path

from nmfseg.data.formats.base import Case, Dataset, DatasetFormat, register_format, subdirs
from nmfseg.data.nifti import nifti_path
from nmfseg.data.schemes import SCHEMES, DatasetScheme

__all__ = ["BraTSFolders"]


class BraTSFolders(DatasetFormat):
    """A BraTS challenge layout: ``CASE/CASE{sep}{channel}.nii.gz`` and ``CASE{sep}seg``.

    Args:
        name: ``"brats2021"`` or ``"brats2023"`` (the scheme of that name).
        sep: The separator between case id and channel name (``"_"`` or ``"-"``).
        case_pattern: The case id of case ``index``, e.g. ``"BraTS2021_{index:05d}"``.
    """

    detection_order = 10

    def __init__(self, name: str, sep: str, case_pattern: str) -> None:
        self.name = name
        self.scheme = SCHEMES[name]
        self.sep = sep
        self.case_pattern = case_pattern
        example = case_pattern.format(index=0)
        self.layout = f"case folders {example}/{example}{sep}{self.scheme.channels[0]}.nii.gz"

    def _file(self, folder: Path, channel: str) -> Path:
        return nifti_path(folder / f"{folder.name}{self.sep}{channel}")

    def _is_case(self, folder: Path, with_label: bool = False) -> bool:
        names = (*self.scheme.channels, "seg") if with_label else self.scheme.channels[:1]
        return any(self._file(folder, c).is_file() for c in names)

    def _case(self, folder: Path) -> Case:
        paths = [self._file(folder, c) for c in self.scheme.channels]
        return Case(folder.name, paths, self._file(folder, "seg"), self.name, self.scheme)

    def detect(self, root: Path) -> bool:
        return any(self._is_case(sub) for sub in subdirs(root))

    def open(self, root: Path, scheme: DatasetScheme | None = None) -> Dataset:
        cases = [self._case(d) for d in subdirs(root) if self._is_case(d, with_label=True)]
        has_labels = any(c.label_path is not None and c.label_path.is_file() for c in cases)
        for case in cases:
            if not has_labels:
                case.label_path = None
        return Dataset(root, self.name, self.scheme, cases, has_labels)

    def open_case(self, path: Path, scheme: DatasetScheme | None = None) -> Case | None:
        if not path.is_dir() or not self._is_case(path):
            return None
        case = self._case(path)
        if case.label_path is not None and not case.label_path.is_file():
            case.label_path = None
        return case

    def case_id(self, index: int, prefix: str = "") -> str:
        return self.case_pattern.format(index=index)

    def case_paths(
        self, root: Path, case_id: str, scheme: DatasetScheme
    ) -> tuple[list[Path], Path]:
        folder = root / case_id
        images = [folder / f"{case_id}{self.sep}{c}.nii.gz" for c in self.scheme.channels]
        return images, folder / f"{case_id}{self.sep}seg.nii.gz"


register_format(BraTSFolders("brats2021", "_", "BraTS2021_{index:05d}"))
register_format(BraTSFolders("brats2023", "-", "BraTS-GLI-{index:05d}-000"))
