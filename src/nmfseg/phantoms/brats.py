"""BraTS-like glioma phantoms: four MRI contrasts and a nested tumour on the MNI152 anatomy.

A case is built in this order (all randomness from one seeded generator):

1. a random rigid pose of the head (:func:`~nmfseg.phantoms.anatomy.random_pose`);
2. a tumour centre in deep cerebral tissue and the sizes of the whole tumour and its core;
3. the mass effect: a smooth radial displacement about the core (uniform expansion inside,
   decaying as 1/r² outside) that pushes the surrounding tissue maps, composed with the
   pose into one warp (:func:`~nmfseg.phantoms.anatomy.warp_tissue`);
4. the tumour regions on the output grid: a core (a randomly oriented, noise-deformed
   ellipsoid), offset inside an edema region that follows the pushed white matter and stops
   at cortex and ventricles; inside the core either an enhancing rim around necrosis, a
   solid enhancing core (no necrosis), or a non-enhancing core (no enhancement);
5. intensities: tissue fractions times per-case jittered tissue contrasts, tumour regions
   with their own heterogeneous contrasts blended in through blurred (partial-volume)
   masks, edema fading towards its border; then bias, gain, Rician noise, skull stripping.

Internal labels are ``NCR = 1`` (necrosis / non-enhancing core), ``ED = 2`` (edema) and
``ET = 3`` (enhancing tumour); :mod:`nmfseg.phantoms.synth` writes them in each format's scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nmfseg.phantoms import anatomy

__all__ = [
    "BRATS_CHANNELS",
    "BRATS_REGIONS",
    "ED",
    "ET",
    "NCR",
    "mass_effect",
    "synth_brats_case",
]

NCR, ED, ET = 1, 2, 3
#: Internal label -> tumour sub-regions it belongs to (BraTS definition of the regions).
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"ET": (ET,), "TC": (NCR, ET), "WT": (NCR, ED, ET)}
#: Channel order of the generated images (the MSD / BraTS order).
BRATS_CHANNELS = ("FLAIR", "T1", "T1Gd", "T2")

# Relative mean intensities; columns FLAIR, T1, T1Gd, T2.
_TISSUE = np.array(
    [
        [0.10, 0.25, 0.26, 1.00],  # CSF: dark on FLAIR and T1, bright on T2
        [0.70, 0.58, 0.60, 0.62],  # grey matter
        [0.52, 0.85, 0.86, 0.42],  # white matter
    ],
    dtype=np.float32,
)
_LESION = {
    "ed": np.array([0.98, 0.52, 0.54, 0.86], dtype=np.float32),  # bright FLAIR and T2
    "ncr": np.array([0.55, 0.22, 0.24, 0.95], dtype=np.float32),  # necrosis: dark T1(Gd)
    "net": np.array([0.82, 0.33, 0.36, 0.95], dtype=np.float32),  # non-enhancing core: dark T1
    "et": np.array([0.78, 0.48, 1.35, 0.66], dtype=np.float32),  # bright rim on T1Gd only
}


def mass_effect(rel: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """Backward map of a tumour's mass effect, radial about its centre.

    Tissue inside the ball of radius ``radius * (1 - strength)`` is stretched uniformly over
    the ball of radius ``radius``; outside, the push decays as ``strength * radius³ / r²``
    (the displacement of an incompressible expanding sphere). The map is smooth across the
    ball's surface and strictly increasing along every ray, so tissue never folds.

    Args:
        rel: Output points relative to the centre, ``(3, ...)`` in voxels.
        radius: Radius of the tumour core in voxels.
        strength: Fraction ``s`` in [0, 1) of the core radius by which tissue is pushed.

    Returns:
        For each point, where its tissue comes from, relative to the centre (``(3, ...)``).

    Examples::

        >>> src = mass_effect(np.array([[10.0, 40.0], [0.0, 0.0], [0.0, 0.0]]), 10.0, 0.3)
        >>> np.round(src[0], 3).tolist()  # the core surface shows tissue from 7 voxels out
        [7.0, 39.812]
    """
    r = np.sqrt(np.sum(rel * rel, axis=0))
    k = np.float32(strength) * np.minimum(1.0, (np.float32(radius) / np.maximum(r, 1e-3)) ** 3)
    return rel * (1.0 - k)


def _pick_centre(rng: np.random.Generator, anat, core_mm: float) -> np.ndarray:
    """A template voxel deep in cerebral white matter (away from the midline, above z=-15)."""
    ok = (anat.depth > core_mm + 6.0) & (anat.wm > 0.4)
    idx = np.argwhere(ok)
    world = idx @ anat.affine[:3, :3].T + anat.affine[:3, 3]
    idx = idx[(np.abs(world[:, 0]) > 8.0) & (world[:, 2] > -15.0)]
    if len(idx) == 0:  # a tiny crop: fall back to the deepest voxel
        return np.array(np.unravel_index(np.argmax(anat.depth), anat.shape), dtype=np.float64)
    return idx[rng.integers(len(idx))] + rng.uniform(-0.5, 0.5, size=3)


def _place_tumour(
    rng: np.random.Generator, anat: anatomy.Anatomy, pose: anatomy.Pose
) -> tuple[float, float, np.ndarray]:
    """Draw the whole tumour's and the core's sizes (mm) and the centre on the output grid."""
    wt_mm = rng.uniform(16.0, 34.0)
    core_mm = wt_mm * rng.uniform(0.35, 0.7)
    centre = pose.to_output(_pick_centre(rng, anat, core_mm))
    return wt_mm, core_mm, centre


def _push_tissue(
    rng: np.random.Generator,
    anat: anatomy.Anatomy,
    pose: anatomy.Pose,
    centre: np.ndarray,
    core_mm: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Warp the tissue maps by pose and mass effect; also return the points about the centre."""
    grid = anatomy.output_grid(anat.shape)
    rel = grid - centre.astype(np.float32).reshape(3, 1, 1, 1)
    source = mass_effect(rel, core_mm / anat.spacing, rng.uniform(0.15, 0.45)) + grid - rel
    return rel, anatomy.warp_tissue(anat, pose, source)


