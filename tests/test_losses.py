"""The paper's loss (eq. 15-17) against the formulas written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmfseg.training.losses import DeepSupervisionLoss, DiceBCELoss, downsample_target

EPS = 1e-5


def reference_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eq. 17 per sample b and region r, averaged, + binary cross-entropy, in float64."""
    z, g = logits.double(), target.double()
    p = 1.0 / (1.0 + torch.exp(-z))
    batch, regions = z.shape[:2]
    dice = []
    for b in range(batch):
        for r in range(regions):
            gg, pp = g[b, r].flatten(), p[b, r].flatten()
            inner = (gg * pp).sum()
            dice.append(1 - (2 * inner + eps) / ((gg**2).sum() + (pp**2).sum() + eps))
    bce = -(g * torch.log(p) + (1 - g) * torch.log(1 - p)).mean()
    return torch.stack(dice).mean() + bce


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 6, 10, generator=gen) * 2
    target = (torch.rand(2, 3, 8, 6, 10, generator=gen) > 0.6).float()
    target[1, 0] = 0  # an empty region: the Dice term rests on eps there
    return logits, target


def test_dice_bce_matches_eq17_written_out(batch):
    logits, target = batch
    got = DiceBCELoss(eps=EPS)(logits, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_loss(logits, target), rtol=1e-5, atol=1e-6)


def test_dice_uses_squared_denominator_and_eps_on_both_sides():
    # Target all ones, P = 0.5 everywhere on N voxels: <G,P> = N/2, |G|^2 = N, |P|^2 = N/4.
    n = 64
    target = torch.ones(1, 1, 4, 4, 4)
    logits = torch.zeros(1, 1, 4, 4, 4)
    dice = DiceBCELoss(eps=EPS, bce_weight=0.0)(logits, target)
    expected = 1 - (2 * n / 2 + EPS) / (n + n / 4 + EPS)  # 0.2; a linear denominator gives 1/3
    assert float(dice) == pytest.approx(expected, rel=1e-6)
    # Empty target, (almost) empty prediction: eps/eps -> loss ~0, not 1.
    empty = DiceBCELoss(eps=EPS, bce_weight=0.0)(torch.full((1, 1, 4, 4, 4), -30.0), target * 0)
    assert float(empty) < 1e-3


def test_bf16_logits_give_a_float32_loss(batch):
    logits, target = batch
    got = DiceBCELoss()(logits.bfloat16(), target)
    assert got.dtype == torch.float32
    ref = reference_loss(logits.bfloat16().float(), target)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)


def test_deep_supervision_is_eq15_with_nearest_targets(batch):
    logits, target = batch
    gen = torch.Generator().manual_seed(1)
    half = torch.randn(2, 3, 4, 3, 5, generator=gen)
    quarter = torch.randn(2, 3, 2, 2, 3, generator=gen)  # 6 / 4 rounds up, as a network pads
    loss = DeepSupervisionLoss((1.0, 0.5, 0.25), eps=EPS)([logits, half, quarter], target)
    # Nearest down-sampling of an exactly halved size keeps every second voxel from 0.
    t_half = target[..., ::2, ::2, ::2]
    t_quarter = F.interpolate(target, size=(2, 2, 3), mode="nearest")
    expected = (
        reference_loss(logits, target)
        + 0.5 * reference_loss(half, t_half)
        + 0.25 * reference_loss(quarter, t_quarter)
    )
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_single_output_network_uses_the_first_weight_only(batch):
    logits, target = batch
    one = DeepSupervisionLoss((1.0, 0.5, 0.25))([logits], target)
    torch.testing.assert_close(one, DiceBCELoss()(logits, target))
    torch.testing.assert_close(DeepSupervisionLoss()(logits, target), one)
    with pytest.raises(ValueError, match="deep-supervision weights"):
        DeepSupervisionLoss((1.0,))([logits, logits[..., ::2, ::2, ::2]], target)


def test_downsample_target_nearest_and_avg():
    gen = torch.Generator().manual_seed(2)
    target = (torch.rand(2, 3, 8, 12, 4, generator=gen) > 0.5).float()
    near = downsample_target(target, (4, 6, 2), "nearest")
    assert torch.equal(near, target[..., ::2, ::2, ::2])
    avg = downsample_target(target, (4, 6, 2), "avg")
    blocks = target.reshape(2, 3, 4, 2, 6, 2, 2, 2).mean(dim=(3, 5, 7))
    torch.testing.assert_close(avg, blocks)
    assert downsample_target(target, (8, 12, 4)) is target
    odd = downsample_target(target[..., :7, :11, :3], (4, 6, 2), "nearest")
    assert odd.shape == (2, 3, 4, 6, 2) and set(odd.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        downsample_target(target, (4, 6, 2), "max")


def test_loss_backpropagates_to_every_output(batch):
    logits, target = batch
    outs = [logits.clone().requires_grad_(), torch.randn(2, 3, 4, 3, 5, requires_grad=True)]
    DeepSupervisionLoss()(outs, target).backward()
    assert all(
        o.grad is not None and torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0 for o in outs
    )
