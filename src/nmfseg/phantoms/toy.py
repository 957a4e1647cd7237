"""Tiny learnable datasets in the real on-disk formats, for tests and examples.

Each case is an ellipsoid "brain" (a margin of exact zeros around it, so cropping to the
nonzero box does something) with either nested tumour blobs (BraTS-like schemes: WT ⊃ TC ⊃
ET, written with :func:`~nmfseg.data.schemes.regions_to_labels`) or one to three lesions
(one-region schemes such as ISLES'22). Every label has its own fixed contrast in every
channel, the same in every case, so a network can learn the task in a few steps. Cases are
deterministic for a seed, and the affine is not the identity (1.2 × 1.0 × 1.5 mm voxels, x
and y flipped as in BraTS, an offset).

For realistic phantoms built on an anatomical template see :mod:`nmfseg.phantoms.synth`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nmfseg.data.formats import get_format, write_case, write_dataset_metadata
from nmfseg.data.schemes import SCHEMES, DatasetScheme, regions_to_labels

__all__ = ["make_toy_case", "make_toy_dataset", "toy_affine"]

TOY_SPACING = (1.2, 1.0, 1.5)


def toy_affine(spacing: tuple[float, float, float] = TOY_SPACING) -> np.ndarray:
    """Voxel -> mm matrix of toy cases: x and y flipped (like BraTS), an offset.

    Examples::

        >>> toy_affine()[:3, :3].diagonal().tolist()
        [-1.2, -1.0, 1.5]
    """
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (90.0, 126.0, -72.0)
    return affine


def _ellipsoid(grid: np.ndarray, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    d = (grid - center[:, None, None, None]) / radii[:, None, None, None]
    return (d**2).sum(0) <= 1.0


def _contrast(scheme: DatasetScheme) -> dict[int, np.ndarray]:
    """Fixed per-label offset of every channel: label j is ±50·(j+1), sign alternating."""
    signs = np.array([1.0 if c % 2 == 0 else -1.0 for c in range(scheme.in_channels)])
    fg = [v for v in scheme.labels if v not in (0, scheme.ignore_label)]
    return {v: 50.0 * (j + 1) * signs for j, v in enumerate(fg)}


def make_toy_case(
    scheme: DatasetScheme, shape: tuple[int, int, int] = (32, 32, 32), rng=None
) -> tuple[np.ndarray, np.ndarray]:
    """One toy case: ``(image (C, X, Y, Z) float32, label (X, Y, Z) uint8)``.

    Examples::

        >>> image, label = make_toy_case(SCHEMES["brats2023"], (24, 28, 32), rng=0)
        >>> image.shape, sorted(np.unique(label).tolist())
        ((4, 24, 28, 32), [0, 1, 2, 3])
        >>> bool(image[:, 0].any())  # zero margin around the brain
        False
    """
    rng = np.random.default_rng(rng)
    size = np.asarray(shape, dtype=np.float64)
    grid = np.indices(shape, dtype=np.float64)
    brain_c = (size - 1) / 2 + rng.uniform(-1, 1, 3)
    brain_r = size / 2 * rng.uniform(0.62, 0.75, 3)
    brain = _ellipsoid(grid, brain_c, brain_r)

    masks: dict[str, np.ndarray] = {}
    if len(scheme.regions) == 1:  # lesions: 1 to 3 blobs of varied size
        lesion = np.zeros(shape, bool)
        for _ in range(rng.integers(1, 4)):
            r = rng.uniform(0.06, 0.2) * size.min() * np.ones(3)
            c = brain_c + rng.uniform(-0.5, 0.5, 3) * brain_r
            lesion |= _ellipsoid(grid, c, np.maximum(r, 1.5))
        masks[scheme.write_order[0]] = lesion & brain
    else:  # nested blobs, largest first in painting order (WT, TC, ET for BraTS)
        center = brain_c + rng.uniform(-0.25, 0.25, 3) * brain_r
        radius = brain_r * rng.uniform(0.45, 0.6)
        outer = brain
        for name in scheme.write_order:
            outer = outer & _ellipsoid(grid, center, np.maximum(radius, 1.5))
            masks[name] = outer
            center = center + rng.uniform(-0.15, 0.15, 3) * radius
            radius = radius * rng.uniform(0.55, 0.7)
    regions = np.stack([masks[name] for name in scheme.regions])
    label = regions_to_labels(regions, scheme)

    base = 300.0 + 50.0 * np.arange(scheme.in_channels)
    image = np.zeros((scheme.in_channels, *shape), np.float32)
    values = base[:, None] + rng.normal(0, 10, (scheme.in_channels, int(brain.sum())))
    image[:, brain] = values
    for value, offset in _contrast(scheme).items():
        where = label == value
        image[:, where] += offset[:, None].astype(np.float32)
    return image, label


def make_toy_dataset(
    root: str | Path,
    fmt: str,
    n_cases: int = 4,
    shape: tuple[int, int, int] = (32, 32, 32),
    seed: int = 0,
    with_labels: bool = True,
    scheme: DatasetScheme | None = None,
) -> Path:
    """Write a tiny learnable dataset in a real format and return its root.

    Args:
        root: dataset folder (created).
        fmt: a registered format (:func:`nmfseg.data.formats.list_formats`); case ``i`` is
            named ``format.case_id(i, "toy")``.
        n_cases: number of cases.
        shape: spatial shape of every case.
        seed: case ``i`` uses ``np.random.default_rng([seed, i])``.
        with_labels: write label files (else an unlabelled, test-set-like dataset).
        scheme: for a format without a fixed scheme (nnU-Net): the dataset's scheme (default:
            the region-based BraTS template ``SCHEMES["nnunet"]``), written to its metadata.

    Examples::

        >>> import tempfile
        >>> root = make_toy_dataset(Path(tempfile.mkdtemp()) / "Task01", "msd_brats", n_cases=2)
        >>> sorted(p.name for p in (root / "imagesTr").iterdir())
        ['BRATS_001.nii.gz', 'BRATS_002.nii.gz']
    """
    format_ = get_format(fmt)
    scheme = format_.scheme or scheme or SCHEMES["nnunet"]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    affine = toy_affine()
    for i in range(n_cases):
        image, label = make_toy_case(scheme, shape, np.random.default_rng([seed, i]))
        write_case(
            fmt,
            root,
            format_.case_id(i, "toy"),
            image,
            label if with_labels else None,
            affine,
            scheme,
        )
    write_dataset_metadata(fmt, root, scheme)
    return root