@dataclass(frozen=True)
class _Ellipsoids:
    """The core's and the edema's ellipsoids (voxels) and the edema's pull to white matter."""

    core_axes: np.ndarray
    core_rot: np.ndarray
    wt_axes: np.ndarray
    wt_rot: np.ndarray
    offset: np.ndarray  # of the edema's centre from the core's
    spread: float


def _draw_ellipsoids(
    rng: np.random.Generator, sp: float, wt_mm: float, core_mm: float
) -> _Ellipsoids:
    """Draw the axes and orientations of the core and edema ellipsoids and their offset."""
    core_axes = core_mm / sp * rng.uniform(0.75, 1.3, size=3)
    core_rot = anatomy.random_rotation(rng)
    wt_axes = wt_mm / sp * rng.uniform(0.75, 1.3, size=3)
    wt_rot = anatomy.random_rotation(rng)
    direction = rng.standard_normal(3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5) * (wt_mm - core_mm)
    offset = (offset / sp).astype(np.float32)
    spread = rng.uniform(0.5, 1.0)
    return _Ellipsoids(core_axes, core_rot, wt_axes, wt_rot, offset, spread)


def _tumour_box(
    centre: np.ndarray, ell: _Ellipsoids, shape: tuple[int, int, int]
) -> tuple[slice, ...]:
    """The box around the core that holds the edema's farthest reach (1.55 radii at most)."""
    half = int(np.ceil(1.6 * ell.wt_axes.max() + np.linalg.norm(ell.offset))) + 2
    return anatomy.box_around(centre, half, shape)


