"""ISLES'22-like acute stroke phantoms: DWI (b=1000) and ADC on the MNI152 anatomy.

Each case has zero to several infarcts. An infarct is placed in a vascular-territory-like
sector of one hemisphere (MCA: lateral hemisphere; ACA: parasagittal frontal/parietal;
PCA: occipital; deep perforators: basal ganglia and internal capsule; vertebrobasilar:
cerebellum), given a random size (lacunes of a few mm up to large territorial infarcts,
which only the MCA and PCA sectors get) and a noise-deformed ellipsoidal shape restricted to
brain tissue. Later infarcts prefer the hemisphere of the first (embolic showers).

Intensities follow the diffusion signal model: an ADC map (mm²/s × 10⁻⁶, CSF ≈ 3000,
grey ≈ 850, white ≈ 720, infarct 40–75 % of the tissue value) and a T2-weighted ``S0`` (CSF
bright, infarct slightly bright), combined as ``DWI = S0 · exp(-b · ADC)``: infarcts are bright
on DWI and dark on ADC, CSF is dark on DWI and bright on ADC. Then the shared acquisition
model (pose, bias, gain, Rician noise, skull stripping); ADC, a quantitative map, gets a
gain close to 1 and a weaker bias.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nmfseg.phantoms import anatomy

__all__ = ["ISLES_CHANNELS", "ISLES_REGIONS", "LESION", "TERRITORIES", "synth_isles_case"]

LESION = 1
#: Internal label -> the one region it belongs to (the ISLES'22 definition).
ISLES_REGIONS: dict[str, tuple[int, ...]] = {"lesion": (LESION,)}
#: Channel order of the generated images (the ISLES'22 order).
ISLES_CHANNELS = ("DWI", "ADC")

#: Sectors in MNI mm for the right hemisphere, ``(|x|, y, z)`` ranges, and the largest
#: infarct radius (mm) each admits; the left hemisphere mirrors x.
TERRITORIES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], float]]
TERRITORIES = {
    "MCA": ((22.0, 58.0), (-60.0, 30.0), (-12.0, 50.0), 30.0),
    "ACA": ((4.0, 18.0), (-40.0, 50.0), (15.0, 65.0), 14.0),
    "PCA": ((6.0, 36.0), (-98.0, -58.0), (-12.0, 22.0), 22.0),
    "deep": ((12.0, 30.0), (-28.0, 18.0), (-4.0, 18.0), 8.0),
    "vertebrobasilar": ((4.0, 38.0), (-82.0, -45.0), (-48.0, -22.0), 12.0),
}
_TERRITORY_P = np.array([0.5, 0.1, 0.15, 0.15, 0.1])

_ADC = np.array([3000.0, 850.0, 720.0], dtype=np.float32)  # CSF, GM, WM (1e-6 mm^2/s)
_S0 = np.array([1.0, 0.62, 0.5], dtype=np.float32)  # T2-weighted b=0 signal
_B = np.float32(1000e-6)  # b-value (s/mm^2) times ADC units


def _place(rng: np.random.Generator, anat, side: float) -> tuple[np.ndarray, float]:
    """A lesion centre (template voxel) in a territory and its largest radius in mm."""
    name = rng.choice(list(TERRITORIES), p=_TERRITORY_P)
    xr, yr, zr, rmax = TERRITORIES[name]
    tissue = anat.gm + anat.wm
    best = None
    for _ in range(40):
        xyz = np.array([side * rng.uniform(*xr), rng.uniform(*yr), rng.uniform(*zr)])
        vox = anat.world_to_voxel(xyz)
        idx = tuple(np.clip(np.round(vox).astype(int), 0, np.array(anat.shape) - 1))
        if tissue[idx] > 0.7 and anat.depth[idx] > 3.0:
            return vox, rmax
        if best is None or tissue[idx] > tissue[best[1]]:
            best = (vox, idx)
    assert best is not None
    return best[0], rmax


def _white_matter_lesions(
    rng: np.random.Generator, wm: np.ndarray, grid: np.ndarray, spacing: float
) -> np.ndarray:
    """Unlabelled chronic small-vessel lesions in white matter (soft map in [0, 1]).

    They are bright on T2 and ADC and only faintly bright on DWI, so DWI alone does not
    tell them from an acute infarct: a model has to read ADC too.
    """
    out = np.zeros(wm.shape, dtype=np.float32)
    n = int(rng.choice(5, p=[0.45, 0.2, 0.15, 0.1, 0.1]))
    idx = np.argwhere(wm > 0.85)
    for _ in range(n if len(idx) else 0):
        centre = idx[rng.integers(len(idx))].astype(np.float32)
        radius = rng.uniform(2.5, 7.0) / spacing
        half = int(np.ceil(1.6 * radius)) + 1
        box = anatomy.box_around(centre, half, wm.shape)
        rel = grid[(slice(None), *box)] - centre.reshape(3, 1, 1, 1)
        score = anatomy.ellipsoid_radius(
            rel, anatomy.random_rotation(rng), radius * rng.uniform(0.6, 1.4, 3)
        )
        blob = np.clip(1.5 - score, 0.0, 1.0) * (wm[box] > 0.5)
        out[box] = np.maximum(out[box], blob)
    return out


def synth_isles_case(
    seed: int | tuple[int, ...],
    spacing: float = 2.0,
    shape: tuple[int, int, int] | None = None,
) -> anatomy.SynthCase:
    """Generate one ISLES'22-like case (``seed``, ``spacing`` and ``shape`` as in
    :func:`~nmfseg.phantoms.brats.synth_brats_case`).

    Returns:
        ``SynthCase(image, label, affine)``: ``image`` is ``(2, X, Y, Z)`` float32 (DWI,
        ADC), skull-stripped; ``label`` is a uint8 lesion mask (0/1, possibly empty).

    Examples::

        >>> case = synth_isles_case(0, spacing=4.0)
        >>> case.image.shape[0], case.label.dtype.name, int(case.label.max()) <= 1
        (2, 'uint8', True)
    """
    rng = anatomy.case_rng(seed)
    anat = anatomy.load_anatomy(spacing, shape)
    sp = anat.spacing
    pose = anatomy.random_pose(rng, anat)
    tissue = anatomy.warp_tissue(anat, pose)
    brain = tissue["brain"] > 0.5
    parenchyma = (tissue["gm"] + tissue["wm"] > 0.45) & brain

    n_lesions = int(rng.choice(6, p=[0.08, 0.4, 0.22, 0.14, 0.1, 0.06]))
    side = rng.choice([-1.0, 1.0])
    grid = anatomy.output_grid(anat.shape)
    label = np.zeros(anat.shape, dtype=np.uint8)
    severity = np.zeros(anat.shape, dtype=np.float32)  # fraction of ADC lost
    for i in range(n_lesions):
        if i > 0 and rng.random() < 0.25:
            side = -side
        centre_t, rmax = _place(rng, anat, side)
        centre = pose.to_output(centre_t)
        radius_mm = float(np.exp(rng.uniform(np.log(2.5), np.log(rmax))))
        half = int(np.ceil(1.5 * radius_mm / sp)) + 2
        box = anatomy.box_around(centre, half, anat.shape)
        if any(b.stop <= b.start for b in box):
            continue
        rel = grid[(slice(None), *box)] - centre.astype(np.float32).reshape(3, 1, 1, 1)
        axes = radius_mm / sp * rng.uniform(0.6, 1.4, size=3)
        score = anatomy.ellipsoid_radius(rel, anatomy.random_rotation(rng), np.maximum(axes, 0.6))
        score += 0.25 * anatomy.smooth_noise(rng, rel.shape[1:], max(radius_mm / sp * 0.4, 1.2))
        mask = (score < 1.0) & parenchyma[box]
        if not mask.any():
            continue
        label[box] |= mask.astype(np.uint8)
        loss = rng.uniform(0.2, 0.55)  # ADC drop of this infarct
        sev = severity[box]
        sev[mask] = np.maximum(sev[mask], loss)

    # Partial-volume blur of the infarct's effect, texture within it.
    severity = ndimage.gaussian_filter(severity, 0.6)
    severity *= 1.0 + 0.15 * anatomy.smooth_noise(rng, anat.shape, 2.0)
    chronic = _white_matter_lesions(rng, tissue["wm"], grid, sp)
    fractions = np.stack([tissue["csf"], tissue["gm"], tissue["wm"]])
    adc_c = _ADC * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    s0_c = _S0 * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    adc = np.tensordot(adc_c, fractions, axes=1) * (1.0 - np.clip(severity, 0.0, 0.8))
    s0 = np.tensordot(s0_c, fractions, axes=1) * (1.0 + 0.3 * severity)
    adc *= 1.0 + 0.4 * chronic  # old lesions: high ADC, T2 shine-through on DWI
    s0 *= 1.0 + 0.45 * chronic
    adc *= 1.0 + 0.05 * anatomy.smooth_noise(rng, anat.shape, 3.0)
    dwi = s0 * np.exp(-_B * adc)
    dwi_img = anatomy.acquire(
        rng, (dwi / 0.3)[None].astype(np.float32), brain, sp, noise=(0.03, 0.07)
    )
    adc_img = anatomy.acquire(
        rng,
        (adc / 1000.0)[None].astype(np.float32),
        brain,
        sp,
        bias=0.03,
        noise=(0.03, 0.06),
        gain=(0.97, 1.03),
    )
    image = np.concatenate([dwi_img, adc_img]).astype(np.float32)
    label *= brain
    return anatomy.SynthCase(image=image, label=label, affine=anat.affine.copy())
