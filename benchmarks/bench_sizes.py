"""Benchmark: time and peak memory against input size, the Swin Factorizer beside SegResNet.

Whole BraTS networks (registered presets, 1×4×s³ inputs, s = 32, 48, 64, 96, 128), forward
(``fwd``: ``eval()`` under ``torch.inference_mode()``) and forward+backward (``fwdbwd``: one
training step without the optimizer, every deep-supervision output in the loss). The
reference is SegResNet (``segresnet_brats``: MONAI SegResNet, init_filters 32, blocks
1-2-2-4); the default network is ``swin_factorizer_brats``.

Every measurement is one fresh process of ``benchmarks/bench_models.py`` (its ``worker``:
one warm-up step, one timed step, peak resident size (``VmHWM``) minus the resident size once
the model and input exist). The processes are interleaved, every network once per round, and each
number is the median over ``--repeats`` rounds; the ratios are to SegResNet at the same size
and mode, measured in the same rounds.

Output: a Markdown table on stdout; with ``--out DIR`` also ``bench_sizes.md``, ``.csv``,
``.json`` (finished measurements: an interrupted run resumes) and, with ``--plot``,
``bench_sizes.png`` (time and peak memory against the cube side, log y).

Usage::

    python benchmarks/bench_sizes.py --out bench_out --plot    # 32³ ... 128³, 2 threads
    python benchmarks/bench_sizes.py --sizes 32 --repeats 1    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import Results, fmt, machine, markdown_table, progress, save_table
from bench_models import REFERENCE, run
from nmfseg.fileio import atomic_path
from nmfseg.models import list_models

NAME = "bench_sizes"
SIZES = [32, 48, 64, 96, 128]
MODES = ("fwd", "fwdbwd")


def collect(args: argparse.Namespace, store: Results) -> list[dict[str, Any]]:
    """Run (or reuse) every measurement; one record per size, mode and network."""
    order = [REFERENCE, *(m for m in args.models if m != REFERENCE)]
    total = len(args.sizes) * len(args.modes) * args.repeats * len(order)
    step, records = 0, []
    for size in args.sizes:
        for mode in args.modes:
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
            for round_ in range(args.repeats):
                for model in order:
                    step += 1
                    key = f"{model}:{size}:{mode}:{round_}"
                    r = store.get(key)
                    if r is None:
                        progress(step, total, f"{model} 1x4x{size}^3 {mode} (round {round_ + 1})")
                        r = run(model, size, mode, args.threads, 1)
                        if "error" not in r:  # a failure is tried again by the next run
                            store.put(key, r)
                    runs[model].append(r)
            for model in order:
                ok = [r for r in runs[model] if "error" not in r]
                rec: dict[str, Any] = {"side": size, "mode": mode, "model": model}
                rec["rounds"] = len(ok)
                if ok:
                    rec["time_s"] = statistics.median(r["time_s"] for r in ok)
                    rec["first_s"] = statistics.median(r["first_s"] for r in ok)
                    rec["peak_mb"] = statistics.median(r["peak_mb"] for r in ok)
                failed = [r["error"] for r in runs[model] if "error" in r]
                rec["error"] = failed[-1].strip().splitlines()[-1] if failed else ""
                records.append(rec)
    return records


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown report: setup and one row per size, mode and network."""
    ref = {(r["side"], r["mode"]): r for r in records if r["model"] == REFERENCE}
    rows = []
    for r in records:
        base = ref[r["side"], r["mode"]]
        ratios = []
        for col in ("time_s", "peak_mb"):
            ok = r.get(col) and base.get(col)
            ratios.append(f"{r[col] / base[col]:.2f}x" if ok else "-")
        rows.append([
            f"1×4×{r['side']}³", r["mode"], r["model"], fmt(r.get("time_s")), ratios[0],
            fmt(r.get("peak_mb")), ratios[1], r["error"][:80],
        ])  # fmt: skip
    header = ["input", "mode", "network", "time, s", "vs SegResNet", "peak, MB",
              "vs SegResNet", "failed"]  # fmt: skip
    return "\n\n".join([
        "## Time and peak memory against input size (BraTS presets)",
        f"Machine: {machine(args.threads)}. Each number: median over {args.repeats} "
        "interleaved rounds of one fresh process (one warm-up step, one timed step). Peak: "
        "VmHWM − RSS after building model + input. fwd: eval() under inference_mode; "
        "fwdbwd: train(), loss over every deep-supervision output, backward.",
        markdown_table(header, rows, "lllrrrrl"),
    ])  # fmt: skip


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Two panels: time and peak memory against the cube side, log y, one line per network
    and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (("time_s", "time, s"), ("peak_mb", "peak memory, MB"))
    for ax, (col, ylabel) in zip(axes, panels, strict=True):
        for i, model in enumerate(models):
            for mode, style in zip(MODES, ("--", "-"), strict=True):
                pts = [(r["side"], r[col]) for r in records
                       if r["model"] == model and r["mode"] == mode and r.get(col)]  # fmt: skip
                if pts:
                    x, y = zip(*pts, strict=True)
                    ax.plot(x, y, style, marker="o", color=f"C{i}", label=f"{model} {mode}")
        sides = sorted({r["side"] for r in records})
        ax.set_xticks(sides, [f"{s}³" for s in sides])
        ax.set(yscale="log", xlabel="input 1×4×side³", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Whole networks against input size (fwd dashed, fwd+bwd solid)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="cube sides")
    parser.add_argument("--models", nargs="+", default=["swin_factorizer_brats"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--out", type=Path, help="write NAME.md, NAME.csv (and NAME.png)")
    parser.add_argument("--plot", action="store_true", help="write OUT/bench_sizes.png")
    parser.add_argument("--fresh", action="store_true", help="do not reuse OUT/NAME.json")
    args = parser.parse_args(argv)

    if args.plot and args.out is None:
        parser.error("--plot needs --out DIR")
    unknown = sorted(set(args.models) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; see nmfseg.list_models()")
    args.sizes = sorted(set(args.sizes))
    store = Results(args.out, NAME, {"threads": args.threads}, args.fresh)
    if store.reused:
        print(f"reusing {store.reused} measurements of {store.path} (--fresh to redo them)")
    records = collect(args, store)
    save_table(args.out, NAME, report(records, args), records)
    if args.plot:
        plot(records, args.out / f"{NAME}.png")


if __name__ == "__main__":
    main()
