"""CT-like head phantoms: Hounsfield units, a skull, haemorrhages and clinical voxel sizes.

A non-contrast head CT on the MNI152 anatomy (:mod:`nmfseg.phantoms.anatomy`), built in
this order, all randomness from one seeded generator:

1. the case's voxel size, drawn as a scanner would reconstruct it: in-plane ``FOV / 256``
   with a field of view of 180–256 mm (0.70–1.0 mm), slices of 1, 1.25, 2.5, 3 or 5 mm
   (so a dataset mixes thin and thick, nearly isotropic and strongly anisotropic cases);
2. a rigid pose and, in 90 % of the cases, an acute intraparenchymal haemorrhage (deep,
   lobar or cerebellar; 5–20 mm radius) with its mass effect, and a rim of perihaematomal
   oedema (1.5–8 mm) in the brain tissue around it;
3. tissue fractions on an isotropic generation grid (``spacing`` mm): the template's grey
   matter, white matter and CSF, and around the brain mask a subarachnoid CSF layer, a
   skull (two dense tables and the diploë between them, 3–10 mm), then galea/muscle,
   subcutaneous fat and skin, then air; unlabelled calcifications of the pineal gland and
   the choroid plexus (hyperdense, as in most adults), each case's own HU per tissue;
4. the case's grid: the image integrated over each voxel (a slice profile as wide as the
   slice) and sampled, so the head is the same size in mm whatever the voxel size; labels
   are the majority tissue of each voxel;
5. CT noise (slightly correlated in-plane, its level following the voxel volume:
   about 4 HU at 0.8 x 0.8 x 5 mm, 10 HU at 0.7 x 0.7 x 1 mm), rounding and clipping
   to the 12-bit range, stored as int16 with ``scl_slope`` 1 and ``scl_inter`` 0.

The template is skull-stripped, so the skull and scalp are shells about the brain mask: a
head without a face, sinuses or skull base. Labels: ``HAEMORRHAGE = 1``, ``OEDEMA = 2``.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from nmfseg.data.formats import get_format
from nmfseg.data.nifti import label_dtype, new_nifti, save_nifti
from nmfseg.data.schemes import DatasetScheme
from nmfseg.fileio import atomic_path
from nmfseg.phantoms import anatomy
from nmfseg.phantoms.brats import mass_effect

__all__ = [
    "CT_CHANNELS",
    "CT_REGIONS",
    "HAEMORRHAGE",
    "HU_RANGES",
    "OEDEMA",
    "TISSUES",
    "CTCase",
    "clinical_spacing",
    "synth_ct_case",
    "write_ct_case",
]

HAEMORRHAGE, OEDEMA = 1, 2
#: Internal label -> the one region it belongs to.
CT_REGIONS: dict[str, tuple[int, ...]] = {"haemorrhage": (HAEMORRHAGE,), "oedema": (OEDEMA,)}
CT_CHANNELS = ("CT",)

#: Range of each tissue's mean HU (drawn per case; bone: diploë to the dense tables).
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "fat": (-110.0, -80.0),
    "soft tissue": (30.0, 50.0),
    "bone": (450.0, 1500.0),
    "CSF": (2.0, 12.0),
    "grey matter": (34.0, 42.0),
    "white matter": (24.0, 30.0),
    "haemorrhage": (55.0, 85.0),
    "oedema": (12.0, 22.0),
    "calcification": (150.0, 400.0),
}
#: Codes of :attr:`CTCase.tissue`: 0 where no tissue fills 90 % of the voxel.
TISSUES = ("mixed", *HU_RANGES)

_SLICES = np.array([1.0, 1.25, 2.5, 3.0, 5.0])
_SLICE_P = np.array([0.25, 0.1, 0.2, 0.15, 0.3])
#: Calcification sites (MNI mm): pineal gland, glomus of each choroid plexus.
_CALCIFICATIONS = ((0.0, -30.0, 2.0, 0.55), (-27.0, -40.0, 14.0, 0.6), (27.0, -40.0, 14.0, 0.6))
#: Haemorrhage sites (MNI mm bounds on |x|, y, z), their probability and largest radius.
_SITES = {
    "deep": (((10.0, 32.0), (-32.0, 20.0), (-6.0, 22.0)), 0.5, 20.0),
    "lobar": (((12.0, 70.0), (-90.0, 60.0), (-10.0, 70.0)), 0.38, 20.0),
    "cerebellar": (((6.0, 40.0), (-85.0, -45.0), (-50.0, -20.0)), 0.12, 14.0),
}


class CTCase(NamedTuple):
    """One CT phantom: ``image (1, X, Y, Z)`` int16 HU, ``label (X, Y, Z)`` uint8, ``affine``
    (carrying the case's voxel size), and on request ``tissue`` (codes of :data:`TISSUES`)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tissue: np.ndarray | None = None


def clinical_spacing(rng: np.random.Generator) -> np.ndarray:
    """A clinical head-CT voxel size ``(in-plane, in-plane, slice)`` in mm.

    Examples::

        >>> sp = clinical_spacing(np.random.default_rng(0))
        >>> bool(0.7 <= sp[0] == sp[1] <= 1.0), float(sp[2]) in (1.0, 1.25, 2.5, 3.0, 5.0)
        (True, True)
    """
    pixel = rng.integers(180, 257) / 256.0
    return np.array([pixel, pixel, rng.choice(_SLICES, p=_SLICE_P)])


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """0 below ``-width/2``, 1 above ``width/2``, linear between (a partial-volume edge)."""
    return np.clip(x / np.float32(width) + 0.5, 0.0, 1.0).astype(np.float32)


def _pick_site(rng: np.random.Generator, anat: anatomy.Anatomy) -> tuple[np.ndarray, float]:
    """A haemorrhage centre (template voxel) deep enough in brain tissue, and its radius."""
    names = list(_SITES)
    name = names[rng.choice(len(names), p=[_SITES[n][1] for n in names])]
    bounds, _, rmax = _SITES[name]
    radius = float(np.exp(rng.uniform(np.log(5.0), np.log(rmax))))
    idx = np.argwhere((anat.gm + anat.wm > 0.8) & (anat.depth > min(radius, 12.0) + 4.0))
    if len(idx) == 0:  # a tiny crop: the deepest voxel
        deepest = np.unravel_index(np.argmax(anat.depth), anat.shape)
        return np.array(deepest, dtype=np.float64), radius
    world = idx @ anat.affine[:3, :3].T + anat.affine[:3, 3]
    inside = np.ones(len(idx), dtype=bool)
    for axis, (lo, hi) in enumerate(bounds):
        value = np.abs(world[:, 0]) if axis == 0 else world[:, axis]
        inside &= (value >= lo) & (value <= hi)
    pool = idx[inside] if inside.any() else idx
    return pool[rng.integers(len(pool))] + rng.uniform(-0.5, 0.5, size=3), radius


def _add_blob(out: np.ndarray, centre: np.ndarray, radius: float) -> None:
    """Paint a soft ball (partial-volume edge one voxel wide; radius in voxels) into ``out``."""
    box = anatomy.box_around(centre, int(np.ceil(radius)) + 2, out.shape)
    grid = np.indices(out[box].shape, dtype=np.float32)
    corner = np.array([b.start for b in box], dtype=np.float32)
    rel = grid + (corner - centre.astype(np.float32)).reshape(3, 1, 1, 1)
    ball = _ramp(np.float32(radius) - np.sqrt(np.sum(rel * rel, axis=0)), 1.0)
    out[box] = np.maximum(out[box], ball)


def _temporal(anat: anatomy.Anatomy, pose: anatomy.Pose, grid: np.ndarray) -> np.ndarray:
    """Where the temporalis muscle thickens the scalp: 1 over the temporal fossa (lateral,
    above the ear), fading to 0 over the vertex, the forehead and the occiput."""
    vox = pose.to_template(grid)
    world = np.tensordot(anat.affine[:3, :3], vox, axes=1) + anat.affine[:3, 3].reshape(3, 1, 1, 1)
    x, y, z = world
    lateral = np.clip((np.abs(x) - 35.0) / 20.0, 0.0, 1.0)
    return (
        lateral
        * np.clip(1.0 - np.abs(z - 5.0) / 40.0, 0.0, 1.0)
        * np.clip(1.0 - np.abs(y + 5.0) / 55.0, 0.0, 1.0)
    ).astype(np.float32)


def _fine_tissues(
    rng: np.random.Generator, anat: anatomy.Anatomy
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | float]]:
    """Tissue fractions (summing to 1) and HU on the generation grid."""
    sp = anat.spacing
    pose = anatomy.random_pose(rng, anat)
    grid = anatomy.output_grid(anat.shape)
    bleed = rng.random() < 0.9
    source = None
    if bleed:
        centre_t, radius_mm = _pick_site(rng, anat)
        centre = pose.to_output(centre_t)
        rel = grid - centre.astype(np.float32).reshape(3, 1, 1, 1)
        source = mass_effect(rel, radius_mm / sp, rng.uniform(0.1, 0.35)) + grid - rel
    tissue = anatomy.warp_tissue(anat, pose, source)
    brain = tissue["brain"]
    inside = brain > 0.5

    haem = np.zeros(anat.shape, dtype=np.float32)
    oedema = np.zeros(anat.shape, dtype=np.float32)
    if bleed:
        half = int(np.ceil((1.6 * radius_mm + 10.0) / sp)) + 2
        box = anatomy.box_around(centre, half, anat.shape)
        rel_box = rel[(slice(None), *box)]
        axes = radius_mm / sp * rng.uniform(0.7, 1.3, size=3)
        score = anatomy.ellipsoid_radius(rel_box, anatomy.random_rotation(rng), axes)
        score += 0.2 * anatomy.smooth_noise(rng, score.shape, max(radius_mm / sp * 0.5, 1.2))
        clot = (score < 1.0) & inside[box]
        rim_mm = rng.uniform(1.5, 8.0) * (1.0 + 0.35 * anatomy.smooth_noise(rng, score.shape, 3))
        dist = ndimage.distance_transform_edt(~clot) * sp
        tissue_box = tissue["gm"][box] + tissue["wm"][box]
        rim = ~clot & (dist < rim_mm) & (tissue_box > 0.5) & inside[box]
        haem[box] = ndimage.gaussian_filter(clot.astype(np.float32), 0.5)
        oedema[box] = np.minimum(ndimage.gaussian_filter(rim.astype(np.float32), 0.5), tissue_box)
        oedema[box] = np.minimum(oedema[box], 1.0 - haem[box])
    calc = np.zeros(anat.shape, dtype=np.float32)
    for *xyz, prob in _CALCIFICATIONS:
        if rng.random() < prob:
            where = pose.to_output(anat.world_to_voxel(np.array(xyz)))
            _add_blob(calc, where, rng.uniform(1.0, 3.0) / sp)
    calc = np.minimum(calc * inside, 1.0 - haem - oedema)
    rest = 1.0 - haem - oedema - calc

    # Shells about the brain mask, by distance (mm) outside it.
    out_mm = ndimage.distance_transform_edt(~inside).astype(np.float32) * np.float32(sp)
    field = anatomy.smooth_noise(rng, anat.shape, 40.0 / sp)
    thick = {
        "CSF": np.clip(rng.uniform(0.8, 2.5) + 0.5 * field, 0.3, None),
        "bone": np.clip(rng.uniform(5.0, 7.5) * (1.0 + 0.2 * field), 3.0, 10.0),
        "galea": rng.uniform(1.5, 3.0) + rng.uniform(5.0, 9.0) * _temporal(anat, pose, grid),
        "fat": rng.uniform(2.0, 5.0) * (1.0 + 0.3 * anatomy.smooth_noise(rng, anat.shape, 30 / sp)),
        "skin": rng.uniform(1.5, 2.5),
    }
    edges, edge = [], 0.0
    for value in thick.values():
        edge = edge + value
        edges.append(edge)
    steps = [_ramp(out_mm - e, sp) for e in edges]
    outside = 1.0 - brain
    shell = {
        "CSF": 1.0 - steps[0],
        "bone": steps[0] - steps[1],
        "soft tissue": steps[1] - steps[2] + steps[3] - steps[4],
        "fat": steps[2] - steps[3],
        "air": steps[4],
    }
    fractions = {
        "air": outside * shell["air"],
        "fat": outside * shell["fat"],
        "soft tissue": outside * shell["soft tissue"],
        "bone": outside * shell["bone"],
        "CSF": tissue["csf"] * rest + outside * shell["CSF"],
        "grey matter": tissue["gm"] * rest,
        "white matter": tissue["wm"] * rest,
        "haemorrhage": haem * brain,
        "oedema": oedema * brain,
        "calcification": calc * brain,
    }

    hu: dict[str, np.ndarray | float] = {
        name: float(rng.uniform(lo, hi)) for name, (lo, hi) in HU_RANGES.items()
    }
    table, diploe = rng.uniform(1100.0, 1500.0), rng.uniform(450.0, 750.0)
    into_bone = out_mm - edges[0]
    tables = np.maximum(
        _ramp(1.5 - into_bone, sp), _ramp(into_bone - (edges[1] - edges[0]) + 2, sp)
    )
    hu["bone"] = np.float32(diploe) + np.float32(table - diploe) * tables
    for name, het in (("grey matter", 1.5), ("white matter", 1.5), ("haemorrhage", 4.0)):
        hu[name] = np.float32(hu[name]) + np.float32(het) * anatomy.smooth_noise(
            rng, anat.shape, 2.0
        )
    return fractions, hu


