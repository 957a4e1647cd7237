"""The benchmark scripts run: their examples, one worker per CPU variant, a tiny prediction run.

They time nothing here (no wall-clock assertion); they check that ``make bench`` and ``make
bench-scaling`` will not fail on a script that the rest of the suite never imports.
``bench_cuda`` runs here on the CPU (``--device cpu``); without a GPU it and
``cuda_check.sh`` refuse in a line.
"""

from __future__ import annotations

import csv
import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("bench_*.py"))


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.parametrize("name", ["_common", *SCRIPTS])
def test_benchmark_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert doctest.testmod(module, optionflags=flags).failed == 0


@pytest.mark.parametrize("variant", ["plain", "bf16", "channels_last"])
def test_a_model_worker_measures_each_cpu_variant(variant):
    bench_models = importlib.import_module("bench_models")
    r = bench_models.worker("swin_factorizer_brats", 16, "fwd", 1, 1, variant)
    assert r["variant"] == variant and r["time_s"] > 0 and r["first_s"] > 0
    assert r["peak_mb"] >= 0


def test_cpu_paths_compares_every_setting(capsys):
    bench = importlib.import_module("bench_cpu_paths")
    sizes = ["--size", "16", "--block-size", "16", "--block-grad-size", "16"]
    bench.main([*sizes, "--saved-size", "16", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert out.count("2 MiB (2^19, default)") == 3 and out.count("one node (default)") == 3
    assert out.count("one node, whole views") == 3
    lines = out.splitlines()
    saved = lines.index("saved for backward, 1x4x16^3")
    one_node, views, parts = (int(line.split()[-2]) for line in lines[saved + 1 : saved + 4])
    assert 0 < one_node == views < parts  # the one-node path keeps less for backward
    from nmfseg.layers import fused
    from nmfseg.nmf import recompute

    assert fused.CHUNK_ELEMENTS == 2**19 and recompute._PIECE_BYTES == 8 << 20  # restored


def test_memory_trace_names_the_peak_and_what_is_alive(capsys, monkeypatch):
    from nmfseg.nmf import recompute

    monkeypatch.setattr(recompute, "_PIECE_BYTES", recompute._PIECE_BYTES)  # restored after
    trace = importlib.import_module("trace_memory")
    trace.main(["--size", "16", "--checkpoint", "--top", "2", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert "checkpointed, NMF pieces of 8 MiB: live tensors peak at" in lines[0]
    assert float(lines[0].split("peak at ")[1].split()[0]) > 0 and len(lines) == 3
    with pytest.raises(SystemExit):
        trace.main(["--size", "0"])


def test_the_checkpoint_variant_applies_to_networks_that_support_it():
    bench_models = importlib.import_module("bench_models")
    assert bench_models._checkpointable("swin_factorizer_brats")
    assert not bench_models._checkpointable("segresnet_brats")
    r = bench_models.worker("swin_factorizer_brats", 16, "fwdbwd", 1, 1, "checkpoint")
    assert r["variant"] == "checkpoint" and r["time_s"] > 0


@pytest.mark.slow
def test_whole_volume_prediction_runs_every_configuration_with_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    bench_predict = importlib.import_module("bench_predict")
    out = tmp_path / "out"
    argv = ["--shape", "40,48,40", "--spacing", "4", "--patch", "32", "--repeats", "1"]
    argv += ["--threads", "1", "--onnx", "--bf16", "--work", str(tmp_path), "--out", str(out)]
    bench_predict.main(argv)
    table = (out / "bench_predict.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| swin", "| seg"))]
    assert len(rows) == 7 and "swin_factorizer_brats (onnxruntime)" in table
    assert "| segresnet_brats --amp bf16 |" in table
    predictions = tmp_path / "predictions"
    labels = {p.parent.name for p in predictions.glob("*/*.nii.gz")}
    assert len(labels) == 7, labels


def test_engines_prints_the_three_comparisons(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    bench = importlib.import_module("bench_engines")
    engines = "torch,onnxruntime"  # OpenVINO: tests/test_openvino.py, in a process of its own
    bench.main(["--size", "16", "--train-size", "16", "--repeats", "1", "--channels",
                "8,16,32,64,128", "--engines", engines, "--out", str(tmp_path)])  # fmt: skip
    report = (tmp_path / "bench_engines.md").read_text()
    assert report.count("### ") == 3 and report.count("**best**") == 2
    assert "The NMF's cost" in report and "Machine: " in report
    assert report.count("no-NMF / SegResNet") == 2  # the floor beside both comparisons
    assert (
        len((tmp_path / "bench_engines.csv").read_text().splitlines())
        == 1 + len(engines.split(",")) + 2 + 2
    )


def test_profile_attributes_the_forward_to_the_nmf_nodes(tmp_path):
    """The PyTorch profile: every NMF subblock's node is a range, the operators inside it are
    counted there and nowhere else (their self times add up to the range, up to its own)."""
    bench = importlib.import_module("profile_engines")
    bench.main(["--tables", "torch", "--size", "16", "--channels", "8,16,32,64,128",
                "--top", "3", "--out", str(tmp_path)])  # fmt: skip
    report = (tmp_path / "profile_engines.md").read_text()
    assert "of which the NMF nodes" in report and report.count("| other |") == 2
    rows = list(csv.DictReader((tmp_path / "profile_engines.csv").open()))
    part = {r["part"]: float(r["seconds"]) for r in rows if not r["op"]}
    inside = sum(float(r["seconds"]) for r in rows if r["op"] and r["part"] == "nmf_node")
    rest = sum(float(r["seconds"]) for r in rows if r["op"] and r["part"] == "rest")
    assert 0 < inside <= part["nmf_node"] < part["forward"]
    assert inside > 0.5 * part["nmf_node"]  # the range's own time is a small part of it
    assert inside + rest <= part["forward"] * 1.001


@pytest.mark.parametrize("script", ["bench_engines", "profile_engines", "bench_cuda"])
@pytest.mark.parametrize(
    ("args", "words"),
    [(["--channels", "8,a"], "argument --channels: '8,a': give widths >= 1"),
     (["--channels", "8,,16"], "argument --channels: '8,,16'"),
     (["--out", "/proc/nmfseg/out"], "--out: /proc/nmfseg/out: cannot write the output here")],
)  # fmt: skip
def test_bad_options_are_one_usage_line_before_any_work(script, args, words, capsys):
    bench = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert ": error: " in err[-1] and words in err[-1]  # argparse names the program


@pytest.mark.parametrize("script", ["bench_engines", "profile_engines"])
@pytest.mark.parametrize("option", ["--size", "--repeats", "--threads"])
def test_sizes_and_counts_below_one_are_refused(script, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main([option, "0"])
    assert exit_info.value.code == 2
    assert f"argument {option}: '0' is not a whole number >= 1" in capsys.readouterr().err


def test_engines_jobs_of_one_network_run_in_their_own_mode():
    """The NMF table times a forward and a training step of the same network: each job sets
    its mode (the forward once ran in training mode, the last mode set)."""
    bench = importlib.import_module("bench_engines")
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 1))
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(m.training))
    x = torch.randn(1, 1, 2, 2, 2)
    forward = bench.engine_fn("torch", net, x, threads=1)
    step = bench.train_fn(net, x, bf16=False)
    forward(), step(), forward()
    assert seen == [False, True, False]


def test_cuda_prints_the_three_comparisons_on_the_cpu(capsys, tmp_path):
    bench = importlib.import_module("bench_cuda")
    bench.main(["--device", "cpu", "--size", "16", "--train-size", "16", "--repeats", "1",
                "--warmup", "1", "--no-compile", "--channels", "8,16,32,64,128",
                "--out", str(tmp_path)])  # fmt: skip
    report = (tmp_path / "bench_cuda.md").read_text()
    assert report.count("### ") == 3 and report.count("**best**") == 2
    assert "The NMF's cost" in report and "Device: CPU" in report and "failed" not in report
    assert "torch.compile" not in report  # --no-compile
    rows = (tmp_path / "bench_cuda.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (2 + 4 + 2)  # one per network and row: inference, nmf, training
    assert "### Training step, 1×4×16³" in capsys.readouterr().out


def test_cuda_without_a_gpu_says_so_in_one_line_and_exits_2(capsys, monkeypatch):
    bench = importlib.import_module("bench_cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--size", "16"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("bench_cuda: no CUDA device visible")
    assert captured.err.count("\n") == 1


def test_cuda_check_script_stops_before_the_tests_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the script would run in full (about 8 minutes)")
    script = BENCHMARKS / "cuda_check.sh"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 3, done.stderr
    assert "no CUDA device visible" in done.stderr and not (tmp_path / "out").exists()
