"""2D images end to end (#24): the 2D Factorizer presets, the 2D phantoms (``nmfseg synth
brats2d``), the two on-disk layouts of a 2D image (``X x Y`` and ``X x Y x 1``), and the
pipeline from the command line: synth -> train -> predict -> evaluate -> explain."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import cli
from nmfseg.data.checks import check_dataset
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.data.nifti import write_label
from nmfseg.data.schemes import labels_to_regions
from nmfseg.errors import ConfigError
from nmfseg.inference import Predictor
from nmfseg.models import create_model, list_models, model_info
from nmfseg.phantoms.anatomy import load_anatomy
from nmfseg.phantoms.slices import synth_brats_slice
from nmfseg.phantoms.synth import synthesize_dataset
from nmfseg.training.setup import prepare_run

PRESETS = ["global_factorizer_2d", "local_factorizer_2d", "swin_factorizer_2d"]
SIZE = 64  # pixels per side of the test phantoms (512 by default)
TINY = ("channels=8,16,32", "deep_supr_num=1", "window_size=4", "pos_embed_grid=2")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four 2D phantoms of 64 x 64 pixels in the nnU-Net layout (from the 4 mm 3D grid)."""
    root = tmp_path_factory.mktemp("b2d") / "Dataset502_Brats2D"
    result = cli(
        "synth", "brats2d", "-o", root, "--cases", 4, "--size", SIZE, "--spacing", 4,
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


# ------------------------------------------------------------------------------ presets


def test_presets_are_listed_as_2d_networks():
    assert set(PRESETS) <= set(list_models("*_2d"))
    for name in PRESETS:
        info = model_info(name)
        assert info.spatial_dims == 2 and info.patch_size == (512, 512)
    result = cli("models", "*_factorizer_2d")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.endswith("high-resolution slices")]
    assert [r.split()[0] for r in rows] == sorted(PRESETS) and all("512x512" in r for r in rows)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_forward_and_backward_at_odd_2d_sizes(name):
    torch.manual_seed(0)
    net = create_model(name, channels=(8, 16, 32, 64, 128))
    assert net.spatial_dims == 2 and net.size_multiple == 16
    with torch.no_grad():
        y = net.eval()(torch.randn(2, 4, 37, 45))  # odd, no multiple of any stride
    assert y.shape == (2, 3, 37, 45) and torch.isfinite(y).all()
    outs = net.train()(torch.randn(1, 4, 19, 26))
    assert [tuple(o.shape[2:]) for o in outs] == [
        tuple(math.ceil(s / 2**k) for s in (19, 26)) for k in range(3)
    ]
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------ phantoms


def test_phantom_slice_is_fine_nested_and_reproducible():
    case = synth_brats_slice((3, 1), spacing=4.0, size=48)
    again = synth_brats_slice((3, 1), spacing=4.0, size=48)
    assert np.array_equal(case.image, again.image) and np.array_equal(case.label, again.label)
    assert case.image.shape == (4, 48, 48, 1) and case.label.shape == (48, 48, 1)
    side = 4.0 * max(load_anatomy(4.0).shape[:2]) / 48  # the grid's longer side, 48 pixels
    assert np.allclose(nib.affines.voxel_sizes(case.affine), (side, side, 4.0))
    assert not case.image[:, case.image[0] == 0].any()  # skull-stripped in every channel
    assert (case.image[0][case.label > 0] > 0).all()  # no label outside the brain
    with pytest.raises(ValueError, match="at least 16"):
        synth_brats_slice(0, spacing=4.0, size=8)


def test_synth_brats2d_is_a_valid_2d_dataset(data):
    ds = open_dataset(data)
    assert ds.fmt == "nnunet" and len(ds.cases) == 4 and ds.has_labels
    report = check_dataset(ds)
    assert report.ok, [p.message(data) for p in report.problems]
    assert len(report.spacing.spacings[0]) == 2  # in-plane only
    manifest = json.loads((data / "synth.json").read_text())
    assert manifest["kind"] == "brats2d" and manifest["size"] == SIZE and manifest["complete"]
    assert nib.load(ds.cases[0].image_paths[0]).shape == (SIZE, SIZE, 1)
    for case in ds.cases:
        c = load_case(case)
        assert c.image.shape == (4, SIZE, SIZE) and c.label.shape == (SIZE, SIZE)
        assert len(c.spacing) == 2 and c.spacing[0] == c.spacing[1]
        wt, tc, et = (labels_to_regions(c.label, ds.scheme)[i] for i in range(3))
        assert wt.any() and not (tc & ~wt).any() and not (et & ~tc).any()  # nested regions
    with pytest.raises(Exception, match="--size sets the pixels of 2D phantoms"):
        synthesize_dataset("brats", data.parent / "x", 1, spacing=4.0, size=64, progress=False)