def _to_case_grid(arr: np.ndarray, factor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``arr`` integrated over the case's voxels (``factor`` generation voxels wide) and
    sampled at their centres."""
    sigma = np.sqrt(np.maximum(factor**2 - 1.0, 0.0) / 12.0)  # a box as wide as the voxel
    src = ndimage.gaussian_filter(arr, sigma, mode="nearest") if sigma.max() > 0 else arr
    return ndimage.affine_transform(
        src, factor, offset=(factor - 1.0) / 2.0, output_shape=shape, order=1, mode="nearest"
    )


def synth_ct_case(
    seed: int | tuple[int, ...],
    spacing: float = 1.0,
    shape: tuple[int, int, int] | None = None,
    tissue: bool = False,
) -> CTCase:
    """Generate one CT-like head case (see the module docstring).

    Args:
        seed: Seed of this case; the same seed gives byte-identical arrays.
        spacing: The generation grid in mm, and the scale of the case's voxel size: 1 gives
            the clinical sizes (0.70–1.0 mm in-plane, 1–5 mm slices); 2–4 coarser ones for
            quick runs (the same anatomy, ``spacing`` times larger voxels).
        shape: Optional generation grid size (crop/pad about the brain, see
            :func:`~nmfseg.phantoms.anatomy.load_anatomy`); the case's own shape follows
            from its voxel size.
        tissue: Also return each voxel's tissue (:data:`TISSUES`; for tests and figures).

    Returns:
        A :class:`CTCase`: ``image`` int16 HU ``(1, X, Y, Z)``, ``label`` uint8 (0,
        ``HAEMORRHAGE``, ``OEDEMA``), ``affine`` with the case's voxel size on its diagonal.

    Examples::

        >>> case = synth_ct_case(0, spacing=4.0)
        >>> case.image.dtype.name, int(case.image.min()) >= -1024
        ('int16', True)
        >>> set(np.unique(case.label).tolist()) <= {0, HAEMORRHAGE, OEDEMA}
        True
    """
    rng = anatomy.case_rng(seed)
    anat = anatomy.load_anatomy(spacing, shape)
    clinical = clinical_spacing(rng)
    factor = clinical  # case voxel in generation voxels (voxel = clinical * spacing mm)
    out_shape = tuple(max(round(n / f), 1) for n, f in zip(anat.shape, factor, strict=True))
    fractions, hu = _fine_tissues(rng, anat)

    clean = np.zeros(anat.shape, dtype=np.float32)
    for name, frac in fractions.items():
        clean += frac * hu[name]
    image = _to_case_grid(clean, factor, out_shape)
    lesion = [_to_case_grid(fractions[n], factor, out_shape) for n in ("haemorrhage", "oedema")]
    label = np.argmax(np.stack([1.0 - lesion[0] - lesion[1], *lesion]), axis=0).astype(np.uint8)
    classes = None
    if tissue:
        stack = np.stack([_to_case_grid(fractions[n], factor, out_shape) for n in TISSUES[1:]])
        classes = np.where(stack.max(0) >= 0.9, np.argmax(stack, 0) + 1, 0).astype(np.uint8)

    # Noise: ~4 HU at 0.8 x 0.8 x 5 mm, growing as 1/sqrt(voxel volume); a faint cupping.
    sigma = rng.uniform(3.0, 5.0) * np.sqrt(3.2 / float(np.prod(clinical)))
    noise = ndimage.gaussian_filter(rng.standard_normal(out_shape, dtype=np.float32), (0.6, 0.6, 0))
    noise *= np.float32(sigma / max(float(noise.std()), 1e-6))
    cell = 60.0 / (spacing * float(clinical[0]))
    image += noise + np.float32(2.0) * anatomy.smooth_noise(rng, out_shape, cell)
    hu_int = np.clip(np.round(image), -1024, 3071).astype(np.int16)

    linear = anat.affine[:3, :3] @ np.diag(factor)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = anat.affine[:3, :3] @ ((factor - 1.0) / 2.0) + anat.affine[:3, 3]
    return CTCase(hu_int[None], label, affine, classes)


def _int16_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file of int16 ``data`` with ``scl_slope`` 1 and ``scl_inter`` 0."""
    img = new_nifti(np.asarray(data, dtype=np.int16), affine)
    raw = bytearray(img.to_bytes())  # nibabel writes NaN (no scaling) for integer data
    struct.pack_into(img.header.endianness + "ff", raw, 112, 1.0, 0.0)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=buffer, mtime=0) as gz:
        gz.write(bytes(raw))
    return buffer.getvalue()


def write_ct_case(
    fmt: str,
    root: str | Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    scheme: DatasetScheme,
) -> list[Path]:
    """Write a CT case in a format's layout as real CT is stored: int16 HU, ``scl_slope`` 1,
    ``scl_inter`` 0, one 3D file per channel (one 4D file where the format has several
    channels in one file); the label as :func:`~nmfseg.data.formats.write_case` writes it.

    Returns:
        The files written, images first.
    """
    form = get_format(fmt)
    scheme = form.resolve_scheme(scheme)
    images, label_path = form.case_paths(Path(root), case_id, scheme)
    volumes = [np.moveaxis(image, 0, -1)] if len(images) < len(image) else list(image)
    for path, volume in zip(images, volumes, strict=True):
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(_int16_bytes(volume, affine))
    save_nifti(new_nifti(label.astype(label_dtype(label)), affine), label_path)
    return [*images, label_path]
