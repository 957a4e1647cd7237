"""Benchmark: each network at its fastest CPU engine and precision, best against best (#22).

Three questions, one table each, every ratio taken within the run:

1. **Inference, best against best.** The Swin Factorizer and SegResNet-32 (BraTS presets,
   untrained and seeded: weights do not change the time) on ``1×4×S³`` in every engine:
   PyTorch float32 and bf16 autocast (``eval()``, ``inference_mode``, as ``nmfseg
   predict`` runs them), onnxruntime and OpenVINO float32 and bf16 (each network exported
   as ``nmfseg export`` does, :func:`~nmfseg.export.onnx.network_to_onnx`; OpenVINO
   compiled at the input's shape, as ``predict --engine openvino`` does). The result is
   the Factorizer's fastest time over SegResNet-32's fastest. The no-NMF ablation runs
   beside them in every engine: the floor, what the Factorizer would cost if its NMF
   subblocks were free.
2. **The NMF nearly free.** The Swin Factorizer against its no-NMF ablation
   (``factorizer_brats_no_nmf``), PyTorch float32: a forward pass at ``S³`` and a training
   step (forward and backward, every deep-supervision output in the loss) at ``T³``.
3. **Training, best against best.** A training step at ``T³`` in float32 and in bf16
   autocast for the three networks; the Factorizer's faster mode over SegResNet-32's, and
   the floor's.

Every job of a table runs once per round, round after round (:func:`_common.measure`), so a
machine that gets busier slows all alike. ``--busy N`` starts ``N`` processes that keep one
core each busy with matrix products for the whole run (the "busy machine" of #22: how the
ratios move when the cores are shared).

Usage::

    python benchmarks/bench_engines.py                         # S=128, T=64, 2 threads
    python benchmarks/bench_engines.py --size 32 --train-size 16 --repeats 1 \\
        --channels 8,16,32,64,128 --engines torch,onnxruntime   # smoke
    python benchmarks/bench_engines.py --busy 1                # beside one busy core
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nmfseg
from _common import (
    check_out,
    fmt,
    machine,
    markdown_table,
    measure,
    positive_int,
    save_table,
    widths,
)
from bench_export import session
from nmfseg.export.onnx import network_to_onnx

FACTORIZER, SEGRESNET, NO_NMF = (
    "swin_factorizer_brats",
    "segresnet_brats",
    "factorizer_brats_no_nmf",
)
#: the three networks of the inference and training tables (the no-NMF ablation is the floor:
#: what the Swin Factorizer would cost if its NMF subblocks were free)
NETWORKS = (FACTORIZER, NO_NMF, SEGRESNET)
ENGINES = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16")


def build(name: str, channels: tuple[int, ...] | None) -> torch.nn.Module:
    """A seeded BraTS preset (reduced widths for Factorizers if ``channels``)."""
    torch.manual_seed(0)
    kwargs = {"channels": channels} if channels and name != SEGRESNET else {}
    return nmfseg.create_model(name, **kwargs)


def engine_fn(engine: str, net: torch.nn.Module, x: torch.Tensor, threads: int) -> Callable:
    """A function that runs one inference pass of ``net`` on ``x`` with ``engine`` (in eval
    mode each time: a network may also be in a :func:`train_fn` job of the same table)."""
    net = net.eval()
    if engine.startswith("torch"):
        bf16 = engine.endswith("bf16")

        def run_torch() -> None:
            amp = torch.autocast("cpu", torch.bfloat16) if bf16 else nullcontext()
            net.eval()
            with torch.inference_mode(), amp:
                net(x)

        return run_torch
    model, image = onnx_of(net, x), x.numpy()
    if engine == "onnxruntime":
        ort_session = session(model, threads)
        return lambda: ort_session.run(None, {"image": image})
    compiled = compile_openvino(model, x, threads, engine.endswith("bf16"))
    return lambda: compiled({0: image})


def onnx_of(net: torch.nn.Module, x: torch.Tensor) -> bytes:
    """``net`` exported as ``nmfseg export`` does (dynamic shapes, traced on a small example)."""
    example = torch.randn(2, x.shape[1], *(2 * net.size_multiple,) * (x.dim() - 2))
    return network_to_onnx(net.eval(), example)[0]


def compile_openvino(model: bytes, x: torch.Tensor, threads: int, bf16: bool,
                     profile: bool = False) -> Any:  # fmt: skip
    """The ONNX ``model`` compiled by OpenVINO for ``x``'s shape on ``threads`` CPU threads, as
    ``predict --engine openvino`` does (``profile``: with OpenVINO's per-node counters)."""
    import openvino as ov

    core = ov.Core()
    ov_model = core.read_model(model=model, weights=b"")
    ov_model.reshape({ov_model.inputs[0].any_name: list(x.shape)})
    config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1, "PERF_COUNT": profile}  # fmt: skip
    return core.compile_model(ov_model, "CPU", config)


def train_fn(net: torch.nn.Module, x: torch.Tensor, bf16: bool) -> Callable:
    """One training step without the optimizer: forward, every output in the loss, backward
    (in train mode each time: a network may also be in an :func:`engine_fn` job)."""

    def step() -> None:
        amp = torch.autocast("cpu", torch.bfloat16) if bf16 else nullcontext()
        net.train()
        with amp:
            outs = net(x)
            outs = outs if isinstance(outs, list | tuple) else [outs]
            loss = sum(o.float().square().mean() for o in outs)
        loss.backward()
        net.zero_grad(set_to_none=True)

    return step


def _spin() -> None:  # one busy core: matrix products forever
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


@contextmanager
def busy(n: int):
    """``n`` processes that keep one core each busy while the block runs."""
    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()


