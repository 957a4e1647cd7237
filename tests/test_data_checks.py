"""``nmfseg check-data``: passes on good data, names the case and file of every problem."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from nmfseg.cli import app
from nmfseg.data.checks import check_dataset
from nmfseg.data.formats import list_formats, open_dataset
from nmfseg.phantoms.toy import make_toy_dataset, toy_affine

SHAPE = (24, 26, 28)
runner = CliRunner()


def _check(root, *args):
    result = runner.invoke(app, ["check-data", str(root), *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


@pytest.mark.parametrize("fmt", list_formats())
def test_good_data_passes(tmp_path, fmt):
    root = make_toy_dataset(tmp_path / fmt, fmt, n_cases=3, shape=SHAPE)
    result = _check(root)
    assert result.exit_code == 0, result.output
    assert f"{fmt}, channels" in result.stdout and "3 of 3 case(s) OK" in result.stdout
    assert result.stderr == ""
    assert _check(root, "--format", fmt).exit_code == 0


def _brats(tmp_path, n_cases=3):
    return make_toy_dataset(tmp_path / "brats", "brats2021", n_cases=n_cases, shape=SHAPE)


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, toy_affine() if affine is None else affine), path)


def _one_problem(root, case_id, file_name, words):
    """Exit 1, one problem line naming the case and file, the error summary on stderr."""
    result = _check(root)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(case_id)]
    assert len(lines) == 1, result.stdout
    assert file_name in lines[0] and words in lines[0], lines[0]
    assert (
        result.stderr.strip() == f"nmfseg: error: {root}: 1 problem(s) found (1 case(s) affected)"
    )
    assert "of 3 case(s) OK" in result.stdout
    return lines[0]


def test_missing_modality(tmp_path):
    root = _brats(tmp_path)
    (root / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz").unlink()
    line = _one_problem(root, "BraTS2021_00001", "BraTS2021_00001_t1ce.nii.gz", "missing t1ce")
    assert "2 of 3" in _check(root).stdout
    assert line.startswith("BraTS2021_00001: BraTS2021_00001/BraTS2021_00001_t1ce.nii.gz: ")


def test_truncated_gzip(tmp_path):
    root = _brats(tmp_path)
    path = root / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 200])
    _one_problem(root, "BraTS2021_00002", "BraTS2021_00002_flair.nii.gz", "corrupt")


def test_mismatched_shape(tmp_path):
    root = _brats(tmp_path)
    _save(root / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz", np.ones((24, 26, 27), "f4"))
    _one_problem(root, "BraTS2021_00000", "BraTS2021_00000_t2.nii.gz", "shape (24, 26, 27)")


def test_mismatched_affine(tmp_path):
    root = make_toy_dataset(tmp_path / "isles", "isles22", n_cases=3, shape=SHAPE)
    path = (
        root / "sub-strokecase0002" / "ses-0001" / "dwi" / "sub-strokecase0002_ses-0001_adc.nii.gz"
    )
    img = nib.load(path)
    tilted = img.affine.copy()
    tilted[:3, :3] *= 1.01
    _save(path, np.asarray(img.dataobj), tilted)
    _one_problem(root, "sub-strokecase0002", "sub-strokecase0002_ses-0001_adc.nii.gz", "affine")


def test_affine_within_tolerance_passes(tmp_path):
    root = _brats(tmp_path)
    path = root / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    img = nib.load(path)
    nudged = img.affine.copy()
    nudged[0, 3] += 1e-5
    _save(path, np.asarray(img.dataobj), nudged)
    assert _check(root).exit_code == 0


def test_nan(tmp_path):
    root = make_toy_dataset(tmp_path / "nn", "nnunet", n_cases=3, shape=SHAPE)
    path = root / "imagesTr" / "toy_002_0002.nii.gz"
    data = np.asarray(nib.load(path).dataobj).copy()
    data[3, 4, 5] = np.nan
    data[3, 4, 6] = np.inf
    _save(path, data)
    _one_problem(root, "toy_002", "toy_002_0002.nii.gz", "2 NaN/Inf")


def test_label_outside_scheme(tmp_path):
    root = make_toy_dataset(tmp_path / "b23", "brats2023", n_cases=3, shape=SHAPE)
    path = root / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz"
    seg = np.asarray(nib.load(path).dataobj).copy()
    seg[seg == 3] = 4  # the BraTS 2021 ET label in a BraTS 2023 dataset
    _save(path, seg)
    _one_problem(root, "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-seg.nii.gz", "[4] are not in")


def test_wrong_channel_count_msd(tmp_path):
    root = make_toy_dataset(tmp_path / "msd", "msd_brats", n_cases=3, shape=SHAPE)
    path = root / "imagesTr" / "BRATS_003.nii.gz"
    _save(path, np.asarray(nib.load(path).dataobj)[..., :3])
    _one_problem(root, "BRATS_003", "BRATS_003.nii.gz", "has 3 channel(s), expected 4")


def test_missing_label_and_many_problems_all_reported(tmp_path):
    root = _brats(tmp_path, n_cases=4)
    (root / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").unlink()
    (root / "BraTS2021_00003" / "BraTS2021_00003_flair.nii.gz").unlink()
    (root / "BraTS2021_00003" / "BraTS2021_00003_t1.nii.gz").unlink()
    result = _check(root)
    assert result.exit_code == 1
    assert "BraTS2021_00000_seg.nii.gz: missing label" in result.stdout
    assert "2 of 4 case(s) OK" in result.stdout
    assert "3 problem(s) found (2 case(s) affected)" in result.stderr
    report = check_dataset(open_dataset(root))
    assert report.bad_cases == ["BraTS2021_00000", "BraTS2021_00003"] and report.n_ok == 2


def test_nnunet_folder_problems(tmp_path):
    root = make_toy_dataset(tmp_path / "nn", "nnunet", n_cases=3, shape=SHAPE)
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(meta))
    src = root / "imagesTr" / "toy_001_0000.nii.gz"
    (root / "imagesTr" / "toy_001_0004.nii.gz").write_bytes(src.read_bytes())
    (root / "labelsTr" / "orphan.nii.gz").write_bytes(src.read_bytes())
    result = _check(root)
    assert result.exit_code == 1
    assert "dataset.json: numTraining is 5 but 3" in result.stdout
    assert "toy_001: imagesTr/toy_001_0004.nii.gz: channel 0004" in result.stdout
    assert "labelsTr/orphan.nii.gz: label file without images" in result.stdout


def test_not_a_dataset_and_bad_option(tmp_path):
    result = _check(tmp_path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"nmfseg: error: {tmp_path}: no dataset format found")
    assert len(result.stderr.strip().splitlines()) == 1
    result = _check(tmp_path, "--fmt", "brats2019")
    assert result.exit_code == 1 and "--format 'brats2019': not a dataset format" in result.stderr
    assert _check(tmp_path / "nope").exit_code == 1


def test_nnunet_stray_file_and_missing_training_entry(tmp_path):
    root = make_toy_dataset(tmp_path / "nn", "nnunet", n_cases=2, shape=SHAPE)
    meta = json.loads((root / "dataset.json").read_text())
    entry = {"image": "./imagesTr/toy_009.nii.gz", "label": "./labelsTr/toy_001.nii.gz"}
    meta["training"] = [entry]
    (root / "dataset.json").write_text(json.dumps(meta))
    src = root / "imagesTr" / "toy_001_0000.nii.gz"
    (root / "imagesTr" / "notes.nii.gz").write_bytes(src.read_bytes())
    result = _check(root)
    assert result.exit_code == 1
    assert "imagesTr/notes.nii.gz: not named CASE_XXXX (channel index)" in result.stdout
    assert "toy_009: imagesTr/toy_009.nii.gz: listed in dataset.json as a training image" in (
        result.stdout
    )
    assert "toy_001.nii.gz: listed" not in result.stdout


def test_report_profiles_spacing_and_normalization(tmp_path):
    from nmfseg.phantoms.synth import synthesize_dataset

    root = synthesize_dataset("brats", tmp_path / "b", 2, spacing=4.0, progress=False, overview=0)
    result = _check(root)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[1]
        == "  spacing (mm): 4 x 4 x 4 in all 2 case(s), 1 distinct, 0 anisotropic (max/min > 3)"
    )
    assert lines[2] == (
        "  channels -> normalization: FLAIR -> zscore_nonzero, T1w -> zscore_nonzero, "
        "t1gd -> zscore_nonzero, T2w -> zscore_nonzero"
    )
    report = check_dataset(open_dataset(root))
    assert report.spacing is not None and report.spacing.to_dict()["distinct"] == 1


def test_report_counts_distinct_and_anisotropic_spacings(tmp_path):
    root = make_toy_dataset(tmp_path / "t", "nnunet", n_cases=3, shape=SHAPE)
    path = sorted((root / "imagesTr").glob("*_0000.nii.gz"))[1]
    img = nib.load(path)
    affine = img.affine @ np.diag([1.0, 1.0, 4.0, 1.0])
    for f in sorted(root.rglob(path.name.replace("_0000", "*"))):
        other = nib.load(f)
        _save(f, np.asarray(other.dataobj), affine)
    report = check_dataset(open_dataset(root))
    assert report.ok, report.problems
    assert report.spacing.distinct == 2 and report.spacing.anisotropic == 1
    assert "2 distinct in 3 case(s), 1 anisotropic" in report.profile()[0]
