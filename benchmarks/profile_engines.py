"""Benchmark: where the time goes, per node type in OpenVINO and per op in PyTorch (#22).

The profile behind ``bench_engines``' ratios, for the networks of its tables (the Swin
Factorizer, its no-NMF ablation and SegResNet-32; BraTS presets, untrained and seeded):

1. **OpenVINO** (bf16 by default, the fastest engine of both networks): each network exported
   and compiled as ``bench_engines`` does, with OpenVINO's per-node counters
   (``PERF_COUNT``); after a warm-up, the node times of ``--repeats`` runs summed per node
   type (``Transpose``, ``FullyConnected``, ``MVN``, ...), as shares of the summed node time,
   beside the run's wall-clock and the time OpenVINO took to read and compile the model for
   the shape (what ``predict --engine openvino`` pays once per window shape).
2. **PyTorch float32** forward of the Swin Factorizer (``eval()``, ``inference_mode``, as
   ``nmfseg predict`` runs it) under ``torch.profiler``: the share of the forward spent in
   the NMF node of every NMF subblock (``WrappedNMF.mix``: ReLU, windows, rank-1 NMF,
   folding back; not the LayerNorm and projections around it), and the self time of the
   operators inside the NMF node and in the rest of the network. The profiler records every
   operator and runs the network once, so its totals differ from the unprofiled wall-clock
   printed beside them; the shares are what it is for.

Usage::

    python benchmarks/profile_engines.py                    # 1×4×128³, 2 threads, OpenVINO bf16
    python benchmarks/profile_engines.py --precision f32 --size 64
    python benchmarks/profile_engines.py --size 32 --channels 8,16,32,64,128 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import check_out, fmt, machine, markdown_table, positive_int, save_table, widths
from bench_engines import FACTORIZER, NETWORKS, build, compile_openvino, onnx_of
from nmfseg.mixers.nmf import nmf_layers

NMF_NODE = "nmfseg.nmf_node"  # the profiler range around every WrappedNMF.mix


def _share_rows(times: dict[str, float], top: int, per: int = 1) -> list[list[str]]:
    """Table rows ``name | seconds / per | share`` of the ``top`` largest entries, then
    ``other``."""
    total = sum(times.values()) or 1.0
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    rest = sum(v for _, v in ranked[top:])
    kept = ranked[:top] + ([("other", rest)] if rest else [])
    return [[k, fmt(v / per), f"{100 * v / total:.1f} %"] for k, v in kept]


def openvino_profile(net: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace):
    """Node time per OpenVINO node type (seconds summed over ``repeats`` runs), the median
    wall-clock of a run and the seconds OpenVINO took to read and compile the model."""
    model = onnx_of(net, x)
    start = time.perf_counter()
    compiled = compile_openvino(model, x, args.threads, args.precision == "bf16", True)
    compile_s = time.perf_counter() - start
    request, image = compiled.create_infer_request(), x.numpy()
    request.infer({0: image})  # warm-up
    times: dict[str, float] = defaultdict(float)
    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        request.infer({0: image})
        walls.append(time.perf_counter() - start)
        for info in request.profiling_info:
            if str(info.status).endswith("EXECUTED"):  # not NOT_RUN or OPTIMIZED_OUT
                times[info.node_type] += info.real_time.total_seconds()
    return times, float(np.median(walls)), compile_s


def openvino_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    x = torch.randn(1, 4, args.size, args.size, args.size)
    parts, records = [], []
    for name in NETWORKS:
        times, wall, compile_s = openvino_profile(build(name, args.channels), x, args)
        total = sum(times.values()) / args.repeats
        rows = _share_rows(times, args.top, args.repeats)
        records += [{"table": "openvino", "network": name, "node_type": k,
                     "seconds": v / args.repeats} for k, v in times.items()]  # fmt: skip
        records.append({"table": "openvino", "network": name, "node_type": "(compile)",
                        "seconds": compile_s})  # fmt: skip
        parts.append(
            f"**{name}**: wall-clock {fmt(wall)} s a run, node time {fmt(total)} s; "
            f"read and compiled for this shape in {fmt(compile_s)} s\n\n"
            + markdown_table(["node type", "s", "share"], rows)
        )
    title = (
        f"OpenVINO {args.precision}, per node type, 1×4×{args.size}³, "
        f"sum of {args.repeats} run(s) / {args.repeats}"
    )
    return f"### {title}\n\n" + "\n\n".join(parts), records


def _label_nmf_nodes(net: torch.nn.Module) -> None:
    """Wrap every NMF layer's ``mix`` in a profiler range named :data:`NMF_NODE`."""
    for layer in nmf_layers(net):
        mix = layer.mix

        def labelled(z: torch.Tensor, mix=mix) -> torch.Tensor:
            with torch.profiler.record_function(NMF_NODE):
                return mix(z)

        layer.mix = labelled


