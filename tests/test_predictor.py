"""The Python inference API (nmfseg.Predictor) and predict's switches, on a tiny trained model.

One tiny Swin Factorizer (3 levels, 5 NMF layers) is trained for 2 steps once per module;
every test predicts with it, through ``nmfseg predict`` and through the Predictor.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import nmfseg
from helpers import cli, train_tiny
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.errors import ConfigError

pytestmark = pytest.mark.slow

MODEL = "swin_factorizer_isles"
RANK_LIMIT = (
    "at most 4: its matrices have head_dim=4 rows and 64 columns (a 4x4x4 window), and a rank "
    "above min(rows, columns) of a matrix cannot describe it better"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(dataset folder, run folder)`` of a 2-step Swin Factorizer on 4 toy ISLES'22 cases."""
    return train_tiny(tmp_path_factory.mktemp("predictor"))


def _predict(run, data, out, *options):
    return cli("predict", "-m", run, "-i", data, "-o", out, "--device", "cpu", "-q", *options)


def _labels(path):
    return np.asarray(nib.load(path).dataobj)


def test_python_api_gives_the_cli_labels_bit_for_bit(trained, tmp_path):
    data, run = trained
    cases = open_dataset(data).cases
    first = load_case(cases[0]).image
    probs = nmfseg.Predictor.from_run(run, device="cpu").predict_array(first, "probabilities")
    # a threshold inside the range of this barely trained network, so labels are not empty
    threshold = f"{float(np.median(probs[probs > 0])):.6f}"
    assert _predict(run, data, tmp_path / "cli", "--threshold", threshold).exit_code == 0

    p = nmfseg.Predictor.from_run(run, device="cpu", threshold=threshold)
    some = False
    for case in cases:
        expected = _labels(tmp_path / "cli" / f"{case.case_id}.nii.gz")
        some |= 0 < expected.sum() < expected.size
        image = load_case(case).image
        np.testing.assert_array_equal(p.predict_array(image), expected)
        from_disk = p.predict_case(data / case.case_id)
        np.testing.assert_array_equal(np.asarray(from_disk.dataobj), expected)
        in_memory = p.predict_nifti([nib.load(f) for f in case.image_paths])
        np.testing.assert_array_equal(np.asarray(in_memory.dataobj), expected)
        np.testing.assert_allclose(in_memory.affine, nib.load(case.image_paths[0]).affine)
    assert some
    # a tensor comes back as a tensor, a 4D image (channels last) as a label image
    import torch

    tensor = p.predict_array(torch.from_numpy(first), output="regions")
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, *first.shape[1:])
    four_d = nib.Nifti1Image(np.moveaxis(first, 0, -1), np.eye(4))
    np.testing.assert_array_equal(np.asarray(p.predict_nifti(four_d).dataobj), tensor[0].numpy())


@pytest.mark.parametrize(
    ("options", "recorded"),
    [
        (("--nmf-iters", "1"), {"nmf_iters": 1}),
        (("--nmf-rank", "2", "--nmf-solver", "mu"), {"nmf_rank": 2, "nmf_solver": "mu"}),
        (("--nmf-layers", "none"), {"nmf_layers": []}),
        (("--nmf-layers", "0-2,4"), {"nmf_layers": [0, 1, 2, 4]}),
    ],
    ids=["iters", "rank-mu", "no-nmf", "layers"],
)
def test_nmf_switches_take_effect_through_predict(trained, tmp_path, options, recorded):
    data, run = trained
    assert _predict(run, data, tmp_path / "plain", "--save-probabilities").exit_code == 0
    res = _predict(run, data, tmp_path / "switched", "--save-probabilities", *options)
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "switched" / "predict.json").read_text())
    assert {k: sidecar["settings"][k] for k in recorded} == recorded
    assert sidecar["checkpoints"] == [str((run / "fold_1" / "checkpoint_final.pt").resolve())]

    case = open_dataset(data).cases[0]
    name = f"{case.case_id}_probabilities.npz"
    plain = np.load(tmp_path / "plain" / name)["probabilities"].astype(np.float32)
    switched = np.load(tmp_path / "switched" / name)["probabilities"].astype(np.float32)
    assert np.abs(plain - switched).max() > 1e-3  # the switch changed the network's output
    # and the Python API with the same switches gives the same probabilities
    keys = {"--nmf-iters": "nmf_iters", "--nmf-rank": "nmf_rank", "--nmf-solver": "nmf_solver",
            "--nmf-layers": "nmf_layers"}  # fmt: skip
    kwargs = {keys[options[i]]: options[i + 1] for i in range(0, len(options), 2)}
    p = nmfseg.Predictor.from_run(run, device="cpu", **kwargs)
    api = p.predict_array(load_case(case).image, output="probabilities")
    np.testing.assert_allclose(switched, api, atol=1e-3)  # float16 on disk


