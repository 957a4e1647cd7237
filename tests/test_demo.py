"""The demo job end to end on a tiny configuration (a few phantoms, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nmfseg.cli import app

pytestmark = pytest.mark.slow  # trains two networks, end to end

TINY = {
    "data": {"train_cases": 5, "test_cases": 1, "seed": 3, "spacing": 4.0, "workers": 1},
    "fold": 0,
    "train": {
        "steps": 2,
        "batch_size": 1,
        "patch_size": [32, 32, 32],
        "workers": 0,
        "val_every": 2,
        "checkpoint_every": 1,
        "log_every": 1,
        "optimizer": {"lr": 1.0e-3},
        "scheduler": {"warmup_steps": 0},
    },
    "models": {
        "swin_factorizer_brats": {"channels": [8, 16, 32, 64, 128], "window_size": 4},
        "segresnet_brats": {"init_filters": 8},
    },
    "model_train": {"segresnet_brats": {"optimizer": {"lr": 5.0e-4, "grad_clip": 1.0}}},
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("demo")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["demo", "--out", str(root / "out"), "--config", str(config)])
    return root / "out", result


def test_demo_writes_a_complete_report(demo_run: tuple[Path, object]) -> None:
    out, result = demo_run
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    for model in TINY["models"]:
        assert f"| {model} | 1 |" in report  # one row per model, one held-out case
        summary = json.loads((out / "reports" / model / "summary.json").read_text())
        assert set(summary["metrics"]["dice"]) >= {"ET", "TC", "WT"}
        assert (out / "predictions" / model / "BRATS_001.nii.gz").is_file()
        assert (out / "figures" / f"progress_{model}.png").stat().st_size > 0
    assert (out / "figures" / "overlays.png").stat().st_size > 0
    # Fig. 6 maps exist for the Factorizer only (SegResNet has no NMF layer).
    assert (out / "figures" / "nmf_swin_factorizer_brats.png").is_file()
    assert not (out / "figures" / "nmf_segresnet.png").exists()
    assert "5 training phantoms" in report and "1 held-out" in report
    # Timings come from the trainer's log.csv (they add up over resumed runs).
    assert "| train swin_factorizer_brats |" in report


def test_demo_applies_per_model_training_overrides(demo_run: tuple[Path, object]) -> None:
    out, result = demo_run
    assert result.exit_code == 0, result.output
    runs = out / "runs" / "train"
    seg = yaml.safe_load((runs / "segresnet_brats" / "fold_0" / "config.yaml").read_text())
    swin = yaml.safe_load((runs / "swin_factorizer_brats" / "fold_0" / "config.yaml").read_text())
    assert seg["optimizer"]["lr"] == 5.0e-4 and seg["optimizer"]["grad_clip"] == 1.0
    assert swin["optimizer"]["lr"] == 1.0e-3 and swin["optimizer"]["grad_clip"] is None
    assert seg["optimizer"]["weight_decay"] == swin["optimizer"]["weight_decay"]  # merged
    assert seg["steps"] == swin["steps"] == 2
    report = (out / "report.md").read_text()
    assert "`segresnet_brats`: init_filters=8; 2 steps, lr 0.0005" in report
    assert "gradient clipping 1.0" in report and "gradient clipping off" in report


def test_demo_rebuilds_phantoms_when_their_settings_change(tmp_path: Path) -> None:
    from nmfseg.demo.run import _make_dataset

    cfg = dict(TINY["data"], shape=[24, 24, 24])
    folder = _make_dataset(tmp_path / "d", 2, 0, cfg)
    first = (folder / "synth.json").stat().st_mtime_ns
    assert _make_dataset(tmp_path / "d", 2, 0, cfg) == folder  # same settings: reused
    assert (folder / "synth.json").stat().st_mtime_ns == first
    _make_dataset(tmp_path / "d", 2, 0, dict(cfg, spacing=5.0))  # another grid: rebuilt
    meta = json.loads((folder / "synth.json").read_text())
    assert meta["spacing_mm"] == 5.0 and meta["complete"]


def test_demo_rerun_reuses_finished_work(demo_run: tuple[Path, object]) -> None:
    out, first = demo_run
    assert first.exit_code == 0
    stamp = (out / "runs").rglob("checkpoint_final.pt")
    mtimes = {p: p.stat().st_mtime_ns for p in stamp}
    assert len(mtimes) == len(TINY["models"])  # one finished run per model
    config = out.parent / "tiny.yaml"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "reusing" in result.output
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_demo_rejects_unknown_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--model", "nope"])
    assert result.exit_code == 1
    assert "nope" in result.output and "Traceback" not in result.output


def test_demo_rejects_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {}\n")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert result.exit_code == 1
    assert "missing the 'train' section" in result.output


@pytest.mark.parametrize(
    ("model_train", "message"),
    [
        ("[1]", "'model_train' must map model names to train settings"),
        ("{unet: {steps: 3}}", "model_train.unet: not a model of the 'models' section"),
        ("{segresnet_brats: 5}", "model_train.segresnet_brats must be a mapping of train keys"),
    ],
)
def test_demo_rejects_bad_model_train(tmp_path: Path, model_train: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"data: {{}}\ntrain: {{}}\nmodels: {{segresnet_brats: {{}}}}\nmodel_train: {model_train}\n"
    )
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--config", str(bad)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()  # rejected before anything is written


def test_demo_with_one_model_writes_a_one_row_table(demo_run: tuple[Path, object]) -> None:
    out, first = demo_run
    assert first.exit_code == 0
    config = out.parent / "tiny.yaml"
    args = ["demo", "--out", str(out), "--config", str(config), "-m", "swin_factorizer_brats"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| swin_factorizer_brats | 1 |" in report and "| segresnet_brats |" not in report
