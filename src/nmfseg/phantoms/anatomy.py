"""Anatomy and acquisition model shared by the BraTS- and ISLES-like phantoms.

The anatomy is the MNI152 (ICBM 2009c) template with its grey- and white-matter
probability maps and brain mask, all of which ship inside the ``nilearn`` wheel and load
without a network. Cerebrospinal fluid is what the brain mask holds beyond grey and white
matter. The maps are loaded once per process and resampled to the requested spacing.

Every phantom goes through the same acquisition model:

1. a random rigid pose (a small rotation about the brain centre plus a translation), which
   is composed with any lesion-specific deformation (a tumour's mass effect) into one
   backward warp of the tissue maps, so that labels are drawn directly on the output grid
   and never interpolated;
2. a smooth multiplicative bias field, a random gain per channel, Rician noise;
3. skull stripping: zero outside the (posed) brain mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "Anatomy",
    "Pose",
    "SynthCase",
    "acquire",
    "box_around",
    "case_rng",
    "ellipsoid_radius",
    "load_anatomy",
    "prime_anatomy",
    "random_pose",
    "random_rotation",
    "smooth_noise",
    "warp_tissue",
]


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps of the MNI152 template on one grid (all float32, shape ``(X, Y, Z)``).

    Attributes:
        gm: Grey-matter probability.
        wm: White-matter probability.
        brain: Brain mask as a soft map in [0, 1] (1 inside).
        t1: The template's T1-weighted intensities in [0, 1].
        depth: Distance to the outside of the brain mask in mm.
        affine: Voxel-to-world (RAS, mm) matrix of the grid.
        spacing: Isotropic voxel size in mm.
    """

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    t1: np.ndarray
    depth: np.ndarray
    affine: np.ndarray
    spacing: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape of the grid."""
        return tuple(int(n) for n in self.gm.shape)  # type: ignore[return-value]

    def world_to_voxel(self, xyz_mm: np.ndarray) -> np.ndarray:
        """Map world coordinates ``(..., 3)`` in mm to voxel coordinates of this grid."""
        inv = np.linalg.inv(self.affine)
        return np.asarray(xyz_mm, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


@functools.lru_cache(maxsize=2)
def _mni_maps(resolution: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The nilearn MNI152 maps at 1 or 2 mm (bundled with the wheel, no download)."""
    from nilearn import datasets

    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "brain": datasets.load_mni152_brain_mask,
    }
    maps, affine = {}, None
    for name, load in loaders.items():
        img = load(resolution=resolution)
        maps[name] = np.clip(np.asarray(img.get_fdata(), dtype=np.float32), 0.0, 1.0)
        affine = np.asarray(img.affine, dtype=np.float64)
    assert affine is not None
    return maps, affine


_ANATOMY: dict[tuple[float, tuple[int, int, int] | None], Anatomy] = {}


def prime_anatomy(anatomies: dict[tuple[float, tuple[int, int, int] | None], Anatomy]) -> None:
    """Seed this process's cache (worker processes get the parent's maps, no nilearn load)."""
    _ANATOMY.update(anatomies)


def load_anatomy(spacing: float = 2.0, shape: tuple[int, int, int] | None = None) -> Anatomy:
    """Load the MNI152 tissue maps resampled to ``spacing`` mm, optionally cropped/padded.

    The result is cached per process (it is read-only: do not modify its arrays).

    Args:
        spacing: Isotropic voxel size in mm (at least 1). 2 mm gives the native 2 mm
            template grid (99 x 117 x 95 with nilearn >= 0.10); 4 mm gives about 50 x 59 x 48
            for quick tests.
        shape: Output grid size; the grid is cropped or zero-padded symmetrically about the
            centre of the brain's bounding box (the affine follows). ``None`` keeps the full
            field of view.

    Returns:
        The :class:`Anatomy` on that grid.

    Examples::

        >>> anat = load_anatomy(spacing=4.0, shape=(40, 48, 40))
        >>> anat.shape, float(anat.affine[0, 0])
        ((40, 48, 40), 4.0)
    """
    if not np.isfinite(spacing) or spacing < 1.0:
        raise ValueError(f"spacing must be a number of mm >= 1, got {spacing!r}")
    if shape is not None and (len(shape) != 3 or min(shape) < 8):
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {shape!r}")
    key = (float(spacing), None if shape is None else tuple(int(n) for n in shape))
    if key not in _ANATOMY:
        _ANATOMY[key] = _build_anatomy(*key)
    return _ANATOMY[key]


