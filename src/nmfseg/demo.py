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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from nmfseg.errors import ConfigError, DataError

__all__ = ["DemoResult", "load_demo_config", "run_demo"]

#: Targets of the demo on held-out phantoms (mean Dice per region).
TARGETS = {"WT": 0.90, "TC": 0.80, "ET": 0.70}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path
    report: Path
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def load_demo_config(path: str | Path | None = None) -> dict[str, Any]:
    """The demo settings: ``configs/demo.yaml`` or a YAML file with the same sections."""
    import yaml

    if path is None:
        text = resources.files("nmfseg").joinpath("configs/demo.yaml").read_text()
        where = "configs/demo.yaml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise DataError(path, f"cannot read the demo config ({err.strerror})") from None
        where = str(path)
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None
    for key in ("data", "train", "models"):
        if not isinstance(cfg, dict) or not isinstance(cfg.get(key), dict):
            raise ConfigError(f"{where}: missing the '{key}' section")
    own = cfg.get("model_train")
    if own is not None:
        if not isinstance(own, dict):
            raise ConfigError(f"{where}: 'model_train' must map model names to train settings")
        for name, section in own.items():
            if name not in cfg["models"]:
                raise ConfigError(
                    f"{where}: model_train.{name}: not a model of the 'models' section "
                    f"({', '.join(cfg['models'])})"
                )
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{where}: model_train.{name} must be a mapping of train keys")
    return cfg


def model_train_config(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``train`` section with the ``model_train[name]`` overrides merged in (deeply)."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    return merge(cfg["train"], (cfg.get("model_train") or {}).get(name) or {})


def set_demo_steps(cfg: dict[str, Any], steps: int) -> None:
    """Make every model train ``steps`` steps (``--steps``), in place.

    The value replaces ``train.steps`` and any ``model_train.<name>.steps``; every warm-up is
    capped at a tenth of it.

    Examples::

        >>> cfg = {"train": {"steps": 600, "scheduler": {"warmup_steps": 30}},
        ...        "model_train": {"segresnet": {"steps": 900}}}
        >>> set_demo_steps(cfg, 100)
        >>> model_train_config(cfg, "segresnet")["steps"], cfg["train"]["scheduler"]
        (100, {'warmup_steps': 10})
    """
    steps = int(steps)
    cfg["train"]["steps"] = steps
    own = [v for v in (cfg.get("model_train") or {}).values() if isinstance(v, dict)]
    for section in own:
        section.pop("steps", None)
    for section in [cfg["train"], *own]:
        sched = section.get("scheduler")
        if isinstance(sched, dict) and "warmup_steps" in sched:
            sched["warmup_steps"] = min(int(sched["warmup_steps"]), steps // 10)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (config overrides use dotted keys)."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _log(message: str) -> None:
    import sys

    from tqdm import tqdm

    tqdm.write(f"[demo] {message}", file=sys.stderr)


def _make_dataset(folder: Path, n_cases: int, seed: int, data_cfg: dict[str, Any]) -> Path:
    """Synthesize the dataset unless a complete one with the same settings is there."""
    from nmfseg.phantoms.synth import MANIFEST, PHANTOM_REVISION, synthesize_dataset

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
    from nmfseg.data.checks import check_dataset
    from nmfseg.data.formats import open_dataset

    report = check_dataset(open_dataset(folder), progress=False)
    if not report.ok:
        first = report.problems[0].describe(folder)
        raise DataError(folder, f"failed its integrity checks: {first}")
    _log(f"check-data {folder.name}: {report.n_ok} cases OK")


def _train(
    train_dir: Path, runs: Path, name: str, model_args: dict[str, Any], cfg: dict[str, Any]
) -> Path:
    from nmfseg.training.setup import prepare_run
    from nmfseg.training.trainer import run_training

    overrides = _flatten(model_train_config(cfg, name))
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


def _training_seconds(fold_dir: Path) -> float:
    """Training time (validation included) from the last row of the run's ``log.csv``."""
    import csv

    with (fold_dir / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["time"]) if rows else 0.0


def _predict_and_evaluate(fold_dir: Path, test_dir: Path, pred_dir: Path, report_dir: Path):
    from nmfseg.evaluation.evaluate import evaluate, write_report
    from nmfseg.inference.predict import predict_folder

    # checkpoint_best.pt: picked by the Dice on the fold's validation cases (never the test set).
    result = predict_folder(
        fold_dir, test_dir, pred_dir, checkpoint="best", overwrite=True, progress=True
    )
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
    from nmfseg.demo_report import write_demo_report
    from nmfseg.evaluation.compare import compare_reports, load_reports

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
        timings[f"train {name}"] = _training_seconds(fold_dirs[name])
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


def mean_dice(summary: dict[str, Any], region: str) -> float:
    """Mean Dice of ``region`` in an evaluation ``summary.json``."""
    return float(summary["metrics"]["dice"][region]["mean"])
