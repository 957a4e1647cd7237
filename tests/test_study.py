"""``nmfseg study`` end to end on tiny toy phantoms: the table, resume after SIGKILL, the printed
cluster jobs, a failing model, and bad input (one line, nothing written)."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon
from torch import nn

from helpers import KILL_RUNNER, cli
from nmfseg.cli import app
from nmfseg.cli import study as study_cli
from nmfseg.data.splits import load_splits
from nmfseg.evaluation.compare import ModelCost
from nmfseg.evaluation.evaluate import read_report
from nmfseg.models import ModelConfig, load_model, temporarily_registered_model
from nmfseg.models.checkpoint import read_checkpoint
from nmfseg.models.complexity import count_flops, count_params
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.study.plan import parse_folds, parse_setting

if "study" not in {c.name for c in app.registered_commands}:
    study_cli.register(app)  # until nmfseg.cli lists "nmfseg.cli.study"

# Two tiny networks on 16^3 patches, 2 folds; SegResNet trains one step more (3), so that a
# kill after step 3 hits it after the Swin Factorizer is done (trained, predicted, evaluated).
MODELS = ["swin_factorizer_brats", "segresnet_brats"]
SWIN = ["channels=8,16,32", "window_size=2", "pos_embed_grid=1", "deep_supr_num=1"]
ARGS = [
    "--models", ",".join(MODELS), "--n-folds", "2", "--steps", "2", "--patch-size", "16",
    "--set", "segresnet_brats:steps=3", "--set", "checkpoint_every=1", "--workers", "0",
    "--device", "cpu", "--model-arg", "segresnet_brats:init_filters=8", "--quiet",
    *(a for arg in SWIN for a in ("--model-arg", f"swin_factorizer_brats:{arg}")),
]  # fmt: skip
OUTPUTS = ["compare.csv", "compare.md", "dice_boxplot.png", "hd95_boxplot.png", "study.json"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return make_toy_dataset(root / "Toy", "msd_brats", n_cases=5, shape=(20, 20, 20), seed=1)


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """An uninterrupted study: ``(out, result)``."""
    out = tmp_path_factory.mktemp("reference") / "study"
    return out, cli("study", toy, *ARGS, "-o", out)


def _table(out: Path) -> tuple[str, str]:
    return (out / "compare.md").read_text(), (out / "compare.csv").read_text()


def _csv(out: Path) -> dict[str, dict[str, str]]:
    with (out / "compare.csv").open(newline="") as fh:
        return {row["model"]: row for row in csv.DictReader(fh)}


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("nmfseg: error: "), result.output
    assert sum(line.startswith("nmfseg: error:") for line in lines) == 1
    assert "Traceback" not in result.output
    return lines[-1]


def test_parse_folds_and_settings():
    assert parse_folds(None, 3) == [0, 1, 2]
    assert parse_folds("3,1-2,1", 5) == [3, 1, 2]
    for spec, problem in (("0-9", "fold 5 is out of range: there are 5 folds (0-4)"),
                          ("a", "expected fold numbers"), ("3-1", "is empty")):  # fmt: skip
        with pytest.raises(Exception, match=re.escape(problem)):
            parse_folds(spec, 5)
    s = parse_setting("segresnet_brats:optimizer.lr=1e-3", "--set", MODELS)
    assert (s.model, s.key, s.value, s.source) == (
        "segresnet_brats", "optimizer.lr", 1e-3, "--set segresnet_brats:optimizer.lr"
    )  # fmt: skip
    assert parse_setting("device=cuda:1", "--set", MODELS).value == "cuda:1"
    with pytest.raises(Exception, match="'unet' is not one of --models"):
        parse_setting("unet:x=1", "--model-arg", MODELS)


@pytest.mark.slow
def test_study_writes_table_1_pooled_over_the_folds(toy, reference):
    out, result = reference
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*OUTPUTS, "predictions", "reports", "runs"]
    )
    # one line per (model, fold) stage, with the time taken and what is left
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("nmfseg study: [")]
    assert len(lines) == 12
    assert lines[0].startswith("nmfseg study: [1/12] swin_factorizer_brats fold 0 train: ")
    assert " in " in lines[0] and "left" in lines[0] and lines[-1].endswith("nothing left")

    splits = load_splits(out / "runs" / "Toy" / "splits.json")
    rows = _csv(out)
    md = (out / "compare.md").read_text()
    assert "| Model | #Params | FLOPs | n | Dice ET (%) |" in md
    assert "Wilcoxon signed-rank test against swin_factorizer_brats" in md
    for model in MODELS:
        pooled = []
        for fold, split in enumerate(splits):
            report = out / "reports" / model / f"fold_{fold}"
            _, fold_rows = read_report(report)
            assert [r["case_id"] for r in fold_rows] == split["val"]  # the fold's own cases
            preds = sorted(
                p.name for p in (out / "predictions" / model / f"fold_{fold}").glob("*.nii*")
            )
            assert preds == sorted(f"{c}.nii.gz" for c in split["val"])
            pooled += fold_rows
        assert int(rows[model]["n_cases"]) == 5  # every case once: cross-validation
        mean = np.mean([r["dice_avg"] for r in pooled])
        assert float(rows[model]["dice_avg_mean"]) == pytest.approx(mean)
        # #params of the networks as trained, FLOPs at the preset's paper input (1x4x128^3)
        net, _ = load_model(out / "runs" / "Toy" / model / "fold_0")
        params, flops = count_params(net), count_flops(net, (1, 4, 128, 128, 128))["total"]
        assert int(rows[model]["params"]) == params and int(rows[model]["flops"]) == flops
        assert rows[model]["flops_input"] == "1x4x128x128x128" and rows[model]["status"] == "ok"
        cells = ModelCost(params, flops).cells()
        assert f"| {model} | {cells[0]} | {cells[1]} | 5 |" in md
    ref_rows = {r["case_id"]: r for f in (0, 1) for r in read_report(
        out / "reports" / "swin_factorizer_brats" / f"fold_{f}")[1]}  # fmt: skip
    seg_rows = {r["case_id"]: r for f in (0, 1) for r in read_report(
        out / "reports" / "segresnet_brats" / f"fold_{f}")[1]}  # fmt: skip
    x = [seg_rows[c]["dice_avg"] for c in ref_rows]
    y = [ref_rows[c]["dice_avg"] for c in ref_rows]
    p = rows["segresnet_brats"]["dice_avg_p"]
    assert p == "" if x == y else float(p) == pytest.approx(wilcoxon(x, y).pvalue)

    manifest = json.loads((out / "study.json").read_text())
    assert manifest["status"] == "done" and manifest["failed"] == {}
    assert manifest["models"] == MODELS and manifest["folds"] == [0, 1]
    assert manifest["checkpoint"] == "final" and sorted(manifest["files"]) == OUTPUTS[:4]
    assert [(j["model"], j["fold"], j["status"]) for j in manifest["jobs"]] == [
        (m, f, "done") for m in MODELS for f in (0, 1)
    ]
    seg = manifest["jobs"][2]
    assert "steps=3" in seg["train"] and seg["model_args"] == ["init_filters=8"]
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in seg["stages"].values())
    assert read_checkpoint(out / seg["run"] / "checkpoint_final.pt")["step"] == 3

    # The same command again reuses everything and writes the same table.
    before = _table(out)
    again = cli("study", toy, *ARGS, "-o", out)
    assert again.exit_code == 0, again.output
    assert "trained" not in again.stderr and "predicted" not in again.stderr
    assert again.stderr.count("finished run found") == 4
    assert again.stderr.count("report found") == 4
    assert _table(out) == before
    # Other settings on the same folder: refused before anything is touched.
    stamp = (out / "study.json").stat().st_mtime_ns
    changed = cli("study", toy, *ARGS, "--steps", "5", "-o", out)
    assert changed.exit_code == 1
    assert "--steps: differs from the run being resumed" in _one_error_line(changed)
    assert (out / "study.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_study_killed_anywhere_continues_to_the_same_table(toy, reference, tmp_path):
    ref_out, ref_result = reference
    assert ref_result.exit_code == 0, ref_result.output
    out = tmp_path / "study"
    args = ["study", str(toy), *ARGS, "-o", str(out)]
    # Killed right after SegResNet's step 3 of fold 0 (its checkpoint of step 2 is on disk).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_RUNNER, "3", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    seg = out / "runs" / "Toy" / "segresnet_brats" / "fold_0"
    assert read_checkpoint(seg / "checkpoint_last.pt")["step"] == 2
    assert not (seg / "checkpoint_final.pt").exists()
    assert (out / "reports" / "swin_factorizer_brats" / "fold_1" / "summary.json").is_file()
    assert json.loads((out / "study.json").read_text())["status"] == "running"
    assert not (out / "compare.md").exists()

    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "segresnet_brats fold 0 train: resumed and trained to step 3" in result.stderr
    assert result.stderr.count("finished run found") == 2  # the Swin Factorizer's folds
    # the resumed training's time counts both sessions, as its log does
    jobs = json.loads((out / "study.json").read_text())["jobs"]
    train = next(j for j in jobs if (j["model"], j["fold"]) == ("segresnet_brats", 0))
    with (seg / "log.csv").open(newline="") as fh:
        logged = float(list(csv.DictReader(fh))[-1]["time"])
    assert train["stages"]["train"]["seconds"] == round(logged, 3)
    assert _table(out) == _table(ref_out)


@pytest.mark.slow
def test_printed_jobs_run_anywhere_then_study_only_collects(toy, reference, tmp_path):
    ref_out, ref_result = reference
    assert ref_result.exit_code == 0, ref_result.output
    out = tmp_path / "study"
    printed = cli("study", toy, *ARGS, "-o", out, "--print-jobs")
    assert printed.exit_code == 0, printed.output
    assert not out.exists()  # printing writes nothing
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 4 and "SLURM" in printed.stderr
    for line in lines:
        train, *predicts = line.split(" && ")
        # the fold's validation cases, one by one, as the in-process study (not all 5 cases)
        inputs = [shlex.split(p)[shlex.split(p).index("-i") + 1] for p in predicts]
        assert 1 <= len(predicts) < 5 and str(toy.resolve()) not in inputs
        for command in (train, *predicts):
            argv = shlex.split(command)
            assert argv[0] == "nmfseg"
            result = cli(*argv[1:])
            assert result.exit_code == 0, f"{command}\n{result.output}"
    fresh = tmp_path / "fresh"  # a study with no job done yet prints every job
    smaller = cli("study", toy, *ARGS, "-o", fresh, "--print-jobs", "--batch-size", "1")
    assert smaller.exit_code == 0, smaller.output
    smaller_lines = smaller.stdout.strip().splitlines()
    assert len(smaller_lines) == 4 and all(" --batch-size 1 " in line for line in smaller_lines)
    refused = cli("study", toy, *ARGS, "-o", out, "--print-jobs", "--batch-size", "0")
    assert refused.exit_code == 1
    assert refused.output == "nmfseg: error: --batch-size: must be an integer >= 1, got 0\n"
    # SegResNet's own steps replace the common ones; its own network argument only
    assert " --steps 3 " in lines[2] and "--steps 2" not in lines[2]
    assert "--model-arg init_filters=8" in lines[2] and "window_size" not in lines[2]

    collected = cli("study", toy, *ARGS, "-o", out)
    assert collected.exit_code == 0, collected.output
    assert "trained" not in collected.stderr and "predicted" not in collected.stderr
    assert collected.stderr.count("finished run found") == 4
    assert collected.stderr.count("prediction(s) found") == 4
    assert collected.stderr.count("mean Dice") == 4  # evaluated here
    assert _table(out) == _table(ref_out)


class _OutOfMemory(nn.Module):
    """Builds, then fails on its first forward pass like a network too large for the GPU."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, spatial_dims: int = 3):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.spatial_dims = spatial_dims
        self.conv = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.slow
