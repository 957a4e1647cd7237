"""``nmfseg train`` end to end on tiny datasets: folder layout, validation Dice, exact resume,
bad input, NaN steps, the trainer's hooks (its pieces: ``tests/test_train_parts.py``)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import KILL_RUNNER
from nmfseg.cli import app
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.data.preprocess import preprocess_case, uncrop
from nmfseg.data.schemes import labels_to_regions
from nmfseg.errors import ConfigError
from nmfseg.evaluation.metrics import dice_score
from nmfseg.inference.sliding_window import sliding_window_predict
from nmfseg.models import load_model
from nmfseg.models.checkpoint import read_checkpoint as load_checkpoint
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training.checkpoint import atomic_save
from nmfseg.training.setup import prepare_run

runner = CliRunner()

# Tiny Factorizers (ISLES presets: head_dim 4, so widths 4..64 work) on 16^3 patches. The
# trainer sets in/out channels from the data, so an ISLES preset trains on BraTS data too.
TINY = {
    "isles22": ("swin_factorizer_isles", "channels=4,8,16,32,64"),
    "brats2023": ("local_factorizer_isles", "channels=4,8,16,32,64"),
    # SegResNet (one output) with dropout: the resume test needs dropout, and speed.
    "msd_brats": ("segresnet_brats", "init_filters=8", "--model-arg", "blocks_down=1,1,1,1",
                  "--model-arg", "dropout=0.2"),
}  # fmt: skip


def train_args(data: Path, out: Path, fmt: str, *extra: str, steps: int = 2) -> list[str]:
    model, *model_args = TINY[fmt]
    return [
        "train", str(data), "--model", model, "--fold", "1", "--out", str(out),
        "--steps", str(steps), "--patch-size", "16", "--n-folds", "2", "--workers", "0",
        "--val-every", "2", "--log-every", "1", "--model-arg", *model_args, "--seed", "3",
        "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    shapes = {"isles22": (18, 20, 17), "brats2023": (20, 18, 22), "msd_brats": (17, 17, 17)}
    return {
        fmt: make_toy_dataset(root / f"Toy_{fmt}", fmt, n_cases=4, shape=shape, seed=1)
        for fmt, shape in shapes.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["isles22", "brats2023"])
def test_train_end_to_end_writes_the_whole_fold_folder(toy, tmp_path, fmt):
    data, out = toy[fmt], tmp_path / "runs"
    result = runner.invoke(app, train_args(data, out, fmt))
    assert result.exit_code == 0, result.output
    model_name = TINY[fmt][0]
    fold = out / data.name / model_name / "fold_1"
    assert "validation Dice" in result.output
    names = {p.name for p in fold.iterdir()}
    assert names == {
        "config.yaml", "log.csv", "progress.png", "validation",
        "checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_final.pt",
    }  # fmt: skip
    assert (out / data.name / "splits.json").is_file()
    assert (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cfg = yaml.safe_load((fold / "config.yaml").read_text())
    dataset = open_dataset(data)
    scheme = dataset.scheme
    assert cfg["patch_size"] == [16, 16, 16] and cfg["steps"] == 2 and cfg["seed"] == 3
    assert cfg["optimizer"] == {
        "lr": 1e-4,
        "weight_decay": 1e-2,
        "betas": [0.9, 0.999],
        "grad_clip": None,
    }
    assert cfg["dataset"]["format"] == fmt and cfg["dataset"]["scheme"]["name"] == scheme.name
    assert cfg["dataset"]["channels"] == list(scheme.channels)
    assert cfg["dataset"]["regions"] == list(scheme.regions)
    assert cfg["model"]["kwargs"]["in_channels"] == scheme.in_channels
    assert cfg["model"]["kwargs"]["out_channels"] == scheme.out_channels
    assert cfg["fold"] == 1

    with open(fold / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert rows[1]["val_dice"] and not rows[0]["val_dice"]

    ckpt = load_checkpoint(fold / "checkpoint_final.pt")
    for key in ("model_name", "model_kwargs", "model", "optimizer", "scheduler", "step", "rng",
                "config", "scheme", "nmfseg_version"):  # fmt: skip
        assert key in ckpt
    assert ckpt["step"] == 2 and ckpt["model_name"] == model_name and ckpt["scheme"] == scheme.name
    assert {"python", "numpy", "torch", "sampler"} <= set(ckpt["rng"])

    # validation/summary.json: recompute every case independently in the original grid.
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    splits = json.loads((out / data.name / "splits.json").read_text())
    assert [c["case_id"] for c in summary["per_case"]] == splits[1]["val"]
    model, config = load_model(fold)
    assert config["patch_size"] == [16, 16, 16] and not model.training
    for entry in summary["per_case"]:
        case = load_case(dataset.get(entry["case_id"]))
        image, _, record = preprocess_case(case.image, case.label)
        probs = sliding_window_predict(model, image, (16, 16, 16), overlap=0.5)
        pred = uncrop((probs >= 0.5).numpy(), record)
        truth = labels_to_regions(case.label, scheme)
        for r, name in enumerate(scheme.regions):
            assert entry["dice"][name] == pytest.approx(dice_score(pred[r], truth[r]), abs=1e-9)
    for name in scheme.regions:
        mean = np.mean([c["dice"][name] for c in summary["per_case"]])
        assert summary["mean"][name] == pytest.approx(mean)


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(toy, tmp_path):
    data, fmt = toy["msd_brats"], "msd_brats"
    steps = ["--checkpoint-every", "2", "--val-every", "4"]
    # Uninterrupted, no DataLoader workers.
    a = tmp_path / "a"
    result = runner.invoke(app, train_args(data, a, fmt, *steps, steps=4))
    assert result.exit_code == 0, result.output
    # Killed with SIGKILL right after step 3 (checkpoint of step 2 on disk), with 2 workers.
    b = tmp_path / "b"
    # Bitwise equality needs the same intra-op threads in every session: conftest.py's
    # OMP_NUM_THREADS=1 holds them at 1 in the in-process runs, whatever --workers, and here.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = train_args(data, b, fmt, *steps, "--workers", "2", steps=4)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_RUNNER, "3", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    fold_b = b / data.name / TINY[fmt][0] / "fold_1"
    assert load_checkpoint(fold_b / "checkpoint_last.pt")["step"] == 2
    assert not (fold_b / "checkpoint_final.pt").exists()
    # Resume: same command plus --resume.
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output

    fold_a = a / data.name / TINY[fmt][0] / "fold_1"
    for name in ("checkpoint_final.pt",):
        ca, cb = load_checkpoint(fold_a / name), load_checkpoint(fold_b / name)
        assert ca["step"] == cb["step"]
        assert ca["model"].keys() == cb["model"].keys()
        for key, tensor in ca["model"].items():
            assert torch.equal(tensor, cb["model"][key]), key
        for sa, sb in zip(
            ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True
        ):
            assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
        assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"]
    with open(fold_b / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    # Dropout is on: without the per-step reseeding, the resumed run would draw other masks.
    model, _ = load_model(fold_b)
    assert any(
        isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()
    )


def test_grad_checkpointing_trains_the_same_weights(toy, tmp_path):
    """Recomputing every stage in backward (dropout on) changes memory, not the result."""
    data, fmt = toy["isles22"], "isles22"
    weights = []
    for flag in ("--no-grad-checkpointing", "--grad-checkpointing"):
        out = tmp_path / flag
        result = runner.invoke(app, train_args(data, out, fmt, flag, "--val-every", "9"))
        assert result.exit_code == 0, result.output
        fold = out / data.name / TINY[fmt][0] / "fold_1"
        cfg = yaml.safe_load((fold / "config.yaml").read_text())
        assert cfg["grad_checkpointing"] is (flag == "--grad-checkpointing")
        assert cfg["model_args"].get("dropout", 0.1) > 0
        weights.append(load_checkpoint(fold / "checkpoint_final.pt")["model"])
    for key, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][key], tensor, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_resume_of_a_finished_run_only_rewrites_its_results(toy, tmp_path):
    data, fmt = toy["isles22"], "isles22"
    out = tmp_path / "runs"
    assert runner.invoke(app, train_args(data, out, fmt, steps=2)).exit_code == 0
    fold = out / data.name / TINY[fmt][0] / "fold_1"
    before = load_checkpoint(fold / "checkpoint_final.pt")["model"]
    (fold / "validation" / "summary.json").unlink()
    result = runner.invoke(app, [*train_args(data, out, fmt, steps=2), "--resume"])
    assert result.exit_code == 0, result.output
    assert (fold / "validation" / "summary.json").is_file()
    after = load_checkpoint(fold / "checkpoint_final.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Without --resume the finished run is not overwritten.
    again = runner.invoke(app, train_args(data, out, fmt, steps=2))
    assert again.exit_code == 1 and "--resume" in again.output
    # Resuming with a different recipe value is refused, a runtime option is fine.
    bad = runner.invoke(app, [*train_args(data, out, fmt, steps=2), "--resume", "--lr", "0.1"])
    assert bad.exit_code == 1 and "--lr: differs from the run being resumed" in bad.output
    ok = runner.invoke(app, [*train_args(data, out, fmt, steps=2), "--resume", "--amp", "bf16"])
    assert ok.exit_code == 0, ok.output
    # A run started by an nmfseg that did not know a runtime key resumes with its default.
    last = fold / "checkpoint_last.pt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt["config"]["grad_checkpointing"]
    atomic_save(ckpt, last)
    old = runner.invoke(app, [*train_args(data, out, fmt, steps=2), "--resume"])
    assert old.exit_code == 0, old.output


@pytest.mark.slow
def test_a_resume_on_other_threads_says_so_in_one_line(toy, tmp_path, monkeypatch):
    """Bitwise resume needs the threads the run's steps computed on: every checkpoint records
    them, and a run resumed on another count, or begun by an nmfseg that recorded none (it
    computed on torch's count), says so in one line."""
    data, fmt = toy["isles22"], "isles22"
    out = tmp_path / "runs"
    assert runner.invoke(app, train_args(data, out, fmt, steps=2)).exit_code == 0
    last = out / data.name / TINY[fmt][0] / "fold_1" / "checkpoint_last.pt"
    stopped = torch.load(last, weights_only=False)
    assert stopped["threads"] == 1  # conftest.py's OMP_NUM_THREADS=1
    stopped["config"]["steps"] = 3  # as if stopped at step 2 of 3
    warned = "not bitwise an uninterrupted run"
    cases = [  # (OMP_NUM_THREADS now, the checkpoint's threads, the line)
        ("1", 1, None),
        ("2", 1, "resumed on 2 compute threads, but the run's steps so far computed on 1: "),
        ("2", None, "resumed on 2 compute threads, but the run's steps so far computed on 1 "
                    "(torch's count; its checkpoint does not record them): "),  # torch's: 1
    ]  # fmt: skip
    for omp, recorded, line in cases:
        ckpt = dict(stopped, threads=recorded)
        if recorded is None:
            del ckpt["threads"]
        atomic_save(ckpt, last)
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
        result = runner.invoke(app, [*train_args(data, out, fmt, steps=3), "--resume"])
        assert result.exit_code == 0, result.output
        said = [s for s in result.output.splitlines() if warned in s]
        expected = [] if line is None else [
            f"nmfseg train: {line}{warned}; set OMP_NUM_THREADS=1 to continue on 1"
        ]  # fmt: skip
        assert said == expected, result.output
        assert load_checkpoint(last)["step"] == 3
        assert load_checkpoint(last)["threads"] == int(omp)  # step 3's


# ----------------------------------------------------------------------------- bad input


def _bad_label_dataset(root: Path) -> Path:
    import nibabel as nib

    data = make_toy_dataset(root / "BadLabels", "isles22", n_cases=4, shape=(12, 12, 12))
    label_path = next(data.glob("derivatives/**/*_msk.nii*"))
    img = nib.load(label_path)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 7  # not a label of the ISLES'22 scheme
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), label_path)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "no_such_net"}, "--model 'no_such_net': unknown network"),
        ({"--steps": "abc"}, "--steps: must be an integer"),
        ({"--steps": "0"}, "--steps: must be an integer >= 1"),
        ({"--patch-size": "16,0,16"}, "--patch-size: must be"),
        ({"--lr": "-1"}, "--lr: must be a number"),
        ({"--amp": "fp16"}, "--amp: must be bf16 or none, got 'fp16'"),
        ({"--device": "tpu"}, "--device: must be cpu, cuda"),
        ({"--fold": "7"}, "--fold 7 is out of range"),
        ({"--fold": "x"}, "--fold 'x'"),
        ({"--fold": "²"}, "--fold '²'"),  # a digit to str.isdigit, not to int
        ({"--set": "augmentation.flip.p=0"}, "unknown config key 'augmentation.flip.p'"),
        ({"--set": "augmentation.noise.variance=0.1,0.0"}, "augmentation.noise.variance"),
        ({"--model-arg": "no_such_arg=1"}, "no_such_arg"),
        ({"--model-arg": "in_channels=3"}, "in_channels=3"),
        ({"--warmup-steps": "10"}, "--warmup-steps: warm-up (10 steps) must be shorter"),
        ({"--config": "MISSING"}, "--config"),
        ({"--config": "BADYAML"}, "not valid YAML"),
        ({"--config": "UNKNOWNKEY"}, "unknown config key 'optimiser'"),
        ({"DATA": "NOLABELS"}, "has no labels"),
        ({"DATA": "MISSING"}, "no such folder"),
        ({"DATA": "BADLABELS"}, "_msk.nii.gz"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_leaves_no_output(toy, tmp_path, change, message):
    data, out = toy["isles22"], tmp_path / "runs"
    args = train_args(data, out, "isles22")
    (tmp_path / "bad.yaml").write_text("steps: [1, 2\n")
    (tmp_path / "unknown.yaml").write_text("optimiser: {lr: 0.1}\n")
    files = {
        "MISSING": str(tmp_path / "missing"),
        "BADYAML": str(tmp_path / "bad.yaml"),
        "UNKNOWNKEY": str(tmp_path / "unknown.yaml"),
    }
    if change.get("DATA") == "NOLABELS":
        files["NOLABELS"] = str(
            make_toy_dataset(tmp_path / "NoLabels", "isles22", with_labels=False)
        )
    if change.get("DATA") == "BADLABELS":
        files["BADLABELS"] = str(_bad_label_dataset(tmp_path))
    for option, value in change.items():
        value = files.get(value, value)
        if option == "DATA":
            args[1] = value
        elif option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmfseg: error: "), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


# ----------------------------------------------- the loop: NaN steps, hooks, presets elsewhere
# (the recipe, checkpoints, RNG state, schedule and progress.png: tests/test_train_parts.py)


def _nan_loss_at(monkeypatch, steps: set[int] | None):
    """Make the training loss NaN at the given (1-based) steps, or always when None."""
    import nmfseg.training.trainer as trainer_mod

    base = trainer_mod.DeepSupervisionLoss
    calls = {"n": 0}

    class NanLoss(base):
        def forward(self, outputs, target):
            calls["n"] += 1
            loss = super().forward(outputs, target)
            return loss * float("nan") if steps is None or calls["n"] in steps else loss

    monkeypatch.setattr(trainer_mod, "DeepSupervisionLoss", NanLoss)


@pytest.mark.slow
def test_a_nan_step_is_skipped_and_the_weights_stay_finite(toy, tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {2})
    data, out = toy["isles22"], tmp_path / "runs"
    result = runner.invoke(app, train_args(data, out, "isles22", steps=4))
    assert result.exit_code == 0, result.output
    assert "step 2: non-finite loss or gradients; step skipped" in result.output
    fold = out / data.name / TINY["isles22"][0] / "fold_1"
    ckpt = load_checkpoint(fold / "checkpoint_final.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_a_diverged_run_stops_with_one_line(toy, tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, None)
    data, out = toy["isles22"], tmp_path / "runs"
    result = runner.invoke(app, train_args(data, out, "isles22", steps=30))
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert "training diverged: loss or gradients were NaN/Inf for 20 steps in a row" in last
    assert "Traceback" not in result.output


def test_trainer_hooks_swap_the_loss_and_see_every_step_and_validation(toy, tmp_path):
    """A subclass overriding :class:`Trainer`'s hooks changes only what it overrides."""
    from nmfseg.training.trainer import Trainer, run_training

    seen: dict[str, list] = {"loss": [], "steps": [], "val": []}

    class L1Trainer(Trainer):
        def build_loss(self):
            def l1(outputs, target):
                out = outputs[0] if isinstance(outputs, list) else outputs
                value = (out.sigmoid() - target).abs().mean()
                seen["loss"].append(float(value))
                return value

            return l1

        def on_step_end(self, step, loss):
            seen["steps"].append((step, loss))

        def on_validation_end(self, row):
            seen["val"].append(row["val_dice"])

    run = prepare_run(
        toy["isles22"], "swin_factorizer_isles", 1, tmp_path / "runs",
        overrides={"steps": 3, "patch_size": [16, 16, 16], "n_folds": 2, "workers": 0,
                   "val_every": 2, "log_every": 1, "device": "cpu", "seed": 3},
        model_args={"channels": [4, 8, 16, 32, 64]},
    )  # fmt: skip
    run_training(run, progress=False, trainer=L1Trainer)
    assert [s for s, _ in seen["steps"]] == [1, 2, 3]
    assert [loss for _, loss in seen["steps"]] == pytest.approx(seen["loss"])
    assert all(0 <= v <= 1 for v in seen["loss"])  # an L1 distance of probabilities
    with open(run.fold_dir / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["loss"]) for r in rows] == pytest.approx(seen["loss"], rel=1e-5)
    assert len(seen["val"]) == 2  # at step 2 and at the end
    assert float(rows[-1]["val_dice"]) == pytest.approx(seen["val"][-1])


# issue 21: a paper preset on data of other channels or regions is built for the data, and
# says so; the network is built before any case is read.
PRESET_CASES = [
    # (dataset, preset, the note or None)
    ("brats2023", "local_factorizer_isles",
     "local_factorizer_isles is the ISLES22 preset (2 channels -> 1 region); it is built for "
     "this dataset's 4 channels (t2f, t1n, t1c, t2w) -> 3 regions (ET, TC, WT), and its #params "
     "and FLOPs are those of that network; local_factorizer_brats is the preset for such data"),
    ("isles22", "swin_factorizer_brats",
     "swin_factorizer_brats is the BraTS preset (4 channels -> 3 regions); it is built for this "
     "dataset's 2 channels (dwi, adc) -> 1 region (lesion), and its #params and FLOPs are those "
     "of that network; swin_factorizer_isles is the preset for such data"),
    ("isles22", "swin_factorizer_isles", None),
    ("msd_brats", "segresnet_brats", None),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "model", "note"), PRESET_CASES)
