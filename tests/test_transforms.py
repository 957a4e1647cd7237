"""Training patches and the Appendix A augmentations: alignment, probabilities, exact ranges."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from scipy.spatial.transform import Rotation

from nmfseg.data.transforms import (
    AUGMENTATION_ORDER,
    RandGaussianNoiseVarianced,
    augment,
    build_augmentation,
    random_patch,
)
from nmfseg.training.config import load_recipe
from nmfseg.training.data import PatchDataset, PreparedCase

RECIPE = load_recipe("brats")["augmentation"]


def only(name: str, prob: float | None = None, **params) -> dict:
    """The recipe's augmentations with every transform but ``name`` switched off."""
    aug = copy.deepcopy(RECIPE)
    for key in aug:
        if key != name:
            aug[key]["prob"] = 0.0
    if prob is not None:
        aug[name]["prob"] = prob
    aug[name].update(params)
    return aug


def active(aug: dict) -> Compose:
    """The pipeline built from ``aug`` without its switched-off transforms (faster)."""
    return Compose([t for t in build_augmentation(aug).transforms if t.prob > 0])


def run(pipeline, image, seed, regions=None):
    regions = np.zeros((1, *image.shape[1:]), np.uint8) if regions is None else regions
    x, y = augment(pipeline, image, regions, seed)
    return x.numpy(), y.numpy()


# ----------------------------------------------------------------------------- patches


def test_random_patch_fits_and_covers_every_position():
    image = np.arange(10 * 7 * 5, dtype=np.float32).reshape(1, 10, 7, 5)
    regions = (image > 100).astype(np.uint8)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        x, y = random_patch(image, regions, (6, 7, 3), rng)
        assert x.shape == (1, 6, 7, 3) and y.shape == (1, 6, 7, 3)
        i, j, k = np.argwhere(image[0] == x[0, 0, 0, 0])[0]
        assert j == 0
        np.testing.assert_array_equal(x, image[:, i : i + 6, :, k : k + 3])
        np.testing.assert_array_equal(y, regions[:, i : i + 6, :, k : k + 3])
        starts.add((i, k))
    assert starts == {(i, k) for i in range(5) for k in range(3)}  # uniform over all fits


def test_random_patch_pads_a_small_volume_centred():
    image = np.ones((2, 3, 8, 4), np.float32)
    regions = np.ones((3, 3, 8, 4), np.uint8)
    x, y = random_patch(image, regions, (6, 6, 6), np.random.default_rng(1))
    assert x.shape == (2, 6, 6, 6) and y.shape == (3, 6, 6, 6)
    # axis 0: 3 -> 6 (1 before, 2 after); axis 2: 4 -> 6 (1 before, 1 after)
    inside = np.zeros((6, 6, 6), bool)
    inside[1:4, :, 1:5] = True
    assert (x[0] == 1).sum() == inside.sum() and np.all(x[:, inside] == 1) and np.all(y[:, inside])
    assert np.all(x[:, ~inside] == 0) and np.all(y[:, ~inside] == 0)


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_follows_appendix_a_order_and_probabilities():
    pipeline = build_augmentation(RECIPE)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names == [
        "RandAffined",
        "RandFlipd",
        "RandFlipd",
        "RandFlipd",
        "RandGaussianNoiseVarianced",
        "RandGaussianSmoothd",
        "RandScaleIntensityd",
        "RandShiftIntensityd",
        "RandAdjustContrastd",
    ]
    assert [t.prob for t in pipeline.transforms] == [0.15, 0.5, 0.5, 0.5] + [0.15] * 5
    assert [t.flipper.spatial_axis for t in pipeline.transforms[1:4]] == [0, 1, 2]
    assert tuple(RECIPE) == AUGMENTATION_ORDER
    for t in pipeline.transforms[4:]:
        assert list(t.keys) == ["image"]  # intensity transforms leave the regions alone


def test_same_seed_same_sample_and_different_seeds_differ():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 12, 12, 12)).astype(np.float32)
    regions = (rng.random((3, 12, 12, 12)) > 0.5).astype(np.uint8)
    pipeline = build_augmentation({k: {**v, "prob": 1.0} for k, v in RECIPE.items()})
    a = run(pipeline, image, 5, regions)
    b = run(
        build_augmentation({k: {**v, "prob": 1.0} for k, v in RECIPE.items()}), image, 5, regions
    )
    c = run(pipeline, image, 6, regions)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert a[1].dtype == np.uint8 and set(np.unique(a[1])) <= {0, 1}


