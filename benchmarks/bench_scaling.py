"""Benchmark: one global token-mixing layer from 16³ to 128³ tokens (the paper's scaling claim).

The paper's central claim (§1, §3.4.2): the Wrapped NMF layer scales linearly with the
number of tokens ``n``, softmax attention quadratically. This measures ONE layer mixing all
voxels of a ``1 × 32 × s³`` feature map (``n = s³`` tokens, C = 32 channels, heads of 8
channels, batch 1), forward (``fwd``, no autograd) and forward+backward (``fwd+bwd``, the
gradient of a random output, to the input and the weights), for

- ``nmf``: the Global Factorizer's Wrapped NMF, the very module the first block of
  ``global_factorizer_brats`` builds (rank 1, 5 HALS iterations);
- ``favor``: the Performer baseline's FAVOR+ mixer, the module of the first block of
  ``performer_brats`` (16 random features per head);
- ``attention``: exact softmax attention over all tokens,
  ``torch.nn.functional.scaled_dot_product_attention``, inside the FAVOR+ layer's own
  projections (:class:`SoftmaxAttention`), so that only the mixing differs.

The layers are in ``eval()`` (dropout off). Attention is not run where the float32 score
matrix of all heads (``heads · n² · 4`` bytes, what the textbook kernel stores) would exceed
``--max-gb``: those rows read ``OOM (n² = … GB)``. Every worker process may also allocate at
most ``--max-gb`` more, so an allocation that fails is reported as ``OOM`` instead of waking
the OOM killer. On CPU PyTorch's SDPA usually picks a flash kernel that never stores the
matrix (time stays quadratic, memory does not); ``--attention-backend math`` forces the
textbook kernel.

Times: per size, one fresh process times every layer and mode, interleaved (one run of each
per round), median of ``--repeats`` rounds after one warm-up; ratios are to ``nmf`` at the
same size. Peak memory: one fresh process per layer, size and mode running one step, peak
resident size (``VmHWM``, restarted once the layer and input exist) minus the resident size
at that point (resolution: a few MB). The report ends with the least-squares slope of log
time (log memory) against log tokens per layer, over all sizes and over the largest three.

Usage::

    python benchmarks/bench_scaling.py --out bench_out --plot     # 16³ ... 128³, 2 threads
    python benchmarks/bench_scaling.py --sizes 8 16 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from _common import (
    Results,
    fmt,
    forward_jobs,
    is_oom,
    limit_memory,
    loglog_slope,
    machine,
    markdown_table,
    measure,
    peak_rss_mb,
    progress,
    reset_peak_rss,
    rss_mb,
    run_worker,
    save_table,
)
from nmfseg.fileio import atomic_path
from nmfseg.mixers.favor import FAVORAttention
from nmfseg.models import create_model

NAME = "bench_scaling"
SIZES = [16, 24, 32, 48, 64, 96, 128]
METHODS = ("nmf", "favor", "attention")
LABELS = {
    "nmf": "NMF (Global Factorizer)",
    "favor": "FAVOR+ (Performer)",
    "attention": "softmax attention (SDPA)",
}
MODES = ("fwd", "fwd+bwd")
CHANNELS = 32


class SoftmaxAttention(FAVORAttention):
    """Exact multi-head softmax attention over all voxels, in the FAVOR+ layer's projections.

    ``in_proj`` (queries, keys, values) → ``scaled_dot_product_attention`` per head of
    ``head_dim`` channels → ``out_proj`` → dropout: :class:`FAVORAttention` with the estimate
    replaced by the exact attention (the random features are unused).

    Args:
        channels: Number of input and output channels.
        head_dim: Channels per head.
        backend: ``"auto"`` (PyTorch chooses the kernel) or ``"math"`` (the textbook one,
            which stores the ``n × n`` scores).
    """

    def __init__(self, channels: int, head_dim: int = 8, backend: str = "auto") -> None:
        super().__init__(channels, spatial_dims=3, head_dim=head_dim)
        self.backend = backend

    def mix(self, z: Tensor) -> Tensor:
        b, _, *spatial = z.shape
        # (b, h, n, d) with unit stride in d: what PyTorch's fused CPU kernels need
        q, k, v = z.reshape(b, 3, self.heads, self.head_dim, -1).mT.contiguous().unbind(1)
        math_only = self.backend == "math"
        with sdpa_kernel(SDPBackend.MATH) if math_only else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q, k, v)
        return out.mT.reshape(b, self.channels, *spatial)


def build_layer(method: str, backend: str = "auto") -> nn.Module:
    """The token mixer of the first block of the method's BraTS preset, seeded, in eval()."""
    torch.manual_seed(0)
    preset = "global_factorizer_brats" if method == "nmf" else "performer_brats"
    layer = create_model(preset).encoder[0].block.mixer
    if method == "attention":
        layer = SoftmaxAttention(layer.channels, layer.head_dim, backend)
    if layer.channels != CHANNELS:
        raise RuntimeError(f"{preset}'s first block has {layer.channels} channels, not 32")
    return layer.eval()