def test_a_preset_on_other_data_is_built_for_it_with_a_note(toy, tmp_path, fmt, model, note):
    args = {"channels": [8, 16, 32, 64, 128]} if "factorizer" in model else {"init_filters": 8}
    run = prepare_run(toy[fmt], model, 1, tmp_path, model_args=args,
                      overrides={"patch_size": [16, 16, 16], "n_folds": 2})  # fmt: skip
    scheme = open_dataset(toy[fmt]).scheme
    kwargs = run.config["model"]["kwargs"]
    assert (kwargs["in_channels"], kwargs["out_channels"]) == (
        scheme.in_channels,
        len(scheme.regions),
    )
    assert (run.model.in_channels, run.model.out_channels) == (
        kwargs["in_channels"],
        kwargs["out_channels"],
    )
    assert [n for n in run.notes if " preset (" in n] == ([note] if note else [])
    assert not any(tmp_path.iterdir())  # prepare_run writes nothing


def test_a_bad_network_argument_fails_before_any_case_is_read(toy, tmp_path, monkeypatch):
    import nmfseg.training.planning as planning

    def unread(*args, **kwargs):
        raise AssertionError("a case was read")

    monkeypatch.setattr(planning, "load_case", unread)
    monkeypatch.setattr(planning, "load_nifti", unread)
    with pytest.raises(ConfigError, match=r"rank=5000 is above 4: its matrices have head_dim=4"):
        prepare_run(toy["isles22"], "swin_factorizer_isles", 1, tmp_path,
                    model_args={"rank": 5000}, overrides={"n_folds": 2})  # fmt: skip
    assert not any(tmp_path.iterdir())