def _best(times: dict[str, float]) -> tuple[str, float]:
    key = min(times, key=times.get)
    return key, times[key]


def _floor_table(
    res: dict[tuple[str, Any], float],
    modes: list[Any],
    label: Callable[[Any], str],
    table: str,
    key: str,
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """The rows of a floor table, one per mode (Swin Factorizer, no-NMF ablation,
    SegResNet-32 and both ratios to SegResNet-32) and then the **best** row (each network at
    its own fastest mode), and their CSV records (``key``: the mode's column)."""
    rows, records = [], []
    for mode in modes:
        f, n, s = (res[(name, mode)] for name in (FACTORIZER, NO_NMF, SEGRESNET))
        rows.append([label(mode), fmt(f), fmt(n), fmt(s), f"{f / s:.2f}×", f"{n / s:.2f}×"])
        records.append(
            {"table": table, key: mode, "factorizer_s": f, "no_nmf_s": n, "segresnet_s": s}
        )
    (fm, f), (nm, n), (sm, s) = (
        _best({m: res[(name, m)] for m in modes}) for name in (FACTORIZER, NO_NMF, SEGRESNET)
    )
    rows.append(
        [f"**best** (Factorizer {label(fm)}, no-NMF {label(nm)}, SegResNet {label(sm)})",
         fmt(f), fmt(n), fmt(s), f"**{f / s:.2f}×**", f"{n / s:.2f}×"]
    )  # fmt: skip
    return rows, records


#: the columns of a floor table after the first (the engine or the mode)
COLUMNS = ["Swin Factorizer (s)", "no-NMF ablation (s)", "SegResNet-32 (s)",
           "Factorizer / SegResNet", "no-NMF / SegResNet"]  # fmt: skip


def inference_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    x = torch.randn(1, 4, args.size, args.size, args.size)
    jobs = {}
    for name in NETWORKS:
        net = build(name, args.channels)
        for engine in args.engines:
            jobs[(name, engine)] = engine_fn(engine, net, x, args.threads)
    res = {k: v[0] / 1e3 for k, v in measure(jobs, args.repeats).items()}
    rows, records = _floor_table(res, args.engines, str, "inference", "engine")
    title = f"Inference, 1×4×{args.size}³, median of {args.repeats}"
    return f"### {title}\n\n{markdown_table(['engine', *COLUMNS], rows)}", records


def nmf_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    fwd_x = torch.randn(1, 4, args.size, args.size, args.size)
    train_x = torch.randn(1, 4, args.train_size, args.train_size, args.train_size)
    nets = {name: build(name, args.channels) for name in (FACTORIZER, NO_NMF)}
    jobs = {}
    for name, net in nets.items():
        jobs[(name, "fwd")] = engine_fn("torch", net, fwd_x, args.threads)
        jobs[(name, "train")] = train_fn(net, train_x, bf16=False)
    res = {k: v[0] / 1e3 for k, v in measure(jobs, args.repeats).items()}
    rows, records = [], []
    for mode, size in (("fwd", args.size), ("train", args.train_size)):
        f, n = res[(FACTORIZER, mode)], res[(NO_NMF, mode)]
        what = "forward" if mode == "fwd" else "training step"
        rows.append([f"{what}, {size}³", fmt(f), fmt(n), f"**{f / n:.2f}×**"])
        records.append({"table": "nmf", "mode": mode, "factorizer_s": f, "no_nmf_s": n})
    header = ["PyTorch float32", "Swin Factorizer (s)", "no-NMF ablation (s)", "ratio"]
    return (
        f"### The NMF's cost, median of {args.repeats}\n\n{markdown_table(header, rows)}",
        records,
    )


def _mode(bf16: bool) -> str:
    return "bf16 autocast" if bf16 else "float32"


def training_table(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    x = torch.randn(1, 4, args.train_size, args.train_size, args.train_size)
    jobs = {}
    for name in NETWORKS:
        net = build(name, args.channels)
        for bf16 in (False, True):
            jobs[(name, bf16)] = train_fn(net, x, bf16)
    res = {k: v[0] / 1e3 for k, v in measure(jobs, args.repeats).items()}
    rows, records = _floor_table(res, [False, True], _mode, "training", "bf16")
    title = f"Training step, 1×4×{args.train_size}³, median of {args.repeats}"
    return f"### {title}\n\n{markdown_table(['mode', *COLUMNS], rows)}", records


TABLES = {"inference": inference_table, "nmf": nmf_table, "training": training_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=positive_int, default=128, help="inference input S³ [128]")
    parser.add_argument(
        "--train-size", type=positive_int, default=64, help="training input T³ [64]"
    )
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--tables", default=",".join(TABLES), help="inference,nmf,training")
    parser.add_argument(
        "--channels", type=widths, default=None, help="reduced Factorizer widths (smoke)"
    )
    parser.add_argument("--busy", type=int, default=0, help="busy cores beside the run [0]")
    parser.add_argument("--out", type=Path, default=None, help="also write OUT/bench_engines.*")
    args = parser.parse_args(argv)
    check_out(parser, args.out)
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"--engines: unknown {unknown}; choose from {', '.join(ENGINES)}")
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    texts, records = [], []
    with busy(args.busy):
        line = machine(args.threads) + (
            f"; {args.busy} busy core(s) beside the run" if args.busy else ""
        )
        for name in args.tables.split(","):
            text, recs = TABLES[name](args)
            print(text + "\n", flush=True)
            texts.append(text)
            records += recs
    report = "\n\n".join(texts) + f"\n\nMachine: {line}\n"
    print(f"Machine: {line}")
    save_table(args.out, "bench_engines", report, records)


if __name__ == "__main__":
    main()
