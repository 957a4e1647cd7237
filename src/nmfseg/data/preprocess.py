"""Preprocessing shared by training and prediction (paper §4.2, "Preprocessing").

What is done to a case is described by a
:class:`~nmfseg.data.normalization.Preprocessing` (stored in the run config): transpose
(if any) -> crop to the nonzero box of all channels -> resample to the target spacing (if
any, and different from the case's; :mod:`nmfseg.data.resample`, MONAI) -> normalize each
channel (:class:`~nmfseg.data.normalization.ChannelNorm`). The crop and normalization below
describe the default, the paper's rule, which is also what a call without
``preprocessing=`` does; with ``preprocessing=`` the returned :class:`CaseRecord` lets
:func:`restore` undo all of it (resample back, uncrop, transpose back). Unlike nnU-Net,
which normalizes before it resamples, the intensities are normalized last, on the grid the
network sees (so a ``zscore_nonzero`` channel's statistics include the voxels interpolated
at the edge of its nonzero region); a case that is not resampled is unaffected.

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

from nmfseg.data.normalization import Preprocessing, normalize_channels
from nmfseg.data.resample import resample_to_grid, resample_to_spacing, same_spacing
from nmfseg.errors import DataError

__all__ = [
    "CaseRecord",
    "CropRecord",
    "crop",
    "nonzero_bbox",
    "normalize_nonzero",
    "preprocess_case",
    "restore",
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


@dataclass(frozen=True)
class CaseRecord:
    """Everything :func:`preprocess_case` did to a case, so that :func:`restore` can undo it.

    Attributes:
        crop: the crop box, in the transposed axis order.
        transpose: the spatial axis order applied first (``None``: none).
        spacing: the case's voxel size (mm) in the transposed order (``None``: not given).
        affine: 4x4 affine of the resampled grid in the frame where the cropped case's is
            ``diag(spacing)`` (:func:`~nmfseg.data.resample.resample_to_spacing`), as nested
            tuples; ``None`` when the case was not resampled.
        network_shape: spatial shape of the preprocessed image (what the network sees).
    """

    crop: CropRecord
    transpose: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    affine: tuple[tuple[float, ...], ...] | None = None
    network_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.network_shape:
            object.__setattr__(self, "network_shape", self.crop.cropped_shape)

    @property
    def resampled(self) -> bool:
        """Whether the case was resampled."""
        return self.affine is not None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the case as it was read (before the transpose)."""
        if self.transpose is None:
            return self.crop.shape
        return tuple(self.crop.shape[self.transpose.index(a)] for a in range(len(self.transpose)))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "crop": self.crop.to_dict(),
            "transpose": None if self.transpose is None else list(self.transpose),
            "spacing": None if self.spacing is None else list(self.spacing),
            "affine": None if self.affine is None else [list(row) for row in self.affine],
            "network_shape": list(self.network_shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseRecord:
        """Inverse of :meth:`to_dict`."""

        def tup(value: Any, kind: type) -> Any:
            return None if value is None else tuple(kind(v) for v in value)

        affine = d.get("affine")
        return cls(
            CropRecord.from_dict(d["crop"]),
            tup(d.get("transpose"), int),
            tup(d.get("spacing"), float),
            None if affine is None else tuple(tup(row, float) for row in affine),
            tup(d.get("network_shape") or (), int),
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


def restore(
    array: ArrayT, record: CropRecord | CaseRecord, fill: float = 0, mode: str | None = None
) -> ArrayT:
    """Undo :func:`preprocess_case` on ``array (..., *network_shape)``: resample back, uncrop,
    transpose back, giving ``(..., *shape as read)``.

    Args:
        array: NumPy array or torch tensor (probabilities, masks, labels).
        record: the record :func:`preprocess_case` returned (a :class:`CropRecord` is only
            uncropped).
        fill: value outside the crop box.
        mode: resampling mode, ``"bilinear"`` or ``"nearest"``; by default ``"nearest"`` for
            integer and boolean arrays (values kept), ``"bilinear"`` for floating point ones.

    Examples::

        >>> import numpy as np
        >>> from nmfseg.data.normalization import Preprocessing
        >>> image = np.zeros((1, 6, 5, 4), np.float32)
        >>> image[0, 1:5, 1:4, 1:3] = 1.0
        >>> pre = Preprocessing(Preprocessing.default(1).normalization, (1.0, 1.0, 1.0), (2, 1, 0))
        >>> x, _, record = preprocess_case(image, spacing=(1.0, 1.0, 2.0), preprocessing=pre)
        >>> x.shape, record.shape
        ((1, 4, 3, 4), (6, 5, 4))
        >>> restore(x > -10, record).shape
        (1, 6, 5, 4)
    """
    if isinstance(record, CropRecord):
        return uncrop(array, record, fill)
    spatial = len(record.network_shape)
    lead = tuple(array.shape[:-spatial])  # type: ignore[attr-defined]
    if tuple(array.shape[-spatial:]) != record.network_shape:  # type: ignore[attr-defined]
        raise ValueError(
            f"array of spatial shape {tuple(array.shape[-spatial:])} does not match the "  # type: ignore[attr-defined]
            f"record's network shape {record.network_shape}."
        )
    if record.resampled:
        if mode is None:
            kind = np.dtype(str(array.dtype).removeprefix("torch.")).kind  # type: ignore[attr-defined]
            mode = "bilinear" if kind in "fc" else "nearest"
        flat = array.reshape(-1, *record.network_shape)  # type: ignore[attr-defined]
        back = resample_to_grid(
            flat, record.affine, record.spacing, record.crop.cropped_shape, mode=mode
        )
        array = back.reshape(*lead, *record.crop.cropped_shape)
    out: Any = uncrop(array, record.crop, fill)
    if record.transpose is not None:
        inverse = [len(lead) + record.transpose.index(a) for a in range(spatial)]
        axes = [*range(len(lead)), *inverse]
        out = (
            np.ascontiguousarray(out.transpose(axes))
            if isinstance(out, np.ndarray)
            else (out.permute(axes).contiguous())
        )
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
    return normalize_channels(image, Preprocessing.default(image.shape[0]).normalization)


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray | None = None,
    *,
    where: str = "image",
    spacing: tuple[float, ...] | None = None,
    preprocessing: Preprocessing | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """Transpose, crop to the nonzero box, resample and normalize a case (module docstring).

    The one preprocessing used by both training and prediction, so the network sees the
    same intensities (and voxel size) in both.

    Args:
        image: ``(C, X, Y, Z)`` array (any float or int dtype).
        label: optional ``(X, Y, Z)`` label map, transposed, cropped and resampled
            (``"nearest"``) like the image (dtype kept).
        where: name of the case or file, used in error messages.
        spacing: the case's voxel size in mm, per axis as read; needed when
            ``preprocessing`` has a target spacing.
        preprocessing: what to do; ``None``: the paper's rule (crop, z-score on nonzero
            voxels), returning a :class:`CropRecord` as nmfseg always did.

    Returns:
        ``(image, label, record)``: the preprocessed float32 image, the label (or ``None``)
        and the record to undo it with :func:`restore`: a :class:`CropRecord` without
        ``preprocessing`` (:func:`uncrop` undoes it), else a :class:`CaseRecord`.

    Raises:
        DataError: the image has NaN/Inf voxels, its shape does not fit the label or the
            preprocessing, or it must be resampled and ``spacing`` is missing.

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
    if preprocessing is None:
        record = nonzero_bbox(image)
        image = normalize_nonzero(crop(image, record))
        if label is not None:
            label = np.ascontiguousarray(crop(label, record))
        return image, label, record
    return _preprocess(image, label, where, spacing, preprocessing)


def _preprocess(
    image: np.ndarray,
    label: np.ndarray | None,
    where: str,
    spacing: tuple[float, ...] | None,
    pre: Preprocessing,
) -> tuple[np.ndarray, np.ndarray | None, CaseRecord]:
    dims = image.ndim - 1
    if pre.in_channels != image.shape[0]:
        raise DataError(
            where, f"image has {image.shape[0]} channels, the model expects {pre.in_channels}"
        )
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != dims:
            raise DataError(where, f"voxel size {spacing} does not fit a {dims}D image")
    order = pre.transpose
    if order is not None:
        if len(order) != dims:
            raise DataError(where, f"transpose {order} does not fit a {dims}D image")
        image = image.transpose(0, *(1 + a for a in order))
        label = None if label is None else label.transpose(order)
        spacing = None if spacing is None else tuple(spacing[a] for a in order)
    box = nonzero_bbox(image)
    image = crop(image, box)
    label = None if label is None else crop(label, box)
    affine = None
    target = pre.target_spacing
    if target is not None:
        if spacing is None:
            raise DataError(where, f"the voxel size is needed to resample it to {target} mm")
        if len(target) != dims:
            raise DataError(where, f"target spacing {target} does not fit a {dims}D image")
        if not same_spacing(spacing, target):
            image, grid = resample_to_spacing(image, spacing, target, mode="bilinear")
            if label is not None:
                label = resample_to_spacing(label[None], spacing, target, mode="nearest")[0][0]
            affine = tuple(tuple(float(v) for v in row) for row in grid)
    image = normalize_channels(image, pre.normalization)
    if label is not None:
        label = np.ascontiguousarray(label)
    record = CaseRecord(box, order, spacing, affine, tuple(image.shape[1:]))
    return image, label, record
