"""Trace: which tensors are alive at the peak of one training step, and where the peak is.

Every output of every op of one forward+backward pass (``train()``, every deep-supervision
output in the loss) is recorded by a ``TorchDispatchMode`` with its size, the op and the
module that made it; a tensor's storage counts until its last Python reference is gone. The
report is the peak of the live bytes (what the step allocates beyond the weights and the
input), the module and op where it is reached, and the largest tensors alive there. It counts
tensors, not the process's memory: the C allocator's own overhead and oneDNN's scratch space
are not in it (``bench_models.py`` measures the process's peak).

Usage::

    python benchmarks/trace_memory.py --size 96 --checkpoint
    python benchmarks/trace_memory.py --size 96 --checkpoint --no-mixer-checkpoint
    python benchmarks/trace_memory.py --size 96 --checkpoint --piece-mib 1000000  # whole views
"""

from __future__ import annotations

import argparse
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import nmfseg


class LiveTensors(TorchDispatchMode):
    """Live bytes of the op outputs made inside the mode, and what is alive at their peak."""

    def __init__(self, where: list[str]) -> None:
        super().__init__()
        self.where, self.live, self.ids = where, {}, set()
        self.total = self.peak = 0
        self.at_peak: tuple[str, list[tuple[int, str, str, tuple[int, ...]]]] = ("", [])

    def _free(self, oid: int, ptr: int) -> None:
        self.ids.discard(oid)
        entry = self.live.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.total -= entry[0]
                del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in self.ids:
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0:
                continue
            self.ids.add(id(t))
            weakref.finalize(t, self._free, id(t), ptr)
            if ptr in self.live:
                self.live[ptr][1] += 1
            else:
                self.live[ptr] = [nbytes, 1, self.where[-1], str(func), tuple(t.shape)]
                self.total += nbytes
        if self.total > self.peak + (1 << 20):  # a new peak (by more than 1 MiB)
            self.peak = self.total
            alive = [(e[0], e[2], e[3], e[4]) for e in self.live.values()]
            self.at_peak = (f"{self.where[-1]} ({func})", alive)
        return out


def trace(args: argparse.Namespace) -> LiveTensors:
    from nmfseg.blocks.mixer import MixerBlock
    from nmfseg.nmf import recompute

    torch.manual_seed(0)
    recompute._PIECE_BYTES = args.piece_mib << 20
    net = nmfseg.create_model(args.model).train()
    if args.checkpoint:
        net.set_grad_checkpointing(True)
        for block in net.modules():
            if isinstance(block, MixerBlock):
                block.set_grad_checkpointing(args.mixer_checkpoint)
    x = torch.randn(1, net.in_channels, *(args.size,) * 3)
    names = {m: name or "<network>" for name, m in net.named_modules()}
    where = ["<network>"]

    def enter(module: nn.Module, args) -> None:
        where.append(names.get(module, type(module).__name__))

    def leave(module: nn.Module, args, out) -> None:  # returns None: the output is kept
        where.pop()

    hooks = [
        nn.modules.module.register_module_forward_pre_hook(enter),
        nn.modules.module.register_module_forward_hook(leave),
    ]
    mode = LiveTensors(where)
    try:
        with mode:
            sum(o.float().mean() for o in net(x)).backward()
    finally:
        for hook in hooks:
            hook.remove()
    return mode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="swin_factorizer_brats", choices=nmfseg.list_models(), metavar="MODEL"
    )
    parser.add_argument("--size", type=int, default=64, help="input side")
    parser.add_argument("--checkpoint", action="store_true", help="set_grad_checkpointing")
    parser.add_argument(
        "--no-mixer-checkpoint", dest="mixer_checkpoint", action="store_false",
        help="with --checkpoint: stages only, not the blocks' mixer subblocks",
    )  # fmt: skip
    parser.add_argument("--piece-mib", type=int, default=8, help="NMF piece size (MiB)")
    parser.add_argument("--top", type=int, default=12, help="tensors listed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.size < 1 or args.piece_mib < 1 or args.top < 0 or args.threads < 1:
        parser.error("--size, --piece-mib and --threads must be positive, --top at least 0")
    torch.set_num_threads(args.threads)
    mode = trace(args)
    where, alive = mode.at_peak
    print(f"{args.model}, 1x4x{args.size}^3, training step"
          f"{', checkpointed' if args.checkpoint else ''}"
          f"{'' if args.mixer_checkpoint or not args.checkpoint else ' (stages only)'}, "
          f"NMF pieces of {args.piece_mib} MiB: live tensors peak at "
          f"{mode.peak / 2**20:.0f} MB in {where}")  # fmt: skip
    for nbytes, module, op, shape in sorted(alive, key=lambda r: -r[0])[: args.top]:
        print(f"  {nbytes / 2**20:8.1f} MB  {module:<24} {op:<32} {shape}")


if __name__ == "__main__":
    main()
