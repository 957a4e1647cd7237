"""Benchmark: one whole case through ``nmfseg predict``, each network at each engine (#22).

One BraTS phantom at BraTS's own grid (``nmfseg synth brats --spacing 1 --shape
240,240,155``), the Swin Factorizer and SegResNet-32 (BraTS presets, untrained and seeded,
128³ windows) saved as one-fold runs and exported as ``nmfseg export`` does; then the wall
clock of the command ``nmfseg predict`` (a fresh process: loading, compiling, the sliding
window, writing) for every network × engine, the engines alternating round by round. The
result is each network's fastest engine against the other's.

Usage::

    python benchmarks/bench_case.py                            # 240x240x155, 2 rounds
    python benchmarks/bench_case.py --shape 64,64,48 --spacing 3 --patch 32 --rounds 1 \\
        --engines torch,openvino-bf16                          # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import nmfseg
from _common import fmt, machine, markdown_table, save_table
from nmfseg.training.checkpoint import atomic_save

NETWORKS = ("swin_factorizer_brats", "segresnet_brats")
#: engine -> the ``nmfseg predict`` options (``RUN``/``ONNX`` name what ``-r`` takes)
ENGINES = {
    "torch": ["-r", "RUN"],
    "torch-bf16": ["-r", "RUN", "--amp", "bf16"],
    "onnxruntime": ["--engine", "onnxruntime", "-r", "ONNX"],
    "openvino": ["--engine", "openvino", "-r", "ONNX"],
    "openvino-bf16": ["--engine", "openvino", "--amp", "bf16", "-r", "ONNX"],
}
NMFSEG = [sys.executable, "-m", "nmfseg"]


THREADS = {"OMP_NUM_THREADS": "2"}


def _run(args: list[Any]) -> None:
    env = {**os.environ, **THREADS}
    subprocess.run(NMFSEG + [str(a) for a in args], check=True, capture_output=True, env=env)


def prepare(work: Path, shape: str, spacing: float, patch: int) -> dict[str, Path]:
    """The phantom case and, per network, its one-fold run and its ``.onnx``."""
    _run(["synth", "brats", "-o", work / "data", "-n", 1, "--spacing", spacing, "--shape",
          shape, "--no-progress"])  # fmt: skip
    paths = {"data": work / "data"}
    for name in NETWORKS:
        torch.manual_seed(0)
        net = nmfseg.create_model(name)
        config = {"patch_size": [patch] * 3, "dataset": {"scheme": "brats"}}
        ckpt = {"model_name": name, "model_kwargs": {}, "model": net.state_dict(), "config": config}
        atomic_save(ckpt, work / name / "fold_0" / "checkpoint_final.pt")
        _run(["export", "-r", work / name, "-o", work / f"{name}.onnx"])
        paths[name] = work / name
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="240,240,155")
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--patch", type=int, default=128, help="window edge [128]")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write OUT/bench_case.*")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    THREADS["OMP_NUM_THREADS"] = str(args.threads)
    times: dict[tuple[str, str], list[float]] = {(n, e): [] for n in NETWORKS for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = prepare(work, args.shape, args.spacing, args.patch)
        for _ in range(args.rounds):
            for (name, engine), runs in times.items():
                subs = {"RUN": paths[name], "ONNX": work / f"{name}.onnx"}
                opts = [subs.get(o, o) for o in ENGINES[engine]]
                start = time.perf_counter()
                _run(["predict", *opts, "-i", paths["data"], "-o", work / "pred", "--overwrite",
                      "--quiet"])  # fmt: skip
                runs.append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [[e, fmt(med[(NETWORKS[0], e)]), fmt(med[(NETWORKS[1], e)])] for e in engines]
    best = [min(engines, key=lambda e, n=n: med[(n, e)]) for n in NETWORKS]
    ratio = med[(NETWORKS[0], best[0])] / med[(NETWORKS[1], best[1])]
    fastest = [fmt(med[(n, b)]) for n, b in zip(NETWORKS, best, strict=True)]
    label = f"**each at its fastest** ({best[0]}, {best[1]})"
    rows.append([label, fastest[0], f"{fastest[1]} → **{ratio:.2f}×**"])
    title = f"nmfseg predict, one {args.shape} case at {args.spacing} mm, median of {args.rounds}"
    table = markdown_table(["engine", "Swin Factorizer (s)", "SegResNet-32 (s)"], rows)
    report = f"### {title}\n\n{table}\n\nMachine: {machine(args.threads)}\n"
    print(report)
    records = [{"network": n, "engine": e, "seconds": med[(n, e)]} for n, e in med]
    save_table(args.out, "bench_case", report, records)


if __name__ == "__main__":
    main()