def _inside(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == NMF_NODE:
            return True
        parent = parent.cpu_parent
    return False


def torch_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    x = torch.randn(1, 4, args.size, args.size, args.size)
    net = build(FACTORIZER, args.channels).eval()
    _label_nmf_nodes(net)
    with torch.inference_mode():
        net(x)  # warm-up
        start = time.perf_counter()
        net(x)
        wall = time.perf_counter() - start
        activities = [torch.profiler.ProfilerActivity.CPU]
        with (
            torch.profiler.profile(activities=activities) as prof,
            torch.profiler.record_function("forward"),
        ):
            net(x)
    events = prof.events()
    forward = sum(e.cpu_time_total for e in events if e.name == "forward") / 1e6
    node = sum(e.cpu_time_total for e in events if e.name == NMF_NODE) / 1e6
    ops: dict[bool, dict[str, float]] = {True: defaultdict(float), False: defaultdict(float)}
    for e in events:
        if e.name not in ("forward", NMF_NODE):
            ops[_inside(e)][e.name] += e.self_cpu_time_total / 1e6
    records = [{"table": "torch", "part": "forward", "seconds": forward},
               {"table": "torch", "part": "nmf_node", "seconds": node}]  # fmt: skip
    parts = [
        f"Unprofiled forward {fmt(wall)} s; profiled {fmt(forward)} s, of which the NMF nodes "
        f"{fmt(node)} s (**{100 * node / forward:.0f} %**) and the rest of the network "
        f"{fmt(forward - node)} s."
    ]
    for inside, what in ((True, "inside the NMF nodes"), (False, "in the rest of the network")):
        rows = _share_rows(ops[inside], args.top)
        records += [{"table": "torch", "part": "nmf_node" if inside else "rest", "op": k,
                     "seconds": v} for k, v in ops[inside].items()]  # fmt: skip
        parts.append(f"Self time {what}:\n\n" + markdown_table(["operator", "s", "share"], rows))
    title = f"PyTorch float32 forward of the Swin Factorizer, 1×4×{args.size}³"
    return f"### {title}\n\n" + "\n\n".join(parts), records


TABLES = {"openvino": openvino_table, "torch": torch_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=positive_int, default=128, help="input S³ [128]")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=3, help="OpenVINO runs summed [3]")
    parser.add_argument("--precision", choices=("bf16", "f32"), default="bf16")
    parser.add_argument(
        "--top", type=positive_int, default=10, help="rows per table before 'other'"
    )
    parser.add_argument("--tables", default=",".join(TABLES), help="openvino,torch")
    parser.add_argument(
        "--channels", type=widths, default=None, help="reduced Factorizer widths (smoke)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write OUT/profile_engines.*")
    args = parser.parse_args(argv)
    check_out(parser, args.out)
    tables = [t for t in args.tables.split(",") if t]
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        parser.error(f"--tables: unknown {unknown}; choose from {', '.join(TABLES)}")
    torch.set_num_threads(args.threads)
    texts, records = [], []
    for name in tables:  # the report is printed once, at the end
        text, recs = TABLES[name](args)
        texts.append(text)
        records += recs
    line = machine(args.threads)
    save_table(args.out, "profile_engines", "\n\n".join(texts) + f"\n\nMachine: {line}\n", records)


if __name__ == "__main__":
    main()