def _core_score(
    rng: np.random.Generator, rel_box: np.ndarray, ell: _Ellipsoids, core_mm: float, sp: float
) -> np.ndarray:
    """The core's noise-deformed ellipsoid radius in the box (the core is where it is < 1)."""
    score = anatomy.ellipsoid_radius(rel_box, ell.core_rot, ell.core_axes)
    score += 0.22 * anatomy.smooth_noise(rng, rel_box.shape[1:], max(core_mm / sp * 0.5, 1.5))
    return score


def _edema_score(
    rng: np.random.Generator,
    rel_box: np.ndarray,
    ell: _Ellipsoids,
    wm: np.ndarray,
    wt_mm: float,
    sp: float,
) -> np.ndarray:
    """The edema's score in the box: a noisy offset ellipsoid that follows white matter."""
    radius = anatomy.ellipsoid_radius(
        rel_box - ell.offset.reshape(3, 1, 1, 1), ell.wt_rot, ell.wt_axes
    )
    score = radius + 0.25 * anatomy.smooth_noise(
        rng, rel_box.shape[1:], max(wt_mm / sp * 0.35, 1.5)
    )
    score -= ell.spread * (wm - 0.5)  # spreads along white matter, stops at cortex
    score += 4.0 * np.maximum(radius - 1.3, 0.0)  # reaches at most ~1.55 radii
    return score


