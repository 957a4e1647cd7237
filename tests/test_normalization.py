"""Per-channel normalization (nnU-Net's schemes), the Preprocessing record, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from nmfseg.data.normalization import (
    ChannelNorm,
    Preprocessing,
    ct_norm,
    norm_scheme_for,
    normalize_channels,
    sample_foreground,
)
from nmfseg.data.preprocess import CaseRecord, normalize_nonzero, preprocess_case, restore
from nmfseg.errors import ConfigError, DataError


@pytest.mark.parametrize(
    ("name", "scheme"),
    [
        ("CT", "ct"),
        ("ct", "ct"),
        (" Ct ", "ct"),
        ("noNorm", "none"),
        ("NONORM", "none"),
        ("zscore", "zscore"),
        ("ZScore", "zscore"),
        ("FLAIR", "zscore_nonzero"),
        ("T1", "zscore_nonzero"),
        ("DWI", "zscore_nonzero"),
        ("ADC", "zscore_nonzero"),
        ("CTA", "zscore_nonzero"),
    ],
)
def test_scheme_from_channel_name(name, scheme):
    assert norm_scheme_for(name) == scheme


def _hu_case(seed=0, shape=(9, 11, 7)):
    """A CT-like case: air at -1000, soft tissue around 40 HU, a few bright 'bone' voxels."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 30, (1, *shape))
    image[0, :2] = -1000.0
    image[0, 4, 4:6, 2:4] = 1500.0
    label = np.zeros(shape, np.uint8)
    label[3:7, 3:8, 1:6] = 1
    return image.astype(np.float32), label


def test_ct_rule_agrees_with_numpy_reference():
    cases = [_hu_case(seed) for seed in range(3)]
    samples = [sample_foreground(x, y, seed=1234, n=500)[0] for x, y in cases]
    norm = ct_norm(samples)
    pooled = np.concatenate(samples)
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    assert (norm.lower, norm.upper) == pytest.approx((lo, hi))
    assert (norm.mean, norm.std) == pytest.approx((pooled.mean(), pooled.std()))
    x, _ = cases[0]
    expected = (np.clip(x[0].astype(np.float64), lo, hi) - pooled.mean()) / pooled.std()
    np.testing.assert_allclose(norm.apply(x[0]), expected, rtol=1e-6, atol=1e-6)
    assert norm.apply(x[0]).dtype == np.float32


def test_foreground_samples_are_seeded_and_from_the_foreground():
    x, y = _hu_case()
    a = sample_foreground(x, y, seed=7, n=300)
    assert a.shape == (1, 300)
    assert np.array_equal(a, sample_foreground(x, y, seed=7, n=300))
    assert set(a.ravel()) <= set(x[0][y > 0].astype(np.float64).ravel())
    assert sample_foreground(x, np.zeros_like(y)).shape == (1, 0)
    with pytest.raises(ValueError, match="no foreground"):
        ct_norm([np.zeros(0)])


def test_zscore_none_and_nonzero_schemes():
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, (3, 5, 6, 7)).astype(np.float32)
    x[:, 0] = 0.0
    norms = [ChannelNorm("zscore"), ChannelNorm("none"), ChannelNorm("zscore_nonzero")]
    out = normalize_channels(x, norms)
    ref = x[0].astype(np.float64)
    np.testing.assert_allclose(out[0], (ref - ref.mean()) / ref.std(), atol=1e-5)
    assert np.array_equal(out[1], x[1])
    assert np.array_equal(out[2], normalize_nonzero(x[2:3])[0])  # the paper's rule, bitwise
    assert np.all(out[2][0] == 0)


def test_default_preprocessing_is_bit_identical_to_the_legacy_call():
    rng = np.random.default_rng(2)
    image = np.zeros((2, 13, 10, 9), np.float32)
    image[:, 2:11, 1:7, 3:8] = rng.gamma(2, 50, (2, 9, 6, 5))
    label = (image[0] > 100).astype(np.uint8)
    x0, y0, crop0 = preprocess_case(image, label)
    x1, y1, rec = preprocess_case(
        image, label, spacing=(1.0, 1.0, 1.0), preprocessing=Preprocessing.default(2)
    )
    assert isinstance(rec, CaseRecord) and rec.crop == crop0 and not rec.resampled
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    probs = rng.random((3, *x0.shape[1:])).astype(np.float32)
    assert np.array_equal(restore(probs, rec), restore(probs, crop0))


def test_preprocessing_round_trips_and_refuses_bad_sections():
    pre = Preprocessing(
        (ChannelNorm("ct", -1000, 1000.0, 10.0, 200.0), ChannelNorm("none")),
        target_spacing=[0.8, 0.8, 2.5],
        transpose=[2, 0, 1],
    )
    assert pre.target_spacing == (0.8, 0.8, 2.5) and pre.transpose == (2, 0, 1)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.schemes == ("ct", "none")
    assert Preprocessing.from_config({"dataset": {"preprocessing": pre.to_dict()}}) == pre
    bad = [
        {"normalization": [{"scheme": "minmax"}]},
        {"normalization": [{"scheme": "ct", "lower": 0}]},
        {"normalization": [{"scheme": "zscore", "mean": 1.0}]},
        {"normalization": [{"scheme": "none"}], "transpose": [0, 0, 1]},
        {"normalization": [{"scheme": "none"}], "target_spacing": [1, -1, 1]},
        {"normalization": [{"scheme": "none"}], "spacing": [1, 1, 1]},
        {"normalization": []},
    ]
    for section in bad:
        with pytest.raises(ConfigError, match=r"^preprocessing: "):
            Preprocessing.from_dict(section)


def test_channel_count_and_missing_spacing_are_data_errors():
    image = np.ones((2, 4, 4, 4), np.float32)
    with pytest.raises(DataError, match="case_1: image has 2 channels, the model expects 1"):
        preprocess_case(image, where="case_1", preprocessing=Preprocessing.default(1))
    pre = Preprocessing(Preprocessing.default(2).normalization, target_spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="case_2: the voxel size is needed"):
        preprocess_case(image, where="case_2", preprocessing=pre)