def attention_gb(side: int, heads: int = CHANNELS // 8) -> float:
    """GB of the float32 attention scores of all heads at ``side³`` tokens (batch 1).

    Examples::

        >>> round(attention_gb(32), 1)
        16.0
    """
    return heads * side**6 * 4 / 2**30


def time_worker(
    size: int, methods: list[str], repeats: int, threads: int, max_gb: float, backend: str
) -> dict[str, Any]:
    """Time every layer and mode at ``size³`` in this process, interleaved (ms)."""
    torch.set_num_threads(threads)
    limit_memory(max_gb)
    torch.manual_seed(1)
    x = torch.randn(1, CHANNELS, size, size, size)
    out: dict[str, Any] = {}
    jobs = {}
    for method in methods:
        layer = build_layer(method, backend)
        try:
            pair = forward_jobs(layer, x)
            for fn in pair.values():  # the warm-up; an allocation failure shows here
                fn()
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            out[method] = {"error": "OOM (allocation failed)"}
            continue
        jobs.update({(method, mode): fn for mode, fn in pair.items()})
    for (method, mode), (wall, cpu) in measure(jobs, repeats, warmup=0).items():
        out.setdefault(method, {})[mode] = {"ms": wall, "cpu_ms": cpu}
    return out


def memory_worker(
    size: int, method: str, mode: str, threads: int, max_gb: float, backend: str
) -> dict[str, Any]:
    """Peak memory (MB) of one step of one layer at ``size³``, in this fresh process.

    The same step first runs on a 4³ input, so that one-time set-up (autograd engine, kernel
    caches) is not counted; the peak is restarted after it.
    """
    torch.set_num_threads(threads)
    limit_memory(max_gb)
    layer = build_layer(method, backend)

    def step(x: Tensor) -> None:
        if mode == "fwd":
            with torch.no_grad():
                layer(x)
        else:
            layer(x.requires_grad_()).backward(torch.randn_like(x))

    torch.manual_seed(1)
    step(torch.randn(1, CHANNELS, 4, 4, 4))
    x = torch.randn(1, CHANNELS, size, size, size)
    reset_peak_rss()  # forget building the preset (the layer is a part of it) and the 4³ step
    base = rss_mb()
    try:
        step(x)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        return {"error": "OOM (allocation failed)"}
    return {"peak_mb": max(0.0, peak_rss_mb() - base)}


def collect(args: argparse.Namespace, store: Results) -> list[dict[str, Any]]:
    """Run (or reuse) every measurement; one record per size and method."""
    common = ["--threads", str(args.threads), "--max-gb", str(args.max_gb)]
    common += ["--attention-backend", args.attention_backend]
    refused = {
        s: f"OOM (n² = {attention_gb(s):.3g} GB)"
        for s in args.sizes
        if "attention" in args.methods and attention_gb(s) > args.max_gb
    }
    plan = [
        (s, [m for m in args.methods if not (m == "attention" and s in refused)])
        for s in args.sizes
    ]
    total = sum(1 + (0 if args.no_memory else len(ms) * len(MODES)) for _, ms in plan)
    step, records = 0, []
    for size, methods in plan:
        step += 1
        times = store.get(f"time:{size}")
        if times is None:
            progress(step, total, f"time {size}³: {', '.join(methods)}")
            worker = ["--worker", "time", str(size), "--methods", *methods]
            worker += ["--repeats", str(args.repeats), *common]
            times = run_worker(__file__, worker, args.threads)
            if "error" not in times:  # a failed worker is tried again by the next run
                store.put(f"time:{size}", times)
        for method in args.methods:
            rec: dict[str, Any] = {"side": size, "tokens": size**3, "method": method}
            if method not in methods:
                rec["status"] = refused[size]
            elif "error" in times or "error" in times.get(method, {}):
                rec["status"] = (times.get(method) or times)["error"].splitlines()[-1]
            else:
                rec["status"] = "ok"
                for mode in MODES:
                    rec[f"{mode}_ms"] = times[method][mode]["ms"]
                    rec[f"{mode}_cpu_ms"] = times[method][mode]["cpu_ms"]
            for mode in MODES if rec["status"] == "ok" and not args.no_memory else ():
                step += 1
                mem = store.get(f"memory:{size}:{method}:{mode}")
                if mem is None:
                    progress(step, total, f"peak memory {size}³ {method} {mode}")
                    worker = ["--worker", "memory", str(size), method, mode, *common]
                    mem = run_worker(__file__, worker, args.threads)
                    if "error" not in mem:
                        store.put(f"memory:{size}:{method}:{mode}", mem)
                rec[f"{mode}_peak_mb"] = mem.get("peak_mb")
                if "error" in mem and rec["status"] == "ok":
                    rec["status"] = f"{mode} memory: {mem['error'].splitlines()[-1]}"
            records.append(rec)
    return records


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown report: setup, the table, the log-log slopes."""
    nmf = {r["side"]: r for r in records if r["method"] == "nmf"}
    rows = []
    for r in records:
        ref = nmf.get(r["side"], {}).get("fwd+bwd_ms")
        if r["status"].startswith("OOM") and "fwd_ms" not in r:
            cells = [r["status"], "", ""]
        else:
            ratio = f"{r['fwd+bwd_ms'] / ref:.2f}x" if ref and r.get("fwd+bwd_ms") else "-"
            cells = [fmt(r.get("fwd_ms")), fmt(r.get("fwd+bwd_ms")), ratio]
        mem = [fmt(r.get("fwd_peak_mb")), fmt(r.get("fwd+bwd_peak_mb"))]
        note = "" if r["status"] == "ok" or r["status"] in cells else r["status"][:80]
        rows.append([f"{r['side']}³", f"{r['tokens']:,}", LABELS[r["method"]], *cells, *mem, note])
    header = ["input", "tokens", "layer", "fwd, ms", "fwd+bwd, ms", "fwd+bwd vs NMF",
              "fwd peak, MB", "fwd+bwd peak, MB", "note"]  # fmt: skip
    slopes = []
    for method in args.methods:
        mine = [r for r in records if r["method"] == method and r["status"] == "ok"]
        cells = []
        for col in ("fwd_ms", "fwd+bwd_ms", "fwd+bwd_peak_mb"):
            pts = [(r["tokens"], r[col]) for r in mine if r.get(col)]
            whole = loglog_slope(*zip(*pts, strict=True)) if pts else float("nan")
            top = loglog_slope(*zip(*pts[-3:], strict=True)) if pts else float("nan")
            cells.append(" / ".join("-" if math.isnan(v) else f"{v:.2f}" for v in (whole, top)))
        slopes.append([LABELS[method], *cells])
    return "\n\n".join([
        f"## One global token-mixing layer, 1×{CHANNELS}×s³, heads of 8 channels",
        f"Machine: {machine(args.threads)}. Times: median of {args.repeats} interleaved "
        "rounds after one warm-up, wall clock (CPU time in the CSV). Peak: VmHWM − RSS "
        f"after building layer + input, one step in a fresh process. Attention budget "
        f"{args.max_gb:g} GB (float32 scores of all heads), SDPA backend "
        f"{args.attention_backend}.",
        markdown_table(header, rows, "lrlrrrrrl"),
        "Log-log slopes against tokens (all sizes / largest three; 1 = linear, 2 = quadratic):",
        markdown_table(["layer", "fwd time", "fwd+bwd time", "fwd+bwd peak memory"], slopes),
    ])  # fmt: skip


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Tokens vs time and tokens vs peak memory, log-log, with slope-1 and slope-2 guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (("ms", "time, ms"), ("peak_mb", "peak memory, MB"))
    for ax, (unit, ylabel) in zip(axes, panels, strict=True):
        values = []
        for i, method in enumerate(METHODS):
            for mode, style in zip(MODES, ("--", "-"), strict=True):
                pts = [(r["tokens"], r.get(f"{mode}_{unit}")) for r in records
                       if r["method"] == method and r.get(f"{mode}_{unit}")]  # fmt: skip
                if pts:
                    x, y = zip(*pts, strict=True)
                    ax.plot(
                        x, y, style, marker="o", color=f"C{i}", label=f"{LABELS[method]} {mode}"
                    )
                    values += y
        if values:
            x0 = min(r["tokens"] for r in records)
            x1 = max(r["tokens"] for r in records)
            y0 = min(values)
            top = max(values) * 2
            for slope, name in ((1, "∝ n"), (2, "∝ n²")):
                y1 = y0 * (x1 / x0) ** slope
                ax.plot([x0, x1], [y0, y1], ":", color="grey", lw=1)
                end = (x1, y1) if y1 <= top else (x0 * (top / y0) ** (1 / slope), top)
                ax.annotate(name, end, color="grey", va="top", ha="right")
            ax.set_ylim(y0 / 2, top)
        ax.set(xscale="log", yscale="log", xlabel="tokens (side³)", ylabel=ylabel)
        sides = sorted({r["side"] for r in records})
        ax.set_xticks([s**3 for s in sides], [f"{s}³" for s in sides], minor=False)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"One global token-mixing layer, C = {CHANNELS}, heads of 8 channels, batch 1")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="cube sides")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-gb", type=float, default=16.0, help="memory budget per process")
    parser.add_argument("--attention-backend", default="auto", choices=("auto", "math"))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory runs")
    parser.add_argument("--out", type=Path, help="write NAME.md, NAME.csv (and NAME.png)")
    parser.add_argument("--plot", action="store_true", help="write OUT/bench_scaling.png")
    parser.add_argument("--fresh", action="store_true", help="do not reuse OUT/NAME.json")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, size = args.worker[0], int(args.worker[1])
        extra = (args.threads, args.max_gb, args.attention_backend)
        if kind == "time":
            result = time_worker(size, args.methods, args.repeats, *extra)
        else:
            result = memory_worker(size, args.worker[2], args.worker[3], *extra)
        print(json.dumps(result))
        return
    if args.plot and args.out is None:
        parser.error("--plot needs --out DIR")
    args.sizes = sorted(set(args.sizes))
    args.methods = [m for m in METHODS if m in args.methods]
    settings = {k: getattr(args, k) for k in ("threads", "repeats", "max_gb", "attention_backend")}
    store = Results(args.out, NAME, settings, args.fresh)
    if store.reused:
        print(f"reusing {store.reused} measurements of {store.path} (--fresh to redo them)")
    records = collect(args, store)
    save_table(args.out, NAME, report(records, args), records)
    if args.plot:
        plot(records, args.out / f"{NAME}.png")


if __name__ == "__main__":
    main()
