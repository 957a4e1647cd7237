"""A new dataset format is one class: registered at run time, every verb accepts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import cli
from nmfseg.data.formats import (
    Case,
    Dataset,
    DatasetFormat,
    detect_format,
    list_formats,
    open_case,
    temporarily_registered_format,
    write_case,
    write_dataset_metadata,
)
from nmfseg.data.nifti import nifti_path
from nmfseg.data.schemes import DatasetScheme, labels_to_regions
from nmfseg.phantoms.toy import make_toy_case, toy_affine

SCHEME = DatasetScheme(
    name="flat",
    channels=("t1", "flair"),
    labels=(0, 1),
    regions={"lesion": (1,)},
    region_labels={"lesion": 1},
)


class FlatFormat(DatasetFormat):
    """``ROOT/flat.txt`` marks the dataset; ``ROOT/CASE/{t1,flair,seg}.nii.gz``."""

    name = "flat"
    layout = "flat.txt and CASE/{t1,flair,seg}.nii.gz"
    scheme = SCHEME

    def _case(self, folder: Path) -> Case:
        images = [nifti_path(folder / c) for c in SCHEME.channels]
        label = folder / "seg.nii.gz"
        return Case(folder.name, images, label if label.is_file() else None, self.name, SCHEME)

    def detect(self, root: Path) -> bool:
        return (root / "flat.txt").is_file()

    def open(self, root: Path, scheme: DatasetScheme | None = None) -> Dataset:
        cases = [self._case(d) for d in sorted(root.iterdir()) if (d / "t1.nii.gz").is_file()]
        labelled = any(c.label_path is not None for c in cases)
        return Dataset(root, self.name, SCHEME, cases, labelled)

    def open_case(self, path: Path, scheme: DatasetScheme | None = None) -> Case | None:
        return self._case(path) if path.is_dir() and (path / "t1.nii.gz").is_file() else None

    def case_id(self, index: int, prefix: str = "case") -> str:
        return f"flat{index:02d}"

    def case_paths(self, root: Path, case_id: str, scheme: DatasetScheme):
        folder = root / case_id
        return [folder / f"{c}.nii.gz" for c in SCHEME.channels], folder / "seg.nii.gz"

    def write_metadata(self, root: Path, scheme: DatasetScheme, name, description) -> Path:
        (root / "flat.txt").write_text(description)
        return root / "flat.txt"


@pytest.fixture
def flat_dataset(tmp_path):
    fmt = FlatFormat()
    with temporarily_registered_format(fmt):
        root = tmp_path / "FlatData"
        for i in range(4):
            image, label = make_toy_case(SCHEME, (20, 18, 16), rng=i)
            write_case("flat", root, fmt.case_id(i), image, label, toy_affine())
        write_dataset_metadata("flat", root)
        yield root
    assert "flat" not in list_formats()


@pytest.mark.slow
def test_a_registered_format_runs_check_data_train_and_predict(flat_dataset, tmp_path):
    assert "flat" in list_formats() and detect_format(flat_dataset) == "flat"
    result = cli("check-data", flat_dataset)
    assert result.exit_code == 0, result.output
    assert "flat, channels t1, flair" in result.output and "4 of 4 case(s) OK" in result.output
    runs = tmp_path / "runs"
    result = cli(
        "train", flat_dataset, "-m", "swin_factorizer_isles", "-o", runs, "--fold", "0",
        "--n-folds", "2", "--steps", "1", "--patch-size", "16", "--workers", "0",
        "--model-arg", "channels=4,8,16", "--model-arg", "window_size=2",
        "--model-arg", "pos_embed_grid=1", "--model-arg", "deep_supr_num=1", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = runs / "FlatData" / "swin_factorizer_isles"
    assert (run / "fold_0" / "checkpoint_final.pt").is_file()
    pred = tmp_path / "pred"
    result = cli("predict", "-m", run, "-i", flat_dataset, "-o", pred)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in pred.glob("*.nii.gz"))
    assert written == ["flat00.nii.gz", "flat01.nii.gz", "flat02.nii.gz", "flat03.nii.gz"]
    result = cli("evaluate", "--pred", pred, "--gt", flat_dataset, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    one = open_case(flat_dataset / "flat00")
    assert one.fmt == "flat" and one.label_path is not None


def test_the_reader_and_the_checks_are_the_formats_own(flat_dataset):
    from nmfseg.data.formats import load_case, open_dataset

    dataset = open_dataset(flat_dataset)
    data = load_case(dataset.cases[1])
    assert data.image.shape == (2, 20, 18, 16)
    regions = labels_to_regions(data.label, SCHEME)
    assert regions.shape == (1, 20, 18, 16) and regions.any()
    (flat_dataset / "flat02" / "flair.nii.gz").unlink()
    result = cli("check-data", flat_dataset, "--format", "flat")
    assert result.exit_code == 1
    assert "flat02: flat02/flair.nii.gz: missing flair image (file not found)" in result.output
    assert np.isfinite(data.image).all()


@pytest.mark.parametrize(("order", "position"), [(5, 0), (50, 4), (95, 5)])
def test_detection_order_is_declared_not_the_import_order(order, position):
    """A format registered last is tried where its ``detection_order`` puts it."""

    class Late(DatasetFormat):
        name = "late"
        detection_order = order

    before = list_formats()
    assert before[-1] == "nnunet"  # the most general layout is tried last
    with temporarily_registered_format(Late()):
        names = list_formats()
    assert names.index("late") == position
    assert [n for n in names if n != "late"] == before
