"""Per-channel normalization (nnU-Net's schemes), the Preprocessing record, resampling."""

from __future__ import annotations

import json

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


# ---------------------------------------------------------------------- resampling
def test_resampling_agrees_with_scipy_zoom():
    """MONAI's Spacing (scale_extent) = scipy's zoom on the voxel grid (edges aligned)."""
    from scipy.ndimage import zoom

    from nmfseg.data.resample import resample_to_spacing

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 10, 6)).astype(np.float32)
    # integer ratios, so that both give the same grid: 9 -> 18, 10 -> 10, 6 -> 12
    y, affine = resample_to_spacing(x, (2.0, 1.0, 3.0), (1.0, 1.0, 1.5))
    assert y.shape == (2, 18, 10, 12)
    np.testing.assert_allclose(np.diag(affine)[:3], (1.0, 1.0, 1.5))
    for c in range(2):
        ref = zoom(x[c].astype(np.float64), (2, 1, 2), order=1, grid_mode=True, mode="nearest")
        np.testing.assert_allclose(y[c], ref, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "spacing", "target"),
    [
        ((11, 7, 5), (0.7, 1.0, 2.5), (1.0, 1.0, 1.2)),  # odd sizes, non-integer ratios
        ((13, 9, 8), (1.0, 1.0, 1.0), (1.6, 0.9, 2.7)),
        ((5, 6, 3), (3.0, 3.0, 4.0), (1.0, 1.0, 1.0)),
    ],
)
def test_round_trip_restores_shape_values_and_labels(shape, spacing, target):
    from nmfseg.data.resample import resample_to_grid, resample_to_spacing

    rng = np.random.default_rng(4)
    # a smooth image: linear in world coordinates, which linear resampling keeps exactly
    # away from the border (the edge value is repeated outside the grid)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)],
                                indexing="ij"))  # fmt: skip
    ramp = (grid * np.array([0.5, -1.0, 2.0])[:, None, None, None]).sum(0)[None]
    y, affine = resample_to_spacing(ramp, spacing, target)
    expected = [round(n * s / t) for n, s, t in zip(shape, spacing, target, strict=True)]
    assert list(y.shape[1:]) == expected
    centers = np.stack(np.meshgrid(*[np.arange(n) for n in y.shape[1:]], indexing="ij"))
    world = np.einsum("ij,j...->i...", affine[:3, :3], centers) + affine[:3, 3, None, None, None]
    inside = np.all(
        [(world[a] >= 0) & (world[a] <= (shape[a] - 1) * spacing[a]) for a in range(3)], axis=0
    )
    truth = (world * np.array([0.5, -1.0, 2.0])[:, None, None, None]).sum(0)
    np.testing.assert_allclose(y[0][inside], truth[inside], atol=1e-3)
    back = resample_to_grid(y, affine, spacing, shape)
    assert back.shape == (1, *shape) and back.dtype == np.float32
    label = rng.integers(0, 4, (1, *shape)).astype(np.uint8)
    lab, lab_affine = resample_to_spacing(label, spacing, target, mode="nearest")
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= set(np.unique(label))
    np.testing.assert_array_equal(lab_affine, affine)
    assert resample_to_grid(lab, affine, spacing, shape, mode="nearest").shape == label.shape


def test_preprocess_and_restore_with_resampling_and_transpose():
    rng = np.random.default_rng(5)
    image = np.zeros((2, 15, 12, 7), np.float32)
    image[:, 2:13, 1:11, 1:6] = rng.normal(100, 20, (2, 11, 10, 5))
    label = np.zeros((15, 12, 7), np.uint8)
    label[5:10, 4:8, 2:5] = 1
    pre = Preprocessing(
        (ChannelNorm("ct", 60.0, 140.0, 100.0, 20.0), ChannelNorm("zscore_nonzero")),
        target_spacing=(1.5, 1.0, 1.0),  # in the transposed order: z, y, x
        transpose=(2, 1, 0),
    )
    x, y, rec = preprocess_case(image, label, spacing=(1.0, 1.0, 3.0), preprocessing=pre)
    assert rec.resampled and rec.shape == (15, 12, 7) and rec.crop.cropped_shape == (5, 10, 11)
    assert x.shape == (2, 10, 10, 11) and y.shape == (10, 10, 11) and y.dtype == np.uint8
    assert set(np.unique(y)) == {0, 1}
    assert x[0].min() >= -2.0 and x[0].max() <= 2.0  # clipped to [60, 140]
    assert CaseRecord.from_dict(rec.to_dict()) == rec
    # the label goes there and back (nearest both ways; the z axis is upsampled 2x)
    assert np.array_equal(restore(y, rec), label)
    probs = restore(np.full((3, *x.shape[1:]), 0.25, np.float32), rec)
    assert probs.shape == (3, 15, 12, 7) and probs.dtype == np.float32
    assert np.allclose(probs[:, 2:13, 1:11, 1:6], 0.25) and probs[:, 0].max() == 0
    import torch

    assert restore(torch.from_numpy(y), rec).shape == (15, 12, 7)


