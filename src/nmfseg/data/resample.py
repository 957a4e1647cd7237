"""Resampling a case to another voxel size and back, with MONAI's transforms.

:func:`resample_to_spacing` puts a channel-first array ``(C, *spatial)`` of voxel size
``spacing`` onto a grid of voxel size ``target`` with :class:`monai.transforms.Spacing`
(``scale_extent=True``: the new grid covers the same field of view, the outer faces of the
outer voxels, so its shape is ``round(shape * spacing / target)``, nnU-Net's rule).
:func:`resample_to_grid` goes back: :class:`monai.transforms.SpatialResample` onto the
original grid, of exactly the original shape. Images use trilinear interpolation
(``"bilinear"``, MONAI's name for it in any dimension), labels ``"nearest"`` (values kept),
probabilities trilinear on the way back; outside the source grid the edge value is repeated
(``padding_mode="border"``). Only spacings are involved (diagonal affines at the origin):
the case's own affine is untouched, the prediction lands on the input's grid.

Examples::

    >>> import numpy as np
    >>> label = np.zeros((1, 4, 4, 3), np.uint8)
    >>> label[0, 1:3, 1:3, 1] = 2
    >>> y, affine = resample_to_spacing(label, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0), mode="nearest")
    >>> y.shape, y.dtype, int(y.sum()) == 2 * int(label.sum())
    ((1, 4, 4, 6), dtype('uint8'), True)
    >>> back = resample_to_grid(y, affine, (1.0, 1.0, 2.0), (4, 4, 3), mode="nearest")
    >>> bool(np.array_equal(back, label))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ANISOTROPY",
    "MODES",
    "resample_to_grid",
    "resample_to_spacing",
    "same_spacing",
    "target_spacing_for",
]

MODES = ("bilinear", "nearest")
SPACING_RTOL = 1e-4  # spacings this close (relative) are the same grid: nothing is resampled
ANISOTROPY = 3.0  # nnU-Net's threshold for the low-resolution axis refinement


def same_spacing(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two voxel sizes are equal up to :data:`SPACING_RTOL` (relative).

    Examples::

        >>> same_spacing((1.0, 1.0, 3.0), (1.00001, 1.0, 3.0)), same_spacing((1, 1), (1, 2))
        (True, False)
    """
    if len(a) != len(b):
        return False
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=SPACING_RTOL, atol=0))


def target_spacing_for(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]] | None = None
) -> tuple[float, ...] | None:
    """The voxel size a dataset's cases are resampled to: ``None`` when they all share one.

    nnU-Net v2's rule (``ExperimentPlanner.determine_fullres_target_spacing``): the median
    spacing per axis; with ``shapes``, if the coarsest axis is more than 3 times coarser than
    the finest other axis *and* has fewer than a third of the voxels of the smallest other
    axis (median shapes), its target is the 10th percentile of that axis's spacings instead
    (kept above the other axes' spacing), so that thick-slice cases are not interpolated
    into many invented slices.

    Args:
        spacings: one voxel size per case (mm, the same axis order for all).
        shapes: optional spatial shape per case, for the anisotropy refinement (nnU-Net uses
            the shapes after cropping to the nonzero box).

    Examples::

        >>> target_spacing_for([(1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]) is None
        True
        >>> target_spacing_for([(0.8, 0.8, 1.0), (1.0, 1.0, 1.5), (1.2, 1.2, 3.0)])
        (1.0, 1.0, 1.5)
        >>> spacings = [(0.7, 0.7, 5.0)] * 8 + [(0.7, 0.7, 2.0)] * 2
        >>> target_spacing_for(spacings, [(256, 256, 30)] * 10)
        (0.7, 0.7, 2.0)
    """
    table = np.asarray(spacings, dtype=np.float64)
    if table.ndim != 2 or not len(table):
        raise ValueError(f"spacings must be one voxel size per case, got shape {table.shape}")
    if all(same_spacing(row, table[0]) for row in table[1:]):
        return None
    target = np.percentile(table, 50, axis=0)
    if shapes is not None and table.shape[1] > 1:
        sizes = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
        worst = int(np.argmax(target))
        others = [a for a in range(len(target)) if a != worst]
        finest_other = max(target[a] for a in others)
        if target[worst] > ANISOTROPY * finest_other and sizes[worst] * ANISOTROPY < min(
            sizes[a] for a in others
        ):
            refined = float(np.percentile(table[:, worst], 10))
            if refined < finest_other:
                refined = max(finest_other, refined) + 1e-5
            target[worst] = refined
    return tuple(float(t) for t in target)


