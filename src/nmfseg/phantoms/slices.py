"""2D BraTS-like phantoms: axial slices of the glioma phantoms at a fine in-plane resolution.

A case is one 3D phantom of :func:`~nmfseg.phantoms.brats.synth_brats_case` (the same seed
gives the same volume: nothing here changes it), cut at the axial slice with the largest
tumour area (:func:`lesion_slice`) and resampled onto a square ``size × size`` grid over the
3D grid's field of view (512² from the 2 mm grid: pixels of about 0.46 mm):

- the nested regions (WT ⊇ TC ⊇ ET) and the brain mask are interpolated bilinearly as
  indicator maps and thresholded at 0.5: borders are smooth at the fine resolution, and the
  regions stay nested because their indicators are ordered before and after interpolation;
- each MRI channel is interpolated with cubic splines (clipped at 0), gets Rician noise at
  the fine grid (1–3 % of its mean brain intensity, from a generator of its own, so the 3D
  phantom's draws are untouched) and is skull-stripped with the fine brain mask; no label
  lies outside it.

A case is stored as a one-slice volume ``X × Y × 1`` (nnU-Net's way of storing 2D images as
NIfTI), whose affine puts the slice where it lies in the 3D phantom: the pixel size in plane,
the 3D grid's spacing as the slice thickness. ``nmfseg synth brats2d`` writes such cases
(:func:`~nmfseg.phantoms.synth.synthesize_dataset`).

Examples::

    >>> case = synth_brats_slice((0, 0), spacing=4.0, size=64)
    >>> case.image.shape, case.label.shape, case.image.dtype.name
    ((4, 64, 64, 1), (64, 64, 1), 'float32')
    >>> bool((case.label > 0).any()), bool((case.image[:, case.label == 0] >= 0).all())
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from nmfseg.phantoms import anatomy
from nmfseg.phantoms.brats import BRATS_REGIONS, ED, ET, NCR, synth_brats_case

__all__ = ["SLICE_SIZE", "lesion_slice", "slice_affine", "synth_brats_slice"]

#: Default in-plane size of the 2D phantoms (pixels per side).
SLICE_SIZE = 512
_NOISE_STREAM = 2  # the fine-grid noise's generator: (seed..., _NOISE_STREAM)
_NOISE = (0.01, 0.03)  # fine-grid noise level, relative to each channel's mean brain intensity


def lesion_slice(label: np.ndarray, brain: np.ndarray) -> int:
    """The axial slice (last axis) with the most lesion, else the one through the brain's
    centre.

    Examples::

        >>> label = np.zeros((4, 4, 6), np.uint8); label[1, 1, 4] = 2
        >>> lesion_slice(label, label > 0), lesion_slice(0 * label, np.ones((4, 4, 6), bool))
        (4, 3)
    """
    area = (label > 0).sum(axis=(0, 1))
    if area.max() > 0:
        return int(np.argmax(area))
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    return int(zs[len(zs) // 2]) if len(zs) else label.shape[2] // 2


def slice_affine(
    affine: np.ndarray, shape: Sequence[int], z: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fine grid of slice ``z`` of a 3D grid: its affine and its source coordinates.

    The ``size × size`` grid is centred on the slice and spans its longer side; pixel
    ``(u, v, 0)`` of the fine grid is voxel ``(x, y, z)`` of the 3D grid.

    Args:
        affine: The 3D grid's voxel -> world (mm) matrix.
        shape: The 3D grid's shape ``(X, Y, Z)``.
        z: The slice.
        size: Pixels per side of the fine grid.

    Returns:
        ``(affine (4, 4), coordinates (2, size, size))``: the fine grid's voxel -> world
        matrix (its third axis the slice, one voxel thick) and, for every pixel, the ``(x, y)``
        it samples in the 3D grid.

    Examples::

        >>> a, xy = slice_affine(np.diag([2.0, 2.0, 2.0, 1.0]), (10, 6, 4), 1, 40)
        >>> a.diagonal().tolist(), xy.shape, float(xy[0].min()), float(xy[0].max())
        ([0.5, 0.5, 2.0, 1.0], (2, 40, 40), -0.375, 9.375)
    """
    x, y = int(shape[0]), int(shape[1])
    step = max(x, y) / size  # fine pixels per 3D voxel, inverted
    start = np.array([(x - 1) / 2, (y - 1) / 2]) - (size - 1) / 2 * step
    to_source = np.diag([step, step, 1.0, 1.0])
    to_source[:2, 3] = start
    to_source[2, 3] = z
    axis = start[:, None, None] + step * np.indices((size, size), dtype=np.float64)
    return np.asarray(affine, np.float64) @ to_source, axis


def synth_brats_slice(
    seed: int | tuple[int, ...],
    spacing: float = 2.0,
    shape: tuple[int, int, int] | None = None,
    size: int = SLICE_SIZE,
) -> anatomy.SynthCase:
    """One 2D BraTS-like case (see the module docstring).

    Args:
        seed: Seed of the case; the 3D phantom is :func:`synth_brats_case` of this seed.
        spacing: The 3D phantom's voxel size in mm (the slice thickness).
        shape: Optional 3D grid size (crop/pad about the brain): the slice's field of view.
        size: Pixels per side of the slice (at least 16).

    Returns:
        ``SynthCase(image (4, size, size, 1) float32, label (size, size, 1) uint8 with the
        internal codes NCR=1, ED=2, ET=3, affine)``.

    Raises:
        ValueError: ``size`` below 16.
    """
    if int(size) < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size!r}")
    volume = synth_brats_case(seed, spacing=spacing, shape=shape)
    brain3d = volume.image[0] > 0
    z = lesion_slice(volume.label, brain3d)
    affine, xy = slice_affine(volume.affine, volume.label.shape, z, int(size))

    def sample(plane: np.ndarray, order: int) -> np.ndarray:
        return ndimage.map_coordinates(plane, xy, order=order, mode="constant", cval=0.0)

    brain = sample(brain3d[:, :, z].astype(np.float32), 1) >= 0.5
    plane = volume.label[:, :, z]
    label = np.zeros(brain.shape, np.uint8)
    for code, region in ((ED, "WT"), (NCR, "TC"), (ET, "ET")):  # outer to inner
        inside = np.isin(plane, BRATS_REGIONS[region]).astype(np.float32)
        label[sample(inside, 1) >= 0.5] = code
    label[~brain] = 0
    seeds = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]  # type: ignore[union-attr]
    rng = anatomy.case_rng((*seeds, _NOISE_STREAM))
    image = np.zeros((len(volume.image), *brain.shape), np.float32)
    for c, channel in enumerate(volume.image[:, :, :, z]):
        fine = np.clip(sample(channel, 3), 0.0, None)
        level = float(fine[brain].mean()) * rng.uniform(*_NOISE) if brain.any() else 0.0
        real = fine + rng.standard_normal(fine.shape) * level
        imag = rng.standard_normal(fine.shape) * level
        image[c] = np.sqrt(real * real + imag * imag) * brain
    return anatomy.SynthCase(image=image[..., None], label=label[..., None], affine=affine)
