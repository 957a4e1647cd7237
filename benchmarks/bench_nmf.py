"""Benchmark the NMF layer alone at the first Swin stage's shape for a 64³ input.

A Swin Factorizer's first stage at a 1×4×64³ input has C = 32 channels, head_dim 8 and
8³ windows; SW matricize doubles the windows, giving 2 · 4 heads · 512 windows = 4096
matrices of 8 × 512. The NMF layer runs R = 1, T = 5 HALS iterations, forward and
forward+backward (the gradient of the output is random), in float32 on 2 CPU threads.

Our rank-1 fast path (:class:`nmfseg.nmf.NMF`) is measured beside the straightforward
direct loop of Algorithm 2 (``NMF(fast=False)``, what the official code does) in the same
run. The second table does the same for SW matricize + dematricize of that stage's
feature map (1×32×64³), ours against the einops + ``torch.roll`` code of the paper's
Algorithm 3. Jobs are interleaved, one run of each per round, so that a busy machine slows
all alike; each number is the median over ``--repeats`` rounds of the wall-clock time
and, in brackets, of the process CPU time (both threads summed), which is less sensitive
to other processes on a shared machine.

Usage::

    python benchmarks/bench_nmf.py                       # the issue's shape, 2 threads
    python benchmarks/bench_nmf.py --batch 256 --repeats 3 --no-matricize   # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from einops import rearrange

from _common import forward_jobs, measure
from nmfseg.nmf import NMF, SWMatricize


def table(title: str, names: tuple[str, str], res: dict[str, tuple[float, float]]) -> None:
    peer, ours = names
    print(f"\n{title}\n")
    print("| implementation | forward, ms | forward+backward, ms |")
    print("| --- | ---: | ---: |")
    for name in names:
        cells = [f"{res[name, m][0]:.0f} ({res[name, m][1]:.0f} CPU)" for m in ("fwd", "fwd+bwd")]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    ratios = [f"{res[peer, m][0] / res[ours, m][0]:.1f}x" for m in ("fwd", "fwd+bwd")]
    print(f"| speed-up (wall) | {ratios[0]} | {ratios[1]} |")


def paper_sw(head_dim: int, patch: int, shape: tuple[int, ...]):
    """Algorithm 3 of the paper (3D), with the roll back by ``-shift``."""
    _, c, h, w, d = shape
    sizes = dict(c2=head_dim, h2=patch, w2=patch, d2=patch)
    grid = dict(c1=c // head_dim, h1=h // patch, w1=w // patch, d1=d // patch)
    eq = "b (c1 c2) (h1 h2) (w1 w2) (d1 d2) -> (b c1 h1 w1 d1) c2 (h2 w2 d2)"
    inv = "(b c1 h1 w1 d1) c2 (h2 w2 d2) -> b (c1 c2) (h1 h2) (w1 w2) (d1 d2)"
    shifts, dims = (patch // 2,) * 3, (2, 3, 4)

    def forward(x: torch.Tensor) -> torch.Tensor:
        rolled = torch.roll(x, shifts, dims)
        return torch.cat((rearrange(x, eq, **sizes), rearrange(rolled, eq, **sizes)))

    def inverse(z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0] // 2
        a = rearrange(z[:n], inv, **sizes, **grid)
        b = torch.roll(rearrange(z[n:], inv, **sizes, **grid), tuple(-s for s in shifts), dims)
        return 0.5 * (a + b)

    return forward, inverse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096, help="number of matrices")
    parser.add_argument("--rows", type=int, default=8, help="M (head_dim)")
    parser.add_argument("--cols", type=int, default=512, help="N (voxels per window)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--solver", default="hals", choices=("hals", "mu"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--no-matricize", dest="matricize", action="store_false")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), load average {load:.1f} at start"
    )

    x = torch.rand(args.batch, args.rows, args.cols)
    layers = {
        "direct loop (`NMF(fast=False)`)": NMF(1, args.iters, args.solver, fast=False),
        "nmfseg rank-1 fast path (`NMF()`)": NMF(1, args.iters, args.solver),
    }
    with torch.no_grad():
        y_loop, y_fast = (layer(x) for layer in layers.values())
    jobs = {(n, m): f for n, lay in layers.items() for m, f in forward_jobs(lay, x).items()}
    res = measure(jobs, args.repeats)
    table(
        f"NMF layer: {args.batch} matrices of {args.rows}x{args.cols}, R=1, T={args.iters}, "
        f"{args.solver}, float32 (max |fast - loop| = {(y_loop - y_fast).abs().max():.1e})",
        tuple(layers),
        res,
    )

    if args.matricize:
        feat = torch.randn(1, 32, 64, 64, 64)
        ours = SWMatricize(head_dim=8, window_size=8)
        fwd, inv = paper_sw(8, 8, tuple(feat.shape))
        pipelines = {
            "einops + torch.roll (Algorithm 3)": lambda t: inv(fwd(t)),
            "nmfseg `SWMatricize`": lambda t: ours.inverse(ours(t), t.shape),
        }
        assert torch.equal(ours(feat), fwd(feat))
        jobs = {(n, m): f for n, p in pipelines.items() for m, f in forward_jobs(p, feat).items()}
        res = measure(jobs, args.repeats)
        table("SW matricize + dematricize of a 1x32x64^3 feature map", tuple(pipelines), res)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
