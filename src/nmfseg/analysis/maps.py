"""NMF component maps of a trained Factorizer on a whole image, on the image's own grid.

The paper's Fig. 6 shows the spatial factors of NMF layers as pictures of the anatomy. For a
whole (preprocessed) image, :func:`component_maps` runs the same sliding window as
prediction and, for every window:

1. records the factors of the chosen NMF layers (``Factorizer.record_factors()``);
2. dematricizes every head's spatial factor into maps at the layer's stage
   (:func:`~nmfseg.mixers.nmf.factor_maps`: one map per head and component, scaled by the
   norm of the channel factor; for Swin the regular and the shifted-window partitions are
   combined as the layer combines them, by the average after rolling back);
3. resamples the maps from the stage (``1 / 2**level`` of the window) back to the window:
   linear interpolation with voxel centres aligned, which undoes every 2× down-sampling and
   keeps maps nonnegative;
4. hands them to the sliding window as extra output channels, so the windows are blended
   exactly like the predictions (Gaussian weights by default) into full-size accumulators.

No window's factors outlive its forward pass: memory is that of the blended maps, ``maps ×
voxels`` floats, which :func:`group_layers` bounds by doing the layers in groups (one
sliding-window pass per group).

Components are numbered head-major within a layer, ``h · R + r``. At rank > 1 the order of a
head's components is the solver's and may differ between windows (NMF has no canonical
order); the paper's Factorizers use rank 1.

Examples::

    >>> import torch
    >>> from nmfseg.models import Factorizer
    >>> net = Factorizer(3, 2, 1, (8, 16), head_dim=4, window_size=4, deep_supervision=False)
    >>> [(i.index, i.stage, i.level, i.n_maps) for i in layer_infos(net)]
    [(0, 'encoder', 0, 2), (1, 'bridge', 1, 4), (2, 'decoder', 0, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmfseg.inference.predictor import Predictor
from nmfseg.inference.sliding_window import sliding_window_predict
from nmfseg.mixers.nmf import factor_maps, nmf_layers
from nmfseg.nmf import MatricizeGeometry

__all__ = ["LayerInfo", "component_maps", "group_layers", "layer_infos", "upsample_maps"]

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass(frozen=True)
class LayerInfo:
    """One NMF layer of a network, as explain reports it.

    Attributes:
        index: Position in ``nmf_layers()`` (0-based; the paper counts from 1).
        stage: ``"encoder"``, ``"bridge"`` or ``"decoder"``.
        level: Resolution level: the layer sees ``1 / 2**level`` of the input size.
        heads: Matrices per voxel window (channels / head_dim).
        rank: NMF rank, components per head.
        matricize: ``"global"``, ``"local"`` or ``"swin"``.
    """

    index: int
    stage: str
    level: int
    heads: int
    rank: int
    matricize: str

    @property
    def n_maps(self) -> int:
        """Maps of the layer: one per head and component."""
        return self.heads * self.rank


def layer_infos(model: nn.Module) -> list[LayerInfo]:
    """The NMF layers of ``model`` in network order (empty for a network without NMF)."""
    layers = nmf_layers(model)
    levels = [layer.level or 0 for layer in layers]
    deepest = max(levels, default=0)
    infos = []
    for i, (layer, level) in enumerate(zip(layers, levels, strict=True)):
        stage = "bridge" if level == deepest else "encoder" if i < deepest else "decoder"
        heads = layer.channels // layer.head_dim
        infos.append(LayerInfo(i, stage, level, heads, layer.nmf.rank, layer.kind))
    return infos


def group_layers(infos: Sequence[LayerInfo], max_maps: int) -> list[list[LayerInfo]]:
    """Consecutive groups of layers with at most ``max_maps`` maps each (a layer with more
    maps is a group of its own).

    Examples::

        >>> infos = [LayerInfo(i, "encoder", i, 4 * 2**i, 1, "swin") for i in range(3)]
        >>> [[i.index for i in g] for g in group_layers(infos, max_maps=12)]
        [[0, 1], [2]]
    """
    groups: list[list[LayerInfo]] = []
    for info in infos:
        if groups and sum(i.n_maps for i in groups[-1]) + info.n_maps <= max_maps:
            groups[-1].append(info)
        else:
            groups.append([info])
    return groups


def upsample_maps(maps: Tensor, level: int, size: Sequence[int]) -> Tensor:
    """Maps ``(B, K, *stage)`` of a level-``level`` stage resampled to the window ``size``.

    Linear interpolation by ``2**level`` with voxel centres aligned (stage voxel ``i`` covers
    window voxels ``i·2**level .. (i+1)·2**level - 1``), then cropped to ``size``.

    Examples::

        >>> upsample_maps(torch.ones(1, 2, 3, 3, 3), level=2, size=(10, 12, 9)).shape
        torch.Size([1, 2, 10, 12, 9])
    """
    if level:
        mode = _INTERPOLATION[maps.dim() - 2]
        maps = F.interpolate(maps, scale_factor=2**level, mode=mode, align_corners=False)
    return maps[(..., *(slice(0, int(s)) for s in size))]


class _WindowMaps:
    """The window function of the sliding window: logits (optional) then the maps."""

    def __init__(self, model: nn.Module, layers: Sequence[LayerInfo], logits: bool) -> None:
        self.model = model
        self.wanted = {info.index for info in layers}
        self.logits = logits
        self.geometry: dict[int, MatricizeGeometry] = {}

    def __call__(self, window: Tensor) -> Tensor:
        with self.model.record_factors() as records:
            out = self.model(window)
        parts = [out.float()] if self.logits else []
        found = {}
        for record in records:
            if record.layer not in self.wanted:
                continue
            maps = torch.stack([factor_maps(record, b) for b in range(window.shape[0])])
            found[record.layer] = upsample_maps(maps, record.level or 0, window.shape[2:])
            self.geometry[record.layer] = record.geometry
        missing = sorted(self.wanted - set(found))
        if missing:
            raise RuntimeError(f"NMF layer(s) {missing} recorded nothing (short-circuited?)")
        return torch.cat([*parts, *(found[i] for i in sorted(found))], dim=1)


def component_maps(
    predictor: Predictor,
    image: np.ndarray,
    layers: Sequence[LayerInfo],
    *,
    network: int = 0,
    probabilities: bool = False,
) -> tuple[np.ndarray | None, np.ndarray, dict[int, MatricizeGeometry]]:
    """Blended component maps of some layers on a preprocessed image, one sliding window pass.

    Args:
        predictor: The model (its sliding-window settings are used; TTA is not).
        image: A preprocessed image ``(C, *spatial)`` (cropped and z-scored).
        layers: The layers whose maps to compute (from :func:`layer_infos`).
        network: Which of the predictor's networks (folds).
        probabilities: Also return the network's probabilities, blended as in prediction.

    Returns:
        ``(probabilities (R, *spatial) or None, maps (K, *spatial), geometry by layer)``:
        float32, the maps in the order of ``layers`` (sorted by index), head-major.

    Examples::

        >>> from nmfseg.models import Factorizer
        >>> from nmfseg.inference import Ensemble
        >>> net = Factorizer(3, 2, 1, (8, 16), head_dim=4, window_size=4, deep_supervision=False)
        >>> p = Predictor(Ensemble([net], [], (8, 8, 8), 2, 1))
        >>> probs, maps, geometry = component_maps(
        ...     p, np.random.rand(2, 10, 9, 8).astype("f"), layer_infos(net)[:2])
        >>> probs, maps.shape, geometry[1].kind, bool((maps >= 0).all())
        (None, (6, 10, 9, 8), 'swin', True)
    """
    model = predictor.ensemble.models[network]
    fn = _WindowMaps(model, sorted(layers, key=lambda i: i.index), probabilities)
    model.eval()
    out = sliding_window_predict(
        fn,
        image,
        predictor.patch_size,
        predictor.overlap,
        mode=predictor.blend,
        sw_batch_size=predictor.sw_batch_size,
        activation=None,
        device=predictor.device,
        progress=predictor.progress,
    )
    n_out = model.out_channels if probabilities else 0
    probs = torch.sigmoid(out[:n_out]).numpy() if probabilities else None
    maps = out[n_out:].clamp_min_(0).numpy()  # blending is a weighted mean: only rounding < 0
    return probs, maps, fn.geometry
