"""Dice / HD95 / volumes: BraTS empty-mask conventions and agreement with independent references.

HD95 is checked against an implementation written here from scipy alone (surface = mask minus
its 6-connected erosion, exact Euclidean distance transform with anisotropic ``sampling``,
``numpy.percentile`` per direction, max of the two). It uses the same surface and percentile
definition as nmfseg (MONAI), so the agreement is exact up to float32 rounding, not "within a
voxel". A brute-force all-pairs version (``scipy.spatial.distance.cdist``) checks the distance
transform itself on small masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist

from nmfseg.evaluation.metrics import (
    HD95_ONE_EMPTY,
    case_metrics,
    dice_score,
    hd95,
    region_metrics,
    union_bbox,
)

# MONAI called directly below passes its own deprecated argument internally.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")

# --------------------------------------------------------------------------- references


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndi.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndi.binary_erosion(mask, structure=structure, border_value=0)


def _directed_edt(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from every surface voxel of a to the surface of b, by distance transform."""
    return ndi.distance_transform_edt(~_surface(b), sampling=spacing)[_surface(a)]


def _directed_brute(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = np.argwhere(_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(_surface(b)) * np.asarray(spacing)
    return cdist(pa, pb).min(axis=1)


def _hd95_reference(pred, gt, spacing, directed=_directed_edt) -> float:
    d1, d2 = directed(pred, gt, spacing), directed(gt, pred, spacing)
    return float(max(np.percentile(d1, 95), np.percentile(d2, 95)))


def _blob(shape, rng, threshold=0.55, sigma=2.0) -> np.ndarray:
    """A random smooth blob (possibly several components, possibly touching the border)."""
    field = ndi.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (np.ptp(field) + 1e-12)
    mask = field > threshold
    if not mask.any():
        mask[tuple(s // 2 for s in shape)] = True
    return mask


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("shape", [(7, 9, 5), (16, 16), (3, 4, 5, 6)])
def test_both_empty_is_perfect(shape):
    empty = np.zeros(shape, bool)
    assert dice_score(empty, empty) == 1.0
    assert hd95(empty, empty) == 0.0
    m = region_metrics(empty, empty)
    assert (m.dice, m.hd95, m.pred_voxels, m.gt_voxels, m.pred_ml, m.gt_ml) == (1, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_one_empty_is_worst(which):
    mask = np.zeros((10, 11, 12), bool)
    mask[2:5, 3:9, 4:6] = True
    empty = np.zeros_like(mask)
    pred, gt = (mask, empty) if which == "pred" else (empty, mask)
    assert dice_score(pred, gt) == 0.0
    assert hd95(pred, gt, spacing=(0.5, 2.0, 3.0)) == HD95_ONE_EMPTY == 373.13
    # a single voxel is enough to be "not empty"
    one = np.zeros_like(mask)
    one[0, 0, 0] = True
    assert hd95(one, empty) == hd95(empty, one) == 373.13


def test_conventions_differ_from_monai_defaults():
    """MONAI gives NaN (both empty) or inf (one empty), which its reductions drop."""
    empty = torch.zeros(1, 1, 6, 6, 6)
    full = empty.clone()
    full[..., 2:4, 2:4, 2:4] = 1
    with pytest.warns(UserWarning):
        assert torch.isnan(compute_hausdorff_distance(empty, empty, include_background=True))
        assert torch.isinf(compute_hausdorff_distance(full, empty, include_background=True))
    assert hd95(empty[0, 0].numpy(), empty[0, 0].numpy()) == 0.0
    assert hd95(full[0, 0].numpy(), empty[0, 0].numpy()) == 373.13


# --------------------------------------------------------------------------- Dice


def test_dice_hand_count():
    pred = np.zeros((4, 4, 4), np.uint8)
    gt = np.zeros((4, 4, 4), np.uint8)
    pred[0, 0, :3] = 1  # 3 voxels
    gt[0, 0, 1:] = 1  # 3 voxels, overlap (0,0,1), (0,0,2)
    gt[3, 3, 3] = 7  # any nonzero value is foreground: gt has 4 voxels
    assert dice_score(pred, gt) == pytest.approx(2 * 2 / (3 + 4))
    assert dice_score(gt, pred) == dice_score(pred, gt)
    assert dice_score(gt, gt) == 1.0
    assert dice_score(pred, ~pred.astype(bool)) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_dice_matches_monai(seed):
    rng = np.random.default_rng(seed)
    pred, gt = _blob((20, 17, 13), rng), _blob((20, 17, 13), rng)
    expected = compute_dice(
        torch.from_numpy(pred)[None, None].float(),
        torch.from_numpy(gt)[None, None].float(),
        include_background=True,
    ).item()
    assert dice_score(pred, gt) == pytest.approx(expected, rel=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        dice_score(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="spacing needs 3"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 3)), spacing=(1, 1))


# --------------------------------------------------------------------------- HD95


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_scipy_reference_anisotropic(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(14, 30, 3))
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, 3))
    pred = _blob(shape, rng, threshold=rng.uniform(0.45, 0.65))
    gt = _blob(shape, rng, threshold=rng.uniform(0.45, 0.65))
    expected = _hd95_reference(pred, gt, spacing)
    assert expected > 0
    assert hd95(pred, gt, spacing) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert hd95(gt, pred, spacing) == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_hd95_distance_transform_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = (0.7, 1.9, 1.3)
    pred, gt = _blob((12, 10, 9), rng, 0.5), _blob((12, 10, 9), rng, 0.5)
    brute = _hd95_reference(pred, gt, spacing, directed=_directed_brute)
    assert _hd95_reference(pred, gt, spacing) == pytest.approx(brute, rel=1e-9)
    assert hd95(pred, gt, spacing) == pytest.approx(brute, rel=1e-5)


def test_hd95_2d_and_single_voxels():
    a = np.zeros((9, 9), bool)
    b = np.zeros((9, 9), bool)
    a[1, 1], b[4, 5] = True, True
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(np.hypot(3 * 2.0, 4 * 0.5), rel=1e-6)
    assert hd95(a, a) == 0.0


def test_hd95_shifted_box_known_value():
    """A box shifted by s voxels along x: Dice (a-s)/a, HD95 s·spacing_x."""
    gt = np.zeros((30, 20, 20), bool)
    gt[5:15, 4:12, 4:12] = True
    pred = np.roll(gt, 3, axis=0)
    spacing = (2.5, 1.0, 0.8)
    assert dice_score(pred, gt) == pytest.approx(7 / 10)
    assert hd95(pred, gt, spacing) == pytest.approx(7.5, rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_crop_does_not_change_hd95(seed):
    """Our union-bbox crop gives MONAI's uncropped full-volume value, also at the border."""
    rng = np.random.default_rng(seed)
    shape = (24, 21, 18)
    pred, gt = _blob(shape, rng, 0.6), _blob(shape, rng, 0.6)
    pred[0, :5, :5] = True  # touches the volume border: border voxels are surface
    spacing = [1.1, 0.9, 2.0]
    full = compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(gt)[None, None],
        include_background=True,
        percentile=95,
        spacing=spacing,
    ).item()
    assert hd95(pred, gt, spacing) == pytest.approx(full, rel=1e-6)


def test_union_bbox():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0, 4, 5] = True
    b[6, 9, 7] = True
    assert union_bbox(a, b) == (slice(0, 8), slice(3, 10), slice(4, 9))
    assert union_bbox(a, b, margin=0) == (slice(0, 7), slice(4, 10), slice(5, 8))
    assert union_bbox(a & False, b & False) is None


# --------------------------------------------------------------------------- volumes / cases


def test_region_metrics_volumes():
    gt = np.zeros((10, 10, 10), bool)
    gt[:5, :4, :2] = True  # 40 voxels
    pred = np.zeros_like(gt)
    pred[:2, :2, :2] = True  # 8 voxels, inside gt
    m = region_metrics(pred, gt, spacing=(2.0, 1.5, 1.0))  # 3 mm³ = 0.003 ml per voxel
    assert (m.pred_voxels, m.gt_voxels) == (8, 40)
    assert m.pred_ml == pytest.approx(0.024)
    assert m.gt_ml == pytest.approx(0.12)
    assert m.dice == pytest.approx(16 / 48)
    assert m.hd95 == pytest.approx(_hd95_reference(pred, gt, (2.0, 1.5, 1.0)), rel=1e-6)
    assert set(m.as_dict()) == {"dice", "hd95", "pred_voxels", "gt_voxels", "pred_ml", "gt_ml"}


def test_case_metrics_per_region():
    rng = np.random.default_rng(7)
    gt = np.stack(
        [_blob((12, 12, 12), rng), np.zeros((12, 12, 12), bool), _blob((12, 12, 12), rng)]
    )
    pred = gt.copy()
    pred[0] = np.roll(pred[0], 1, axis=1)
    pred[2] = False
    out = case_metrics(pred, gt, {"ET": (3,), "TC": (2, 3), "WT": (1, 2, 3)}, spacing=1.5)
    assert list(out) == ["ET", "TC", "WT"]
    assert out["ET"].dice == pytest.approx(dice_score(pred[0], gt[0]))
    assert out["ET"].hd95 == pytest.approx(_hd95_reference(pred[0], gt[0], (1.5,) * 3), rel=1e-5)
    assert (out["TC"].dice, out["TC"].hd95) == (1.0, 0.0)
    assert (out["WT"].dice, out["WT"].hd95) == (0.0, 373.13)
    with pytest.raises(ValueError, match="3 region channels for 2"):
        case_metrics(pred, gt, ["a", "b"])
