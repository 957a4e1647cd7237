"""Benchmark: onnxruntime (CPU) inference of an exported network beside PyTorch eval.

The BraTS Swin Factorizer preset (untrained, seeded: weights do not change the time) is
exported as ``nmfseg export`` does (:func:`~nmfseg.export.onnx.network_to_onnx`, dynamic
batch and spatial size, NMF iterations unrolled) and checked against PyTorch at every
benchmarked size (:func:`~nmfseg.export.onnx.verify_onnx`). Then, on the same input
``1x4xS^3`` (standard normal, like a z-scored window):

- ``torch``: ``model(x)`` in ``eval()`` under ``torch.inference_mode()`` (the fused CPU
  kernels on, as ``nmfseg predict`` runs it), ``torch.set_num_threads(--threads)``;
- ``onnxruntime``: ``session.run`` on the CPU execution provider with
  ``intra_op_num_threads=--threads`` (one inter-op thread, sequential execution, all graph
  optimizations).

One warm-up round, then ``--repeats`` rounds that run both once each (interleaved, so a
shared machine's load hits both alike); each number is the median wall-clock time, and the
ratio onnxruntime / torch is the result (below 1: onnxruntime is faster).

Usage::

    python benchmarks/bench_export.py                       # 64³ and 128³, 2 threads
    python benchmarks/bench_export.py --sizes 32 --repeats 1 --channels 8,16,32,64,128  # smoke
    python benchmarks/bench_export.py --out bench_out       # also bench_export.md/.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nmfseg
from _common import fmt, machine, markdown_table, measure, progress, save_table
from nmfseg.export.onnx import network_to_onnx, verify_onnx


def session(model: bytes, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", "--size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--model", default="swin_factorizer_brats")
    parser.add_argument(
        "--channels", default=None, help="reduced widths, e.g. 8,16,32,64,128 [the preset's]"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write OUT/bench_export.*")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = (
        {"channels": tuple(int(c) for c in args.channels.split(","))} if args.channels else {}
    )
    model = nmfseg.create_model(args.model, **overrides).eval()
    c, m = model.in_channels, model.size_multiple
    progress(1, 2, f"exporting {args.model}")
    onnx_model, fixed = network_to_onnx(model, torch.randn(2, c, 2 * m, 3 * m, 2 * m))
    ort_session = session(onnx_model, args.threads)

    rows, records = [], []
    for i, size in enumerate(args.sizes):
        progress(2, 2, f"1x{c}x{size}^3 ({i + 1}/{len(args.sizes)})")
        shape = (1, c, size, size, size)
        ((_, diff),) = verify_onnx(onnx_model, model, [shape], fixed=fixed)
        x = torch.randn(shape)
        feed = {"image": x.numpy()}

        def torch_eval(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                model(x)

        def ort_run(feed: dict = feed) -> None:
            ort_session.run(None, feed)

        times = measure({"torch": torch_eval, "onnxruntime": ort_run}, args.repeats)
        t_torch, t_ort = times["torch"][0], times["onnxruntime"][0]
        ratio = t_ort / t_torch
        rows.append([f"1x{c}x{size}^3", fmt(t_torch), fmt(t_ort), f"{ratio:.2f}x", f"{diff:.1e}"])
        records.append(
            {"input": list(shape), "torch_ms": t_torch, "onnxruntime_ms": t_ort,
             "ratio": ratio, "max_abs_diff": diff, "threads": args.threads}
        )  # fmt: skip
    header = ["input", "torch (ms)", "onnxruntime (ms)", "onnxruntime / torch", "max abs diff"]
    width = f" at channels {args.channels}" if args.channels else ""
    text = "\n\n".join([
        f"# onnxruntime vs PyTorch eval: {args.model}{width}",
        f"Machine: {machine(args.threads)}; median of {args.repeats} interleaved rounds.",
        markdown_table(header, rows),
    ])  # fmt: skip
    save_table(args.out, "bench_export", text, records)


if __name__ == "__main__":
    main()