def test_target_spacing_rule():
    from nmfseg.data.resample import target_spacing_for

    assert target_spacing_for([(1.2, 1.0, 1.5)] * 3) is None
    assert target_spacing_for([(1, 1, 1), (1, 1, 2), (1, 1, 4)]) == (1.0, 1.0, 2.0)
    # anisotropic, few slices: 10th percentile of the thick axis (nnU-Net)
    spacings = [(0.7, 0.7, 5.0)] * 9 + [(0.7, 0.7, 1.0)]
    shapes = [(200, 200, 20)] * 10
    assert target_spacing_for(spacings, shapes)[2] == pytest.approx(
        np.percentile([5.0] * 9 + [1.0], 10)
    )
    assert target_spacing_for(spacings)[2] == 5.0  # without shapes: the median


# ---------------------------------------------------------------------- end to end
SPACINGS = [(1.0, 1.0, 2.0), (1.0, 1.0, 3.0), (0.8, 1.0, 2.5), (1.0, 1.25, 2.0), (1.0, 1.0, 4.0)]


def _ct_dataset(root):
    """nnU-Net raw dataset, one channel named CT (values like Hounsfield units), one region,
    every case with its own voxel size and an affine with flipped axes and an offset."""
    from nmfseg.data.formats import write_case, write_dataset_metadata
    from nmfseg.data.schemes import DatasetScheme

    scheme = DatasetScheme("nnunet", ("CT",), (0, 1), {"organ": (1,)}, {"organ": 1})
    for i, spacing in enumerate(SPACINGS):
        rng = np.random.default_rng([7, i])
        shape = tuple(round(24 / s) for s in spacing)  # about 24 mm in every direction
        axes = [(np.arange(n) + 0.5) * s - 12 for n, s in zip(shape, spacing, strict=True)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"))
        r = np.sqrt((grid**2).sum(0))
        image = np.full(shape, -1000.0) + rng.normal(0, 5, shape)  # air
        image[r < 10] = 40 + rng.normal(0, 10, (r < 10).sum())  # soft tissue
        label = (r < 5).astype(np.uint8)
        image[label == 1] += 150  # an enhancing organ
        affine = np.diag([-spacing[0], spacing[1], -spacing[2], 1.0])
        affine[:3, 3] = (30.0, -20.0, 10.0 * i)
        write_case("nnunet", root, f"ct_{i:03d}", image[None], label, affine, scheme)
    write_dataset_metadata("nnunet", root, scheme)
    return root


@pytest.mark.slow
def test_ct_mixed_spacing_trains_and_predicts_in_the_inputs_grid(tmp_path):
    import nibabel as nib
    import yaml

    from helpers import cli
    from nmfseg.data.formats import open_dataset

    data = _ct_dataset(tmp_path / "Dataset042_CT")
    out = tmp_path / "runs"
    args = ["train", data, "--model", "swin_factorizer_isles", "--model-arg",
            "channels=4,8,16,32,64", "--fold", 0, "--n-folds", 2, "--out", out, "--steps", 2,
            "--patch-size", 16, "--workers", 0, "--val-every", 2, "--seed", 3,
            "--device", "cpu", "--quiet"]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.output
    run = out / data.name / "swin_factorizer_isles"
    config = yaml.safe_load((run / "fold_0" / "config.yaml").read_text())
    pre = Preprocessing.from_dict(config["dataset"]["preprocessing"])
    train_ids = [c for c in open_dataset(data).case_ids if c not in config["split"]["val"]]
    by_id = dict(zip([f"ct_{i:03d}" for i in range(len(SPACINGS))], SPACINGS, strict=True))
    expected = np.median([by_id[c] for c in train_ids], axis=0)
    assert pre.target_spacing == pytest.approx(tuple(expected))
    (ct,) = pre.normalization
    assert ct.scheme == "ct" and -100 < ct.lower < ct.mean < ct.upper < 400  # the organ's HU
    # cached entries live in their own folder, on the target grid
    (meta,) = [p for p in (out / data.name / "preprocessed").glob("*/ct_000.json")]
    assert json.loads(meta.read_text())["spacing"] == pytest.approx(list(expected))

    pred = tmp_path / "pred"
    result = cli("predict", "-m", run, "-i", data / "imagesTr", "-o", pred, "--device", "cpu",
                 "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    for i in range(len(SPACINGS)):
        src = nib.load(data / "imagesTr" / f"ct_{i:03d}_0000.nii.gz")
        out_img = nib.load(pred / f"ct_{i:03d}.nii.gz")
        assert out_img.shape == src.shape[:3]  # the writer keeps a trailing axis of 1
        np.testing.assert_allclose(out_img.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(out_img.dataobj))) <= {0, 1}


def test_run_without_the_section_predicts_exactly_as_before(tmp_path):
    """A checkpoint config without dataset.preprocessing (every run of older nmfseg) loads
    with the default, and its prediction is bitwise the legacy pipeline's."""
    import torch

    from nmfseg.data.preprocess import uncrop
    from nmfseg.inference.predictor import Predictor
    from nmfseg.inference.sliding_window import sliding_window_predict
    from nmfseg.models import create_model

    kwargs = dict(channels=(4, 8), head_dim=4, window_size=2, deep_supervision=False)
    torch.manual_seed(0)
    net = create_model("swin_factorizer_isles", **kwargs).eval()
    (tmp_path / "fold_0").mkdir()
    config = {"patch_size": [8, 8, 8], "dataset": {"scheme": "isles22"}}
    ckpt = {"model_name": "swin_factorizer_isles", "model_kwargs": kwargs,
            "model": net.state_dict(), "config": config}  # fmt: skip
    torch.save(ckpt, tmp_path / "fold_0" / "checkpoint_final.pt")
    p = Predictor.from_run(tmp_path, device="cpu")
    assert p.ensemble.preprocessing == Preprocessing.default(2)
    image = np.zeros((2, 13, 11, 9), np.float32)
    image[:, 2:11, 2:9, 1:8] = np.random.default_rng(0).gamma(2, 30, (2, 9, 7, 7))
    ours = p.predict_array(image, output="probabilities", spacing=(1.0, 2.0, 3.0))
    x, _, crop = preprocess_case(image)
    with torch.no_grad():
        legacy = sliding_window_predict(net, x, (8, 8, 8), 0.5, False, mode="gaussian")
    legacy = uncrop(legacy.numpy().astype(np.float32), crop, fill=0.0)
    assert np.array_equal(ours, legacy)


def test_cache_entries_are_keyed_by_the_preprocessing(tmp_path):
    from nmfseg.data.formats import open_dataset
    from nmfseg.training.data import prepare_case
    from nmfseg.training.planning import plan_preprocessing

    dataset = open_dataset(_ct_dataset(tmp_path / "Dataset043_CT"))
    case = dataset.get("ct_001")
    cache = tmp_path / "preprocessed"
    default = prepare_case(case, dataset.scheme, cache)
    assert default.image_path.parent == cache and default.spacing == (1.0, 1.0, 3.0)
    same = prepare_case(case, dataset.scheme, cache, Preprocessing.default(1))
    assert same == default  # the default is the entry made without a preprocessing
    planned = plan_preprocessing(dataset, dataset.case_ids[:3])
    assert planned.target_spacing == (1.0, 1.0, 2.5) and planned.schemes == ("ct",)
    assert plan_preprocessing(dataset, dataset.case_ids[:3]) == planned  # seeded
    entry = prepare_case(case, dataset.scheme, cache, planned)
    assert entry.image_path.parent.parent == cache and entry.spacing == (1.0, 1.0, 2.5)
    image, regions = entry.load()
    assert image.shape[1:] == regions.shape[1:] == (24, 24, 10)  # 8 slices of 3 mm -> 10 of 2.5 mm
    # the CT rule, not the per-case z-score: clipped to the training foreground's range
    assert (
        image.max()
        <= (planned.normalization[0].upper - planned.normalization[0].mean)
        / (planned.normalization[0].std)
        + 1e-5
    )
    other = Preprocessing(planned.normalization)  # no resampling: another entry
    assert prepare_case(case, dataset.scheme, cache, other).image_path.parent not in (
        cache,
        entry.image_path.parent,
    )
