"""The embedded default job: phantoms → check → train → predict → evaluate → report.

``make demo`` (``nmfseg demo``) shows nmfseg doing its whole job on a laptop CPU, with data it
makes itself: BraTS-like phantoms built from the MNI152 template that ships inside the
``nilearn`` wheel (:mod:`nmfseg.phantoms.synth`). It

1. writes a training set and a separate held-out test set (different seeds) in the MSD
   Task01 format and checks both like ``nmfseg check-data``;
2. trains each demo model (a Swin Factorizer and MONAI's SegResNet, same data, same step
   budget, same recipe) on fold 0 of the training set with :mod:`nmfseg.training`;
3. predicts the held-out cases with sliding windows, writes NIfTI labels, evaluates
   Dice/HD95 (BraTS conventions) and compares the models (paired Wilcoxon);
4. writes ``report.md`` with the metric table, the training curves, prediction overlays and
   the NMF component maps of the first and last Factorizer block (paper Fig. 6).

Every step is resumable: rerunning the same command reuses the datasets, continues an
interrupted training run from ``checkpoint_last.pt`` and redoes only what is missing.

The settings (fewer channels, a smaller patch, a coarser 3 mm grid and a few hundred steps
instead of the paper's 100,000, a larger learning rate) are in ``configs/demo.yaml``; they
are chosen so that the whole demo takes roughly ten minutes of training per model on two
CPU cores. They are not the paper's recipe, which ``nmfseg train`` uses by default.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nmfseg.data.checks import check_dataset
from nmfseg.data.formats import open_dataset
from nmfseg.demo.config import load_demo_config, model_train_config, set_demo_steps
from nmfseg.demo.report import write_demo_report
from nmfseg.errors import ConfigError, DataError
from nmfseg.evaluation.compare import compare_reports, load_reports
from nmfseg.evaluation.evaluate import evaluate, write_report
from nmfseg.inference.predict import predict_folder
from nmfseg.inference.predictor import Predictor
from nmfseg.phantoms.synth import MANIFEST, PHANTOM_REVISION, synthesize_dataset
from nmfseg.training.config import flatten_config
from nmfseg.training.progress import training_seconds
from nmfseg.training.setup import prepare_run
from nmfseg.training.trainer import run_training

__all__ = ["TARGETS", "DemoResult", "run_demo"]

#: Targets of the demo on held-out phantoms (mean Dice per region).
TARGETS = {"WT": 0.90, "TC": 0.80, "ET": 0.70}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path
    report: Path
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _log(message: str) -> None:
    tqdm.write(f"[demo] {message}", file=sys.stderr)


def _make_dataset(folder: Path, n_cases: int, seed: int, data_cfg: dict[str, Any]) -> Path:
    """Synthesize the dataset unless a complete one with the same settings is there."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        wanted = {
            "n_cases": n_cases,
            "seed": seed,
            "revision": PHANTOM_REVISION,
            "format": data_cfg.get("format", "msd_brats"),
            "spacing_mm": float(data_cfg.get("spacing", 2.0)),
            "shape": data_cfg.get("shape"),
        }
        same = all(meta.get(k) == v for k, v in wanted.items())
        if meta.get("complete") and same:
            _log(f"reusing {folder} ({n_cases} cases)")
            return folder
    _log(f"synthesizing {n_cases} BraTS-like phantoms into {folder}")
    return synthesize_dataset(
        "brats",
        folder,
        n_cases,
        seed=seed,
        fmt=data_cfg.get("format", "msd_brats"),
        spacing=float(data_cfg.get("spacing", 2.0)),
        shape=data_cfg.get("shape"),
        workers=int(data_cfg.get("workers", 1)),
        overwrite=True,
    )


def _check(folder: Path) -> None:
    report = check_dataset(open_dataset(folder), progress=False)
    if not report.ok:
        first = report.problems[0].message(folder)
        raise DataError(folder, f"failed its integrity checks: {first}")
    _log(f"check-data {folder.name}: {report.n_ok} cases OK")