def _build_anatomy(spacing: float, shape: tuple[int, int, int] | None) -> Anatomy:
    base = 2 if spacing >= 2.0 else 1
    maps, affine = _mni_maps(base)
    factor = spacing / base
    if not np.isclose(factor, 1.0):
        in_shape = np.array(maps["gm"].shape)
        out_shape = tuple(int(n) for n in np.floor((in_shape - 1) / factor).astype(int) + 1)
        sigma = 0.5 * np.sqrt(max(factor**2 - 1.0, 0.0))  # anti-aliasing before decimation
        resampled = {}
        for name, arr in maps.items():
            src = ndimage.gaussian_filter(arr, sigma) if sigma > 0 else arr
            resampled[name] = ndimage.affine_transform(
                src, np.full(3, factor), order=1, output_shape=out_shape, mode="nearest"
            )
        maps = resampled
        affine = affine @ np.diag([factor, factor, factor, 1.0])
    if shape is not None:
        maps, affine = _crop_or_pad(maps, affine, tuple(int(n) for n in shape))
    brain = np.clip(maps["brain"], 0.0, 1.0)
    gm = np.minimum(maps["gm"], brain)
    wm = np.minimum(maps["wm"], brain)
    depth = ndimage.distance_transform_edt(brain > 0.5).astype(np.float32) * np.float32(spacing)
    arrays = {"gm": gm, "wm": wm, "brain": brain, "t1": maps["t1"] * brain, "depth": depth}
    for arr in arrays.values():
        arr.setflags(write=False)
    return Anatomy(
        **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
        affine=affine,
        spacing=float(spacing),
    )


