"""Parameter and FLOP counts of any network (paper Tables 1–2).

FLOPs are counted on the meta device (no memory, no arithmetic: seconds even at 128³), from
the operations one inference forward pass dispatches, with the paper's convention
"2 × multiply-adds, normalization and matmuls included" made explicit:

- ``matmul``: convolutions, transposed convolutions, matrix products and attention kernels,
  2 per multiply-add (what ``torch.utils.flop_counter.FlopCounterMode`` counts);
- ``norm``: LayerNorm, GroupNorm, BatchNorm and InstanceNorm, 7 per element (mean 1,
  centring 1, variance 2, scaling 1, affine 2);
- ``elementwise``: additions, subtractions, multiplications and divisions of tensors
  (residual connections, biases, the position embedding, the average of the two Swin
  partitions...), 1 per output element;
- a module that knows its own count by the paper's convention says so with a ``flops(x)``
  method and a ``flops_category`` (the NMF layers: Algorithm 2 as the paper counts it,
  :func:`nmfseg.nmf.nmf_flops`, not the kernels of the rank-1 fast path); the operations
  inside it are not counted again;
- activations, dropout, padding, copies, reshapes, concatenation and interpolation: 0.

So a new network built from standard PyTorch operations is counted right without editing
this file. Counts are for inference (``eval()``: one output head) at batch size 1.

Examples::

    >>> from nmfseg.models.complexity import model_complexity
    >>> c = model_complexity("swin_factorizer_brats", input_size=(64, 64, 64))
    >>> c.params
    5855241
    >>> round(c.flops / 1e9, 1) > 20
    True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from nmfseg.errors import ConfigError
from nmfseg.layers import fused_kernels
from nmfseg.models._registry import create_model, model_info

__all__ = ["FLOP_CONVENTION", "Complexity", "count_flops", "count_params", "model_complexity"]

FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-adds of convolutions and matmuls, NMF counted as Algorithm 2 "
    "(T iterations + reconstruction), norms 7 and tensor additions/multiplications 1 per "
    "element; activations, dropout and reshapes 0; inference, batch 1."
)
CATEGORIES = ("matmul", "nmf", "norm", "elementwise")

_aten = torch.ops.aten
_NORMS = {
    _aten.native_layer_norm.default,
    _aten.native_group_norm.default,
    _aten.native_batch_norm.default,
    _aten._native_batch_norm_legit.default,
    _aten._native_batch_norm_legit.no_stats,
    _aten._native_batch_norm_legit_no_training.default,
}
# Operator packets (all overloads: functional, in-place, out=, scalar operands).
_ELEMENTWISE = {
    getattr(_aten, name) for name in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")
}
_BIASED = {_aten.addmm, _aten.baddbmm}


@dataclass
class Complexity:
    """Counts of one network at one input shape.

    Attributes:
        name: Model name (or class name).
        input_shape: ``(1, C, *spatial)``.
        params: Number of parameters.
        flops: Total FLOPs (see the module docstring for the convention).
        breakdown: FLOPs per category (:data:`CATEGORIES`).
        paper_params: The paper's #params, when it reports one.
        paper_gflops: The paper's GFLOPs at the same input, when it reports one.
    """

    name: str
    input_shape: tuple[int, ...]
    params: int
    flops: int
    breakdown: dict[str, int] = field(default_factory=dict)
    paper_params: float | None = None
    paper_gflops: float | None = None


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


class _Counter(TorchDispatchMode):
    """Counts the FLOPs of every dispatched operation, except inside self-counting modules."""

    def __init__(self) -> None:
        super().__init__()
        self.tally = dict.fromkeys(CATEGORIES, 0)
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused:
            self._count(func, args, kwargs, out)
        return out

    def _count(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        packet = func._overloadpacket
        if packet in flop_registry:
            self.tally["matmul"] += flop_registry[packet](*args, **kwargs, out_val=out)
            biased = packet in _BIASED or (
                packet is _aten.convolution and len(args) > 2 and args[2] is not None
            )
            if biased:
                self.tally["elementwise"] += out.numel()
        elif func in _NORMS:
            self.tally["norm"] += 7 * args[0].numel()
        elif packet in _ELEMENTWISE and isinstance(out, torch.Tensor):
            self.tally["elementwise"] += out.numel()

    def pause(self, module: nn.Module, inputs: tuple) -> None:
        self.paused += 1

    def resume(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        self.paused -= 1
        if not self.paused:
            category = getattr(module, "flops_category", "other")
            self.tally[category] = self.tally.get(category, 0) + int(module.flops(inputs[0]))


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """FLOPs of one inference forward pass of ``model`` on an input of ``input_shape``.

    The pass runs in ``eval()`` on the meta device, so it costs neither time nor memory
    (a model on another device is copied to the meta device first; building it there,
    ``with torch.device("meta"): model = ...``, avoids even that), with the plain
    module-by-module path (:func:`nmfseg.layers.fused_kernels` off).

    Returns:
        FLOPs per category (:data:`CATEGORIES`, plus any a self-counting module names) and
        ``"total"``.
    """
    param = next(iter(model.parameters()), None)
    if param is None or param.device.type != "meta":
        model = copy.deepcopy(model).to("meta")
    dtype = param.dtype if param is not None else torch.float32
    counter = _Counter()
    hooks = []
    for module in model.modules():
        if callable(getattr(module, "flops", None)):
            hooks.append(module.register_forward_pre_hook(counter.pause))
            hooks.append(module.register_forward_hook(counter.resume))
    was_training = model.training
    model.eval()
    try:
        x = torch.empty(tuple(input_shape), device="meta", dtype=dtype)
        with fused_kernels(model, False), counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    tally = dict(counter.tally)
    tally["total"] = sum(tally.values())
    return tally


def model_complexity(name: str, input_size: Sequence[int] | None = None) -> Complexity:
    """#params and FLOPs of a registered model, beside the paper's figures.

    Args:
        name: A name from :func:`nmfseg.list_models`.
        input_size: Spatial size, one per axis or one for every axis (a cube, or a square for
            a 2D network); default the preset's training patch size (the paper's).

    Raises:
        ConfigError: Unknown model name or an input size of the wrong length.
    """
    info = model_info(name)
    spatial_dims = info.spatial_dims
    default = info.patch_size or (128,) * spatial_dims
    size = tuple(input_size) if input_size is not None else tuple(default)
    size = size * spatial_dims if len(size) == 1 else size
    if len(size) != spatial_dims or min(size) < 1:
        raise ConfigError(
            f"input size {size} should be {spatial_dims} positive ints for model {name!r}."
        )
    with torch.device("meta"):
        model = create_model(name)
    shape = (1, model.in_channels, *size)
    flops = count_flops(model, shape)
    same_input = info.patch_size is not None and size == tuple(info.patch_size)
    return Complexity(
        name=name,
        input_shape=shape,
        params=count_params(model),
        flops=flops["total"],
        breakdown={k: v for k, v in flops.items() if k != "total"},
        paper_params=info.paper_params,
        paper_gflops=info.paper_gflops if same_input else None,
    )
