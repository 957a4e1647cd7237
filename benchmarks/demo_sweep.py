"""Sweep of the demo's training settings: many ``nmfseg demo`` runs side by side.

Every variant is the packaged ``configs/demo.yaml`` with some ``train`` keys changed and one
model. The phantoms are generated once and copied to every run, so the variants differ in
their settings only. All runs start together (on a GPU they share it; on a CPU run one at a
time with ``--variants``); at ``--deadline`` seconds the unfinished ones are stopped. The
result, ``OUT/sweep.json``, holds per variant the validation Dice curve (the fold's
validation cases), the loss curve and, for finished runs, the mean Dice/HD95 on the held-out
test phantoms. This is how the demo's learning rates and gradient clipping were chosen
(docs/demo.md).

Usage::

    python benchmarks/demo_sweep.py --work /tmp/sweep --out sweep_out --deadline 320
    python benchmarks/demo_sweep.py --work /tmp/sweep --out o --variants lr4e-3_clip1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from nmfseg.demo import load_demo_config
from nmfseg.demo.run import _make_dataset

SW, SEG = "swin_factorizer_brats", "segresnet_brats"


def _train(lr: float, clip: float | None = None, affine: bool = True, **keys: Any) -> dict:
    opt: dict[str, Any] = {"lr": lr, "grad_clip": clip}
    train: dict[str, Any] = {"optimizer": opt, "scheduler": {"warmup_steps": 30}, **keys}
    if not affine:
        train["augmentation"] = {"affine": {"prob": 0.0}}
    return train


#: name -> (model, ``train`` overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lr1e-3": (SW, _train(1e-3)),
    "lr2e-3": (SW, _train(2e-3)),
    "lr3e-3": (SW, _train(3e-3)),
    "lr3e-3_clip1": (SW, _train(3e-3, clip=1.0)),
    "lr4e-3_clip1": (SW, _train(4e-3, clip=1.0)),
    "lr3e-3_noaffine": (SW, _train(3e-3, affine=False)),
    "lr3e-3_1200steps": (SW, _train(3e-3, steps=1200)),
    "lr2e-3_b1_p64": (SW, _train(2e-3, batch_size=1, patch_size=[64, 64, 64])),
    "seg_lr1e-3": (SEG, _train(1e-3)),
    "seg_lr3e-3": (SEG, _train(3e-3)),
}


def _collect(work: Path, names: list[str]) -> dict[str, Any]:
    results = {}
    for name in names:
        model = VARIANTS[name][0]
        run = work / name
        log = run / "runs" / "train" / model / "fold_0" / "log.csv"
        rows = list(csv.DictReader(log.open())) if log.is_file() else []
        summary = run / "reports" / model / "summary.json"
        test = None
        if summary.is_file():
            metrics = json.loads(summary.read_text())["metrics"]
            test = {
                m: {r: metrics[m][r]["mean"] for r in ("ET", "TC", "WT")} for m in ("dice", "hd95")
            }
        text = (run / "demo.log").read_text() if (run / "demo.log").is_file() else ""
        keys = ("step", "time", "val_dice_ET", "val_dice_TC", "val_dice_WT")
        results[name] = {
            "model": model,
            "val": [{k: float(r[k]) for k in keys} for r in rows if r.get("val_dice")],
            "loss": [[int(r["step"]), float(r["loss"])] for r in rows],
            "skipped_step_warnings": text.count("step skipped"),
            "test": test,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the runs")
    parser.add_argument("--out", type=Path, required=True, help="where sweep.json goes")
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds for all runs")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--data-workers", type=int, default=4)
    args = parser.parse_args()

    t0 = time.time()
    base = load_demo_config()
    base.pop("model_train", None)  # a variant states its whole training setting
    data_cfg = dict(base["data"], workers=args.data_workers)
    shared = args.work / "data"
    _make_dataset(shared / "train", int(data_cfg["train_cases"]), int(data_cfg["seed"]), data_cfg)
    test_seed = int(data_cfg["seed"]) + 1000  # as nmfseg.demo.run.run_demo
    _make_dataset(shared / "test", int(data_cfg["test_cases"]), test_seed, data_cfg)
    procs = {}
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    for name in args.variants:
        model, train = VARIANTS[name]
        # The demo merges model_train[model] over `train` (nmfseg.demo.config.model_train_config).
        cfg = dict(base, models={model: base["models"][model]}, model_train={model: train})
        run = args.work / name
        for split in ("train", "test"):
            shutil.copytree(shared / split, run / "data" / split, dirs_exist_ok=True)
        (run / "demo.yaml").write_text(yaml.safe_dump(cfg))
        log = (run / "demo.log").open("w")
        cmd = [sys.executable, "-m", "nmfseg", "demo", "--config", str(run / "demo.yaml"),
               "--out", str(run)]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    while time.time() - t0 < args.deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(5)
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.kill()
            print(f"{name}: stopped at the deadline")
        elif proc.returncode:
            print(f"{name}: failed ({proc.returncode}), see {args.work / name / 'demo.log'}")
    results = _collect(args.work, args.variants)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(results, indent=1))
    print(f"{'variant':<18} {'val WT@last':>12} {'test ET':>8} {'test TC':>8} {'test WT':>8}")
    for name, r in results.items():
        last = r["val"][-1] if r["val"] else {}
        dice = (r["test"] or {}).get("dice", {})
        cells = [f"{dice[k]:8.3f}" if k in dice else f"{'-':>8}" for k in ("ET", "TC", "WT")]
        val = f"{last['val_dice_WT']:.3f}@{int(last['step'])}" if last else "-"
        print(f"{name:<18} {val:>12} {' '.join(cells)}")


if __name__ == "__main__":
    main()
