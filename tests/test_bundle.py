"""MONAI bundles (issue #20): ``nmfseg export --format monai-bundle`` writes a bundle that
MONAI's own runner runs to the labels ``nmfseg predict`` writes, with MONAI's inference
properties, the run's own metrics, and the refusals in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import cli, train_tiny
from nmfseg.data.formats import load_case, open_input
from nmfseg.data.normalization import ChannelNorm, Preprocessing
from nmfseg.data.preprocess import preprocess_case
from nmfseg.errors import ConfigError
from nmfseg.export.bundle_config import preprocessing_transforms
from nmfseg.training.checkpoint import atomic_save

pytest.importorskip("ignite", reason="MONAI's evaluator and CheckpointLoader need pytorch-ignite")
pytest.importorskip("fire", reason="python -m monai.bundle run needs fire (nmfseg[bundle])")

MODEL = "swin_factorizer_isles"
AGREEMENT = 0.999  # voxel agreement of MONAI's run with nmfseg predict


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(toy ISLES'22 dataset, run)``: a 2-step tiny Swin Factorizer, fold 1. Its threshold is
    moved to the median probability inside the first case's head, so that its labels are
    half lesion and half background (at 0.5 a 2-step network predicts no lesion at all), and
    many voxels lie near the threshold: a strict test of the agreement."""
    from nmfseg.inference.predictor import Predictor

    root = tmp_path_factory.mktemp("bundle")
    data, run = train_tiny(root)
    path = run / "fold_1" / "checkpoint_final.pt"
    case = load_case(open_input(data).cases[0])
    probs = Predictor.from_run(path, device="cpu").predict_array(case.image, "probabilities")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["validation"]["threshold"] = float(np.median(probs[probs > 0]))
    atomic_save(ckpt, path)
    return data, run


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "bundle"
    result = cli("export", run[1], "--format", "monai-bundle", "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote the MONAI bundle" in result.output and "with TorchScript" in result.output
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------ what is written


def test_bundle_holds_the_runs_settings_channels_regions_and_metrics(run, bundle):
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert names == [
        "configs/inference.json", "configs/logging.conf", "configs/metadata.json",
        "docs/README.md", "models/model.pt", "models/model.ts",
    ]  # fmt: skip
    meta = _json(bundle / "configs" / "metadata.json")
    summary = _json(run[1] / "fold_1" / "validation" / "summary.json")
    assert meta["eval_metrics"] == {
        "val_mean_dice": round(summary["foreground_mean"], 6),
        "val_mean_dice_lesion": round(summary["mean"]["lesion"], 6),
    }
    assert "validation/summary.json" in meta["nmfseg"]["validation"]
    for key in ("version", "monai_version", "pytorch_version", "numpy_version"):
        assert meta[key], key
    assert meta["required_packages_version"]["nmfseg"]
    data_format = meta["network_data_format"]
    assert data_format["inputs"]["image"]["channel_def"] == {"0": "dwi", "1": "adc"}
    assert data_format["outputs"]["pred"]["channel_def"] == {"0": "lesion"}
    assert meta["nmfseg"]["torchscript"].startswith("written")
    config = _json(bundle / "configs" / "inference.json")
    ckpt = torch.load(run[1] / "fold_1" / "checkpoint_final.pt", weights_only=True)
    assert config["network_def"] == {
        "_target_": "nmfseg.create_model", "name": MODEL, **ckpt["model_kwargs"],
    }  # fmt: skip
    inferer = config["inferer"]
    assert (inferer["roi_size"], inferer["overlap"], inferer["mode"]) == ([16, 16, 16], 0.5,
                                                                         "gaussian")  # fmt: skip
    threshold = ckpt["config"]["validation"]["threshold"]
    assert meta["nmfseg"]["threshold"] == threshold
    discrete = [t for t in config["postprocessing"]["transforms"] if "threshold" in t]
    assert discrete[0]["threshold"] == threshold
    readme = (bundle / "docs" / "README.md").read_text()
    assert "pip install 'nmfseg[bundle]'" in readme and "python -m monai.bundle run" in readme


def test_an_existing_folder_is_refused_and_overwrite_replaces_it(run, bundle, tmp_path):
    result = cli("export", run[1], "--format", "monai-bundle", "-o", bundle)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "exists; add --overwrite" in result.output
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = cli("export", run[1], "--format", "monai-bundle", "-o", out, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists() and (out / "configs" / "metadata.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary folder left
    for args, words in [
        (("--nmf-iters", "2"), "--nmf-iters: not with --format monai-bundle"),
        (("--format", "zip"), "--format 'zip': choose onnx or monai-bundle"),
    ]:
        result = cli("export", run[1], "--format", "monai-bundle", "-o", tmp_path / "x", *args)
        assert result.exit_code == 1 and words in result.output, result.output
        assert result.output.strip().count("\n") == 0


def test_a_run_without_validation_gets_no_metrics(tmp_path):
    from nmfseg.models import create_model

    kwargs = {"channels": [4, 8, 16], "deep_supervision": False}
    net = create_model(MODEL, **kwargs)
    config = {"patch_size": [16, 16, 16], "dataset": {"scheme": "isles22", "name": "Toy"}}
    checkpoint = tmp_path / "run" / "fold_0" / "checkpoint_final.pt"
    atomic_save(
        {"model_name": MODEL, "model_kwargs": kwargs, "model": net.state_dict(),
         "config": config},
        checkpoint,
    )  # fmt: skip
    result = cli("export", tmp_path / "run", "--format", "monai-bundle", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    meta = _json(tmp_path / "b" / "configs" / "metadata.json")
    assert "eval_metrics" not in meta
    assert meta["nmfseg"]["validation"].startswith("no validation metrics")
    assert "no validation metrics" in (tmp_path / "b" / "docs" / "README.md").read_text()


# ------------------------------------------------------------------ MONAI's side


def test_monai_finds_every_inference_property_and_what_monai_label_loads(run, bundle):
    """``ConfigWorkflow.check_properties`` for an inference bundle, ``verify_net_in_out``
    (``verify_metadata`` is left out: it downloads the schema), and what MONAI Label's
    ``BundleInferTask`` reads (monailabel/tasks/infer/bundle.py, basic_infer.py):
    configs/inference.json, models/model.pt loaded into ``network_def``, the first input and
    output of ``network_data_format`` (``image``, ``pred``) with ``channel_def``, and the
    config ids ``preprocessing``, ``postprocessing``, ``inferer``, ``device``,
    ``bundle_root`` (a ``Compose`` each where it takes one)."""
    from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose, LoadImaged, SaveImaged

    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.json"), meta_file=str(configs / "metadata.json"),
        logging_file=False, workflow_type="infer", bundle_root=str(bundle),
        dataset_dir=str(run[0]),
    )  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() == []
    assert len(workflow.dataset) == 4
    verify_net_in_out(  # network_data_format against the network (raises if they disagree)
        net_id="network_def", meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"), device="cpu",
    )  # fmt: skip

    meta = _json(configs / "metadata.json")
    data_format = meta["network_data_format"]
    image, pred = (next(iter(data_format[k].items())) for k in ("inputs", "outputs"))
    assert (image[0], pred[0]) == ("image", "pred") and pred[1]["channel_def"]
    assert len(image[1]["spatial_shape"]) == 3
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.config.update({"bundle_root": str(bundle)})
    network = parser.get_parsed_content("network_def", instantiate=True)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    network.load_state_dict(state.get("model", state), strict=True)
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    assert isinstance(pre, Compose) and isinstance(pre.transforms[0], LoadImaged)
    assert isinstance(post, Compose) and isinstance(post.transforms[-1], SaveImaged)
    assert isinstance(parser.get_parsed_content("inferer"), SlidingWindowInferer)
    assert all(k in parser for k in ("device", "bundle_root"))


def test_torchscript_model_computes_what_the_state_dict_computes(bundle):
    from monai.bundle import ConfigParser
    from monai.data import load_net_with_metadata

    ts, meta, extra = load_net_with_metadata(
        str(bundle / "models" / "model.ts"), more_extra_files=("inference.json",)
    )
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "lesion"}
    assert json.loads(extra["inference.json"])["network_def"]["name"] == MODEL
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.randn(1, 2, 20, 13, 9)  # not a multiple of the network's 4: padded inside
    with torch.no_grad():
        assert (ts(x) - network(x)).abs().max() <= 1e-4


def _bundle_preprocess(pre: Preprocessing, image: np.ndarray, spacing) -> np.ndarray:
    """The bundle's preprocessing of ``image (C, *spatial)`` with voxel size ``spacing``."""
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    transforms = [*preprocessing_transforms(pre), {"_target_": "EnsureTyped", "keys": "image"}]
    parser = ConfigParser({"pre": {"_target_": "Compose", "transforms": transforms}})
    compose = parser.get_parsed_content("pre", instantiate=True)
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    out = compose({"image": MetaTensor(torch.from_numpy(image), affine=affine)})["image"]
    return out.as_tensor().numpy()


@pytest.mark.parametrize(
    "norms, spacing",
    [
        ((ChannelNorm("zscore_nonzero"), ChannelNorm("zscore_nonzero")), None),
        ((ChannelNorm("zscore"), ChannelNorm("zscore")), None),
        ((ChannelNorm("ct", lower=-50.0, upper=90.0, mean=20.0, std=30.0),), (1.0, 1.0, 2.0)),
        ((ChannelNorm("none"), ChannelNorm("none")), None),
        ((ChannelNorm("zscore_nonzero"), ChannelNorm("ct", -1.0, 2.0, 0.5, 0.7)), None),
    ],
)
def test_the_bundles_preprocessing_is_nmfsegs(norms, spacing):
    rng = np.random.default_rng(0)
    image = np.zeros((len(norms), 14, 12, 10), np.float32)
    image[:, 3:11, 2:10, 2:9] = rng.normal(40, 30, (len(norms), 8, 8, 7))
    image[0, 5, 5, 5] = 0.0  # a zero inside the box: only zscore_nonzero leaves it
    pre = Preprocessing(norms, target_spacing=(1.0, 1.0, 1.0) if spacing else None)
    expected, _, _ = preprocess_case(image, spacing=spacing or (1.0,) * 3, preprocessing=pre)
    got = _bundle_preprocess(pre, image, spacing or (1.0, 1.0, 1.0))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


def test_a_transposed_preprocessing_is_refused_in_one_line():
    pre = Preprocessing((ChannelNorm("zscore_nonzero"),), transpose=(2, 1, 0))
    with pytest.raises(ConfigError, match=r"transposes the image axes \(\[2, 1, 0\]"):
        preprocessing_transforms(pre)


# ------------------------------------------------------------------ MONAI's runner


def _labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def _agree(ours: Path, theirs: Path) -> float:
    (a, affine_a), (b, affine_b) = _labels(ours), _labels(theirs)
    assert a.shape == b.shape, (ours.name, a.shape, b.shape)
    np.testing.assert_allclose(affine_a, affine_b, atol=1e-5)
    return float((a == b).mean())


@pytest.fixture(scope="module")
def predicted(run, tmp_path_factory):
    """``nmfseg predict`` of the toy cases (TTA off, the run's overlap and threshold)."""
    out = tmp_path_factory.mktemp("nmfseg_predict")
    result = cli("predict", "-m", run[1], "-i", run[0], "-o", out, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    labels = [np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*.nii.gz"))]
    assert len(labels) == 4
    assert all(set(np.unique(y)) == {0, 1} for y in labels)  # both labels: a real comparison
    return out


@pytest.mark.slow
def test_monais_runner_writes_what_nmfseg_predict_writes(run, bundle, predicted, tmp_path):
    configs = bundle / "configs"
    out = tmp_path / "monai"
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", configs / "inference.json", "--meta_file", configs / "metadata.json",
        "--logging_file", configs / "logging.conf", "--bundle_root", bundle,
        "--dataset_dir", run[0], "--output_dir", out,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(c) for c in command], cwd=bundle, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for ours in sorted(predicted.glob("*.nii.gz")):
        case = ours.name.removesuffix(".nii.gz")
        theirs = out / f"{case}_ses-0001_dwi_seg.nii.gz"
        assert _agree(ours, theirs) >= AGREEMENT, case


@pytest.mark.slow
def test_4d_files_in_a_plain_folder_give_the_same_labels(run, bundle, predicted, tmp_path):
    """The other input: each case one 4D file (channels last) in a folder of NIfTI files."""
    from monai.bundle import ConfigWorkflow

    folder = tmp_path / "images"
    folder.mkdir()
    for case in open_input(run[0]).cases[:2]:
        data = load_case(case)
        image = nib.Nifti1Image(np.moveaxis(data.image, 0, -1), data.affine)
        nib.save(image, folder / f"{case.case_id}.nii.gz")
    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.json"), meta_file=str(configs / "metadata.json"),
        logging_file=False, workflow_type="infer", bundle_root=str(bundle),
        dataset_dir=str(folder), output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    written = sorted((tmp_path / "out").glob("*_seg.nii.gz"))
    assert len(written) == 2
    for theirs in written:
        case = theirs.name.removesuffix("_seg.nii.gz")
        assert _agree(predicted / f"{case}.nii.gz", theirs) >= AGREEMENT, case