def test_window_options_take_effect_and_are_recorded(trained, tmp_path):
    data, run = trained
    options = ("--overlap", "0.25", "--blend", "constant", "--sw-batch-size", "3")
    res = _predict(run, data, tmp_path / "out", "--save-probabilities", *options)
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "out" / "predict.json").read_text())["settings"]
    assert (settings["overlap"], settings["blend"], settings["sw_batch_size"]) == (
        0.25,
        "constant",
        3,
    )
    assert settings["patch_size"] == [16, 16, 16] and settings["amp"] == "none"

    p = nmfseg.Predictor.from_run(run, device="cpu")
    case = open_dataset(data).cases[0]
    image = load_case(case).image
    default = p.predict_array(image, output="probabilities")
    p.configure(overlap=0.25, blend="constant", sw_batch_size=3)
    direct = p.predict_array(image, output="probabilities")
    saved = np.load(tmp_path / "out" / f"{case.case_id}_probabilities.npz")["probabilities"]
    np.testing.assert_allclose(saved.astype(np.float32), direct, atol=1e-3)
    assert np.abs(default - direct).max() > 1e-4  # not what the run's defaults give


def test_amp_bf16_is_close_to_float32(trained):
    data, run = trained
    image = load_case(open_dataset(data).cases[0]).image
    fp32 = nmfseg.Predictor.from_run(run, device="cpu").predict_array(image, "probabilities")
    p = nmfseg.Predictor.from_run(run, device="cpu", amp="bf16")
    assert p.resolved_settings()["amp"] == "bf16"
    np.testing.assert_allclose(p.predict_array(image, "probabilities"), fp32, atol=0.05)


def test_configure_starts_from_the_trained_settings(trained):
    _, run = trained
    p = nmfseg.Predictor.from_run(run, device="cpu", nmf_iters=1, nmf_layers="0,1")
    assert (p.resolved_settings()["nmf_iters"], p.resolved_settings()["nmf_layers"]) == (1, [0, 1])
    p.configure(nmf_iters=None, nmf_layers=None, nmf_rank=3)
    described = p.resolved_settings()
    assert (described["nmf_iters"], described["nmf_rank"], described["nmf_layers"]) == (5, 3, "all")
    with pytest.raises(ConfigError, match=r"--nmf-layers '5': there is no NMF layer 5; the model "):
        p.configure(nmf_layers="5")


def test_a_folder_of_other_settings_is_refused_without_overwrite(trained, tmp_path):
    data, run = trained
    out = tmp_path / "pred"
    assert _predict(run, data, out).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = _predict(run, data, out, "--nmf-iters", "2")
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"nmfseg: error: {out} holds predictions made with other settings (nmf_iters 5 in "
        "predict.json); pass --overwrite to replace them, or choose another -o"
    ]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    again = _predict(run, data, out)  # the same settings: an interrupted run resumes
    assert again.exit_code == 0 and "4 already there" in again.output
    assert _predict(run, data, out, "--nmf-iters", "2", "--overwrite").exit_code == 0
    assert json.loads((out / "predict.json").read_text())["settings"]["nmf_iters"] == 2


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--nmf-layers", "5", "--nmf-layers '5': there is no NMF layer 5; the model has 5 (0-4)"),
        ("--nmf-layers", "3-1", "--nmf-layers '3-1': the range 3-1 is empty"),
        ("--nmf-layers", "bridge", "--nmf-layers 'bridge': not a layer list (use all, none, "),
        ("--nmf-iters", "-1", "--nmf-iters '-1': must be an integer >= 0"),
        ("--nmf-rank", "1.5", "--nmf-rank '1.5': must be an integer >= 1"),
        ("--nmf-solver", "als", "--nmf-solver 'als': must be hals or mu"),
        ("--amp", "fp16", "--amp 'fp16': must be bf16 or none"),
        # issue 21: the rank is bounded by the matrices (head_dim=4 rows, 4x4x4 windows)
        ("--nmf-rank", "5", f"--nmf-rank 5: {MODEL} allows {RANK_LIMIT}$"),
        ("--nmf-rank", "5000", f"--nmf-rank 5000: {MODEL} allows {RANK_LIMIT}$"),
    ],
)
def test_bad_switches_are_one_line_and_write_nothing(trained, tmp_path, option, value, message):
    data, run = trained
    res = _predict(run, data, tmp_path / "pred", option, value)
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    if message.endswith("$"):
        assert lines[0] == f"nmfseg: error: {message[:-1]}"
    else:
        assert lines[0].startswith(f"nmfseg: error: {message}"), res.output
    assert not (tmp_path / "pred").exists()