def _crop_or_pad(
    maps: dict[str, np.ndarray], affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Crop/pad every map to ``shape`` about the brain bounding-box centre."""
    idx = np.argwhere(maps["brain"] > 0.5)
    centre = (idx.min(0) + idx.max(0)) / 2.0
    start = np.round(centre - (np.array(shape) - 1) / 2.0).astype(int)
    out = {}
    for name, arr in maps.items():
        res = np.zeros(shape, dtype=np.float32)
        src = tuple(
            slice(max(s, 0), min(s + n, m)) for s, n, m in zip(start, shape, arr.shape, strict=True)
        )
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
        res[dst] = arr[src]
        out[name] = res
    shift = np.eye(4)
    shift[:3, 3] = start
    return out, affine @ shift


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """A smooth random field with zero mean and unit standard deviation.

    White noise on a coarse lattice (one sample per ``cell`` voxels), lightly smoothed and
    linearly interpolated to ``shape``: cheap, and correlated over about ``cell`` voxels.

    Args:
        rng: Random generator (consumed deterministically).
        shape: Output shape.
        cell: Correlation length in voxels (>= 1).

    Returns:
        float32 array of ``shape``.
    """
    cell = max(float(cell), 1.0)
    coarse_shape = tuple(int(np.ceil((n - 1) / cell)) + 2 for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.7, mode="wrap")
    offset = rng.uniform(0.0, 1.0, size=len(shape))
    field = ndimage.affine_transform(
        coarse.astype(np.float32),
        np.full(len(shape), 1.0 / cell),
        offset=offset,
        order=1,
        output_shape=tuple(shape),
        mode="nearest",
    )
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


class SynthCase(NamedTuple):
    """One phantom: ``image (C, X, Y, Z)`` float32, ``label (X, Y, Z)`` uint8, ``affine``."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def case_rng(seed: int | tuple[int, ...]) -> np.random.Generator:
    """The generator of one case; ``(seed, i)`` is case ``i`` of a dataset seeded ``seed``."""
    entropy = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]  # type: ignore[union-attr]
    if min(entropy) < 0:
        raise ValueError(f"seeds must be nonnegative integers, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def ellipsoid_radius(rel: np.ndarray, rotation: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the surface) of points ``rel (3, ...)``."""
    local = np.tensordot(rotation.T, rel, axes=1) / axes.reshape(3, *([1] * (rel.ndim - 1)))
    return np.sqrt(np.sum(local * local, axis=0))


@dataclass(frozen=True)
class Pose:
    """A rigid pose in voxel coordinates: ``template = rotation @ (out - centre) + centre + shift``.

    The output grid and the template grid are the same grid; the pose moves the head inside
    it, as a patient lies differently in each scanner session.
    """

    rotation: np.ndarray
    centre: np.ndarray
    shift: np.ndarray

    def to_template(self, out_xyz: np.ndarray) -> np.ndarray:
        """Output voxel coordinates ``(3, ...)`` -> template voxel coordinates."""
        pts = out_xyz.reshape(3, -1) - self.centre[:, None]
        res = self.rotation @ pts + (self.centre + self.shift)[:, None]
        return res.reshape(out_xyz.shape)

    def to_output(self, tmpl_xyz: np.ndarray) -> np.ndarray:
        """Template voxel coordinates ``(3,)`` -> output voxel coordinates."""
        return self.rotation.T @ (np.asarray(tmpl_xyz) - self.centre - self.shift) + self.centre


def random_pose(
    rng: np.random.Generator, anat: Anatomy, max_degrees: float = 8.0, max_shift_mm: float = 5.0
) -> Pose:
    """A random rotation (each Euler angle uniform in ±``max_degrees``) and translation."""
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    idx = np.argwhere(anat.brain > 0.5)
    centre = (idx.min(0) + idx.max(0)) / 2.0
    shift = rng.uniform(-max_shift_mm, max_shift_mm, size=3) / anat.spacing
    return Pose(rotation=rot, centre=centre.astype(np.float64), shift=shift)


def box_around(centre: np.ndarray, half: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The box of voxels within ``half`` of ``floor(centre)`` along every axis, clipped to
    a grid of ``shape``: where a lesion is drawn, so that its cost is the box's, not the grid's.

    Examples::

        >>> box_around(np.array([1.5, 8.2, 4.0]), 2, (10, 10, 10))
        (slice(0, 4, None), slice(6, 10, None), slice(2, 7, None))
    """
    corner = np.floor(centre).astype(int)
    lo = np.maximum(corner - half, 0)
    hi = np.minimum(corner + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def output_grid(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel coordinates ``(3, X, Y, Z)`` (float32) of a grid."""
    return np.indices(shape, dtype=np.float32)


def warp_tissue(
    anat: Anatomy, pose: Pose, source_out: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Tissue maps seen through a pose and an optional deformation.

    Args:
        anat: The template anatomy.
        pose: The rigid pose of this case.
        source_out: For each output voxel, the output-space point whose tissue it shows,
            ``(3, X, Y, Z)`` (e.g. a tumour's mass effect); ``None`` for the identity. The
            brain mask (the skull) follows the pose only, so tissue pushed against it is
            compressed rather than moved outside the head.

    Returns:
        ``gm``, ``wm``, ``csf``, ``brain`` (soft) and ``t1`` on the output grid, float32.
    """
    grid = output_grid(anat.shape)
    posed = pose.to_template(grid)
    tissue_src = posed if source_out is None else pose.to_template(source_out)

    def sample(arr: np.ndarray, coords: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0)

    brain = sample(anat.brain, posed)
    gm = np.minimum(sample(anat.gm, tissue_src), brain)
    wm = np.minimum(sample(anat.wm, tissue_src), brain)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    t1 = sample(anat.t1, tissue_src) * brain
    return {"gm": gm, "wm": wm, "csf": csf, "brain": brain, "t1": t1}


def acquire(
    rng: np.random.Generator,
    clean: np.ndarray,
    brain: np.ndarray,
    spacing: float,
    bias: float = 0.15,
    noise: tuple[float, float] = (0.015, 0.04),
    gain: tuple[float, float] = (0.5, 2.0),
    scale: float = 1000.0,
) -> np.ndarray:
    """Scanner model: bias field, gain per channel, Rician noise, skull stripping.

    Args:
        rng: Random generator.
        clean: Noise-free images ``(C, X, Y, Z)`` on a relative scale (tissue about 0.5).
        brain: Boolean brain mask ``(X, Y, Z)``; everything outside is set to 0.
        spacing: Voxel size in mm (the bias field varies over about 60 mm).
        bias: Standard deviation of the log bias field (a shared field plus a weaker
            per-channel one).
        noise: Range of the noise level relative to each channel's mean brain intensity.
        gain: Range of the log-uniform gain per channel.
        scale: Nominal intensity of 1.0 in scanner units.

    Returns:
        float32 images ``(C, X, Y, Z)``, nonnegative and zero outside ``brain``.
    """
    shape = clean.shape[1:]
    cell = 60.0 / spacing
    shared = smooth_noise(rng, shape, cell)
    out = np.empty_like(clean, dtype=np.float32)
    for c in range(clean.shape[0]):
        own = smooth_noise(rng, shape, cell)
        field = np.exp(bias * (0.8 * shared + 0.45 * own)).astype(np.float32)
        g = np.exp(rng.uniform(np.log(gain[0]), np.log(gain[1]))) * scale
        signal = clean[c] * field * np.float32(g)
        level = float(signal[brain].mean()) * rng.uniform(*noise)
        real = signal + rng.standard_normal(shape, dtype=np.float32) * np.float32(level)
        imag = rng.standard_normal(shape, dtype=np.float32) * np.float32(level)
        out[c] = np.sqrt(real * real + imag * imag)
    out *= brain[None]
    return out
