"""Prediction end to end: every format's labels and geometry, the CLI, settings, sidecar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import pointwise_net
from nmfseg.errors import DataError
from nmfseg.inference.ensemble import Ensemble, output_scheme
from nmfseg.inference.predictor import Predictor

# --------------------------------------------------------------------- whole pipeline

POINTWISE = "_test_pointwise"
# (output channel of ET, TC, WT) and the (ET, NCR, ED) labels written, per BraTS-like format
BRATS_LAYOUT = {
    "msd_brats": ((0, 1, 2), (3, 2, 1)),
    "brats2021": ((0, 1, 2), (4, 1, 2)),
    "brats2023": ((0, 1, 2), (3, 1, 2)),
    "nnunet": ((2, 1, 0), (3, 2, 1)),  # template dataset.json: whole tumor, tumor core, enh.
}


@pytest.fixture
def pointwise_registry():
    """Register a 1×1×1-conv network for the duration of one test (the registry is restored)."""
    from nmfseg.models import ModelConfig, temporarily_registered_model

    def build(in_channels: int, out_channels: int) -> nn.Module:
        return nn.Conv3d(in_channels, out_channels, kernel_size=1)

    with temporarily_registered_model(ModelConfig(POINTWISE, build)):
        yield


THRESHOLDS = (0.5, 0.0, -0.5)  # oracle: output r is "z-scored channel r >= THRESHOLDS[r]"


def _oracle(in_channels: int, out_channels: int, gain: float = 10.0) -> nn.Module:
    """Logit r = gain × (input channel r − THRESHOLDS[r]): a known region per channel."""
    net = nn.Conv3d(in_channels, out_channels, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        for r in range(out_channels):
            net.weight[r, r] = gain
            net.bias[r] = -gain * THRESHOLDS[r]
    return net


def _write_run(run, scheme, nets, patch=(8, 8, 8), names=None):
    """Checkpoints in the training layout (run/fold_K/checkpoint_final.pt), one per network."""
    from nmfseg.training.checkpoint import atomic_save

    for k, net in enumerate(nets):
        config = {
            "patch_size": list(patch),
            "model": POINTWISE,
            "dataset": {
                "scheme": scheme.to_dict(),  # as the trainer stores it
                "channels": list(scheme.channels),
                "regions": list(names or scheme.region_names),
            },
            "validation": {"overlap": 0.5, "mode": "gaussian"},
        }
        ckpt = {
            "model_name": POINTWISE,
            "model_kwargs": {"in_channels": net.in_channels, "out_channels": net.out_channels},
            "model": net.state_dict(),
            "config": config,
            "scheme": scheme.name,
        }
        atomic_save(ckpt, run / f"fold_{k}" / "checkpoint_final.pt")
    return run


def _zscored_box(image):
    """Independent reference of the preprocessing: nonzero box, z-score on nonzero voxels."""
    idx = np.argwhere((image != 0).any(0))
    box = tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0), strict=True))
    z = np.zeros(image.shape, np.float64)
    for c, channel in enumerate(image):
        inner = channel[box].astype(np.float64)
        nz = inner != 0
        z[c][box] = np.where(nz, (inner - inner[nz].mean()) / inner[nz].std(), 0.0)
    inside = np.zeros(image.shape[1:], bool)
    inside[box] = True
    return z, inside


def _expected_labels(image, fmt):
    z, inside = _zscored_box(image)
    # oracle: region r <=> z_r >= THRESHOLDS[r] inside the box (nothing outside it)
    region = (z[:3] >= np.reshape(THRESHOLDS[: len(z)], (-1, 1, 1, 1))[:3]) & inside
    if fmt == "isles22":
        return region[0].astype(np.uint8)
    (i_et, i_tc, i_wt), (l_et, l_ncr, l_ed) = BRATS_LAYOUT[fmt]
    out = np.zeros(image.shape[1:], np.uint8)
    out[region[i_wt]] = l_ed
    out[region[i_tc]] = l_ncr
    out[region[i_et]] = l_et
    return out


def _cli(*args):
    from typer.testing import CliRunner

    from nmfseg.cli import app

    return CliRunner().invoke(app, ["predict", *map(str, args)])


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


@pytest.mark.parametrize("fmt", ["msd_brats", "brats2021", "brats2023", "isles22", "nnunet"])
def test_predict_every_format_labels_and_geometry(fmt, tmp_path, pointwise_registry):
    import nibabel as nib

    from nmfseg.data.formats import load_case, open_dataset
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / fmt, fmt, n_cases=2, shape=(13, 10, 9), seed=3)
    ds = open_dataset(root)
    for case in ds.cases:  # unusual header codes must survive: sform "aligned", qform "scanner"
        ref = nib.load(case.image_paths[0])
        img = nib.Nifti1Image(np.asarray(ref.dataobj), ref.affine, ref.header)
        img.set_sform(ref.affine, code=2)
        img.set_qform(ref.affine, code=1)
        nib.save(img, case.image_paths[0])
    scheme = ds.scheme
    run = _write_run(tmp_path / "run", scheme, [_oracle(scheme.in_channels, scheme.out_channels)])

    res = _cli("-m", run, "-i", root, "-o", tmp_path / "pred", "--device", "cpu")
    assert res.exit_code == 0, res.output

    for case in ds.cases:
        data = load_case(case)
        out = nib.load(tmp_path / "pred" / f"{case.case_id}.nii.gz")
        ref = nib.load(case.image_paths[0])
        assert out.shape == data.image.shape[1:] == ref.shape[:3]
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
        assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
        assert out.header.get_zooms()[:3] == ref.header.get_zooms()[:3]
        labels = np.asarray(out.dataobj)
        assert set(np.unique(labels).tolist()) <= set(scheme.labels)
        np.testing.assert_array_equal(labels, _expected_labels(data.image, fmt))
    assert _leftovers(tmp_path / "pred") == []


def test_cli_fold_ensemble_tta_probabilities_and_small_volume(tmp_path, pointwise_registry):
    """Two folds, --tta, --save-probabilities; the volume is smaller than the 16³ window."""
    from nmfseg.data.formats import load_case, open_dataset
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "d", "brats2023", n_cases=1, shape=(13, 10, 9))
    scheme = open_dataset(root).scheme
    nets = [pointwise_net(4, 3, seed=s) for s in (1, 2)]
    run = _write_run(tmp_path / "run", scheme, nets, patch=(16, 16, 16))
    out = tmp_path / "pred"
    res = _cli("-m", run, "-i", root, "-o", out, "--folds", 0, 1, "--tta", "--save-probabilities")
    assert res.exit_code == 0, res.output

    case = open_dataset(root).cases[0]
    saved = np.load(out / f"{case.case_id}_probabilities.npz")
    probs = saved["probabilities"]
    assert probs.dtype == np.float16 and probs.shape == (3, 13, 10, 9)
    assert saved["regions"].tolist() == ["ET", "TC", "WT"]
    image = load_case(case).image
    each = [
        Predictor(Ensemble([n], [], (16, 16, 16), 4, 3), tta=True).probabilities(image)
        for n in nets
    ]
    np.testing.assert_allclose(probs, np.mean(each, axis=0), atol=1e-3)


def test_cli_single_case_input_and_overwrite(tmp_path, pointwise_registry):
    import nibabel as nib

    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "Task01", "msd_brats", n_cases=2, shape=(12, 11, 10))
    run = _write_run(tmp_path / "run", SCHEMES["msd_brats"], [_oracle(4, 3)])
    case = root / "imagesTr" / "BRATS_002.nii.gz"
    out = tmp_path / "pred"
    assert _cli("-m", run / "fold_0", "-i", case, "-o", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["BRATS_002.nii.gz", "predict.json"]

    # an existing output is kept without --overwrite, and redone with it
    target = out / "BRATS_002.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 11, 10), np.uint8), np.eye(4)), target)
    res = _cli("-m", run / "fold_0" / "checkpoint_final.pt", "-i", case, "-o", out)
    assert res.exit_code == 0 and "already there" in res.output
    assert not np.asarray(nib.load(target).dataobj).any()
    assert _cli("-m", run, "-i", case, "-o", out, "--overwrite").exit_code == 0
    assert np.asarray(nib.load(target).dataobj).any()


def test_cli_missing_model_and_bad_options(tmp_path, pointwise_registry):
    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "d", "isles22", n_cases=1, shape=(10, 10, 10))
    out = tmp_path / "pred"
    res = _cli("-m", tmp_path / "nope", "-i", root, "-o", out)
    assert res.exit_code == 1
    assert res.output.strip() == f"nmfseg: error: {tmp_path / 'nope'}: no such model " + (
        "(expected a run folder, fold folder or checkpoint)"
    )
    run = _write_run(tmp_path / "run", SCHEMES["isles22"], [_oracle(2, 1)])
    res = _cli("-m", run, "-i", root, "-o", out, "--folds", 0, 4)
    assert res.exit_code == 1 and "no fold_4 (available: fold_0)" in res.output
    res = _cli("-m", run, "-i", tmp_path / "missing", "-o", out)
    assert res.exit_code == 1 and "missing" in res.output
    res = _cli("-m", run, "-i", root, "-o", run / "fold_0" / "checkpoint_final.pt")
    assert res.exit_code == 1 and "exists and is not a folder" in res.output
    broken = tmp_path / "broken" / "fold_0" / "checkpoint_final.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PK\x03\x04 not a checkpoint")
    res = _cli("-m", broken.parent.parent, "-i", root, "-o", out)
    assert res.exit_code == 1 and f"{broken}: cannot load checkpoint" in res.output
    if not torch.cuda.is_available():
        res = _cli("-m", run, "-i", root, "-o", out, "--device", "cuda")
        assert res.exit_code == 1 and "CUDA is not available" in res.output
    assert "Traceback" not in res.output
    assert not out.exists()  # nothing written for an error that concerns every case


def test_cli_wrong_channel_count_names_the_case(tmp_path, pointwise_registry):
    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "isles", "isles22", n_cases=2, shape=(10, 10, 10))
    run = _write_run(tmp_path / "run", SCHEMES["brats2021"], [_oracle(4, 3)])
    res = _cli("-m", run, "-i", root, "-o", tmp_path / "pred")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "sub-strokecase0001 has 2 channels (dwi, adc) but the model expects 4" in lines[0]
    assert not (tmp_path / "pred").exists()


def test_cli_corrupt_case_is_skipped_and_others_written(tmp_path, pointwise_registry):
    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "b21", "brats2021", n_cases=3, shape=(10, 11, 9))
    bad = root / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated download
    run = _write_run(tmp_path / "run", SCHEMES["brats2021"], [_oracle(4, 3)])
    out = tmp_path / "pred"
    res = _cli("-m", run, "-i", root, "-o", out)
    assert res.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "BraTS2021_00000.nii.gz",
        "BraTS2021_00002.nii.gz",
        "predict.json",
    ]
    skipped = [line for line in res.output.splitlines() if "skipped case" in line]
    assert len(skipped) == 1 and "BraTS2021_00001" in skipped[0] and bad.name in skipped[0]
    assert res.output.strip().splitlines()[-1] == (
        "nmfseg: error: 1 of 3 case(s) failed: BraTS2021_00001"
    )
    assert "Traceback" not in res.output


def test_cli_failed_write_leaves_no_partial_output(tmp_path, pointwise_registry, monkeypatch):
    import nibabel as nib

    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "b23", "brats2023", n_cases=2, shape=(10, 10, 10))
    run = _write_run(tmp_path / "run", SCHEMES["brats2023"], [_oracle(4, 3)])
    out = tmp_path / "pred"
    real_save = nib.save

    def flaky_save(img, path):  # the disk fills up half-way through the second output
        if "00001" in str(path):
            with open(path, "wb") as fh:
                fh.write(b"\x1f\x8b partial")
            raise OSError(28, "No space left on device")
        real_save(img, path)

    monkeypatch.setattr(nib, "save", flaky_save)
    res = _cli("-m", run, "-i", root, "-o", out, "--save-probabilities")
    assert res.exit_code == 1 and "No space left on device" in res.output
    # the failed case has no label file, no probabilities and no stray temporary file
    assert sorted(p.name for p in out.iterdir()) == [
        "BraTS-GLI-00000-000.nii.gz",
        "BraTS-GLI-00000-000_probabilities.npz",
        "predict.json",
    ]
    assert _leftovers(out) == []


def test_output_scheme_follows_dataset_or_falls_back_to_model(tmp_path):
    from nmfseg.data.formats import open_dataset
    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    b21 = open_dataset(make_toy_dataset(tmp_path / "b21", "brats2021", 1, (8, 8, 8)))
    nnu = open_dataset(make_toy_dataset(tmp_path / "nnu", "nnunet", 1, (8, 8, 8)))
    msd = SCHEMES["msd_brats"]
    ens = Ensemble([], [], (8, 8, 8), 4, 3, msd.channels, msd.region_names, msd)
    # a BraTS model trained on MSD writes BraTS 2021 labels for a BraTS 2021 dataset
    assert output_scheme(b21, ens) == (SCHEMES["brats2021"], "")
    # regions named differently: the model's own scheme, with a note
    scheme, note = output_scheme(nnu, ens)
    assert scheme is msd and "writing labels in the model's msd_brats scheme" in note
    # nothing to fall back on: a clear error
    ens2 = Ensemble([], [], (8, 8, 8), 4, 2, regions=("a", "b"))
    with pytest.raises(DataError, match=r"predicts 2 region\(s\) \(a, b\) but the brats2021"):
        output_scheme(b21, ens2)


def test_cli_real_factorizer_checkpoint(tmp_path):
    """A real (tiny) Swin Factorizer saved like the trainer saves it, loaded by load_model."""
    import nibabel as nib
    import torch.nn.functional as F

    from nmfseg.data.formats import load_case, open_dataset
    from nmfseg.models import create_model
    from nmfseg.phantoms.toy import make_toy_dataset
    from nmfseg.training.checkpoint import atomic_save

    kwargs = dict(channels=(4, 8, 16), head_dim=4, window_size=2, pos_embed_grid=1, deep_supr_num=1)
    torch.manual_seed(0)
    net = create_model("swin_factorizer_isles", **kwargs)
    root = make_toy_dataset(tmp_path / "isles", "isles22", n_cases=2, shape=(13, 10, 9))
    scheme = open_dataset(root).scheme
    config = {
        "patch_size": [16, 16, 16],
        "dataset": {"scheme": scheme.to_dict(), "channels": ["dwi", "adc"], "regions": ["lesion"]},
        "validation": {"overlap": 0.5, "mode": "gaussian", "sw_batch_size": 1, "threshold": 0.5},
    }
    ckpt = {"model_name": "swin_factorizer_isles", "model_kwargs": kwargs, "config": config}
    atomic_save(
        {**ckpt, "model": net.state_dict()}, tmp_path / "run" / "fold_0" / "checkpoint_final.pt"
    )
    out = tmp_path / "pred"
    res = _cli("-m", tmp_path / "run", "-i", root, "-o", out, "--save-probabilities")
    assert res.exit_code == 0, res.output

    # reference for a volume smaller than the window: zero-pad the z-scored box the way
    # MONAI does (half before, rest after), run the network once, cut the padding off
    net.eval()
    for case in open_dataset(root).cases:
        image = load_case(case).image
        z, inside = _zscored_box(image)
        idx = np.argwhere(inside)
        lo, hi = idx.min(0), idx.max(0) + 1
        box = torch.tensor(z[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=torch.float32)
        pads = [16 - n for n in box.shape[1:]]
        flat = [p for d in reversed(pads) for p in (d // 2, d - d // 2)]
        with torch.no_grad():
            logits = net(F.pad(box[None], flat))[0]
        sl = tuple(slice(d // 2, d // 2 + n) for d, n in zip(pads, box.shape[1:], strict=True))
        ref = np.zeros((1, *image.shape[1:]), np.float32)
        ref[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = torch.sigmoid(logits[(..., *sl)])
        probs = np.load(out / f"{case.case_id}_probabilities.npz")["probabilities"]
        np.testing.assert_allclose(probs, ref, atol=2e-3)  # float16 storage
        labels = np.asarray(nib.load(out / f"{case.case_id}.nii.gz").dataobj)
        assert labels.shape == image.shape[1:]
        clear = np.abs(ref[0] - 0.5) > 1e-4  # an untrained net sits near 0.5: skip ties
        assert clear.mean() > 0.5 and 0 < labels.sum() < labels.size
        np.testing.assert_array_equal(labels[clear], (ref[0] >= 0.5)[clear])


# --------------------------------------------------------------------- settings and sidecar

BAD_OPTIONS = [
    (("--overlap", "1"), "--overlap '1': must be a number in [0, 1)"),
    (("--overlap", "half"), "--overlap 'half': must be a number in [0, 1)"),
    (("--sw-batch-size", "0"), "--sw-batch-size '0': must be an integer >= 1"),
    (("--sw-batch-size", "1.5"), "--sw-batch-size '1.5': must be an integer >= 1"),
    (("--blend", "linear"), "--blend 'linear': must be gaussian or constant"),
    (("--threshold", "0"), "--threshold '0': must be a number in (0, 1)"),
    (("--threshold", "1.5"), "--threshold '1.5': must be a number in (0, 1)"),
    (("--amp", "fp16"), "--amp 'fp16': must be bf16 or none"),
    (("--nmf-layers", "0-x"), "--nmf-layers '0-x': not a layer list (use all, none, first, "
     "last, a range 0-4 or a list 0,3,8)"),
    (("--nmf-iters", "2"), f"--nmf-iters: the network {POINTWISE} has no NMF layers (only "
     "Factorizers do); leave out the --nmf-* options"),
    (("--nmf-solver", "mu"), f"--nmf-solver: the network {POINTWISE} has no NMF layers"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=lambda v: str(v)[:30])
def test_cli_bad_settings_are_one_line_naming_the_option(
    tmp_path, pointwise_registry, options, message
):
    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "d", "isles22", n_cases=1, shape=(10, 10, 10))
    run = _write_run(tmp_path / "run", SCHEMES["isles22"], [_oracle(2, 1)])
    res = _cli("-m", run, "-i", root, "-o", tmp_path / "pred", *options)
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nmfseg: error: {message}"), res.output
    assert not (tmp_path / "pred").exists()


def test_cli_sidecar_records_model_and_settings_and_threshold_applies(tmp_path, pointwise_registry):
    import json

    import nibabel as nib

    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "d", "isles22", n_cases=2, shape=(12, 11, 10))
    run = _write_run(tmp_path / "run", SCHEMES["isles22"], [_oracle(2, 1, gain=1.0)])
    out, strict = tmp_path / "pred", tmp_path / "strict"
    assert _cli("-m", run, "-i", root, "-o", out, "--device", "cpu", "--quiet").exit_code == 0
    res = _cli("-m", run, "-i", root, "-o", strict, "--threshold", "0.8", "--tta", "--quiet")
    assert res.exit_code == 0, res.output
    record = json.loads((out / "predict.json").read_text())
    assert record["model"] == str(run) and record["input"] == str(root.resolve())
    assert record["checkpoints"] == [str((run / "fold_0" / "checkpoint_final.pt").resolve())]
    assert record["output_scheme"] == "isles22"
    assert record["settings"] == {
        "patch_size": [8, 8, 8], "tta": False, "overlap": 0.5, "sw_batch_size": 1,
        "blend": "gaussian", "threshold": 0.5, "amp": "none", "compile": False,
        "nmf_iters": None, "nmf_rank": None, "nmf_solver": None, "nmf_layers": None,
        "postprocess": ["none"],
        "device": "cpu",
    }  # fmt: skip
    settings = json.loads((strict / "predict.json").read_text())["settings"]
    assert settings["threshold"] == 0.8 and settings["tta"] is True
    name = "sub-strokecase0001.nii.gz"
    loose, tight = (np.asarray(nib.load(d / name).dataobj) for d in (out, strict))
    assert tight.sum() < loose.sum() and not (tight & ~loose).any()


# ------------------------------------------------------------ issue 21: predict.json


def test_predict_json_comes_with_the_first_prediction(tmp_path, pointwise_registry):
    """A run that stops before its first case leaves no predict.json to refuse the next run
    with; a predict.json with no predictions beside it (left by older versions) is replaced."""
    import json

    from nmfseg.data.schemes import SCHEMES
    from nmfseg.phantoms.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "d", "isles22", n_cases=2, shape=(10, 10, 10))
    run = _write_run(tmp_path / "run", SCHEMES["isles22"], [_oracle(2, 1)])
    out = tmp_path / "pred"
    broken = tmp_path / "broken"  # every case fails: nothing written, not even predict.json
    broken_root = make_toy_dataset(broken, "isles22", n_cases=1, shape=(10, 10, 10))
    for image in broken_root.rglob("*_dwi.nii.gz"):
        image.write_bytes(b"not a nifti")
    res = _cli("-m", run, "-i", broken_root, "-o", out, "--device", "cpu", "-q")
    assert res.exit_code == 1 and "1 of 1 case(s) failed" in res.output, res.output
    assert not (out / "predict.json").exists()
    stale = {"checkpoints": ["elsewhere.pt"], "settings": {}}
    (out / "predict.json").write_text(json.dumps(stale))  # as an early failure left it
    res = _cli("-m", run, "-i", root, "-o", out, "--device", "cpu", "-q", "--threshold", "0.7")
    assert res.exit_code == 0, res.output
    record = json.loads((out / "predict.json").read_text())
    assert record["settings"]["threshold"] == 0.7 and len(list(out.glob("*.nii.gz"))) == 2
    # the protection stays: predictions of other settings are refused
    res = _cli("-m", run, "-i", root, "-o", out, "--device", "cpu", "-q")
    assert res.exit_code == 1 and "holds predictions made with other settings" in res.output


# ------------------------------------------- issue 21: an .onnx where a run is expected

ONNX_LINE = "an ONNX model (nmfseg export), not a trained run: give the run it was exported from"


@pytest.mark.parametrize(
    "args",
    [
        ("export", "{onnx}", "-o", "{tmp}/m2.onnx"),
        ("explain", "-m", "{onnx}", "-i", "{data}", "-o", "{tmp}/exp"),
        ("ablate", "-m", "{onnx}", "--data", "{data}", "-o", "{tmp}/abl"),
        ("postprocess-search", "-m", "{onnx}", "--data", "{data}"),
        ("postprocess-search", "-m", "{folder}", "--data", "{data}"),
        ("predict", "-m", "{onnx}", "-i", "{data}", "-o", "{tmp}/pred"),
        ("predict", "-m", "{folder}", "-i", "{data}", "-o", "{tmp}/pred"),
        ("api", "Predictor.from_run"),
        ("api", "load_model"),
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_an_onnx_model_where_a_run_is_expected_is_one_line(tmp_path, args):
    """Every verb that loads a run says what an .onnx is and what to give instead."""
    import json

    from nmfseg.errors import DataError
    from nmfseg.phantoms.toy import make_toy_dataset

    data = make_toy_dataset(tmp_path / "d", "isles22", n_cases=2, shape=(10, 10, 10))
    folder = tmp_path / "exported"
    folder.mkdir()
    onnx = folder / "model.onnx"
    onnx.write_bytes(b"an ONNX protobuf")
    source = str(tmp_path / "run" / "fold_0" / "checkpoint_final.pt")
    (folder / "model.json").write_text(json.dumps({"source": {"checkpoint": source}}))
    expected = f"{onnx}: {ONNX_LINE} ({source}), or predict with --engine onnxruntime"
    if args[0] == "api":
        from nmfseg import Predictor, load_model

        with pytest.raises(DataError) as err:
            Predictor.from_run(onnx) if args[1] == "Predictor.from_run" else load_model(onnx)
        assert str(err.value).startswith(expected)
        return
    paths = {"onnx": onnx, "folder": folder, "data": data, "tmp": tmp_path}
    from helpers import cli

    res = cli(*[a.format(**paths) for a in args])
    assert res.exit_code == 1, res.output
    assert res.output.startswith(f"nmfseg: error: {expected}") and res.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "exported"]