def test_a_failing_model_is_reported_and_the_others_finish(toy, tmp_path):
    out = tmp_path / "study"
    args = ["--models", "oom_net,segresnet_brats", "--reference", "segresnet_brats",
            "--n-folds", "2",
            "--steps", "2", "--patch-size", "16", "--workers", "0", "--device", "cpu",
            "--model-arg", "segresnet_brats:init_filters=8", "-q"]  # fmt: skip
    config = ModelConfig("oom_net", _OutOfMemory, dataset="BraTS", in_channels=4, out_channels=3)
    with temporarily_registered_model(config):
        result = cli("study", toy, *args, "-o", out)
    assert result.exit_code == 1, result.output
    reason = "fold 0 train: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert _one_error_line(result).startswith(
        f"nmfseg: error: 1 of 2 model(s) failed: oom_net: {reason}; see {out / 'compare.md'}"
    )
    md = (out / "compare.md").read_text()
    assert "| oom_net | n/a | n/a | – | – |" in md and f"| failed: {reason} |" in md
    assert "| segresnet_brats | 1.2M |" in md and md.count("| ok |") == 1
    assert "| segresnet_brats | 5 |" not in md  # no paired tests without a second evaluated model
    rows = _csv(out)
    assert rows["oom_net"]["status"] == "failed" and rows["oom_net"]["failure"] == reason
    assert rows["oom_net"]["dice_avg_mean"] == "" and int(rows["segresnet_brats"]["n_cases"]) == 5
    assert (out / "dice_boxplot.png").is_file()
    manifest = json.loads((out / "study.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed"] == {"oom_net": reason}
    assert [j["status"] for j in manifest["jobs"]] == ["failed", "skipped", "done", "done"]
    assert manifest["jobs"][0]["stages"]["train"]["status"] == "failed"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--models", "segresnet_brats,nope"], "--models 'nope': unknown network; choose from "),
        (["--models", "segresnet_brats,segresnet_brats"],
         "--models names segresnet_brats more than once"),
        (["--models", "segresnet_brats", "--folds", "0-9"],
         "--folds '0-9': fold 5 is out of range: there are 5 folds (0-4)"),
        (["--models", "segresnet_brats", "--folds", "x"], "--folds 'x': expected fold numbers"),
        (["--models", "segresnet_brats", "--reference", "nnunet_brats"],
         "--reference 'nnunet_brats' is not one of --models (segresnet_brats)"),
        (["--models", "segresnet_brats", "--model-arg", "nnunet_brats:x=1"],
         "--model-arg 'nnunet_brats:x=1': 'nnunet_brats' is not one of --models"),
        (["--models", "segresnet_brats", "--model-arg", "segresnet_brats:bogus=1"],
         "--model-arg bogus: segresnet_brats has no argument 'bogus'"),
        (["--models", "segresnet_brats", "--model-arg", "bogus=1"],
         "--model-arg bogus: segresnet_brats has no argument 'bogus'"),
        (["--models", "segresnet_brats,,nnunet_brats"],
         "--models 'segresnet_brats,,nnunet_brats': an empty item in the comma list"),
        (["--models", "segresnet_brats,"], "--models 'segresnet_brats,': an empty item"),
        (["--models", "segresnet_brats", "--folds", "0,,1"],
         "--folds '0,,1': an empty item in the comma list"),
        (["--models", "segresnet_brats", "--set", "segresnet_brats:steps=-1"],
         "--set segresnet_brats:steps"),
        (["--models", "segresnet_brats", "--set", "steps"], "expected [MODEL:]KEY=VALUE"),
        (["--models", "segresnet_brats", "--config", "missing.yaml"], "missing.yaml: no such file"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(toy, tmp_path, extra, expected):
    out = tmp_path / "study"
    result = cli("study", toy, "--workers", "0", "-o", out, *extra)
    assert result.exit_code == 1, result.output
    assert expected in _one_error_line(result)
    assert not out.exists()


def test_out_must_be_a_folder(toy, tmp_path):
    out = tmp_path / "file.txt"
    out.write_text("x")
    result = cli("study", toy, "--models", "segresnet_brats", "-o", out)
    assert result.exit_code == 1
    assert "exists and is not a folder" in _one_error_line(result)


def test_study_refuses_to_run_under_torchrun(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("study", toy, "--models", "segresnet_brats", "-o", tmp_path / "study")
    assert result.exit_code == 1
    assert "runs in one process; for several GPUs print the jobs" in _one_error_line(result)
    assert not (tmp_path / "study").exists()


# issue 21: FLOPs are counted at the paper's input of the data a network was built for.
FLOPS_CASES = [
    # (model, its in/out channels as built, the training patch, the input of its FLOPs)
    ("swin_factorizer_isles", (4, 3), [64, 64, 64], (1, 4, 128, 128, 128)),  # on BraTS data
    ("swin_factorizer_brats", (2, 1), [128] * 3, (1, 2, 64, 64, 64)),  # on ISLES'22 data
    ("swin_factorizer_brats", (4, 3), [96] * 3, (1, 4, 128, 128, 128)),
    ("segresnet_brats", (1, 2), [80, 96, 64], (1, 1, 80, 96, 64)),  # other data: its patch
]


@pytest.mark.parametrize(("model", "counts", "patch", "shape"), FLOPS_CASES)
def test_flops_input_follows_the_data(model, counts, patch, shape):
    from nmfseg.study.plan import flops_input

    kwargs = {"in_channels": counts[0], "out_channels": counts[1]}
    assert flops_input(model, kwargs, patch) == shape


def test_an_isles_preset_studied_on_brats_data_is_counted_as_built(toy, tmp_path):
    from nmfseg.study.plan import StudyOptions, plan_study
    from nmfseg.study.table import model_costs

    args = ["swin_factorizer_isles:channels=4,8,16,32,64"]
    options = StudyOptions(toy, tmp_path / "study", ["swin_factorizer_isles"], folds="0",
                           model_args=args)  # fmt: skip
    plan = plan_study(options)
    (job,) = plan.jobs
    assert (job.model_kwargs["in_channels"], job.model_kwargs["out_channels"]) == (4, 3)
    cost = model_costs(plan)["swin_factorizer_isles"]
    assert cost.input_shape == (1, 4, 128, 128, 128) and cost.flops > 0
    assert not (tmp_path / "study").exists()
