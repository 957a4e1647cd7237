"""Sliding-window prediction, flip TTA, the fold ensemble and checkpoint discovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import pointwise_net
from nmfseg.errors import ConfigError, DataError
from nmfseg.inference import ensemble as ensemble_mod
from nmfseg.inference.ensemble import Ensemble, find_checkpoints
from nmfseg.inference.predictor import Predictor
from nmfseg.inference.sliding_window import flip_combinations, sliding_window_predict


class FlipSymmetric(nn.Module):
    """A 3×3×3 convolution whose kernel is symmetric under every axis flip: flip-equivariant."""

    def __init__(self, in_channels=2, out_channels=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        with torch.no_grad():
            w = self.conv.weight.clone()
            self.conv.weight.copy_(sum(torch.flip(w, d) for d in flip_combinations(3)) / 8)
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x):
        return self.conv(x)


# --------------------------------------------------------------------- sliding window


@pytest.mark.parametrize(
    "shape", [(5, 6, 7), (9, 8, 8), (19, 9, 13), (17, 26, 7)], ids=lambda s: "x".join(map(str, s))
)
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_sliding_window_equals_full_volume_for_pointwise_model(shape, mode):
    """Smaller than, equal to and larger than the 8³ window, odd sizes, both blendings."""
    model = pointwise_net()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    probs = sliding_window_predict(model, x, patch_size=(8, 8, 8), overlap=0.5, mode=mode)
    with torch.no_grad():
        direct = torch.sigmoid(model(x[None]))[0]
    assert probs.shape == (3, *shape)
    torch.testing.assert_close(probs, direct, atol=1e-6, rtol=0)


def test_sliding_window_tiles_a_large_volume_with_real_windows():
    """A model that only accepts exactly the window size still covers every voxel."""
    seen = []

    def strict(patch):
        assert tuple(patch.shape[2:]) == (8, 6, 8)
        seen.append(1)
        return patch[:, :1] * 2.0

    x = torch.randn(1, 21, 11, 8)
    logits = sliding_window_predict(strict, x, (8, 6, 8), activation=None)
    torch.testing.assert_close(logits, 2.0 * x, atol=1e-5, rtol=0)
    assert len(seen) > 1


def test_tta_matches_explicit_flip_average_and_is_not_identity():
    """With the window covering the volume, TTA = mean over the 8 flips, computed by hand."""
    torch.manual_seed(0)
    model = nn.Conv3d(2, 1, 3, padding=1)  # not flip-equivariant
    x = torch.randn(2, 7, 6, 5)
    with torch.no_grad():
        expected = torch.stack(
            [
                torch.flip(torch.sigmoid(model(torch.flip(x[None], d))), d)[0]
                for d in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
            ]
        ).mean(0)
        plain = torch.sigmoid(model(x[None]))[0]
    tta = sliding_window_predict(model, x, (8, 8, 8), tta=True)
    torch.testing.assert_close(tta, expected, atol=1e-6, rtol=0)
    assert (tta - plain).abs().max() > 1e-3


@pytest.mark.parametrize("shape", [(5, 7, 6), (12, 16, 6)])
def test_tta_equals_no_tta_for_flip_equivariant_model(shape):
    """A flip-symmetric 3×3×3 kernel on window grids that are symmetric under flips.

    12 voxels are tiled by windows 0..8 and 4..12; 6 voxels are padded by 1 on each side.

    The model has a receptive field, so this also checks that the flipped image is put back
    in place: a misplaced flip would change the output near every window border.
    """
    model = FlipSymmetric()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    plain = sliding_window_predict(model, x, (8, 8, 8))
    tta = sliding_window_predict(model, x, (8, 8, 8), tta=True)
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=0)
    # and the TTA really ran flipped passes: a non-symmetric model changes
    other = nn.Conv3d(2, 3, 3, padding=1)
    assert (
        sliding_window_predict(other, x, (8, 8, 8), tta=True)
        - sliding_window_predict(other, x, (8, 8, 8))
    ).abs().max() > 1e-3


def test_sliding_window_uses_eval_mode_and_restores_train_mode():
    """Mid-training validation: dropout off during prediction, train() mode given back."""
    model = nn.Sequential(nn.Conv3d(2, 2, 1), nn.Dropout(p=0.9))
    model.train()
    x = np.random.default_rng(0).normal(size=(2, 9, 8, 7)).astype(np.float32)
    x.flags.writeable = False  # e.g. a memory-mapped cache
    probs = sliding_window_predict(model, x, (8, 8, 8))
    assert model.training
    model.eval()
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.tensor(x)[None]))[0]
    torch.testing.assert_close(probs, direct, atol=1e-6, rtol=0)


def test_flip_combinations_are_all_distinct_subsets():
    combos = flip_combinations(3)
    assert len(combos) == len(set(combos)) == 8
    assert combos[0] == ()


def test_sliding_window_rejects_bad_arguments():
    model = pointwise_net()
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window_predict(model, torch.zeros(1, 2, 8, 8, 8), (8, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(model, torch.zeros(2, 8, 8, 8), (8, 8, 8), overlap=1.0)


# --------------------------------------------------------------------- Predictor.probabilities


def _probabilities(models, image, patch_size=(8, 8, 8), where="image"):
    """What the Predictor of these networks (a fold ensemble) gives a raw image."""
    ens = Ensemble(list(models), [], patch_size, models[0].in_channels, models[0].out_channels)
    return Predictor(ens).probabilities(image, where=where)


def _raw_case(shape=(3, 14, 11, 9), seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    image[:, 2:12, 1:10, 3:8] = rng.normal(100, 20, (shape[0], 10, 9, 5))
    return image


def test_probabilities_are_pointwise_model_of_zscored_crop_and_zero_outside():
    image = _raw_case(shape=(2, 14, 11, 9))
    model = pointwise_net(2, 3)
    probs = _probabilities([model], image)
    assert probs.shape == (3, 14, 11, 9) and probs.dtype == np.float32
    # independent reference: z-score on nonzero voxels of the box, then the model directly
    box = image[:, 2:12, 1:10, 3:8].astype(np.float64)
    z = (box - box.mean((1, 2, 3), keepdims=True)) / box.std((1, 2, 3), keepdims=True)
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.tensor(z, dtype=torch.float32)[None]))[0].numpy()
    np.testing.assert_allclose(probs[:, 2:12, 1:10, 3:8], ref, atol=1e-5)
    outside = np.ones(image.shape[1:], bool)
    outside[2:12, 1:10, 3:8] = False
    assert np.all(probs[:, outside] == 0)


def test_ensemble_is_mean_of_members():
    image = _raw_case()
    models = [pointwise_net(3, 2, seed=s) for s in range(3)]
    each = [_probabilities([m], image) for m in models]
    both = _probabilities(models, image)
    np.testing.assert_allclose(both, np.mean(each, axis=0), atol=1e-6)
    assert np.abs(each[0] - each[1]).max() > 1e-3  # the members really differ


def test_wrong_channel_count_names_the_case():
    with pytest.raises(DataError, match=r"case_3: image has 3 channels but the model expects 2"):
        _probabilities([pointwise_net(2, 3)], _raw_case(), where="case_3")


# --------------------------------------------------------------------- checkpoints


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_find_checkpoints_run_fold_and_file(tmp_path):
    run = tmp_path / "Task01" / "swin_factorizer"
    for k in (0, 1, 10, 2):
        _touch(run / f"fold_{k}" / "checkpoint_final.pt")
        _touch(run / f"fold_{k}" / "checkpoint_last.pt")
    _touch(run / "fold_all" / "checkpoint_final.pt")
    (run / "fold_notes").mkdir()
    found = find_checkpoints(run)
    assert [p.parent.name for p in found] == ["fold_0", "fold_1", "fold_2", "fold_10"]
    assert [p.parent.name for p in find_checkpoints(run, folds=["all"])] == ["fold_all"]
    assert [p.parent.name for p in find_checkpoints(run, folds=[2, 0])] == ["fold_2", "fold_0"]
    assert find_checkpoints(run / "fold_1", checkpoint="last") == [
        run / "fold_1" / "checkpoint_last.pt"
    ]
    ckpt = run / "fold_0" / "checkpoint_final.pt"
    assert find_checkpoints(ckpt) == [ckpt]


def test_find_checkpoints_errors_name_the_path(tmp_path):
    run = tmp_path / "run"
    _touch(run / "fold_0" / "checkpoint_last.pt")
    with pytest.raises(DataError, match=r"no such model"):
        find_checkpoints(tmp_path / "nope")
    with pytest.raises(DataError, match=r"run: no fold_3 \(available: fold_0\)"):
        find_checkpoints(run, folds=[3])
    with pytest.raises(DataError, match=r"fold_0: no checkpoint_final.pt.*checkpoint_last.pt"):
        find_checkpoints(run)
    with pytest.raises(DataError, match=r"no checkpoint_\*.pt files"):
        find_checkpoints(tmp_path / "run" / "..")
    with pytest.raises(ConfigError, match="--checkpoint"):
        find_checkpoints(run, checkpoint="middle")


def test_load_ensemble_checks_folds_agree(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for k in (0, 1):
        _touch(run / f"fold_{k}" / "checkpoint_final.pt")

    def fake_load(path, device):
        k = int(path.parent.name[-1])
        return pointwise_net(2, 3, seed=k), {"patch_size": [8, 8, 8 + 8 * k]}

    monkeypatch.setattr(ensemble_mod, "load_model", fake_load)
    with pytest.raises(
        DataError, match=r"fold_1.*patch size \(8, 8, 16\) differs from .*fold_0.*\(8, 8, 8\)"
    ):
        ensemble_mod.load_ensemble(run, device="cpu")
    ens = ensemble_mod.load_ensemble(run, folds=[1], device="cpu")
    assert ens.patch_size == (8, 8, 16) and ens.in_channels == 2 and ens.out_channels == 3