@pytest.mark.parametrize("seed", range(6))
def test_spatial_transforms_keep_image_and_regions_aligned(seed):
    # A label-shaped image: the image channels ARE the regions, so after the (shared) affine
    # and flips, thresholding the image must give back exactly the transformed regions.
    rng = np.random.default_rng(seed)
    regions = np.zeros((3, 20, 18, 16), np.uint8)
    for r in range(3):
        c = rng.integers(5, 13, size=3)
        regions[r, c[0] - 4 : c[0] + 4, c[1] - 3 : c[1] + 5, c[2] - 5 : c[2] + 2] = 1
    aug = only("affine", prob=1.0)
    aug["flip"]["prob"] = 0.5
    x, y = run(build_augmentation(aug), regions.astype(np.float32), seed, regions)
    assert y.any() and not np.array_equal(y, regions)  # something moved
    np.testing.assert_array_equal((x >= 0.5).astype(np.uint8), y)


# ----------------------------------------------------------------------------- probabilities


def fired_fraction(name: str, n: int = 500) -> float:
    rng = np.random.default_rng(0)
    image = (rng.random((1, 6, 6, 6)) + 0.5).astype(np.float32)
    pipeline = active(only(name))
    fired = [not np.array_equal(run(pipeline, image, s)[0], image) for s in range(n)]
    return float(np.mean(fired))


@pytest.mark.parametrize(
    "name", ["affine", "noise", "smooth", "scale_intensity", "shift_intensity", "contrast"]
)
def test_each_augmentation_fires_with_its_probability(name):
    p = RECIPE[name]["prob"]
    assert p == 0.15
    assert abs(fired_fraction(name) - p) < 0.05  # 500 draws: sd 0.016


def test_flips_fire_independently_per_axis_with_p_half():
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    pipeline = active(only("flip"))
    counts, n = np.zeros(3), 400
    combos = {axes: np.flip(image, [a + 1 for a in axes]) for axes in _subsets(3)}
    for s in range(n):
        x = run(pipeline, image, s)[0]
        axes = next(a for a, ref in combos.items() if np.array_equal(x, ref))
        counts[list(axes)] += 1
    assert np.all(np.abs(counts / n - 0.5) < 0.08)


def _subsets(n: int) -> list[tuple[int, ...]]:
    return [tuple(i for i in range(n) if m >> i & 1) for m in range(2**n)]


# ----------------------------------------------------------------------------- exact ranges


def test_noise_draws_the_variance_not_the_std_uniformly():
    t = RandGaussianNoiseVarianced("image", prob=1.0, variance=(0.0, 0.1))
    t.set_random_state(0)
    variances = []
    for _ in range(300):
        out = t({"image": torch.zeros(1, 16, 16, 16)})["image"]
        variances.append(float(out.var()))
        assert out.var() <= 0.1 * 1.15
    variances = np.array(variances)
    # Var ~ U(0, 0.1): mean 0.05 and a quarter below 0.025. MONAI's std ~ U(0, a) would give
    # a mean of a^2/3 and half of the draws below a^2/4.
    assert abs(variances.mean() - 0.05) < 0.006
    assert abs((variances < 0.025).mean() - 0.25) < 0.07
    assert variances.max() > 0.095


def test_intensity_scale_shift_and_gamma_ranges():
    ones = np.ones((1, 4, 4, 4), np.float32)
    scale = active(only("scale_intensity", prob=1.0))
    s = np.array([run(scale, ones, i)[0].mean() for i in range(300)])
    assert s.min() >= 0.7 - 1e-6 and s.max() <= 1.3 + 1e-6  # v * s, s ~ U(0.7, 1.3)
    assert s.min() < 0.72 and s.max() > 1.28

    shift = active(only("shift_intensity", prob=1.0))
    o = np.array([run(shift, ones, i)[0].mean() - 1 for i in range(300)])
    assert o.min() >= -0.1 - 1e-6 and o.max() <= 0.1 + 1e-6
    assert o.min() < -0.09 and o.max() > 0.09

    ramp = np.zeros((1, 3, 1, 1), np.float32)
    ramp[0, :, 0, 0] = [-1.0, 0.0, 1.0]  # min -1, range 2: the middle voxel maps to 0.5**gamma
    contrast = active(only("contrast", prob=1.0))
    gammas = []
    for i in range(300):
        mid = run(contrast, ramp, i)[0][0, 1, 0, 0]
        gammas.append(math.log((mid + 1) / 2) / math.log(0.5))
    assert min(gammas) >= 0.7 - 1e-3 and max(gammas) <= 1.5 + 1e-3
    assert min(gammas) < 0.73 and max(gammas) > 1.47


