"""Preprocessing shared by training and prediction: nonzero crop, z-score, uncrop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensity

from nmfseg.data.preprocess import (
    CropRecord,
    crop,
    nonzero_bbox,
    normalize_nonzero,
    preprocess_case,
    uncrop,
)
from nmfseg.errors import DataError


def _case(shape=(3, 13, 17, 11), box=((2, 9), (5, 16), (0, 7)), seed=0):
    """Image with foreground only inside ``box``; each channel covers a different part of it."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    (x0, x1), (y0, y1), (z0, z1) = box
    # channel 0 spans x, channel 1 spans y, channel 2 spans z: only their union is the box
    image[0, x0:x1, y0 + 1 : y0 + 2, z0 + 1 : z0 + 2] = rng.normal(5, 2, (x1 - x0, 1, 1))
    image[1, x0 + 1 : x0 + 2, y0:y1, z0 + 1 : z0 + 2] = rng.uniform(100, 300, (1, y1 - y0, 1))
    image[2, x0 + 1 : x0 + 3, y0 + 1 : y0 + 3, z0:z1] = rng.gamma(2, 3, (2, 2, z1 - z0)) + 0.1
    label = np.zeros(shape[1:], np.uint8)
    label[x0:x1, y0:y1, z0:z1] = rng.integers(0, 4, (x1 - x0, y1 - y0, z1 - z0))
    return image, label


def _brute_bbox(mask):
    idx = np.argwhere(mask)
    return tuple(idx.min(0)), tuple(idx.max(0) + 1)


@pytest.mark.parametrize("seed", range(4))
def test_bbox_matches_brute_force_on_odd_shapes(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 15, 3))
    image = np.zeros((2, *shape), np.float32)
    # a few scattered nonzero voxels, negative values included (nonzero, not positive)
    for _ in range(rng.integers(1, 6)):
        c = rng.integers(0, 2)
        pos = tuple(rng.integers(0, n) for n in shape)
        image[(c, *pos)] = rng.choice([-3.0, 0.5, 7.0])
    record = nonzero_bbox(image)
    start, stop = _brute_bbox((image != 0).any(0))
    assert record.start == start
    assert record.stop == stop
    assert record.shape == shape


def test_bbox_is_union_over_channels_and_crop_keeps_all_foreground():
    image, label = _case()
    x, y, record = preprocess_case(image, label)
    assert record.start == (2, 5, 0) and record.stop == (9, 16, 7)
    assert x.shape == (3, 7, 11, 7) and y.shape == (7, 11, 7)
    assert x.dtype == np.float32 and y.dtype == np.uint8
    # every nonzero voxel survives the crop, per channel
    assert np.array_equal((x != 0).sum((1, 2, 3)), (image != 0).sum((1, 2, 3)))
    # ... and the label is cut with the same box
    assert np.array_equal(y, label[2:9, 5:16, 0:7])


def test_zscore_statistics_on_nonzero_voxels():
    image, _ = _case()
    x, _, record = preprocess_case(image)
    cropped = crop(image, record)
    for c in range(image.shape[0]):
        mask = cropped[c] != 0
        values = x[c][mask].astype(np.float64)
        assert abs(values.mean()) < 1e-5
        assert abs(values.std() - 1.0) < 1e-5
        # zero voxels stay zero, and the mapping is the affine z-score of the raw values
        assert np.all(x[c][~mask] == 0)
        raw = cropped[c][mask].astype(np.float64)
        np.testing.assert_allclose(values, (raw - raw.mean()) / raw.std(), atol=1e-5)


def test_zscore_agrees_with_monai_and_does_not_touch_input():
    image, _ = _case(seed=3)
    before = image.copy()
    ours = normalize_nonzero(image)
    assert np.array_equal(image, before)
    theirs = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.tensor(image.copy()))
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-5)


def test_constant_and_empty_channels():
    image = np.zeros((3, 4, 5, 6), np.float32)
    image[0, 1:3, 1:3, 1:3] = 4.0  # constant nonzero: shifted only -> zeros inside
    image[1, 0, 0, 0] = 2.0
    image[1, 3, 4, 5] = 6.0  # two values: -1, +1
    # channel 2 stays all zero
    x = normalize_nonzero(image)
    assert np.all(x[0] == 0)
    assert x[1, 0, 0, 0] == -1.0 and x[1, 3, 4, 5] == 1.0
    assert np.all(x[2] == 0)
    assert np.isfinite(x).all()


def test_all_zero_image_is_not_cropped():
    image = np.zeros((2, 5, 7, 3), np.float32)
    label = np.zeros((5, 7, 3), np.int16)
    x, y, record = preprocess_case(image, label)
    assert record == CropRecord((5, 7, 3), (0, 0, 0), (5, 7, 3))
    assert x.shape == image.shape and np.all(x == 0) and y.shape == label.shape


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image_is_refused_naming_the_case(bad):
    image, _ = _case()
    image[1, 0, 0, 0] = bad
    image[1, 0, 0, 1] = bad
    with pytest.raises(DataError, match=r"case_007.*NaN or Inf.*channel 1: 2"):
        preprocess_case(image, where="case_007")


def test_label_shape_mismatch_is_refused():
    image, label = _case()
    with pytest.raises(DataError, match="label shape"):
        preprocess_case(image, label[:-1])


def test_uncrop_round_trip_numpy_and_torch():
    image, label = _case(shape=(3, 15, 18, 9), box=((3, 14), (1, 18), (2, 9)))
    _, y, record = preprocess_case(image, label)
    # label round trip: everything outside the box was 0 in the original
    assert np.array_equal(uncrop(y, record), label)
    # multichannel probabilities, torch, non-zero fill
    probs = torch.rand(2, *record.cropped_shape, dtype=torch.float64)
    full = uncrop(probs, record, fill=-1)
    assert full.shape == (2, *record.shape) and full.dtype == torch.float64
    assert torch.equal(crop(full, record), probs)
    outside = torch.ones(record.shape, dtype=torch.bool)
    outside[record.slices] = False
    assert torch.all(full[:, outside] == -1)


def test_record_validation_and_json_round_trip():
    record = CropRecord((4, 5, 6), (1, 0, 2), (3, 5, 6))
    assert CropRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError, match="does not fit"):
        CropRecord((4, 5, 6), (1, 0, 2), (3, 6, 6))
    with pytest.raises(ValueError, match="box shape"):
        uncrop(np.zeros((2, 5, 5)), record)
