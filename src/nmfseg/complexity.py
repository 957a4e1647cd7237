"""Parameter and FLOP counts of registered networks (paper Tables 1–2).

FLOPs are counted analytically, on the meta device (no memory, no arithmetic: seconds even
at 128³), from the shapes a forward pass sees. The convention is the paper's
"2 × multiply-adds, normalization and matmuls included", made explicit:

- convolutions, transposed convolutions and pointwise convolutions: 2 per multiply-add
  (category ``conv``: what ``torch.utils.flop_counter.FlopCounterMode`` counts for them);
- NMF (per ``M × N`` matrix, rank ``R``, ``T`` iterations, Algorithm 2): every iteration
  ``4MNR`` for ``XG`` and ``XᵀF`` and ``4(M + N)R²`` for ``GᵀG``, ``FᵀF`` and the column
  updates; plus ``2MNR`` for the reconstruction ``FGᵀ``. The algorithm is counted, not the
  kernels that compute it (the rank-1 fast path does the same work in another order);
- LayerNorm and GroupNorm: 7 per element (mean 1, centring 1, variance 2, scaling 1,
  affine 2);
- additions (biases, residual connections, position embedding, the average of the two Swin
  dematricizations, at 2 per element): 1 per element;
- activations, dropout, padding, reshapes, concatenation and the interpolation of the
  position embedding: 0.

Counts are for inference (``eval()``: one output head) at batch size 1.

Examples::

    >>> from nmfseg.complexity import model_complexity
    >>> c = model_complexity("swin_factorizer_brats", input_size=(64, 64, 64))
    >>> c.params
    5855241
    >>> round(c.flops / 1e9, 1) > 20
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FLOP_CONVENTION",
    "Complexity",
    "count_flops",
    "count_params",
    "model_complexity",
    "nmf_flops",
]

FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-adds of convolutions and matmuls (+1 per bias), NMF counted as "
    "Algorithm 2 (T iterations + reconstruction), norms 7 and additions 1 per element; "
    "activations, dropout and reshapes 0; inference, batch 1."
)


@dataclass
class Complexity:
    """Counts of one network at one input shape.

    Attributes:
        name: Model name (or class name).
        input_shape: ``(1, C, *spatial)``.
        params: Number of parameters.
        flops: Total FLOPs (see the module docstring for the convention).
        breakdown: FLOPs per category: ``conv`` (2 × multiply-adds of convolutions),
            ``nmf``, ``norm``, ``add`` (biases, residuals, embeddings, Swin averaging).
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


def nmf_flops(batch: int, m: int, n: int, rank: int, iters: int) -> int:
    """FLOPs of factorizing ``batch`` matrices ``M × N`` (Algorithm 2) and reconstructing."""
    per_iter = 4 * m * n * rank + 4 * (m + n) * rank * rank
    return batch * (iters * per_iter + 2 * m * n * rank)


class _CountingNMF(nn.Module):
    """Stands in for an NMF layer while counting: returns its input, records its FLOPs."""

    def __init__(self, nmf: nn.Module, tally: dict[str, int]) -> None:
        super().__init__()
        self.rank, self.iters, self.tally = nmf.rank, nmf.iters, tally

    def forward(self, x: Tensor) -> Tensor:
        *batch, m, n = x.shape
        self.tally["nmf"] += nmf_flops(math.prod(batch), m, n, self.rank, self.iters)
        return x


def _conv_flops(module: nn.Module, x: Tensor, out: Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 2 * x.numel() * kernel * module.out_channels // module.groups
    return 2 * out.numel() * kernel * module.in_channels // module.groups


@contextmanager
def _counting(model: nn.Module, tally: dict[str, int]):
    from nmfseg.layers import LayerNorm, PointwiseConv, PositionEmbedding, WrappedNMF, unfused
    from nmfseg.models.factorizer import FactorizerBlock

    def hook(module: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        x = inputs[0]
        if isinstance(module, nn.modules.conv._ConvNd):
            tally["conv"] += _conv_flops(module, x, out)
            tally["add"] += out.numel() if module.bias is not None else 0
        elif isinstance(module, PointwiseConv):
            tally["conv"] += 2 * out.numel() * module.in_channels
            tally["add"] += out.numel() if module.bias is not None else 0
        elif isinstance(module, (LayerNorm, nn.LayerNorm, nn.GroupNorm)):
            tally["norm"] += 7 * x.numel()
        elif isinstance(module, PositionEmbedding):
            tally["add"] += x.numel()
        elif isinstance(module, FactorizerBlock):
            tally["add"] += x.numel() * ((module.nmf is not None) + (module.mlp is not None))
        elif isinstance(module, WrappedNMF) and module.enabled and module.kind == "swin":
            tally["add"] += 2 * x.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    swapped = []
    for layer in model.modules():
        if isinstance(layer, WrappedNMF):
            swapped.append((layer, layer.nmf))
            layer.nmf = _CountingNMF(layer.nmf, tally)
    try:
        with unfused():  # every layer's forward (and hook) runs
            yield
    finally:
        for h in handles:
            h.remove()
        for layer, nmf in swapped:
            layer.nmf = nmf


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """FLOPs of one inference forward pass of ``model`` on an input of ``input_shape``.

    The pass runs in ``eval()`` on the meta device, so it costs neither time nor memory
    (a model on another device is copied to the meta device first; building it there,
    ``with torch.device("meta"): model = ...``, avoids even that). NMF layers are replaced
    by their analytic count during the pass, then restored.

    Returns:
        ``{"conv", "nmf", "norm", "add", "total"}`` in FLOPs.
    """
    tally = {"conv": 0, "nmf": 0, "norm": 0, "add": 0}
    param = next(model.parameters())
    if param.device.type != "meta":
        model = copy.deepcopy(model).to("meta")
    was_training = model.training
    model.eval()
    x = torch.empty(tuple(input_shape), device="meta", dtype=param.dtype)
    try:
        with _counting(model, tally), torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    tally["total"] = sum(tally.values())
    return tally


def model_complexity(name: str, input_size: Sequence[int] | None = None) -> Complexity:
    """#params and FLOPs of a registered model, beside the paper's figures.

    Args:
        name: A name from :func:`nmfseg.list_models`.
        input_size: Spatial size; default the preset's training patch size (the paper's).

    Raises:
        ConfigError: Unknown model name or an input size of the wrong length.
    """
    from nmfseg.errors import ConfigError
    from nmfseg.models import create_model, model_info

    info = model_info(name)
    defaults = info["defaults"]
    spatial_dims = defaults.get("spatial_dims", 3)
    size = tuple(input_size) if input_size is not None else tuple(info["patch_size"])
    if len(size) != spatial_dims or min(size) < 1:
        raise ConfigError(
            f"input size {size} should be {spatial_dims} positive ints for model {name!r}."
        )
    with torch.device("meta"):
        model = create_model(name)
    shape = (1, model.in_channels, *size)
    flops = count_flops(model, shape)
    same_input = tuple(size) == tuple(info["patch_size"])
    return Complexity(
        name=name,
        input_shape=shape,
        params=count_params(model),
        flops=flops["total"],
        breakdown={k: v for k, v in flops.items() if k != "total"},
        paper_params=info.get("paper_params"),
        paper_gflops=info.get("paper_gflops") if same_input else None,
    )
