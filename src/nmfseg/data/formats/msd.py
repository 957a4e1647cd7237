"""Medical Segmentation Decathlon Task01_BrainTumour (``msd_brats``).

``ROOT/dataset.json`` (``modality``, ``labels``, ``numTraining``, ``training``),
``imagesTr/BRATS_001.nii.gz`` (one 4D file per case, channels last: FLAIR, T1w, t1gd, T2w),
``labelsTr/BRATS_001.nii.gz`` (1 edema, 2 non-enhancing tumour, 3 enhancing tumour). Also an
``imagesTr``/``imagesTs`` folder of such a dataset, a bare folder of 4D files, and one 4D file
as a single case (its label found in a sibling ``labelsTr``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nmfseg.data.formats.base import Case, Dataset, register_format
from nmfseg.data.formats.decathlon import CHANNEL_FILE, DatasetJson, DecathlonFormat, sibling_label
from nmfseg.data.nifti import NIFTI_ENDINGS, load_nifti, nifti_files, nifti_path, strip_nifti_ending
from nmfseg.data.schemes import SCHEMES, DatasetScheme
from nmfseg.errors import DataError
from nmfseg.fileio import write_json

__all__ = ["MSDBraTS"]


class MSDBraTS(DecathlonFormat):
    """The MSD Task01_BrainTumour layout (see the module docstring)."""

    name = "msd_brats"
    layout = "dataset.json with 'modality', imagesTr/CASE.nii.gz (4D), labelsTr/CASE.nii.gz"
    detection_order = 30
    scheme = SCHEMES["msd_brats"]

    def detect(self, root: Path) -> bool:
        found = DatasetJson.find(root)
        if found is not None:
            return (
                "modality" in found.meta
                and "channel_names" not in found.meta
                and not any(CHANNEL_FILE.match(p.name) for p in nifti_files(found.images))
            )
        files = nifti_files(root)
        return bool(files) and len(load_nifti(files[0]).shape) == 4

    def open(self, root: Path, scheme: DatasetScheme | None = None) -> Dataset:
        found = DatasetJson.find(root)
        if found is not None:
            self._check_modalities(found.meta, found.path)
        images, labels = self.case_folders(root, found)
        cases = []
        for path in nifti_files(images):
            cid = strip_nifti_ending(path.name)
            label = nifti_path(labels / cid) if labels is not None else None
            cases.append(Case(cid, [path], label, self.name, self.scheme))
        return Dataset(root, self.name, self.scheme, cases, labels is not None)

    def _check_modalities(self, meta: dict[str, Any], where: Path) -> None:
        modality = meta.get("modality", {})
        found = tuple(str(modality[k]) for k in sorted(modality, key=lambda k: int(k)))
        if tuple(c.lower() for c in found) != tuple(c.lower() for c in self.scheme.channels):
            raise DataError(
                where,
                f"modalities {found} are not MSD Task01_BrainTumour's {self.scheme.channels}; "
                "other MSD tasks can be converted to the nnU-Net format",
            )

    def open_case(self, path: Path, scheme: DatasetScheme | None = None) -> Case | None:
        if not path.is_file() or not path.name.endswith(NIFTI_ENDINGS):
            return None
        if CHANNEL_FILE.match(path.name):
            return None  # an nnU-Net channel file
        label = sibling_label(path, path.name)
        return Case(strip_nifti_ending(path.name), [path], label, self.name, self.scheme)

    def case_id(self, index: int, prefix: str = "BRATS") -> str:
        return f"BRATS_{index + 1:03d}"

    def case_paths(
        self, root: Path, case_id: str, scheme: DatasetScheme
    ) -> tuple[list[Path], Path]:
        return [root / "imagesTr" / f"{case_id}.nii.gz"], root / "labelsTr" / f"{case_id}.nii.gz"

    def write_metadata(
        self, root: Path, scheme: DatasetScheme, name: str | None, description: str
    ) -> Path:
        labels = {strip_nifti_ending(p.name) for p in nifti_files(root / "labelsTr")}
        ids = [strip_nifti_ending(p.name) for p in nifti_files(root / "imagesTr")]
        test = [strip_nifti_ending(p.name) for p in nifti_files(root / "imagesTs")]
        meta = {
            "name": name or "BRATS",
            "description": description,
            "tensorImageSize": "4D",
            "modality": {str(i): c for i, c in enumerate(self.scheme.channels)},
            "labels": {str(k): v for k, v in self.scheme.label_names.items()},
            "numTraining": sum(cid in labels for cid in ids),
            "numTest": len(test),
            "training": [
                {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                for c in ids
                if c in labels
            ],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test],
        }
        write_json(root / "dataset.json", meta)
        return root / "dataset.json"


register_format(MSDBraTS())
