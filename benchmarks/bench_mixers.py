"""Benchmark token mixers in the same block on the same input: their cost beside Wrapped NMF.

Every mixer named in ``--mixers`` is the mixer of one
:class:`~nmfseg.blocks.MixerBlock` of ``--channels`` channels (LayerNorm, mixer, MLP; the
routes a network takes by default, so ``nmf`` runs its one-node rank-1 path and every block
its fused CPU kernels), on one input ``1 × C × size³``, timed forward (no autograd) and
forward+backward (a random output gradient), in float32. Jobs are interleaved, one run of
each per round (:func:`_common.measure`), so that a busy machine slows all alike; each
number is the median over ``--repeats`` rounds of the wall-clock time, with the process CPU
time in brackets, and every time is also given as a ratio to ``nmf`` (the rank-1 Wrapped
NMF, the paper's default) measured in the same run. ``none`` (the block's MLP only) shows
what the rest of the block costs.

Every mixer gets the Factorizer's matricize arguments (``--matricize``, ``--head-dim``,
``--window-size``) and ``--rank`` and ``--iters``, plus its entry in :data:`MIXER_ARGS`;
``none`` gets none. A mixer with other arguments (the greedy NMF's ``max_rank`` and ``tol``,
say) gets them from ``--mixer-arg NAME.KEY=VALUE``; ``--import MODULE`` imports a module
that registers mixers of your own.

Usage::

    python benchmarks/bench_mixers.py                          # 1x64x32^3, 1 thread
    python benchmarks/bench_mixers.py --size 16 --repeats 3 --mixers nmf,semi_nmf
    python benchmarks/bench_mixers.py --mixers nmf,greedy_nmf --import nmfseg.mixers.greedy_nmf \\
        --mixer-arg greedy_nmf.max_rank=4 --mixer-arg greedy_nmf.tol=0.5
"""

from __future__ import annotations

import argparse
import ast
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from _common import fmt, forward_jobs, machine, markdown_table, measure, save_table
from nmfseg.blocks import MixerBlock
from nmfseg.text import split_list

#: Arguments of a mixer besides the common ones (``None``: no arguments at all).
MIXER_ARGS: dict[str, dict[str, Any] | None] = {
    "nmf": {"solver": "hals"},
    "none": None,
}
REFERENCE = "nmf"


def mixer_args(name: str, common: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict:
    """The arguments of mixer ``name``: the common ones, its :data:`MIXER_ARGS` entry and
    its ``--mixer-arg`` values.

    Examples::

        >>> common = {"rank": 1, "iters": 5}
        >>> mixer_args("nmf", common, {})
        {'rank': 1, 'iters': 5, 'solver': 'hals'}
        >>> mixer_args("none", common, {})
        {}
        >>> mixer_args("greedy_nmf", common, {"greedy_nmf": {"tol": 0.5}})
        {'rank': 1, 'iters': 5, 'tol': 0.5}
    """
    own = MIXER_ARGS.get(name, {})
    if own is None:
        return {}
    return {**common, **own, **extra.get(name, {})}


def parse_mixer_arg(text: str) -> tuple[str, str, Any]:
    """``NAME.KEY=VALUE`` as ``(name, key, value)``; the value is a Python literal if it
    reads as one, else the string.

    Examples::

        >>> parse_mixer_arg("greedy_nmf.tol=0.5"), parse_mixer_arg("x.kind=swin")
        (('greedy_nmf', 'tol', 0.5), ('x', 'kind', 'swin'))
    """
    target, sep, value = text.partition("=")
    name, dot, key = target.partition(".")
    if not (sep and dot and name and key):
        raise argparse.ArgumentTypeError(f"expected NAME.KEY=VALUE, got {text!r}")
    try:
        return name, key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, key, value


def build_blocks(names: Sequence[str], channels: int, common: dict, extra: dict) -> dict:
    """One seeded :class:`~nmfseg.blocks.MixerBlock` per mixer name, in training mode."""
    blocks = {}
    for name in names:
        torch.manual_seed(0)
        args = mixer_args(name, common, extra)
        blocks[name] = MixerBlock(channels, spatial_dims=3, mixer=name, mixer_args=args)
    return blocks


def report(res: dict, names: Sequence[str], title: str, note: str) -> tuple[str, list[dict]]:
    """The Markdown table (ms and ratio to :data:`REFERENCE` per mode) and the CSV records."""
    ref = REFERENCE if REFERENCE in names else names[0]
    rows, records = [], []
    for name in names:
        row: list[Any] = [f"`{name}`"]
        record: dict[str, Any] = {"mixer": name}
        for mode in ("fwd", "fwd+bwd"):
            wall, cpu = res[name, mode]
            ratio = wall / res[ref, mode][0]
            row += [f"{fmt(wall)} ({fmt(cpu)} CPU)", f"{ratio:.2f}x"]
            record.update({f"{mode}_ms": wall, f"{mode}_cpu_ms": cpu, f"{mode}_ratio": ratio})
        rows.append(row)
        records.append(record)
    header = ["mixer", "forward, ms", f"vs {ref}", "forward+backward, ms", f"vs {ref}"]
    return f"{title}\n\n{markdown_table(header, rows)}\n\n{note}", records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", default="nmf,semi_nmf,convex_nmf,none", help="comma list")
    parser.add_argument("--size", type=int, default=32, help="spatial side of the input")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--matricize", default="swin", choices=("global", "local", "swin"))
    parser.add_argument("--head-dim", type=int, default=8)
    parser.add_argument("--window-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mixer-arg", type=parse_mixer_arg, action="append", default=[])
    parser.add_argument("--import", dest="modules", action="append", default=[])
    parser.add_argument("--out", type=Path, help="also write bench_mixers.md and .csv here")
    args = parser.parse_args(argv)

    for module in args.modules:
        importlib.import_module(module)
    names = split_list(args.mixers, "--mixers")
    extra: dict[str, dict[str, Any]] = {}
    for name, key, value in args.mixer_arg:
        extra.setdefault(name, {})[key] = value
    common = dict(
        matricize=args.matricize, head_dim=args.head_dim, window_size=args.window_size,
        rank=args.rank, iters=args.iters,
    )  # fmt: skip
    torch.set_num_threads(args.threads)
    blocks = build_blocks(names, args.channels, common, extra)
    torch.manual_seed(1)
    x = torch.randn(1, args.channels, *(args.size,) * 3)
    jobs = {
        (name, mode): job
        for name, block in blocks.items()
        for mode, job in forward_jobs(block, x).items()
    }
    res = measure(jobs, args.repeats)
    shape = f"1x{args.channels}x{args.size}^3"
    title = (
        f"Token mixers in one MixerBlock, {shape}, {args.matricize} matricize, head_dim "
        f"{args.head_dim}, window {args.window_size}, rank {args.rank}, {args.iters} "
        f"iterations, float32; median of {args.repeats} interleaved rounds"
    )
    text, records = report(res, names, title, f"Machine: {machine(torch.get_num_threads())}")
    save_table(args.out, "bench_mixers", text, records)


if __name__ == "__main__":
    main()