def test_msd_layout_and_2d_nifti_read_as_the_same_2d_case(data, tmp_path):
    msd = synthesize_dataset(
        "brats2d", tmp_path / "msd", 1, spacing=4.0, size=32, fmt="msd", progress=False
    )
    case = open_dataset(msd).cases[0]
    assert nib.load(case.image_paths[0]).shape == (32, 32, 1, 4)
    assert load_case(case).image.shape == (4, 32, 32)
    # the same nnU-Net case with plain 2D files (X x Y)
    flat = tmp_path / "flat"
    shutil.copytree(data, flat)
    one = open_dataset(flat).cases[0]
    for path in [*one.image_paths, one.label_path]:
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), path)
    a, b = load_case(open_dataset(data).cases[0]), load_case(open_dataset(flat).cases[0])
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.spacing == b.spacing and np.allclose(a.affine, b.affine)
    for loaded, shape in ((a, (SIZE, SIZE, 1)), (b, (SIZE, SIZE))):  # each file's own layout
        out = write_label(tmp_path / "pred.nii.gz", loaded.label, loaded.header, loaded.affine)
        assert nib.load(out).shape == shape


def test_a_3d_network_is_refused_on_2d_images(data, tmp_path):
    with pytest.raises(ConfigError, match=r"a 3D network, but .* holds 2D images.*_2d"):
        prepare_run(data, "swin_factorizer_brats", 0, tmp_path, overrides={"n_folds": 2})


# ------------------------------------------------------------------------------ pipeline


def test_cli_synth_train_predict_evaluate_explain(data, tmp_path):
    runs = tmp_path / "runs"
    args = [a for arg in TINY for a in ("--model-arg", arg)]
    result = cli(
        "train", "-d", data, "-m", "swin_factorizer_2d", "--fold", 0, "-o", runs,
        "--n-folds", 2, "--steps", 2, "--batch-size", 2, "--patch-size", 32, "--workers", 0,
        "--val-every", 2, "--device", "cpu", "--quiet", *args,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = runs / data.name / "swin_factorizer_2d"
    config = (run / "fold_0" / "config.yaml").read_text()
    assert "patch_size: [32, 32]\n" in config and "batch_size: 2\n" in config

    pred = tmp_path / "pred"
    result = cli("predict", "-r", run, "-i", data, "-o", pred, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    for case in open_dataset(data).cases:
        image, out = nib.load(case.image_paths[0]), nib.load(pred / f"{case.case_id}.nii.gz")
        assert out.shape == image.shape == (SIZE, SIZE, 1)
        np.testing.assert_allclose(out.affine, image.affine, atol=1e-5)

    flat = tmp_path / "flat" / "imagesTs"  # one case as plain 2D files: predicted as X x Y
    flat.mkdir(parents=True)
    for path in open_dataset(data).cases[0].image_paths:
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), flat / path.name)
    result = cli("predict", "-r", run, "-i", flat, "-o", tmp_path / "pflat", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = nib.load(next((tmp_path / "pflat").glob("*.nii.gz")))
    assert out.shape == (SIZE, SIZE) and np.allclose(out.affine, img.affine, atol=1e-5)

    predictor = Predictor.from_run(run, device="cpu")  # the Python API, one file per channel
    for paths in (open_dataset(data).cases[0].image_paths, sorted(flat.iterdir())):
        labels = predictor.predict_nifti(paths)
        assert labels.shape == nib.load(paths[0]).shape
        assert np.array_equal(np.asarray(labels.dataobj).ravel(), np.asarray(out.dataobj).ravel())

    result = cli("evaluate", "--pred", pred, "-d", data, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert re.search(r"^Dice\s+\S+ ± \S+\s+\S+ ± \S+\s+\S+ ± \S+", result.output, re.M)
    assert (tmp_path / "report" / "metrics.csv").is_file()

    case = open_dataset(data).cases[0]
    explain = tmp_path / "explain"
    result = cli(
        "explain", "-r", run, "-i", case.image_paths[0], "-o", explain, "--device", "cpu",
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (explain / "components.png").stat().st_size > 0
    maps = sorted((explain / "maps").glob("*.nii.gz"))
    assert maps and nib.load(maps[0]).shape == (SIZE, SIZE, 1)
