"""Preprocessing shared by training and prediction (paper §4.2, "Preprocessing").

A case is cropped to the minimal box that holds every nonzero voxel of the image (any
channel), then each channel is z-scored with the mean and standard deviation of its own
nonzero voxels; zero voxels (background) stay exactly 0. The crop is recorded in a
:class:`CropRecord` so that a prediction made on the cropped image can be put back into
the original grid with :func:`uncrop`.

The normalization is the same as MONAI's
``NormalizeIntensity(nonzero=True, channel_wise=True)``: population standard deviation
(``ddof=0``), a channel whose nonzero voxels are all equal is only shifted (divisor 1),
and a channel without nonzero voxels is left as it is. Unlike calling MONAI directly, the
input array is never modified in place, the statistics are accumulated in float64, and
non-finite input is refused.

Edge cases (defined here, relied on by training and prediction):

- **All-zero image**: there is no foreground box, so nothing is cropped (the box is the
  whole volume) and the image stays all zeros.
- **NaN or Inf** anywhere in the image: :class:`~nmfseg.errors.DataError` naming the
  channel and the number of bad voxels; such a case is refused, never silently repaired.

Examples::

    >>> import numpy as np
    >>> from nmfseg.data.preprocess import preprocess_case, uncrop
    >>> image = np.zeros((2, 10, 11, 12), np.float32)
    >>> image[:, 2:6, 3:8, 4:9] = np.random.default_rng(0).random((2, 4, 5, 5)) + 1
    >>> label = (image[0] > 1.5).astype(np.uint8)
    >>> x, y, record = preprocess_case(image, label)
    >>> x.shape, y.shape, record.start, record.stop
    ((2, 4, 5, 5), (4, 5, 5), (2, 3, 4), (6, 8, 9))
    >>> bool(np.array_equal(uncrop(y, record), label))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from nmfseg.errors import DataError

__all__ = [
    "CropRecord",
    "crop",
    "nonzero_bbox",
    "normalize_nonzero",
    "preprocess_case",
    "uncrop",
]

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True)
class CropRecord:
    """Where a cropped volume sits in its original grid.

    Attributes:
        shape: spatial shape of the original volume ``(X, Y, Z)``.
        start: first voxel of the box, per spatial axis (inclusive).
        stop: end of the box, per spatial axis (exclusive), so the box is
            ``[start[i], stop[i])``.
    """

    shape: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.shape) == len(self.start) == len(self.stop):
            raise ValueError(
                f"shape, start and stop need the same length, got {self.shape}, "
                f"{self.start}, {self.stop}."
            )
        for n, a, b in zip(self.shape, self.start, self.stop, strict=True):
            if not 0 <= a < b <= n:
                raise ValueError(f"box {self.start}..{self.stop} does not fit in {self.shape}.")

    @property
    def slices(self) -> tuple[slice, ...]:
        """Spatial slices that cut the box out of the original volume."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        """Spatial shape of the box."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    def to_dict(self) -> dict[str, list[int]]:
        """Plain-JSON form (lists of ints), for logs and saved probability maps."""
        return {"shape": list(self.shape), "start": list(self.start), "stop": list(self.stop)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(map(int, d["shape"])), tuple(map(int, d["start"])), tuple(map(int, d["stop"]))
        )


def _check_finite(image: np.ndarray, where: str) -> None:
    finite = np.isfinite(image)
    if finite.all():
        return
    bad = (~finite).reshape(image.shape[0], -1).sum(1)
    channels = ", ".join(f"channel {c}: {n}" for c, n in enumerate(bad) if n)
    raise DataError(where, f"image has NaN or Inf voxels ({channels}); fix or drop this case")


def nonzero_bbox(image: np.ndarray) -> CropRecord:
    """Minimal box holding every nonzero voxel of ``image (C, *spatial)``, any channel.

    An all-zero image has no foreground; its box is the whole volume.

    Examples::

        >>> import numpy as np
        >>> image = np.zeros((1, 5, 6, 7), np.float32)
        >>> image[0, 1, 2, 3] = image[0, 3, 2, 5] = 1.0
        >>> nonzero_bbox(image)
        CropRecord(shape=(5, 6, 7), start=(1, 2, 3), stop=(4, 3, 6))
    """
    shape = tuple(int(n) for n in image.shape[1:])
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return CropRecord(shape, (0,) * len(shape), shape)
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        start.append(int(idx[0]))
        stop.append(int(idx[-1]) + 1)
    return CropRecord(shape, tuple(start), tuple(stop))


