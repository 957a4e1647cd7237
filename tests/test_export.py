"""ONNX export and the onnxruntime engine (issue #11): the export form equals the network, an
exported model runs at other sizes and predicts what PyTorch predicts, refusals are one line."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import cli, preset_size, small_model
from nmfseg.export.onnx import EXTRA_HINT, METADATA_KEY
from nmfseg.export.traceable import TracedMatricize
from nmfseg.mixers.nmf import set_nmf
from nmfseg.models import create_model, list_models
from nmfseg.nmf import SWMatricize
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training.checkpoint import atomic_save

MODEL = "swin_factorizer_isles"
KWARGS = dict(channels=(4, 8, 16), deep_supervision=False)  # size_multiple 4, window 4
PATCH = [16, 16, 16]
# Sizes that clamp, pad and shift the windows differently at every level, batch 1 and 2.
SIZES = [(1, 16, 16, 16), (2, 12, 9, 20), (1, 5, 7, 3), (1, 32, 24, 8)]


def _save_run(root, name=MODEL, kwargs=None, folds=(0,)):
    torch.manual_seed(0)
    kwargs = KWARGS if kwargs is None else kwargs
    net = create_model(name, **kwargs)
    config = {"patch_size": PATCH, "dataset": {"scheme": "isles22"}}
    for k in folds:
        atomic_save(
            {
                "model_name": name,
                "model_kwargs": kwargs,
                "model": net.state_dict(),
                "config": config,
            },
            root / f"fold_{k}" / "checkpoint_final.pt",
        )
    return root, net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny two-fold run, its fold_0 network, and fold_0 exported with 3 NMF iterations."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("export")
    run, net = _save_run(root / "run", folds=(0, 1))
    result = cli("export", run, "-o", root / "out" / "model.onnx", "--nmf-iters", 3)
    assert result.exit_code == 0, result.output
    set_nmf(net, iters=3)
    return run, net, root / "out" / "model.onnx", result.output


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _providers():
    import onnxruntime as ort

    return ort.get_available_providers()


# ------------------------------------------------------------------ the export form


def test_traced_matricize_matches_swin_matricize_and_inverts_it():
    sw = SWMatricize(head_dim=2, window_size=(4, 3, 8))
    traced = TracedMatricize(sw)
    x = torch.randn(2, 4, 9, 3, 5)
    z = traced(x)
    assert torch.equal(z, sw(x))
    assert torch.equal(traced.inverse(z, traced.geometry(x.shape)), x)


# ------------------------------------------------------------------ nmfseg export


@pytest.mark.slow
def test_export_writes_a_verified_model_that_runs_at_other_sizes(exported):
    _, net, path, output = exported
    assert "exporting fold_0" in output and "wrote" in output
    sidecar = json.loads(path.with_suffix(".json").read_text())
    meta = _session(path).get_modelmeta().custom_metadata_map[METADATA_KEY]
    assert json.loads(meta) == sidecar
    assert sidecar["patch_size"] == PATCH and sidecar["output"]["regions"] == ["lesion"]
    assert sidecar["nmf"] == {"iters": 3, "rank": 1, "solver": "hals", "layers": "all"}
    assert sidecar["source"]["fold"] == "fold_0" and sidecar["scheme"]["name"] == "isles22"
    assert [v["shape"] for v in sidecar["verified"]] == [[1, 2, 32, 32, 32], [2, 2, 48, 32, 40]]
    assert all(v["max_abs_diff"] <= 1e-4 for v in sidecar["verified"])
    session = _session(path)
    torch.manual_seed(2)
    for batch, *spatial in SIZES:
        x = torch.randn(batch, 2, *spatial)
        got = session.run(["logits"], {"image": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - net(x).numpy()).max() <= 1e-4, spatial


@pytest.mark.slow
def test_export_bakes_in_the_nmf_layers_and_picks_the_fold(exported, tmp_path):
    run, _, _, _ = exported
    out = tmp_path / "m.onnx"
    result = cli("export", run, "-o", out, "--fold", 1, "--nmf-layers", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1  # --quiet: only the summary
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["source"]["fold"] == "fold_1" and meta["nmf"]["layers"] == [0]
    net = _save_run(tmp_path / "again")[1]
    set_nmf(net, enabled=[0])
    x = torch.randn(1, 2, 12, 16, 8)
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(_session(out).run(None, {"image": x.numpy()})[0] - expected).max() <= 1e-4


def _pair(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.slow
def test_an_existing_model_is_replaced_only_with_overwrite(exported, tmp_path):
    run, _, _, _ = exported
    out = tmp_path / "m.onnx"
    assert cli("export", run, "-o", out, "-f", 0, "--quiet").exit_code == 0
    before = _pair(tmp_path)
    refused = cli("export", run, "-o", out, "-f", 0, "--nmf-iters", 1, "--quiet")
    assert refused.exit_code == 1 and refused.output == (
        f"nmfseg: error: {out}: exists; add --overwrite to replace the model and its .json\n"
    )
    assert _pair(tmp_path) == before
    replaced = cli("export", run, "-o", out, "-f", 0, "--nmf-iters", 1, "-q", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(out.with_suffix(".json").read_text())["nmf"]["iters"] == 1


#: A write that fails while the pair is written: (what fails, the file it hits, the line).
FAILURES = [
    ("fsync", ".onnx", r"m\.onnx: No space left on device: the file needs about [\d.]+ [KM]B; "
                       r"[\d.]+ [KMG]B free; the previous file is kept$"),
    ("fsync", ".json", r"m\.json: No space left on device: the file needs about [\d.]+ KB; "
                       r"[\d.]+ [KMG]B free; the previous file is kept$"),
    ("rename", ".json", r"m\.json: cannot write the file: .*: Permission denied$"),
    ("write", ".json", r"m\.json: No space left on device: the file needs about [\d.]+ KB; "),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("step", "ending", "line"), FAILURES)
def test_the_pair_appears_together_or_not_at_all(exported, tmp_path, monkeypatch, step, ending,
                                                 line):  # fmt: skip
    """A failure on either file leaves the previous pair as it was, names the final file
    (never a temporary one) and leaves no temporary file."""
    import errno
    import os
    import re
    from pathlib import Path

    import nmfseg.fileio as fileio

    run, _, _, _ = exported
    out = tmp_path / "m.onnx"
    assert cli("export", run, "-o", out, "--fold", 0, "--quiet").exit_code == 0
    before = _pair(tmp_path)

    def hits(path) -> bool:
        return Path(path).name.endswith(ending) and Path(path).name.startswith(".tmp-")

    real_fsync, real_replace, real_write = fileio._fsync, os.replace, Path.write_bytes

    def fsync(path):
        if step == "fsync" and hits(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    def replace(src, dst):
        if step == "rename" and hits(src):
            raise PermissionError(errno.EACCES, "Permission denied", str(src), str(dst))
        real_replace(src, dst)

    def write_bytes(self, data):
        if step == "write" and hits(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(fileio, "_fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    result = cli("export", run, "-o", out, "-f", 0, "--nmf-iters", 1, "-q", "--overwrite")
    monkeypatch.undo()
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert re.search(line, result.output.strip()), result.output
    assert ".tmp-" not in result.output
    assert _pair(tmp_path) == before  # the previous model and sidecar, byte for byte


@pytest.mark.slow
def test_a_tolerance_below_rounding_says_what_was_measured(exported, tmp_path):
    run, _, _, _ = exported
    result = cli("export", run, "-o", tmp_path / "m.onnx", "-f", 0, "--tolerance", "1e-30", "-q")
    assert result.exit_code == 1
    assert "float32 rounding" in result.output and "fixed a size" not in result.output
    assert "above --tolerance 1e-30" in result.output and not list(tmp_path.iterdir())


# ------------------------------------------------------------------ predict --engine


@pytest.mark.slow
def test_onnxruntime_predicts_what_torch_predicts(exported, tmp_path):
    from nmfseg.export.runtime import load_onnx_ensemble
    from nmfseg.inference.predictor import Predictor

    run, _, path, _ = exported
    data = make_toy_dataset(tmp_path / "toy", "isles22", n_cases=2, shape=(20, 18, 16), seed=1)
    common = ["-i", data, "--tta", "--quiet"]
    torch_run = cli("predict", "-m", run, "-f", 0, "--nmf-iters", 3, "-o", tmp_path / "pt", *common)
    onnx_run = cli("predict", "--engine", "onnxruntime", "-m", path.parent, "-o", tmp_path / "ox",
                   *common)  # fmt: skip
    assert torch_run.exit_code == 0 and onnx_run.exit_code == 0, onnx_run.output
    files = sorted((tmp_path / "pt").glob("*.nii.gz"))
    assert len(files) == 2
    for f in files:
        expected = np.asarray(nib.load(f).dataobj)
        assert np.array_equal(np.asarray(nib.load(tmp_path / "ox" / f.name).dataobj), expected)
    record = json.loads((tmp_path / "ox" / "predict.json").read_text())
    assert record["checkpoints"] == [str(path.resolve())] and record["settings"]["nmf_iters"] == 3
    image = np.zeros((2, 20, 18, 16), np.float32)
    image[:, 2:17, 3:15, 2:14] = np.random.default_rng(3).random((2, 15, 12, 12)) + 1
    for tta in (False, True):
        ref = Predictor.from_run(run, folds=[0], device="cpu", nmf_iters=3, tta=tta)
        ort = Predictor(load_onnx_ensemble(path), tta=tta)
        probs = ort.predict_array(image, "probabilities")
        assert np.abs(probs - ref.predict_array(image, "probabilities")).max() <= 1e-4
        assert probs.min() < 0.5 < probs.max()  # the labels compared above are not trivial


# ------------------------------------------------------------------ one-line refusals


@pytest.mark.parametrize(
    "args",
    [["export", "RUN", "-o", "m.onnx"], ["predict", "--engine", "onnxruntime", "-m", "m.onnx"]],
)
def test_missing_optional_dependencies_are_one_line(monkeypatch, tmp_path, args):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    args = [a if a != "RUN" else tmp_path for a in args]
    result = cli(*args, "-i", tmp_path, "-o", tmp_path / "out") if "predict" in args else cli(*args)
    assert result.exit_code == 1
    assert result.output == f"nmfseg: error: {EXTRA_HINT}\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, words",
    [
        (["export", "RUN", "-o", "OUT/m.txt"], "ends in .onnx"),
        (["export", "RUN", "-o", "OUT/m.onnx", "--fold", "x"], "--fold 'x'"),
        (["export", "RUN", "-o", "OUT/m.onnx", "--opset", "new"], "--opset 'new'"),
        (["export", "RUN", "-o", "OUT/m.onnx", "--opset", 9], "from 11 to 20"),
        (["export", "RUN", "-o", "OUT/m.onnx", "--fold", 3], "no fold_3"),
        (["predict", "--engine", "onnxruntime", "--nmf-iters", 2], "--nmf-iters: the NMF"),
        (["predict", "--engine", "onnxruntime", "--amp", "bf16"], "--amp bf16: not with"),
        (["predict", "--engine", "onnxruntime", "--folds", 1], "--folds: an ONNX model"),
        (["predict", "--engine", "cuda"], "--engine 'cuda'"),
        (["predict", "--engine", "onnxruntime", "--device", "cuda:0"], "--device cuda:0"),
        (["predict", "-m", "OUT/model.onnx"], "predict with --engine onnxruntime"),
        (["predict", "--engine", "onnxruntime", "-m", "RUN"], "holds no .onnx file"),
    ],
)
def test_bad_requests_are_one_line(exported, tmp_path, args, words):
    run, _, path, _ = exported
    if "--device" in args and "CUDAExecutionProvider" in _providers():
        pytest.skip("this onnxruntime has CUDA")
    subs = {"RUN": str(run), "OUT/m.txt": str(tmp_path / "m.txt"),
            "OUT/m.onnx": str(tmp_path / "m.onnx"), "OUT/model.onnx": str(path)}  # fmt: skip
    args = [subs.get(a, a) if isinstance(a, str) else a for a in args]
    if args[0] == "predict":
        if "-m" not in args:
            args += ["-m", str(path)]
        args += ["-i", str(tmp_path), "-o", str(tmp_path / "pred")]
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("nmfseg: error: ") and result.output.count("\n") == 1
    assert words in result.output
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pred").exists()


def test_an_operator_without_onnx_translation_is_named():
    from nmfseg.errors import NmfsegError
    from nmfseg.export.onnx import network_to_onnx

    class Spectrum(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fftn(x).real

    with pytest.raises(NmfsegError, match=r"^cannot translate Spectrum to ONNX: .*aten::fft_fftn"):
        network_to_onnx(Spectrum(), torch.randn(2, 1, 4, 4, 4))


@pytest.mark.slow
def test_a_network_whose_trace_fixes_the_size_is_refused_naming_the_line(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    kwargs = dict(feature_size=12, num_heads=(1, 2, 4, 8))  # tests/helpers.py SMALL
    run, _ = _save_run(tmp_path / "run", "nnformer_isles", kwargs)
    result = cli("export", run, "-o", tmp_path / "m.onnx", "--quiet")
    assert result.exit_code == 1
    assert result.output.startswith("nmfseg: error: nnformer_isles cannot be exported for any ")
    assert "nmfseg/mixers/attention.py:" in result.output
    assert result.output.count("\n") == 1 and not list(tmp_path.glob("m.*"))


# ------------------------------------------------------------------ which networks export

#: The registered networks whose trace fixes the input size (a Python branch on a shape).
NOT_EXPORTABLE = ("nnformer_*", "swin_unetr_*")
#: The greedy NMF stops a window at a threshold of its residual: rounding can change a rank
#: chosen near the threshold, and with it the output by more than rounding.
TOLERANCE = {"local_greedy_factorizer_*": 1e-3}


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_which_registered_networks_export(name):
    import fnmatch

    from nmfseg.errors import NmfsegError
    from nmfseg.export.onnx import CHECK_SHAPES, network_to_onnx, verify_onnx

    pytest.importorskip("onnxruntime")
    net = small_model(name).eval()
    m, c = net.size_multiple, net.in_channels
    spatial = preset_size(name, (2 * m, 3 * m, 2 * m))
    onnx_bytes, fixed = network_to_onnx(net, torch.randn(2, c, *spatial))
    shapes = [(s[0], c, *s[1 : 1 + len(spatial)]) for s in CHECK_SHAPES]
    if any(fnmatch.fnmatch(name, p) for p in NOT_EXPORTABLE):
        with pytest.raises(NmfsegError, match="cannot be exported for any input size"):
            verify_onnx(onnx_bytes, net, shapes, fixed=fixed)
    else:
        tol = next((t for p, t in TOLERANCE.items() if fnmatch.fnmatch(name, p)), 1e-4)
        checked = verify_onnx(onnx_bytes, net, shapes, tolerance=tol, fixed=fixed)
        assert max(d for _, d in checked) <= tol
