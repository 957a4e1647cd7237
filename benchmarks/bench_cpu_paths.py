"""Benchmark: the Swin Factorizer's CPU paths against their alternatives, in one process.

Two comparisons, each timed by alternating the two (or more) settings run after run in the
same process, so that a machine whose speed drifts by tens of percent within minutes (see
docs/benchmarks.md) affects every setting alike; each number is the median:

- ``chunks``: the fused CPU kernels' chunk size (``nmfseg.layers.fused.CHUNK_ELEMENTS``): one
  Swin block of 32 channels forward at ``--block-size``³ and forward+backward at
  ``--block-grad-size``³, and the whole BraTS preset forward at ``--size``³;
- ``nmf-node``: a training step of the BraTS preset at ``--size``³ with the Swin NMF layers
  as one autograd node (``nmfseg.nmf.matricized_rank1``, the default, which moves a few
  heads or a slab of windows of one view at a time; or whole views at a time) or built from
  their parts (the route ``recompute`` off on the NMF layers, :mod:`nmfseg.routes`), the
  same for the inference forward pass, and the bytes each keeps for backward at
  ``--saved-size``³ (every tensor autograd saves, counted once per storage); ``--model``
  picks another network (e.g. ``local_factorizer_brats``).

Usage::

    python benchmarks/bench_cpu_paths.py                    # both, 2 threads
    python benchmarks/bench_cpu_paths.py --only chunks --repeats 8
    python benchmarks/bench_cpu_paths.py --only nmf-node --model local_factorizer_brats
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import nmfseg
from _common import environment


def alternate(settings: dict[str, Callable[[], None]], run: Callable[[], None], repeats: int):
    """Median seconds of ``run`` under each setting (a function that applies it), the
    settings' order reversed every other round."""
    names = list(settings)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            settings[name]()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def saved_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd keeps for backward during ``step()`` (each storage once).

    Examples::

        >>> w = torch.ones(4, requires_grad=True)
        >>> saved_bytes(lambda: (w * torch.ones(4)).sum())  # mul saves its other input
        16
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def _report(title: str, medians: dict[str, float], reference: str) -> None:
    print(title)
    for name, seconds in medians.items():
        print(f"  {name:<28}{seconds:>9.3f} s{seconds / medians[reference]:>8.2f}x")


def chunks(args: argparse.Namespace) -> None:
    from nmfseg.blocks.mixer import MixerBlock
    from nmfseg.layers import fused

    sizes = {"16 MiB (2^22)": 2**22, "2 MiB (2^19, default)": 2**19, "1 MiB (2^18)": 2**18}
    settings = {
        name: (lambda n=n: setattr(fused, "CHUNK_ELEMENTS", n)) for name, n in sizes.items()
    }
    reference = next(iter(sizes))
    block = MixerBlock(32, 3, mixer_args={"head_dim": 8, "window_size": 8})
    x = torch.randn(1, 32, *(args.block_size,) * 3)
    xg = torch.randn(1, 32, *(args.block_grad_size,) * 3, requires_grad=True)
    net = nmfseg.create_model("swin_factorizer_brats").eval()
    image = torch.randn(1, 4, *(args.size,) * 3)

    def block_fwd() -> None:
        block.eval()
        with torch.inference_mode():
            block(x)

    def block_fwdbwd() -> None:
        block.train()
        block(xg).sum().backward()

    def net_fwd() -> None:
        with torch.inference_mode():
            net(image)

    for title, run in (
        (f"Swin block, 1x32x{args.block_size}^3, forward", block_fwd),
        (f"Swin block, 1x32x{args.block_grad_size}^3, forward+backward", block_fwdbwd),
        (f"swin_factorizer_brats, 1x4x{args.size}^3, forward", net_fwd),
    ):
        run()  # warm-up
        _report(title, alternate(settings, run, args.repeats), reference)
    fused.CHUNK_ELEMENTS = sizes["2 MiB (2^19, default)"]


def nmf_node(args: argparse.Namespace) -> None:
    from nmfseg.mixers.nmf import nmf_layers
    from nmfseg.nmf import recompute
    from nmfseg.routes import Route, set_routes

    net = nmfseg.create_model(args.model).train()
    pieces = recompute._PIECE_BYTES
    modes = {  # (one node, bytes per piece)
        "one node (default)": (True, pieces),
        "one node, whole views": (True, 2**62),
        "from parts": (False, pieces),
    }

    def use(mode: tuple[bool, int]) -> None:
        for layer in nmf_layers(net):
            set_routes(layer, set(Route) if mode[0] else set(Route) - {Route.RECOMPUTE})
        recompute._PIECE_BYTES = mode[1]

    def loss(size: int) -> torch.Tensor:
        outs = net(torch.randn(1, 4, *(size,) * 3, generator=torch.Generator().manual_seed(0)))
        return sum(o.float().mean() for o in outs)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        loss(args.size).backward()

    image = torch.randn(1, 4, *(args.size,) * 3)

    def forward() -> None:
        net.eval()
        with torch.inference_mode():
            net(image)
        net.train()

    settings = {name: (lambda v=v: use(v)) for name, v in modes.items()}
    for title, run in (
        (f"{args.model}, 1x4x{args.size}^3, training step", step),
        (f"{args.model}, 1x4x{args.size}^3, forward (inference)", forward),
    ):
        run()  # warm-up
        _report(title, alternate(settings, run, args.repeats), "from parts")
    print(f"saved for backward, 1x4x{args.saved_size}^3")
    for name, value in modes.items():
        use(value)
        mb = saved_bytes(lambda: loss(args.saved_size)) / 2**20
        print(f"  {name:<28}{mb:>9.0f} MB")
    use(modes["one node (default)"])


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["chunks", "nmf-node"], help="one comparison")
    parser.add_argument(
        "--model",
        default="swin_factorizer_brats",
        choices=nmfseg.list_models("*_factorizer_*"),
        metavar="FACTORIZER",
        help="network of nmf-node (a registered Factorizer)",
    )
    parser.add_argument("--size", type=_positive, default=64, help="network input side")
    parser.add_argument("--block-size", type=_positive, default=96)
    parser.add_argument("--block-grad-size", type=_positive, default=64)
    parser.add_argument("--saved-size", type=_positive, default=96)
    parser.add_argument("--threads", type=_positive, default=2)
    parser.add_argument("--repeats", type=_positive, default=6, help="runs per setting")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} "
          f"alternating runs; environment: {environment()}")  # fmt: skip
    if args.only in (None, "chunks"):
        chunks(args)
    if args.only in (None, "nmf-node"):
        nmf_node(args)


if __name__ == "__main__":
    main()