def _diag(spacing: Sequence[float]) -> Any:
    import torch

    return torch.diag(torch.tensor([*map(float, spacing), 1.0], dtype=torch.float64))


def _meta(array: Any, affine: Any) -> tuple[Any, bool, Any]:
    """A float32 MetaTensor of ``array``; whether it was NumPy; its dtype."""
    import torch
    from monai.data import MetaTensor

    is_numpy = isinstance(array, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array
    dtype = tensor.dtype
    return MetaTensor(tensor.to(torch.float32), affine=affine), is_numpy, dtype


def _back(out: Any, is_numpy: bool, dtype: Any, mode: str) -> Any:
    import torch

    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    if mode == "nearest" and dtype != torch.float32:
        out = out.round().to(dtype) if dtype.is_floating_point is False else out.to(dtype)
    return out.numpy() if is_numpy else out


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def resample_to_spacing(
    array: Any, spacing: Sequence[float], target: Sequence[float], *, mode: str = "bilinear"
) -> tuple[Any, np.ndarray]:
    """``array (C, *spatial)`` of voxel size ``spacing`` resampled to voxel size ``target``.

    Args:
        array: NumPy array or torch tensor, channel first.
        spacing: its voxel size (mm), one per spatial axis.
        target: the voxel size wanted (mm).
        mode: ``"bilinear"`` (trilinear in 3D; float32 out) or ``"nearest"`` (dtype kept).

    Returns:
        ``(resampled, affine)``: the array (same type as ``array``) and the 4x4 float64
        affine of its grid in the frame where the input's affine is ``diag(spacing)``; give
        it to :func:`resample_to_grid` to come back.
    """
    from monai.transforms import Spacing

    _check_mode(mode)
    if not len(spacing) == len(target) == array.ndim - 1:
        raise ValueError(f"spacing {spacing} / target {target} do not fit an array {array.shape}")
    tensor, is_numpy, dtype = _meta(array, _diag(spacing))
    out = Spacing(pixdim=tuple(map(float, target)), mode=mode, scale_extent=True)(tensor)
    affine = np.asarray(out.affine, np.float64)
    return _back(out, is_numpy, dtype, mode), affine


def resample_to_grid(
    array: Any,
    affine: Any,
    spacing: Sequence[float],
    shape: Sequence[int],
    *,
    mode: str = "bilinear",
) -> Any:
    """``array (C, *spatial)`` on the grid of ``affine`` resampled onto the grid ``diag(spacing)``
    of spatial shape ``shape``: the inverse of :func:`resample_to_spacing`.

    Args:
        array: NumPy array or torch tensor, channel first (probabilities, labels ...).
        affine: the affine :func:`resample_to_spacing` returned.
        spacing: the original voxel size.
        shape: the original spatial shape.
        mode: ``"bilinear"`` (float32 out) or ``"nearest"`` (dtype kept).
    """
    import torch
    from monai.transforms import SpatialResample

    _check_mode(mode)
    if not len(spacing) == len(shape) == array.ndim - 1:
        raise ValueError(f"spacing {spacing} / shape {shape} do not fit an array {array.shape}")
    tensor, is_numpy, dtype = _meta(array, torch.as_tensor(np.asarray(affine, np.float64)))
    out = SpatialResample(mode=mode, padding_mode="border")(
        tensor, dst_affine=_diag(spacing), spatial_size=tuple(int(n) for n in shape)
    )
    return _back(out, is_numpy, dtype, mode)