# issue 21: what the Python API is given, checked before any work, in one line.
API_CASES = [
    # (what, image, the DataError's line)
    ("empty", np.zeros((2, 0, 9, 8), np.float32), "image: is empty (shape (2, 0, 9, 8)); "),
    ("no channel", np.zeros((0, 9, 9, 8)), "image: is empty (shape (0, 9, 9, 8)); "),
    ("complex", np.ones((2, 9, 9, 8), np.complex64), "image: has complex values (complex64); "),
    ("text", np.full((2, 4, 4, 4), "x"), "image: holds <U1 values, not numbers"),
    ("none", None, "image: holds object values, not numbers"),
    ("ragged", [[1.0], [1.0, 2.0]], "image: is not a rectangular array of numbers"),
    ("3 axes", np.ones((9, 9, 8)), "image: expected (C, *spatial) with 3 spatial axes, got "),
]


@pytest.mark.parametrize(("what", "image", "message"), API_CASES, ids=[c[0] for c in API_CASES])
def test_predict_array_refuses_what_it_cannot_predict(trained, what, image, message):
    import torch

    from nmfseg.errors import DataError

    p = nmfseg.Predictor.from_run(trained[1], device="cpu")
    with pytest.raises(DataError) as err:
        p.predict_array(image)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    if what == "complex":  # a tensor too, and a NIfTI image (the imaginary part was dropped)
        with pytest.raises(DataError, match="has complex values"):
            p.predict_array(torch.from_numpy(image))
        nifti = nib.Nifti1Image(np.moveaxis(image, 0, -1), np.eye(4))
        with pytest.raises(DataError, match="image 0: has complex values"):
            p.predict_nifti(nifti)


def test_a_rank_above_the_limit_changes_nothing(trained):
    import torch

    p = nmfseg.Predictor.from_run(trained[1], device="cpu", nmf_rank=4)  # the limit itself
    assert p.resolved_settings()["nmf_rank"] == 4
    for rank in (5, 64, 5000):
        with pytest.raises(ConfigError, match=f"^--nmf-rank {rank}: {MODEL} allows at most 4: "):
            p.configure(nmf_rank=rank)
        with pytest.raises(ConfigError, match=f"^--nmf-rank {rank}: "):
            nmfseg.Predictor.from_run(trained[1], device="cpu", nmf_rank=rank)
    assert p.resolved_settings()["nmf_rank"] == 4 and p.settings.nmf_rank == 4
    image = torch.ones(2, 6, 6, 6, dtype=torch.bfloat16)  # no NumPy dtype: predicted as float32
    assert p.predict_array(image, output="regions").shape == (1, 6, 6, 6)


# issue 21: an allocation failure anywhere in a verb is one line naming it and what to shrink.
MEMORY_CASES = [
    # (the error the allocator raised, what the line says was asked for)
    (
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 107374182400 bytes. Error code 12 (Cannot allocate "
            "memory)"
        ),
        " (it asked for 100.0 GiB)",
    ),
    (
        RuntimeError("not enough memory: you tried to allocate 2147483648 bytes."),
        " (it asked for 2.0 GiB)",
    ),
    (
        MemoryError("Unable to allocate 74.5 GiB for an array with shape (9, 9)"),
        " (it asked for 74.5 GiB)",
    ),
    (MemoryError(), ""),
]


def _raising(error):
    def fail(*args, **kwargs):
        raise error

    return fail


PREDICTING = "; try --sw-batch-size 1 or a lower --nmf-rank (the trained one, 1, is the cheapest)"


@pytest.mark.parametrize(("error", "asked"), MEMORY_CASES)
def test_an_allocation_failure_is_one_line(trained, tmp_path, monkeypatch, error, asked):
    data, run = trained
    monkeypatch.setattr(nmfseg.Predictor, "predict_preprocessed", _raising(error))
    res = _predict(run, data, tmp_path / "pred")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines()[-1] == (
        f"nmfseg: error: predict ran out of memory{asked}{PREDICTING}"
    )


def test_a_cuda_out_of_memory_is_one_line(trained, tmp_path, monkeypatch):
    import torch

    data, run = trained
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 95.37 GiB. GPU 0 has")
    monkeypatch.setattr(nmfseg.Predictor, "predict_preprocessed", _raising(oom))
    res = _predict(run, data, tmp_path / "pred")
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"nmfseg: error: predict ran out of memory (it asked for 95.37 GiB){PREDICTING}"
    )


def test_other_runtime_errors_are_not_taken_for_memory(trained, tmp_path, monkeypatch):
    data, run = trained
    monkeypatch.setattr(
        nmfseg.Predictor, "predict_preprocessed", _raising(RuntimeError("shape mismatch"))
    )
    res = _predict(run, data, tmp_path / "pred")
    assert isinstance(res.exception, RuntimeError) and "out of memory" not in res.output
