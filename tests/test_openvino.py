"""The OpenVINO engine (issue #22): ``predict --engine openvino`` predicts what onnxruntime and
PyTorch predict from the same exported model, bf16 stays close, refusals are one line.

The tests run in a process of their own (:func:`test_in_a_process_of_its_own` runs this file
again): OpenVINO's thread pool stays in the process that loaded it, and an xdist worker that
goes on to later test files with it loaded was seen to hang.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import cli
from nmfseg.mixers.nmf import set_nmf
from nmfseg.models import create_model
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training.checkpoint import atomic_save

if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip("needs openvino and onnxruntime", allow_module_level=True)  # not imported here

CHILD = "NMFSEG_OPENVINO_TESTS"
in_child = pytest.mark.skipif(os.environ.get(CHILD) != "1", reason="runs in its own process")


@pytest.mark.skipif(os.environ.get(CHILD) == "1", reason="the parent")
def test_in_a_process_of_its_own():
    tests = Path(__file__).parent
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "-p", "no:randomly", str(Path(__file__))]  # fmt: skip
    run = subprocess.run(cmd, cwd=tests.parent, env={**os.environ, CHILD: "1"},
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


MODEL = "swin_factorizer_isles"
KWARGS = dict(channels=(4, 8, 16), deep_supervision=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A one-fold run, its network (3 NMF iterations) and its export."""
    root = tmp_path_factory.mktemp("openvino")
    torch.manual_seed(0)
    net = create_model(MODEL, **KWARGS)
    atomic_save(
        {"model_name": MODEL, "model_kwargs": KWARGS, "model": net.state_dict(),
         "config": {"patch_size": [16, 16, 16], "dataset": {"scheme": "isles22"}}},
        root / "run" / "fold_0" / "checkpoint_final.pt",
    )  # fmt: skip
    result = cli("export", "-r", root / "run", "-o", root / "out" / "model.onnx", "--nmf-iters", 3)
    assert result.exit_code == 0, result.output
    set_nmf(net, iters=3)
    return root / "run", net.eval(), root / "out" / "model.onnx"


def _image() -> np.ndarray:
    image = np.zeros((2, 20, 18, 16), np.float32)
    image[:, 2:17, 3:15, 2:14] = np.random.default_rng(3).random((2, 15, 12, 12)) + 1
    return image


@in_child
def test_openvino_predicts_what_onnxruntime_and_torch_predict(exported, tmp_path):
    _, _, path = exported
    data = make_toy_dataset(tmp_path / "toy", "isles22", n_cases=2, shape=(20, 18, 16), seed=1)
    common = ["-i", data, "--tta", "--quiet"]
    ort = cli("predict", "--engine", "onnxruntime", "-r", path, "-o", tmp_path / "ort", *common)
    ov = cli("predict", "--engine", "openvino", "-r", path.parent, "-o", tmp_path / "ov", *common)
    assert ort.exit_code == 0 and ov.exit_code == 0, ov.output
    files = sorted((tmp_path / "ort").glob("*.nii.gz"))
    assert len(files) == 2
    for f in files:
        expected = np.asarray(nib.load(f).dataobj)
        assert np.array_equal(np.asarray(nib.load(tmp_path / "ov" / f.name).dataobj), expected)


@in_child
def test_the_openvino_extra_is_enough_without_onnx_or_onnxruntime(exported, monkeypatch):
    """``nmfseg[openvino]`` installs OpenVINO alone: its engine reads the ``.onnx`` file and the
    metadata with OpenVINO's own ONNX front end."""
    from nmfseg.export.openvino import load_openvino_ensemble

    for name in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    _, net, path = exported
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_openvino_ensemble(path).models[0](x), net(x),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip


@in_child
def test_float32_and_bf16_probabilities(exported):
    from nmfseg.export.openvino import OpenVinoNetwork, load_openvino_ensemble
    from nmfseg.inference.predictor import Predictor

    run, _, path = exported
    image = _image()
    ref = Predictor.from_run(run, folds=[0], device="cpu", nmf_iters=3)
    expected = ref.predict_array(image, "probabilities")
    f32 = Predictor(load_openvino_ensemble(path)).predict_array(image, "probabilities")
    assert np.abs(f32 - expected).max() <= 1e-4
    assert expected.min() < 0.5 < expected.max()  # not trivial
    bf16 = Predictor(load_openvino_ensemble(path, amp="bf16"), amp="bf16")
    probs = bf16.predict_array(image, "probabilities")
    net = bf16.ensemble.models[0]
    assert isinstance(net, OpenVinoNetwork) and net.precision == "bf16"
    assert np.abs(probs - expected).max() <= 0.05
    assert ((probs > 0.5) == (expected > 0.5)).mean() >= 0.99
    assert len(net._compiled) == 1  # one window shape: compiled once


@in_child
def test_a_window_of_another_shape_is_compiled_for_it(exported):
    from nmfseg.export.openvino import load_openvino_ensemble

    _, net, path = exported
    ov_net = load_openvino_ensemble(path).models[0]
    for shape in [(1, 2, 16, 16, 16), (2, 2, 12, 9, 20)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(ov_net(x), net(x), rtol=1e-4, atol=1e-4)
    assert sorted(ov_net._compiled) == [(1, 2, 16, 16, 16), (2, 2, 12, 9, 20)]


@in_child
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--device", "cuda:0"], "--device cuda:0: the openvino engine runs on the CPU"),
        (["--nmf-iters", "2"], "--nmf-iters: the NMF settings of an ONNX model are fixed"),
        (["--folds", "1"], "--folds: an ONNX model holds one fold"),
        (["--compile"], "--compile: only with --engine torch"),
    ],
)
def test_bad_requests_are_one_line(exported, tmp_path, args, words):
    _, _, path = exported
    result = cli("predict", "--engine", "openvino", "-r", path, "-i", tmp_path, "-o",
                 tmp_path / "pred", *args)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.startswith("nmfseg: error: ") and result.output.count("\n") == 1
    assert words in result.output
    assert not (tmp_path / "pred").exists()


@in_child
def test_without_openvino_one_line_names_the_extra(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails
    _, _, path = exported
    out = tmp_path / "p"
    result = cli("predict", "--engine", "openvino", "-r", path, "-i", tmp_path, "-o", out)
    assert result.exit_code == 1
    assert result.output == (
        "nmfseg: error: --engine openvino needs the optional dependencies: "
        "pip install 'nmfseg[openvino]'\n"
    )


@in_child
def test_a_file_openvino_cannot_parse_is_one_line_on_stderr(tmp_path):
    """Only OpenVINO's ONNX reader sees the file: the other front ends' parsers would log to
    the process's own stderr, past any capture, before the error line."""
    bad = tmp_path / "model.onnx"
    bad.write_text("not a model\n")
    run = subprocess.run(
        [sys.executable, "-m", "nmfseg", "predict", "--engine", "openvino", "-r", str(bad),
         "-i", str(tmp_path), "-o", str(tmp_path / "pred")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(f"nmfseg: error: {bad}: OpenVINO cannot read this model (")
    assert run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "pred").exists()


@in_child
def test_the_openvino_profile_sums_node_times_per_type(tmp_path):
    """``benchmarks/profile_engines.py``: OpenVINO's per-node counters summed per node type for
    the three networks of ``bench_engines``; the shares of each network add up to 100 %."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("profile_engines")
    bench.main(["--tables", "openvino", "--size", "16", "--repeats", "1", "--channels",
                "8,16,32,64,128", "--out", str(tmp_path)])  # fmt: skip
    report = (tmp_path / "profile_engines.md").read_text()
    for name in ("swin_factorizer_brats", "factorizer_brats_no_nmf", "segresnet_brats"):
        assert f"**{name}**: wall-clock" in report
    rows = [line.split("|") for line in report.splitlines() if line.endswith(" % |")]
    shares = [float(r[3].strip(" %")) for r in rows]
    assert abs(sum(shares) - 300) < 1.7  # three networks, each row rounded to 0.1 %
    assert "| Convolution |" in report and "| MVN |" in report  # convolutions, norms
