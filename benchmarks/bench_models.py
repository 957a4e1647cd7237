"""Benchmark: registered BraTS networks vs MONAI SegResNet, forward and forward+backward.

Each configuration runs in its own subprocess, so that its peak memory is measured alone:
the peak is the peak resident size (``VmHWM``) at the end minus the resident size once the
model and the input exist (activations, gradients and temporaries of one step; weights
excluded). Times are the median of ``--repeats`` runs after one warm-up run, with
``torch.set_num_threads(--threads)``.

Forward is inference (``eval()`` under ``torch.inference_mode()``); forward+backward is one
training step without the optimizer (``train()``, every deep-supervision output in the
loss). Both models are measured in the same invocation, so the ratio is meaningful on a
shared machine even when absolute times are not.

The reference is SegResNet-32 (``segresnet_brats``: init_filters 32, blocks 1-2-2-4). Each row
also gives the network's #params and its FLOPs at 1×4×128³ (``nmfseg.models.complexity``, the
paper's convention), counted on the meta device.

``--variants`` measures each network also in other CPU execution modes, every ratio still
against plain SegResNet: ``compile`` (``torch.compile``, inductor; the ``first (s)`` column is
the warm-up run, compilation included), ``bf16`` (``torch.autocast("cpu", torch.bfloat16)``)
``channels_last`` (weights and input in ``torch.channels_last_3d``) and ``checkpoint``
(``set_grad_checkpointing(True)``, as ``nmfseg train --grad-checkpointing``: every stage
recomputed in backward; forward+backward only, networks that support it).

Usage::

    python benchmarks/bench_models.py                 # Swin Factorizer, 64³ and 128³, 2 threads
    python benchmarks/bench_models.py --sizes 64 --repeats 3
    python benchmarks/bench_models.py --models all --sizes 64 --modes fwdbwd   # every BraTS preset
    python benchmarks/bench_models.py --sizes 64 --variants plain compile bf16 channels_last
    python benchmarks/bench_models.py --sizes 128 --modes fwdbwd --variants checkpoint
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _common import environment, peak_rss_mb, rss_mb, run_worker

REFERENCE = "segresnet_brats"
DEFAULT = ["swin_factorizer_brats", REFERENCE]
VARIANTS = ("plain", "compile", "bf16", "channels_last", "checkpoint")


def worker(
    model_key: str, size: int, mode: str, threads: int, repeats: int, variant: str = "plain"
) -> dict:
    """Measure one configuration in this process; returns times (s) and peak memory (MB)."""
    import contextlib

    import torch

    import nmfseg

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = nmfseg.create_model(model_key)
    x = torch.randn(1, 4, size, size, size)
    if variant == "channels_last":
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if variant == "checkpoint":
        net.set_grad_checkpointing(True)
    model = torch.compile(net) if variant == "compile" else net
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if variant == "bf16"
        else contextlib.nullcontext
    )
    base = rss_mb()

    def step() -> None:
        if mode == "fwd":
            net.eval()
            with torch.inference_mode(), autocast():
                model(x)
        else:
            net.train()
            net.zero_grad(set_to_none=True)
            with autocast():
                outs = model(x)
                loss = sum(o.float().mean() for o in outs)
            loss.backward()

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    return {
        "model": model_key,
        "size": size,
        "mode": mode,
        "variant": variant,
        "threads": threads,
        "time_s": statistics.median(times[1:]),
        "first_s": times[0],
        "peak_mb": peak - base,
    }


def run(model_key: str, size: int, mode: str, threads: int, repeats: int, variant: str) -> dict:
    """Measure one configuration in a fresh process (:func:`worker`); errors come back as
    ``{"error": ...}``."""
    args = ["--worker", model_key, str(size), mode, "--threads", str(threads)]
    r = run_worker(__file__, [*args, "--repeats", str(repeats), "--variant", variant], threads)
    return {"model": model_key, "size": size, "mode": mode, **r} if "error" in r else r


def _checkpointable(model_key: str) -> bool:
    """Whether the network has ``set_grad_checkpointing`` (built on the meta device)."""
    import torch

    import nmfseg

    with torch.device("meta"):
        return hasattr(nmfseg.create_model(model_key), "set_grad_checkpointing")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"])
    parser.add_argument(
        "--models", nargs="+", default=DEFAULT, help="registered names, or 'all' (every *_brats)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["plain"], choices=VARIANTS)
    parser.add_argument("--variant", default="plain", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "SIZE", "MODE"))
    args = parser.parse_args(argv)

    if args.worker:
        key, size, mode = args.worker
        r = worker(key, int(size), mode, args.threads, args.repeats, args.variant)
        print(json.dumps(r))
        return

    import torch

    import nmfseg
    from nmfseg.models.complexity import model_complexity

    names = nmfseg.list_models("*_brats") if args.models == ["all"] else args.models
    unknown = sorted(set(names) - set(nmfseg.list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; see nmfseg.list_models()")
    cost = {n: model_complexity(n, (128, 128, 128)) for n in names}
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} runs")
    print(f"environment: {environment()}; peak = VmHWM - RSS after building model+input")
    header = f"{'model':<32}{'params':>8}{'GFLOPs':>9}  {'input':<13}{'mode':<8}"
    header += f"{'variant':<15}{'first (s)':>10}{'time (s)':>9}"
    print(header + f"{'peak (MB)':>11}{'vs SegResNet':>14}")
    results = {}
    order = sorted(dict.fromkeys([REFERENCE, *names]), key=lambda k: k != REFERENCE)
    variants = sorted(dict.fromkeys(["plain", *args.variants]), key=VARIANTS.index)
    for size in args.sizes:
        for mode in args.modes:
            for key in order:
                for variant in variants:
                    if variant == "checkpoint" and (mode == "fwd" or not _checkpointable(key)):
                        continue  # no effect in inference; SegResNet has no checkpointing
                    r = run(key, size, mode, args.threads, args.repeats, variant)
                    results[key, size, mode, variant] = r
                    c = cost.get(key) or model_complexity(key, (128, 128, 128))
                    head = f"{key:<32}{c.params / 1e6:>7.1f}M{c.flops / 1e9:>9.1f}  "
                    label = f"1x4x{size}^3"
                    if "error" in r:
                        err = r["error"].strip()[-200:]
                        print(f"{head}{label:<13}{mode:<8}{variant:<15}  failed: {err}")
                        continue
                    ref = results.get((REFERENCE, size, mode, "plain"))
                    ratio = ""
                    if (key, variant) != (REFERENCE, "plain") and ref and "error" not in ref:
                        ratio = f"{r['time_s'] / ref['time_s']:.2f}x"
                    print(
                        f"{head}{label:<13}{mode:<8}{variant:<15}{r['first_s']:>10.2f}"
                        f"{r['time_s']:>9.2f}{r['peak_mb']:>11.0f}{ratio:>14}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