def test_smoothing_sigma_range_per_axis_and_channels_filtered_apart():
    impulse = np.zeros((2, 15, 15, 15), np.float32)
    impulse[0, 7, 7, 7] = 1.0
    smooth = active(only("smooth", prob=1.0))
    sigmas = []
    for i in range(25):
        x = run(smooth, impulse, i)[0]
        assert np.all(x[1] == 0)  # channel 1 (all zero) does not receive channel 0's mass
        d = np.arange(15) - 7
        for axis in range(3):
            profile = x[0].sum(axis=tuple(a for a in range(3) if a != axis))
            sigmas.append(math.sqrt((profile * d**2).sum() / profile.sum()))
    sigmas = np.array(sigmas)
    assert sigmas.min() > 0.45 and sigmas.max() < 1.55  # sigma ~ U(0.5, 1.5), discretised
    assert sigmas.min() < 0.7 and sigmas.max() > 1.3


def test_affine_rotation_and_scale_ranges_black_box():
    # Channels = centred coordinate ramps. Bilinear resampling is exact on linear functions,
    # so inside the volume the output is M @ p for the 3x3 map M the transform applied.
    n = 24
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij")).astype(
        np.float32
    )
    pipeline = active(only("affine", prob=1.0))
    centre = (slice(None), *[slice(n // 2 - 4, n // 2 + 4)] * 3)
    p = grid[centre].reshape(3, -1)
    angles, scales = [], []
    for i in range(40):
        x = run(pipeline, grid, i)[0]
        q = x[centre].reshape(3, -1)
        m = np.linalg.lstsq(p.T, q.T, rcond=None)[0].T
        # MONAI samples input coordinates at R @ S @ p (R = Rx Ry Rz, S diagonal): the column
        # norms are the scale factors and the normalised columns a rotation.
        s = np.linalg.norm(m, axis=0)
        rot = m / s
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=2e-3)
        angles += list(Rotation.from_matrix(rot).as_euler("XYZ", degrees=True))
        scales += list(s)
    angles, scales = np.array(angles), np.array(scales)
    assert np.abs(angles).max() <= 30 + 0.2 and np.abs(angles).max() > 27
    assert scales.min() >= 0.7 - 1e-3 and scales.max() <= 1.3 + 1e-3
    assert scales.min() < 0.75 and scales.max() > 1.25


# ----------------------------------------------------------------------------- sample stream


def test_patch_dataset_is_a_pure_function_of_the_sample_index(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        img, reg = tmp_path / f"c{i}_image.npy", tmp_path / f"c{i}_regions.npy"
        np.save(img, rng.standard_normal((2, 14, 12, 10)).astype(np.float32))
        np.save(reg, (rng.random((1, 14, 12, 10)) > 0.5).astype(np.uint8))
        cases.append(PreparedCase(f"c{i}", img, reg, (1.0, 1.0, 1.0), (0,)))

    def make(rank: int) -> PatchDataset:
        return PatchDataset(cases, (8, 8, 8), RECIPE, 7, batch_size=4, rank=rank, world_size=2)

    r0, r0b, r1 = make(0), make(0), make(1)
    for k in (0, 3, 10):
        a, b, c = r0[k], r0b[k], r1[k]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert not torch.equal(a["image"], c["image"])  # each rank draws different patches
    # global index: step s, local i -> s * 4 + rank * 2 + i
    assert [r1.global_index(k) for k in range(4)] == [2, 3, 6, 7]
    # every case once per "epoch" of len(cases) global samples
    for epoch in range(4):
        seen = sorted(r0.case_of(g) for g in range(3 * epoch, 3 * epoch + 3))
        assert seen == [0, 1, 2]
    assert a["image"].shape == (2, 8, 8, 8) and a["label"].dtype == torch.uint8
