"""ISLES'22 in BIDS (``isles22``): DWI and ADC, one lesion label.

``ROOT/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_{dwi,adc}.nii.gz`` (subjects
may also sit under ``ROOT/rawdata/``) and
``ROOT/derivatives/sub-strokecase0001/ses-0001/sub-strokecase0001_ses-0001_msk.nii.gz``; BIDS
``dataset_description.json`` files. A subject folder on its own is a single case (its mask found
under ``../derivatives``).
"""

from __future__ import annotations

from pathlib import Path

from nmfseg.data.formats.base import Case, Dataset, DatasetFormat, register_format
from nmfseg.data.nifti import nifti_path
from nmfseg.data.schemes import SCHEMES, DatasetScheme
from nmfseg.fileio import write_json

__all__ = ["ISLES22"]

_SESSION = "ses-0001"


def _subjects_dir(root: Path) -> Path:
    raw = root / "rawdata"
    return raw if raw.is_dir() and any(raw.glob("sub-*")) else root


class ISLES22(DatasetFormat):
    """The ISLES'22 BIDS layout (see the module docstring)."""

    name = "isles22"
    layout = "BIDS subjects sub-*/ses-*/dwi/*_dwi.nii.gz, masks under derivatives/"
    detection_order = 20
    scheme = SCHEMES["isles22"]

    def _case(self, subject: Path, derivatives: Path | None) -> Case:
        sub = subject.name
        sessions = sorted(p.name for p in subject.glob("ses-*") if p.is_dir())
        ses = sessions[0] if sessions else _SESSION
        dwi = subject / ses / "dwi"
        paths = [nifti_path(dwi / f"{sub}_{ses}_{c}") for c in self.scheme.channels]
        label = nifti_path(derivatives / sub / ses / f"{sub}_{ses}_msk") if derivatives else None
        return Case(sub, paths, label, self.name, self.scheme)

    def detect(self, root: Path) -> bool:
        return any(
            any(sub.glob("ses-*/dwi/*_dwi.nii*")) for sub in _subjects_dir(root).glob("sub-*")
        )

    def open(self, root: Path, scheme: DatasetScheme | None = None) -> Dataset:
        derivatives = root / "derivatives"
        has_labels = derivatives.is_dir() and any(derivatives.glob("sub-*"))
        subjects = [p for p in sorted(_subjects_dir(root).glob("sub-*")) if p.is_dir()]
        cases = [self._case(s, derivatives if has_labels else None) for s in subjects]
        return Dataset(root, self.name, self.scheme, cases, has_labels)

    def open_case(self, path: Path, scheme: DatasetScheme | None = None) -> Case | None:
        if not path.is_dir() or not any(path.glob("ses-*/dwi/*_dwi.nii*")):
            return None
        up = [p / "derivatives" for p in (path.parent, path.parent.parent)]
        return self._case(path, next((d for d in up if (d / path.name).is_dir()), None))

    def case_id(self, index: int, prefix: str = "") -> str:
        return f"sub-strokecase{index + 1:04d}"

    def case_paths(
        self, root: Path, case_id: str, scheme: DatasetScheme
    ) -> tuple[list[Path], Path]:
        if not case_id.startswith("sub-"):
            raise ValueError(f"ISLES'22 case ids are BIDS subjects 'sub-...', got {case_id!r}")
        stem = f"{case_id}_{_SESSION}"
        dwi = root / case_id / _SESSION / "dwi"
        label = root / "derivatives" / case_id / _SESSION / f"{stem}_msk.nii.gz"
        return [dwi / f"{stem}_{c}.nii.gz" for c in self.scheme.channels], label

    def write_metadata(
        self, root: Path, scheme: DatasetScheme, name: str | None, description: str
    ) -> Path:
        name = name or "ISLES 2022"
        path = root / "dataset_description.json"
        write_json(path, {"Name": name, "BIDSVersion": "1.7.0", "DatasetType": "raw"})
        if (root / "derivatives").is_dir():
            meta = {
                "Name": f"{name} lesion masks",
                "BIDSVersion": "1.7.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "nmfseg", "Description": description}],
            }
            write_json(root / "derivatives" / "dataset_description.json", meta)
        return path


register_format(ISLES22())
