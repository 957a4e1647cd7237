"""The images a :class:`~nmfseg.inference.predictor.Predictor` takes and writes besides cases.

:func:`nifti_channels` reads NIfTI images given in memory or as paths (one 4D image channels
last, or one 3D/2D image per channel) into one channels-first array, with the header whose
affine the prediction keeps; :func:`save_probabilities` writes probabilities as a compressed
``.npz``, atomically.

Examples::

    >>> import nibabel as nib
    >>> image = nib.Nifti1Image(np.zeros((4, 3, 2, 2), np.float32), np.eye(4))
    >>> array, ref, spacing = nifti_channels(image)
    >>> array.shape, spacing
    ((2, 4, 3, 2), (1.0, 1.0, 1.0))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from nmfseg.data.nifti import load_nifti, squeeze_image
from nmfseg.errors import DataError
from nmfseg.fileio import atomic_open
from nmfseg.inference.checks import check_image

__all__ = ["nifti_channels", "save_probabilities"]


def nifti_channels(image: Any) -> tuple[np.ndarray, nib.Nifti1Image, tuple[float, ...]]:
    """``(C, *spatial)`` float32 voxels of NIfTI images, the first image, and its voxel size.

    Args:
        image: A nibabel image (4D channels last, or 3D for one channel), a path to one, or a
            sequence of 3D/2D images or paths (one per channel, in the model's order).

    Raises:
        DataError: Images of different shapes, or an array that is no image (naming it).
    """
    images = list(image) if isinstance(image, list | tuple) else [image]
    loaded = [load_nifti(Path(i)) if isinstance(i, str | Path) else i for i in images]
    arrays = []
    for i, img in enumerate(loaded):
        where = images[i] if isinstance(images[i], str | Path) else f"image {i}"
        data = check_image(img.dataobj, len(np.shape(img.dataobj)) - 1, str(where))
        data = np.asarray(data, dtype=np.float32)
        if len(loaded) > 1 or data.ndim < 4:  # one channel: a 3D volume or a 2D image
            arrays.append(squeeze_image(data, where)[None])
        else:  # channels last: (X, Y, Z, C), or (X, Y, 1, C) for a 2D image
            arrays.append(np.stack([squeeze_image(c, where) for c in np.moveaxis(data, -1, 0)]))
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise DataError("image", f"the channel images differ in shape: {sorted(shapes)}")
    ref = loaded[0]
    spacing = tuple(round(float(z), 6) for z in ref.header.get_zooms()[: arrays[0].ndim - 1])
    return np.concatenate(arrays), ref, spacing


def save_probabilities(
    path: Path, probabilities: np.ndarray, regions: Sequence[str], affine: np.ndarray
) -> None:
    """Write ``probabilities (R, X, Y, Z)`` as float16 into a compressed ``.npz``, atomically.

    Examples::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "case_probabilities.npz"
        >>> save_probabilities(path, np.full((1, 2, 2, 2), 0.25), ["lesion"], np.eye(4))
        >>> saved = np.load(path)
        >>> saved["probabilities"].dtype, saved["regions"].tolist()
        (dtype('float16'), ['lesion'])
    """
    with atomic_open(path) as fh:
        np.savez_compressed(
            fh,
            probabilities=np.asarray(probabilities, dtype=np.float16),
            regions=np.asarray(list(regions), dtype=str),
            affine=np.asarray(affine, dtype=np.float64),
        )
