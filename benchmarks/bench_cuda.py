"""Benchmark: each network at its fastest mode on a CUDA GPU, best against best (#22).

The GPU counterpart of ``bench_engines.py``: its three questions, in one process, each
network in four modes: eager float32, eager bf16 autocast, ``torch.compile`` float32 and
``torch.compile`` bf16 autocast.

1. **Inference, best against best.** The Swin Factorizer and SegResNet-32 (BraTS presets,
   untrained and seeded, :func:`bench_engines.build`) on ``1×4×S³`` (``eval()``,
   ``inference_mode``, as ``nmfseg predict`` runs them) in every mode; the Factorizer's
   fastest time over SegResNet-32's fastest.
2. **The NMF's cost.** The Swin Factorizer against its no-NMF ablation
   (``factorizer_brats_no_nmf``), eager float32 and bf16: a forward pass at ``S³`` and a
   training step at ``B×4×T³``.
3. **Training, best against best.** A training step at ``B×4×T³`` in every mode: forward,
   the paper's loss (:class:`~nmfseg.training.losses.DeepSupervisionLoss`, Dice + BCE over
   every deep-supervision output, on random region masks), backward and an AdamW step, with
   the BraTS recipe's loss and optimizer settings; the Factorizer's fastest over
   SegResNet-32's.

Each job runs ``--warmup`` times first (the first run, compilation included, is the CSV's
``first_s``), once more for its peak memory, then in ``--repeats`` rounds that run every
job of the table once each (:func:`_common.measure`), every run ending in
``torch.cuda.synchronize``; times are medians. Peak memory is
``torch.cuda.max_memory_allocated`` over one run, reset before it, minus what was allocated
when the run began (weights, inputs, AdamW's moments): activations, gradients and
temporaries. A job that fails (out of memory, a compiler error) is reported as failed and
the others go on.

float32 is PyTorch's default on the GPU (TF32 in cuDNN convolutions, not in matmuls; the
report says which). Without a visible GPU the script says so in one line and exits with
status 2; ``--device cpu`` runs the same code on the CPU (a smoke test of the script).

Usage::

    python benchmarks/bench_cuda.py --out bench_cuda_out       # S=T=128, batch 1
    bash benchmarks/cuda_check.sh                              # tests + this, ~8 min (H100)
    python benchmarks/bench_cuda.py --device cpu --size 16 --train-size 16 --repeats 1 \\
        --no-compile --channels 8,16,32,64,128                 # smoke, no GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from _common import (
    check_out,
    cpu_model,
    environment,
    fmt,
    markdown_table,
    measure,
    save_table,
    widths,
)
from bench_engines import FACTORIZER, NO_NMF, SEGRESNET, build
from nmfseg.training.config import load_recipe
from nmfseg.training.losses import DeepSupervisionLoss
from nmfseg.training.schedule import adamw

#: Mode name: (bf16 autocast, torch.compile).
MODES = {
    "float32": (False, False),
    "bf16": (True, False),
    "compile": (False, True),
    "compile-bf16": (True, True),
}
LABELS = {
    "float32": "eager float32",
    "bf16": "eager bf16 autocast",
    "compile": "torch.compile float32",
    "compile-bf16": "torch.compile bf16 autocast",
}
TITLES = {FACTORIZER: "Swin Factorizer", SEGRESNET: "SegResNet-32", NO_NMF: "no-NMF ablation"}
NO_CUDA = (
    "bench_cuda: no CUDA device visible; run it on a GPU machine "
    "(bash benchmarks/cuda_check.sh), or pass --device cpu for a smoke run"
)
PEAK_NOTE = (
    "Peak: torch.cuda.max_memory_allocated over one run minus what was allocated when it "
    "began (weights, inputs, AdamW's moments); '-' on the CPU"
)
Job = Callable[[], None]


def _autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_job(net: torch.nn.Module, x: torch.Tensor, mode: str) -> Job:
    """One inference pass of ``net`` on ``x`` in ``mode`` (a key of :data:`MODES`)."""
    bf16, compiled = MODES[mode]
    model = torch.compile(net, dynamic=False) if compiled else net

    def run() -> None:
        net.eval()
        with torch.inference_mode(), _autocast(x.device, bf16):
            model(x)

    return run


def train_job(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    target: torch.Tensor,
    mode: str,
) -> Job:
    """One training step in ``mode``: forward, the paper's loss, backward, ``optimizer``."""
    bf16, compiled = MODES[mode]
    model = torch.compile(net, dynamic=False) if compiled else net
    loss = recipe_loss()

    def run() -> None:
        net.train()
        with _autocast(x.device, bf16):
            outputs = model(x)
        loss(outputs, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def recipe_loss() -> DeepSupervisionLoss:
    """The BraTS recipe's loss (the paper's: Dice + BCE, deep-supervision weights)."""
    return DeepSupervisionLoss.from_config(load_recipe("brats")["loss"])


def recipe_adamw(net: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW with the BraTS recipe's settings (the paper's), for ``net``."""
    return adamw(net.parameters(), load_recipe("brats")["optimizer"])


def _peak_mb(job: Job, device: torch.device) -> tuple[float | None, float | None]:
    """``(peak above the start, allocated at the start)`` in MB over one run of ``job``."""
    if device.type != "cuda":
        job()
        return None, None
    _sync(device)
    held = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    job()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - held) / 2**20, held / 2**20


def run_jobs(jobs: dict[Any, Job], args: argparse.Namespace) -> dict[Any, dict[str, Any]]:
    """Warm up, peak memory, then median seconds of every job, the jobs interleaved.

    Returns:
        Per key ``{"time_s", "first_s", "peak_mb", "held_mb"}``, or ``{"error": ...}`` for a
        job that failed before its timing (the others are timed without it).
    """
    device = args.device
    results: dict[Any, dict[str, Any]] = {}
    for key, job in jobs.items():
        try:
            _sync(device)
            start = time.perf_counter()
            job()
            _sync(device)
            first = time.perf_counter() - start
            for _ in range(args.warmup - 1):
                job()
            peak, held = _peak_mb(job, device)
        except Exception as err:  # out of memory, a compiler error: report it, go on
            results[key] = {"error": f"{type(err).__name__}: {str(err).strip()[:200]}"}
            print(f"bench_cuda: {key} failed: {results[key]['error']}", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        results[key] = {"first_s": first, "peak_mb": peak, "held_mb": held}

    def synced(job: Job) -> Job:
        return lambda: (job(), _sync(device))

    timed = {k: synced(jobs[k]) for k in jobs if "error" not in results[k]}
    for key, (wall_ms, _) in measure(timed, args.repeats, warmup=0).items():
        results[key]["time_s"] = wall_ms / 1e3
    return results


def comparison(
    table: str,
    title: str,
    results: dict[tuple[str, str], dict[str, Any]],
    names: tuple[str, str],
    rows: dict[str, str],
    best: bool,
) -> tuple[str, list[dict[str, Any]]]:
    """Table ``table``: two networks (``names``), seconds and peak MB per row (key: label),
    and their ratio. With ``best``, a last row sets each network's fastest row against the other's.
    """
    a, b = names
    lines, records = [], []
    for row, label in rows.items():
        cells, times = [label], []
        for name in names:
            r = results[(name, row)]
            records.append({"table": table, "row": row, "network": name, **r})
            times.append(r.get("time_s"))
            cells += [fmt(r.get("time_s")) if "error" not in r else "failed", fmt(r.get("peak_mb"))]
        ratio = f"{times[0] / times[1]:.2f}×" if None not in times else "-"
        lines.append([*cells, f"**{ratio}**" if not best else ratio])
    if best:
        picks = []
        for name in names:
            timed = {row: results[(name, row)].get("time_s") for row in rows}
            timed = {row: t for row, t in timed.items() if t is not None}
            picks.append(min(timed.items(), key=lambda kv: kv[1]) if timed else ("-", None))
        (ra, ta), (rb, tb) = picks
        ratio = f"**{ta / tb:.2f}×**" if ta and tb else "-"
        lines.append([f"**best** ({TITLES[a]} {ra}, {TITLES[b]} {rb})", fmt(ta), "", fmt(tb),
                      "", ratio])  # fmt: skip
    header = ["", f"{TITLES[a]} (s)", "peak (MB)", f"{TITLES[b]} (s)", "peak (MB)", "ratio"]
    return f"### {title}\n\n{markdown_table(header, lines)}", records


def _input(args: argparse.Namespace, batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 4, size, size, size, device=args.device)


def _target(args: argparse.Namespace, net: torch.nn.Module) -> torch.Tensor:
    shape = (args.batch, net.out_channels, *(args.train_size,) * 3)
    return (torch.rand(shape, device=args.device) > 0.5).float()


def _build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    return build(name, args.channels).to(args.device)


def inference_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    x = _input(args, 1, args.size)
    jobs = {}
    for name in (FACTORIZER, SEGRESNET):
        net = _build(name, args)
        jobs |= {(name, mode): forward_job(net, x, mode) for mode in args.modes}
    results = run_jobs(jobs, args)
    title = f"Inference, 1×4×{args.size}³, median of {args.repeats}"
    rows = {mode: LABELS[mode] for mode in args.modes}
    return comparison("inference", title, results, (FACTORIZER, SEGRESNET), rows, best=True)


def nmf_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    x, xt = _input(args, 1, args.size), _input(args, args.batch, args.train_size)
    jobs = {}
    for name in (FACTORIZER, NO_NMF):
        net = _build(name, args)
        optimizer, target = recipe_adamw(net), _target(args, net)
        for mode in ("float32", "bf16"):
            jobs[(name, f"fwd {mode}")] = forward_job(net, x, mode)
            jobs[(name, f"train {mode}")] = train_job(net, optimizer, xt, target, mode)
    results = run_jobs(jobs, args)
    rows = {
        f"{what} {mode}": f"{label}, {LABELS[mode]}"
        for what, label in (
            ("fwd", f"forward, 1×4×{args.size}³"),
            ("train", f"training step, {args.batch}×4×{args.train_size}³"),
        )
        for mode in ("float32", "bf16")
    }
    title = f"The NMF's cost, median of {args.repeats}"
    return comparison("nmf", title, results, (FACTORIZER, NO_NMF), rows, best=False)


def training_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    x = _input(args, args.batch, args.train_size)
    jobs = {}
    for name in (FACTORIZER, SEGRESNET):
        net = _build(name, args)
        optimizer, target = recipe_adamw(net), _target(args, net)
        jobs |= {(name, mode): train_job(net, optimizer, x, target, mode) for mode in args.modes}
    results = run_jobs(jobs, args)
    title = f"Training step, {args.batch}×4×{args.train_size}³, median of {args.repeats}"
    rows = {mode: LABELS[mode] for mode in args.modes}
    return comparison("training", title, results, (FACTORIZER, SEGRESNET), rows, best=True)


TABLES = {"inference": inference_table, "nmf": nmf_table, "training": training_table}


def allow_recompiles(limit: int = 64) -> None:
    """Let ``torch.compile`` keep up to ``limit`` graphs per function (default 8).

    The Swin Factorizer's stages compile as graphs of their own (``run_stage`` after a graph
    break), one per stage and per mode: past the limit dynamo runs the rest eagerly, and a
    compiled row would time eager code.
    """
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name since 2.6, the old one
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


def graph_breaks() -> str:
    """How many distinct graph-break reasons ``torch.compile`` met in this process."""
    from torch._dynamo.utils import counters

    reasons = counters["graph_break"]
    return f"torch.compile met {len(reasons)} distinct graph-break reason(s) in this run"


def device_line(device: torch.device) -> str:
    """One line naming the device, torch, the float32 math in use and the environment."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        what = (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, TF32 matmul {'on' if tf32[0] else 'off'}, "
            f"TF32 cuDNN {'on' if tf32[1] else 'off'}, cuDNN autotuner "
            f"{'on' if torch.backends.cudnn.benchmark else 'off'}"
        )
    else:
        what = f"CPU {cpu_model()}, {torch.get_num_threads()} threads"
    return f"{what}, torch {torch.__version__}; environment: {environment()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (smoke) [cuda]")
    parser.add_argument("--size", type=int, default=128, help="inference input S³ [128]")
    parser.add_argument("--train-size", type=int, default=128, help="training input T³ [128]")
    parser.add_argument("--batch", type=int, default=1, help="training batch B [1]")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds [10]")
    parser.add_argument("--warmup", type=int, default=2, help="runs of each job first [2]")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--tables", default=",".join(TABLES), help="inference,nmf,training")
    parser.add_argument(
        "--channels", type=widths, default=None, help="reduced Factorizer widths (smoke)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write OUT/bench_cuda.*")
    parser.add_argument(
        "--no-cudnn-benchmark", action="store_true",
        help="leave cuDNN's autotuner off (on by default: best against best, and the convolutions"
        " of SegResNet and of the Factorizers' stems and samplers are timed as they deploy)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    check_out(parser, args.out)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        raise SystemExit(2)
    unknown = sorted(set(args.tables.split(",")) - set(TABLES))
    if unknown:
        parser.error(f"--tables: unknown {unknown}; choose from {', '.join(TABLES)}")
    if min(args.size, args.train_size, args.batch, args.repeats, args.warmup) < 1:
        parser.error("--size, --train-size, --batch, --repeats and --warmup must be positive")
    args.modes = [m for m in MODES if not (args.no_compile and MODES[m][1])]
    if not args.no_compile:
        allow_recompiles()
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    line = device_line(args.device)
    print(f"Device: {line}", flush=True)
    texts, records = [], []
    for name in args.tables.split(","):
        text, recs = TABLES[name](args)
        print(text + "\n", flush=True)
        texts.append(text)
        records += recs
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    notes = [PEAK_NOTE] + ([] if args.no_compile else [graph_breaks()])
    report = "\n\n".join(texts) + "\n\n" + "; ".join(notes) + f".\n\nDevice: {line}\n"
    save_table(args.out, "bench_cuda", report, records)


if __name__ == "__main__":
    main()
