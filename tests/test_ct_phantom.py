"""The CT phantom kind (nmfseg.phantoms.ct): HU, voxel sizes, storage, check-data's report.

Datasets are written at ``spacing`` 4 (each case's clinical voxel size times 4: about
50 x 60 x 10-50 voxels, a fraction of a second a case); the tissue HU are checked at
``spacing`` 2, where tissue layers a few mm thick still have voxels of one tissue.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from nmfseg.cli import app
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.phantoms.ct import (
    HAEMORRHAGE,
    HU_RANGES,
    OEDEMA,
    TISSUES,
    clinical_spacing,
    synth_ct_case,
)
from nmfseg.phantoms.synth import MANIFEST, phantom_formats, synthesize_dataset

SP = 4.0
runner = CliRunner()
SLICES = {1.0, 1.25, 2.5, 3.0, 5.0}


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct") / "Dataset501_CTPhantom"
    return synthesize_dataset("ct", root, 6, seed=1, spacing=SP, progress=False, overview=2)


def _digest(root):
    files = sorted(p for p in root.rglob("*.nii.gz"))
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def _zooms(path):
    return tuple(float(z) for z in nib.load(path).header.get_zooms()[:3])


def test_ct_is_written_as_nnunet_only():
    assert phantom_formats("ct") == ["nnunet"]


def test_same_seed_same_bytes(tmp_path, ct_root):
    again = synthesize_dataset(
        "ct", tmp_path / "again", 6, seed=1, spacing=SP, progress=False, overview=0
    )
    assert _digest(again) == _digest(ct_root) and len(_digest(again)) == 12
    for name in ("dataset.json",):
        assert (again / name).read_bytes() == (ct_root / name).read_bytes()
    other = synth_ct_case((2, 0), spacing=SP)
    assert not np.array_equal(other.image, synth_ct_case((1, 0), spacing=SP).image)


def test_dataset_json_and_int16_storage(ct_root):
    meta = json.loads((ct_root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "haemorrhage": 1, "oedema": 2}
    assert meta["numTraining"] == 6 and meta["file_ending"] == ".nii.gz"
    for path in sorted((ct_root / "imagesTr").iterdir()):
        img = nib.load(path)
        assert len(img.shape) == 3 and img.get_data_dtype() == np.int16
        raw = nib.Nifti1Header.from_fileobj(io.BytesIO(gzip.decompress(path.read_bytes())))
        assert (float(raw["scl_slope"]), float(raw["scl_inter"])) == (1.0, 0.0)
        data = np.asarray(img.dataobj)
        assert data.dtype == np.int16 and data.min() >= -1024 and data.max() <= 3071
        assert np.median(data[data < -500]) == pytest.approx(-1000, abs=3)  # air


def test_spacings_differ_and_match_the_affine(ct_root):
    ds = open_dataset(ct_root)
    manifest = json.loads((ct_root / MANIFEST).read_text())
    spacings = []
    for case, entry in zip(ds.cases, manifest["cases"], strict=True):
        data = load_case(case)
        columns = np.linalg.norm(data.affine[:3, :3], axis=0)
        assert np.allclose(columns, data.spacing, atol=1e-5)
        assert np.allclose(entry["spacing_mm"], data.spacing, atol=1e-5)
        assert _zooms(case.label_path) == pytest.approx(data.spacing)
        x, y, z = (v / SP for v in data.spacing)
        assert x == y and 0.7 <= x <= 1.0 and min(abs(z - s) for s in SLICES) < 1e-5
        spacings.append(data.spacing)
        # The same head in mm whatever the voxel size: its extent along x.
        head = np.flatnonzero((data.image[0] > -500).any(axis=(1, 2)))
        assert 150 < (head[-1] - head[0] + 1) * data.spacing[0] < 200
    assert len(set(spacings)) == len(spacings)
    assert any(max(s) > 3 * min(s) for s in spacings)  # some thick-slice cases


def test_clinical_spacing_spread():
    draws = np.array([clinical_spacing(np.random.default_rng(i)) for i in range(200)])
    assert draws[:, 0].min() >= 0.7 and draws[:, 0].max() <= 1.0
    assert set(np.unique(draws[:, 2]).tolist()) == SLICES


def test_labels_are_haemorrhage_and_oedema_only(ct_root):
    cases = [load_case(c) for c in open_dataset(ct_root).cases]
    values = set().union(*(np.unique(c.label).tolist() for c in cases))
    assert values <= {0, HAEMORRHAGE, OEDEMA} and HAEMORRHAGE in values
    for c in cases:  # a haemorrhage is hyperdense against the brain
        if (c.label == HAEMORRHAGE).sum() > 20:
            brain = (c.image[0] > 15) & (c.image[0] < 45) & (c.label == 0)
            assert np.median(c.image[0][c.label == HAEMORRHAGE]) > np.median(c.image[0][brain])


@pytest.mark.parametrize("seed", [(7, 0), (7, 1)])
def test_tissue_hu(seed):
    case = synth_ct_case(seed, spacing=2.0, tissue=True)
    assert case.tissue is not None and case.tissue.shape == case.label.shape
    image = case.image[0].astype(np.float64)
    found = set()
    for code, name in enumerate(TISSUES[1:], start=1):
        values = image[case.tissue == code]
        if len(values) < 30:
            continue
        found.add(name)
        lo, hi = HU_RANGES[name]
        slack = 50.0 if name == "bone" else 12.0  # noise, cupping, 10 % of another tissue
        assert lo - slack <= np.median(values) <= hi + slack, (name, np.median(values))
    assert {"air", "fat", "bone", "CSF", "grey matter", "white matter"} <= found
    brain = np.median(image[case.tissue == TISSUES.index("white matter")])
    assert brain - np.median(image[case.tissue == TISSUES.index("CSF")]) > 0
    hu = image[case.label == HAEMORRHAGE]
    if len(hu) > 30:
        assert 45 <= np.median(hu) <= 95


def test_check_data_reports_the_spread_and_ct_normalization(ct_root):
    result = runner.invoke(app, ["check-data", str(ct_root)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "nnunet, channels CT, labels 0,1,2; 6 of 6 case(s) OK" in lines[0]
    assert lines[1].startswith("  spacing (mm, min/median/max): x ")
    assert "6 distinct in 6 case(s)" in lines[1] and "anisotropic (max/min > 3)" in lines[1]
    assert lines[2] == "  channels -> normalization: CT -> ct"


def test_cli_writes_ct(tmp_path):
    out = tmp_path / "ct"
    args = ["synth", "ct", "-o", str(out), "-n", "1", "--spacing", "4", "--shape", "40,48,40"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert open_dataset(out).fmt == "nnunet"
    assert json.loads((out / MANIFEST).read_text())["spacing_mm"] == 4.0
    bad = runner.invoke(app, ["synth", "ct", "-o", str(tmp_path / "x"), "--format", "msd"])
    assert bad.exit_code == 1 and "cannot hold ct phantoms" in bad.stderr