def crop(array: ArrayT, record: CropRecord) -> ArrayT:
    """Cut the box of ``record`` out of the last spatial axes of ``array (..., X, Y, Z)``.

    Works on NumPy arrays and torch tensors alike (returns a view).
    """
    spatial = len(record.shape)
    if tuple(array.shape[-spatial:]) != tuple(record.shape):  # type: ignore[attr-defined]
        raise ValueError(
            f"array of spatial shape {tuple(array.shape[-spatial:])} does not match the "  # type: ignore[attr-defined]
            f"record's original shape {record.shape}."
        )
    return array[(..., *record.slices)]  # type: ignore[index]


def uncrop(array: ArrayT, record: CropRecord, fill: float = 0) -> ArrayT:
    """Put ``array (..., x, y, z)`` back into the original grid ``(..., X, Y, Z)``.

    Voxels outside the box get ``fill``; dtype and array type (NumPy or torch) are kept.

    Examples::

        >>> import numpy as np
        >>> record = CropRecord(shape=(4, 4, 4), start=(1, 0, 2), stop=(3, 4, 3))
        >>> uncrop(np.ones((2, 2, 4, 1), np.uint8), record).shape
        (2, 4, 4, 4)
    """
    spatial = len(record.shape)
    if tuple(array.shape[-spatial:]) != record.cropped_shape:  # type: ignore[attr-defined]
        raise ValueError(
            f"array of spatial shape {tuple(array.shape[-spatial:])} does not match the "  # type: ignore[attr-defined]
            f"record's box shape {record.cropped_shape}."
        )
    full_shape = (*array.shape[:-spatial], *record.shape)  # type: ignore[attr-defined]
    if isinstance(array, np.ndarray):
        out: Any = np.full(full_shape, fill, dtype=array.dtype)
    else:
        import torch

        out = torch.full(full_shape, fill, dtype=array.dtype, device=array.device)  # type: ignore[attr-defined]
    out[(..., *record.slices)] = array
    return out


def normalize_nonzero(image: np.ndarray) -> np.ndarray:
    """Channel-wise z-score of ``image (C, *spatial)`` over each channel's nonzero voxels.

    Same result as MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)``; returns a
    new float32 array and leaves ``image`` untouched. Zero voxels stay 0; a channel with a
    single distinct nonzero value is only shifted; an all-zero channel is left at 0.

    Examples::

        >>> import numpy as np
        >>> x = normalize_nonzero(np.array([[[[0.0, 1.0, 3.0]]]], np.float32))
        >>> x.ravel().tolist()
        [0.0, -1.0, 1.0]
    """
    out = np.array(image, dtype=np.float32, copy=True)
    for c in range(out.shape[0]):
        channel = out[c]
        mask = channel != 0
        if not mask.any():
            continue
        values = channel[mask].astype(np.float64)
        mean = values.mean()
        std = values.std()
        channel[mask] = ((values - mean) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray | None = None,
    *,
    where: str = "image",
) -> tuple[np.ndarray, np.ndarray | None, CropRecord]:
    """Crop to the nonzero box and z-score each channel on its nonzero voxels.

    The one preprocessing used by both training and prediction, so the network sees the
    same intensities in both.

    Args:
        image: ``(C, X, Y, Z)`` array (any float or int dtype).
        label: optional ``(X, Y, Z)`` label map, cropped with the same box (dtype kept).
        where: name of the case or file, used in error messages.

    Returns:
        ``(image, label, record)``: the cropped, normalized float32 image, the cropped
        label (or ``None``) and the :class:`CropRecord` to undo the crop with
        :func:`uncrop`.

    Raises:
        DataError: the image has NaN/Inf voxels, or its shape does not fit the label.

    Examples::

        >>> import numpy as np
        >>> image = np.zeros((1, 8, 9, 10), np.float32)
        >>> image[0, 2:5, 1:4, 3:9] = 7.0
        >>> x, _, record = preprocess_case(image)
        >>> x.shape, float(x.max()), record.cropped_shape
        ((1, 3, 3, 6), 0.0, (3, 3, 6))
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise DataError(where, f"image must be (C, *spatial), got shape {image.shape}")
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape[1:]:
            raise DataError(
                where,
                f"label shape {label.shape} does not match image spatial shape {image.shape[1:]}",
            )
    _check_finite(image, where)
    record = nonzero_bbox(image)
    image = normalize_nonzero(crop(image, record))
    if label is not None:
        label = np.ascontiguousarray(crop(label, record))
    return image, label, record