def _tumour_masks(
    core_score: np.ndarray, wt_score: np.ndarray, csf: np.ndarray, brain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The whole tumour (the edema parts touching the core, in the brain) and the core in it."""
    core = core_score < 1.0
    edema = (wt_score < 1.0) & (csf < 0.6) & brain
    whole = edema | core
    parts, _ = ndimage.label(whole)
    keep = np.unique(parts[core & (parts > 0)])
    whole = np.isin(parts, keep) & brain
    core &= whole
    return whole, core


def _split_core(
    rng: np.random.Generator, core: np.ndarray, core_score: np.ndarray, core_mm: float, sp: float
) -> tuple[str, np.ndarray, np.ndarray]:
    """Draw the core's kind and split it into necrosis / non-enhancing core and enhancing parts."""
    kind = rng.choice(["rim", "solid", "non-enhancing"], p=[0.72, 0.16, 0.12])
    necrosis_level = rng.uniform(0.4, 0.75)
    noise = anatomy.smooth_noise(rng, core.shape, max(core_mm / sp * 0.3, 1.2))
    inner = core_score + 0.12 * noise
    if kind == "rim":
        ncr = core & (inner < necrosis_level)
        enh = core & ~ncr
    elif kind == "solid":
        ncr, enh = np.zeros_like(core), core
    else:
        ncr, enh = core, np.zeros_like(core)
    return kind, ncr, enh


def _label_map(
    shape: tuple[int, int, int],
    box: tuple[slice, ...],
    whole: np.ndarray,
    ncr: np.ndarray,
    enh: np.ndarray,
) -> np.ndarray:
    """The full-grid label map: ED over the whole tumour, then NCR, then ET."""
    label = np.zeros(shape, dtype=np.uint8)
    lab_box = label[box]
    lab_box[whole] = ED
    lab_box[ncr] = NCR
    lab_box[enh] = ET
    return label


def _healthy_image(
    rng: np.random.Generator, tissue: dict[str, np.ndarray], shape: tuple[int, ...], sp: float
) -> np.ndarray:
    """The four contrasts of the tissue fractions, with jittered contrasts and a faint texture."""
    tissue_c = _TISSUE * rng.uniform(0.93, 1.07, size=_TISSUE.shape).astype(np.float32)
    fractions = np.stack([tissue["csf"], tissue["gm"], tissue["wm"]])
    clean = np.tensordot(tissue_c.T, fractions, axes=1).astype(np.float32)
    clean *= 1.0 + 0.03 * anatomy.smooth_noise(rng, shape, 3.0 / sp * 2.0)[None]
    return clean


def _paint_tumour(
    rng: np.random.Generator,
    clean: np.ndarray,
    box: tuple[slice, ...],
    lab_box: np.ndarray,
    wt_score: np.ndarray,
    kind: str,
) -> None:
    """Blend the tumour regions' jittered, textured contrasts into ``clean`` (in place)."""
    lesion = {k: v * rng.uniform(0.9, 1.1, size=4).astype(np.float32) for k, v in _LESION.items()}
    core_contrast = lesion["net"] if kind == "non-enhancing" else lesion["ncr"]
    base = clean[(slice(None), *box)]
    # Edema is weakest at its border but stays clearly hyperintense on FLAIR/T2 there: the
    # label is what a rater would outline, so no labelled voxel may be invisible.
    fade = np.clip((1.0 - wt_score) / 0.35, 0.75, 1.0)
    blur = 0.6  # voxels of partial-volume blur at region borders
    painted = base.copy()
    for mask, contrast, het, strength_map in (
        (lab_box == ED, lesion["ed"], 0.08, fade),
        (lab_box == NCR, core_contrast, 0.10, None),
        (lab_box == ET, lesion["et"], 0.14, None),
    ):
        if not mask.any():
            continue
        weight = ndimage.gaussian_filter(mask.astype(np.float32), blur)
        texture = 1.0 + het * anatomy.smooth_noise(rng, lab_box.shape, 2.0)
        value = contrast.reshape(4, 1, 1, 1) * texture[None]
        if strength_map is not None:
            value = base + strength_map[None] * (value - base)
        painted += weight[None] * (value - base)
    clean[(slice(None), *box)] = painted


def synth_brats_case(
    seed: int | tuple[int, ...],
    spacing: float = 2.0,
    shape: tuple[int, int, int] | None = None,
) -> anatomy.SynthCase:
    """Generate one BraTS-like case.

    Args:
        seed: Seed of this case; the same seed gives byte-identical arrays.
            :func:`~nmfseg.phantoms.synth.synthesize_dataset` uses ``(seed, i)`` for case ``i``.
        spacing: Isotropic voxel size in mm (2 mm by default; 4 mm for quick tests).
        shape: Optional output grid size (crop/pad about the brain, see
            :func:`~nmfseg.phantoms.anatomy.load_anatomy`).

    Returns:
        ``SynthCase(image, label, affine)``: ``image`` is ``(4, X, Y, Z)`` float32 in the
        channel order FLAIR, T1, T1Gd, T2, skull-stripped; ``label`` is uint8 with the
        internal codes NCR=1, ED=2, ET=3; ``affine`` maps voxels to RAS mm.

    Examples::

        >>> case = synth_brats_case(0, spacing=4.0)
        >>> case.image.shape, case.image.dtype.name
        ((4, 50, 59, 48), 'float32')
        >>> bool((case.label > 0).any()), set(case.label.ravel()) <= {0, NCR, ED, ET}
        (True, True)
    """
    rng = anatomy.case_rng(seed)
    anat = anatomy.load_anatomy(spacing, shape)
    sp = anat.spacing
    pose = anatomy.random_pose(rng, anat)
    wt_mm, core_mm, centre = _place_tumour(rng, anat, pose)
    rel, tissue = _push_tissue(rng, anat, pose, centre, core_mm)
    brain = tissue["brain"] > 0.5
    ell = _draw_ellipsoids(rng, sp, wt_mm, core_mm)
    box = _tumour_box(centre, ell, anat.shape)
    rel_box = rel[(slice(None), *box)]
    core_score = _core_score(rng, rel_box, ell, core_mm, sp)
    wt_score = _edema_score(rng, rel_box, ell, tissue["wm"][box], wt_mm, sp)
    whole, core = _tumour_masks(core_score, wt_score, tissue["csf"][box], brain[box])
    kind, ncr, enh = _split_core(rng, core, core_score, core_mm, sp)
    label = _label_map(anat.shape, box, whole, ncr, enh)
    clean = _healthy_image(rng, tissue, anat.shape, sp)
    _paint_tumour(rng, clean, box, label[box], wt_score, kind)
    image = anatomy.acquire(rng, clean, brain, sp)
    label *= brain
    return anatomy.SynthCase(image=image, label=label, affine=anat.affine.copy())