def _train(
    train_dir: Path, runs: Path, name: str, model_args: dict[str, Any], cfg: dict[str, Any]
) -> Path:
    overrides = flatten_config(model_train_config(cfg, name))
    fold = cfg.get("fold", 0)
    # resume=True starts a new run when the fold folder has no checkpoint yet.
    run = prepare_run(
        train_dir, name, fold, runs, overrides=overrides, model_args=model_args, resume=True
    )
    fold_dir = run.fold_dir
    if (fold_dir / "checkpoint_final.pt").is_file():
        _log(f"{name}: reusing the finished run in {fold_dir}")
        return fold_dir
    _log(f"{name}: training {run.config['steps']} steps on fold {fold} -> {fold_dir}")
    run_training(run, progress=True)
    return fold_dir


def _predict_and_evaluate(fold_dir: Path, test_dir: Path, pred_dir: Path, report_dir: Path):
    # checkpoint_best.pt: picked by the Dice on the fold's validation cases (never the test set).
    predictor = Predictor.from_run(fold_dir, checkpoint="best")
    result = predict_folder(predictor, test_dir, pred_dir, overwrite=True, model=fold_dir)
    if result.failed:
        raise DataError(pred_dir, f"prediction failed for {len(result.failed)} case(s)")
    report = evaluate(pred_dir, test_dir)
    write_report(report, report_dir)
    return report


def run_demo(
    out: str | Path = "demo",
    config: str | Path | None = None,
    *,
    models: Sequence[str] | None = None,
    steps: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> DemoResult:
    """Run the whole demo into ``out`` and return where the report is.

    Args:
        out: output folder (datasets, runs, predictions, reports, ``report.md``).
        config: a demo YAML (default: the packaged ``configs/demo.yaml``).
        models: override the config's model list (names from :func:`nmfseg.list_models`).
        steps: override the number of training steps of every model.
        n_train: override the number of training phantoms.
        n_test: override the number of held-out phantoms.

    Returns:
        A :class:`DemoResult` with the report path, per-model summaries and timings.
    """
    cfg = load_demo_config(config)
    if steps is not None:
        set_demo_steps(cfg, steps)
    data_cfg = cfg["data"]
    n_train = int(n_train if n_train is not None else data_cfg.get("train_cases", 40))
    n_test = int(n_test if n_test is not None else data_cfg.get("test_cases", 8))
    if n_train < 5 or n_test < 1:
        raise ConfigError(
            f"the demo needs >= 5 training and >= 1 test cases, got {n_train}, {n_test}"
        )
    data_cfg["train_cases"], data_cfg["test_cases"] = n_train, n_test
    names = list(models) if models else list(cfg["models"])
    unknown = [n for n in names if n not in cfg["models"]]
    if unknown:
        raise ConfigError(
            f"--model: {', '.join(unknown)} not in the demo config "
            f"(it has {', '.join(cfg['models'])})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(data_cfg.get("seed", 0))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train_dir = _make_dataset(out / "data" / "train", n_train, seed, data_cfg)
    test_dir = _make_dataset(out / "data" / "test", n_test, seed + 1000, data_cfg)
    _check(train_dir)
    _check(test_dir)
    timings["data"] = time.perf_counter() - t0

    fold_dirs: dict[str, Path] = {}
    report_dirs: list[Path] = []
    for name in names:
        fold_dirs[name] = _train(train_dir, out / "runs", name, cfg["models"][name] or {}, cfg)
        # The trainer's own clock (log.csv), which adds up the parts of a resumed run.
        timings[f"train {name}"] = training_seconds(fold_dirs[name]) or 0.0
        t0 = time.perf_counter()
        report_dir = out / "reports" / name
        _predict_and_evaluate(fold_dirs[name], test_dir, out / "predictions" / name, report_dir)
        report_dirs.append(report_dir)
        timings[f"predict+evaluate {name}"] = time.perf_counter() - t0

    reports = load_reports(report_dirs, names, minimum=1)
    comparison = compare_reports(reports, reference=names[0])
    report_path = write_demo_report(
        out, cfg, names, fold_dirs, comparison, test_dir, timings, TARGETS
    )
    summaries = {
        n: json.loads((d / "summary.json").read_text())
        for n, d in zip(names, report_dirs, strict=True)
    }
    _log(f"report: {report_path}")
    return DemoResult(out=out, report=report_path, summaries=summaries, timings=timings)
