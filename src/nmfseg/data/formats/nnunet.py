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

from nmfseg.data.formats.base import (
    CHANNEL_FILE,
    DATASET,
    Case,
    Dataset,
    DatasetFormat,
    Problem,
    json_base,
    json_dataset_problems,
    register_format,
)
from nmfseg.data.formats.msd import sibling_label
from nmfseg.data.nifti import NIFTI_ENDINGS, nifti_files, strip_nifti_ending
from nmfseg.data.schemes import DatasetScheme, scheme_from_nnunet_json, scheme_to_nnunet_json
from nmfseg.errors import DataError
from nmfseg.fileio import read_json, write_json

__all__ = ["NnUNet"]


class NnUNet(DatasetFormat):
    """The nnU-Net v2 raw layout (see the module docstring); the scheme is the dataset's own."""

    name = "nnunet"
    layout = "dataset.json with 'channel_names', imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz"
    scheme = None

    def detect(self, root: Path) -> bool:
        base = json_base(root)
        if base is None:
            return any(CHANNEL_FILE.match(p.name) for p in nifti_files(root))
        folder, images, meta = base
        if "channel_names" in meta:
            return True
        v1 = any(CHANNEL_FILE.match(p.name) for p in nifti_files(folder / images))
        return "modality" in meta and v1

    def open(self, root: Path, scheme: DatasetScheme | None = None) -> Dataset:
        base = json_base(root)
        ending = ".nii.gz"
        if base is None:  # a bare images folder (e.g. imagesTs copied elsewhere)
            images, labels = root, None
            if scheme is None:
                raise DataError(
                    root,
                    "nnU-Net images without a dataset.json next to them: pass the scheme "
                    "(channel names and labels), e.g. the one stored with the trained model",
                )
        else:
            folder, images_name, meta = base
            scheme = scheme_from_nnunet_json(meta, folder / "dataset.json")
            ending = str(meta.get("file_ending", ".nii.gz"))
            if ending not in NIFTI_ENDINGS:
                problem = f"file_ending {ending!r} is not supported (NIfTI only)"
                raise DataError(folder / "dataset.json", problem)
            images = folder / images_name
            labels = folder / ("labelsTr" if images_name == "imagesTr" else "labelsTs")
        if not images.is_dir():
            raise DataError(images, "images folder not found")
        has_labels = labels is not None and bool(nifti_files(labels))
        files = nifti_files(images)
        ids = sorted({m["case"] for p in files if (m := CHANNEL_FILE.match(p.name))})
        cases = [
            Case(
                cid,
                [images / f"{cid}_{i:04d}{ending}" for i in range(scheme.in_channels)],
                labels / f"{cid}{ending}" if has_labels and labels is not None else None,
                self.name,
                scheme,
            )
            for cid in ids
        ]
        return Dataset(root, self.name, scheme, cases, has_labels)

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

    def dataset_problems(self, dataset: Dataset) -> list[Problem]:
        problems = json_dataset_problems(dataset)
        base = json_base(dataset.root)
        if base is None:
            return problems
        n = dataset.scheme.in_channels
        for path in nifti_files(base[0] / base[1]):
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
