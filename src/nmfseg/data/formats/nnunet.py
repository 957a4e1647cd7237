"""nnU-Net v2 raw datasets (``nnunet``), any channels and labels.

``ROOT/dataset.json`` (``channel_names``, ``labels``, ``file_ending``; region-based labels with
``regions_class_order``), ``imagesTr/CASE_0000.nii.gz`` (one file per channel),
``labelsTr/CASE.nii.gz``. Also nnU-Net v1 folders (``modality`` with per-channel files), an
``imagesTr``/``imagesTs`` folder, a bare folder of ``CASE_0000.nii.gz`` files (the scheme then
comes from the trained model), and one channel file as a single case (its siblings are the other
channels; ``dataset.json`` one or two folders up).
"""

from __future__ import annotations

from pathlib import Path

from nmfseg.data.formats.base import DATASET, Case, Dataset, Problem, register_format
from nmfseg.data.formats.decathlon import CHANNEL_FILE, DatasetJson, DecathlonFormat, sibling_label
from nmfseg.data.nifti import NIFTI_ENDINGS, nifti_files, strip_nifti_ending
from nmfseg.data.schemes import DatasetScheme, scheme_from_nnunet_json, scheme_to_nnunet_json
from nmfseg.errors import DataError
from nmfseg.fileio import read_json, write_json

__all__ = ["NnUNet"]


class NnUNet(DecathlonFormat):
    """The nnU-Net v2 raw layout (see the module docstring); the scheme is the dataset's own."""

    name = "nnunet"
    layout = "dataset.json with 'channel_names', imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz"
    detection_order = 90  # the most general layout: last
    scheme = None

    def detect(self, root: Path) -> bool:
        found = DatasetJson.find(root)
        if found is None:
            return any(CHANNEL_FILE.match(p.name) for p in nifti_files(root))
        if "channel_names" in found.meta:
            return True
        v1 = any(CHANNEL_FILE.match(p.name) for p in nifti_files(found.images))
        return "modality" in found.meta and v1

    def open(self, root: Path, scheme: DatasetScheme | None = None) -> Dataset:
        found = DatasetJson.find(root)
        ending = ".nii.gz"
        if found is None and scheme is None:  # a bare images folder (e.g. imagesTs elsewhere)
            raise DataError(
                root,
                "nnU-Net images without a dataset.json next to them: pass the scheme "
                "(channel names and labels), e.g. the one stored with the trained model",
            )
        if found is not None:
            scheme = scheme_from_nnunet_json(found.meta, found.path)
            ending = str(found.meta.get("file_ending", ".nii.gz"))
            if ending not in NIFTI_ENDINGS:
                problem = f"file_ending {ending!r} is not supported (NIfTI only)"
                raise DataError(found.path, problem)
        assert scheme is not None
        images, labels = self.case_folders(root, found)
        ids = sorted({m["case"] for p in nifti_files(images) if (m := CHANNEL_FILE.match(p.name))})
        cases = [
            Case(
                cid,
                [images / f"{cid}_{i:04d}{ending}" for i in range(scheme.in_channels)],
                labels / f"{cid}{ending}" if labels is not None else None,
                self.name,
                scheme,
            )
            for cid in ids
        ]
        return Dataset(root, self.name, scheme, cases, labels is not None)

    def open_case(self, path: Path, scheme: DatasetScheme | None = None) -> Case | None:
        if not path.is_file() or not path.name.endswith(NIFTI_ENDINGS):
            return None
        match = CHANNEL_FILE.match(path.name)
        if match is None:
            return None
        base = next(
            (b for b in (path.parent, path.parent.parent) if (b / "dataset.json").is_file()), None
        )
        if base is not None:
            scheme = scheme_from_nnunet_json(read_json(base / "dataset.json"), base)
        if scheme is None:
            raise DataError(path, "no dataset.json found next to this nnU-Net case: pass scheme=")
        cid, ending = match["case"], match["ending"]
        paths = [path.parent / f"{cid}_{i:04d}{ending}" for i in range(scheme.in_channels)]
        return Case(cid, paths, sibling_label(path, f"{cid}{ending}"), self.name, scheme)

    def json_problems(self, dataset: Dataset, found: DatasetJson) -> list[Problem]:
        problems = super().json_problems(dataset, found)
        n = dataset.scheme.in_channels
        for path in nifti_files(found.images):
            match = CHANNEL_FILE.match(path.name)
            if match is None:
                problems.append(Problem(DATASET, path, "not named CASE_XXXX (channel index)"))
            elif int(match["channel"]) >= n:
                problem = f"channel {match['channel']} but dataset.json has {n} channel(s)"
                problems.append(Problem(match["case"], path, problem))
        return problems

    def case_paths(
        self, root: Path, case_id: str, scheme: DatasetScheme
    ) -> tuple[list[Path], Path]:
        images = [
            root / "imagesTr" / f"{case_id}_{i:04d}.nii.gz" for i in range(scheme.in_channels)
        ]
        return images, root / "labelsTr" / f"{case_id}.nii.gz"

    def write_metadata(
        self, root: Path, scheme: DatasetScheme, name: str | None, description: str
    ) -> Path:
        labels = {strip_nifti_ending(p.name) for p in nifti_files(root / "labelsTr")}
        files = nifti_files(root / "imagesTr")
        ids = {m["case"] for p in files if (m := CHANNEL_FILE.match(p.name))}
        meta = {"name": name or root.name, "description": description}
        meta |= scheme_to_nnunet_json(scheme)
        meta |= {"numTraining": len(ids & labels) if labels else len(ids), "file_ending": ".nii.gz"}
        write_json(root / "dataset.json", meta)
        return root / "dataset.json"


register_format(NnUNet())
