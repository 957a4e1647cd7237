"""FAVOR+ (nmfseg.mixers.favor) against exact softmax attention, and the Performer presets
(nmfseg.models.performer): determinism, redraw, gradients, the U-Net contract, counts."""

from __future__ import annotations

import math

import pytest
import torch

import nmfseg.models.performer  # noqa: F401  (registers the presets)
from nmfseg.mixers import create_mixer
from nmfseg.mixers.favor import (
    FAVORAttention,
    default_num_features,
    favor_attention,
    orthogonal_gaussian,
    positive_random_features,
)
from nmfseg.models import UNet, create_model, model_info
from nmfseg.models.complexity import count_flops, count_params, model_complexity


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``V softmax_l(KᵀQ / √d)`` for tokens as columns."""
    return v @ torch.softmax(k.mT @ q / math.sqrt(q.shape[-2]), dim=-2)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


# ------------------------------------------------------------------------------------------
# The attention approximation on its own
def test_orthogonal_blocks_with_chi_norms():
    torch.manual_seed(0)
    w = orthogonal_gaussian(20, 8, dtype=torch.float64)
    assert w.shape == (20, 8) and w.dtype == torch.float64
    directions = w / w.norm(dim=1, keepdim=True)
    for block in (directions[:8], directions[8:16], directions[16:]):
        gram = block @ block.T
        torch.testing.assert_close(gram, torch.eye(len(block), dtype=torch.float64))
    assert abs(float(directions[0] @ directions[8])) > 1e-6  # blocks are independent
    many = orthogonal_gaussian(8192, 8, dtype=torch.float64)  # rows marginally N(0, I)
    chi_mean = math.sqrt(2) * math.gamma(4.5) / math.gamma(4)
    assert abs(float(many.norm(dim=1).mean()) / chi_mean - 1) < 0.02
    assert (many.T @ many / len(many) - torch.eye(8, dtype=torch.float64)).abs().max() < 0.1


def test_positive_features_estimate_the_softmax_kernel_without_bias():
    torch.manual_seed(1)
    x, y = 0.4 * torch.randn(2, 4, 3, dtype=torch.float64)  # three token pairs
    w = orthogonal_gaussian(40000, 4, dtype=torch.float64)
    phi_x, phi_y = positive_random_features(x, w), positive_random_features(y, w)
    assert phi_x.shape == (40000, 3) and bool((phi_x > 0).all())
    estimate = (phi_x * phi_y).sum(0)
    exact = torch.exp((x * y).sum(0))
    # relative standard deviation with i.i.d. features (orthogonal ones do no worse)
    std = torch.sqrt(torch.expm1((x + y).square().sum(0)) / 40000)
    assert ((estimate / exact - 1).abs() < 4 * std).all()
    with pytest.raises(ValueError, match="stabilize"):
        positive_random_features(x, w, stabilize="both")


def test_stabilisation_changes_nothing_but_overflow():
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 2, 8, 64, dtype=torch.float64)
    w = orthogonal_gaussian(32, 8, dtype=torch.float64)
    s = 8**-0.25
    phi_q, phi_k = positive_random_features(q, w, s), positive_random_features(k, w, s)
    plain = (v @ (phi_k.mT @ phi_q)) / (phi_k.sum(-1).unsqueeze(-2) @ phi_q)
    torch.testing.assert_close(favor_attention(q, k, v, w, eps=0.0), plain)
    # float32 queries and keys of norm ~50: the plain features overflow, FAVOR+ does not
    big_q, big_k, big_v = (20 * torch.randn(3, 1, 8, 64)).unbind(0)
    big_w = w.float()
    phi_q, phi_k = (positive_random_features(t, big_w, s) for t in (big_q, big_k))
    plain = (big_v @ (phi_k.mT @ phi_q)) / (phi_k.sum(-1).unsqueeze(-2) @ phi_q)
    assert not torch.isfinite(plain).all()  # exp(-|x|²/2) underflows: 0 / 0
    assert torch.isfinite(favor_attention(big_q, big_k, big_v, big_w)).all()


def test_error_against_exact_attention_falls_as_features_grow():
    """L = 64 tokens, d = 8, entries of std 0.5 (about what LayerNorm and the initial
    projection give); the estimate's error falls like 1/√m (about 4x from 16 to 256)."""
    errors = {16: [], 256: []}
    for seed in range(4):
        torch.manual_seed(seed)
        q, k, v = torch.randn(3, 2, 8, 64, dtype=torch.float64)
        q, k = 0.5 * q, 0.5 * k
        ref = exact_attention(q, k, v)
        for m in errors:
            w = orthogonal_gaussian(m, 8, dtype=torch.float64)
            errors[m].append(relative_error(favor_attention(q, k, v, w), ref))
    small, large = (sum(e) / len(e) for e in (errors[16], errors[256]))
    assert large < 0.5 * small
    assert small < 0.6


def test_outputs_are_convex_combinations_of_the_values():
    torch.manual_seed(3)
    q, k = torch.randn(2, 1, 4, 30)
    ones = torch.ones(1, 1, 30)
    out = favor_attention(q, k, ones, orthogonal_gaussian(5, 4))  # weights sum to 1
    torch.testing.assert_close(out, torch.ones(1, 1, 30))


# ------------------------------------------------------------------------------------------
# The mixer
def test_features_are_a_seeded_buffer_in_the_state_dict():
    torch.manual_seed(0)
    a = FAVORAttention(16, head_dim=8, num_features=12)
    torch.manual_seed(0)
    b = FAVORAttention(16, head_dim=8, num_features=12)
    torch.manual_seed(1)
    c = FAVORAttention(16, head_dim=8, num_features=12)
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, c.projection)
    assert "projection" in a.state_dict()
    assert all(name != "projection" for name, _ in a.named_parameters())
    x = torch.randn(1, 16, 5, 6, 7)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert torch.equal(a(x), a(x))
        c.load_state_dict(a.state_dict())
        assert torch.equal(c(x), a(x))


def test_redraw_only_in_train_mode_and_only_when_enabled():
    x = torch.randn(1, 8, 6, 5)
    torch.manual_seed(0)
    fixed = FAVORAttention(8, spatial_dims=2, head_dim=4).train()
    redrawn = FAVORAttention(8, spatial_dims=2, head_dim=4, redraw=True)
    first, first_redrawn = fixed.projection.clone(), redrawn.projection.clone()
    with torch.no_grad():
        fixed(x)
        redrawn.eval()(x)
        assert torch.equal(fixed.projection, first)
        assert torch.equal(redrawn.projection, first_redrawn)
        redrawn.train()(x)
    assert not torch.equal(redrawn.projection, first_redrawn)
    assert redrawn.projection.shape == first_redrawn.shape
    torch.manual_seed(5)  # redraws come from the global generator
    redrawn.redraw_features()
    again = redrawn.projection.clone()
    torch.manual_seed(5)
    redrawn.redraw_features()
    assert torch.equal(redrawn.projection, again)


def test_gradients_are_finite_on_every_parameter_and_the_input():
    torch.manual_seed(0)
    mixer = FAVORAttention(16, head_dim=4, dropout=0.1).train()
    x = torch.randn(2, 16, 5, 4, 3, requires_grad=True)
    mixer(x).square().sum().backward()
    for name, p in [*mixer.named_parameters(), ("input", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bf16_autocast_computes_the_attention_in_float32():
    torch.manual_seed(0)
    mixer = FAVORAttention(16, spatial_dims=2, head_dim=8).eval()
    x = torch.randn(1, 16, 9, 7)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = mixer(x)
    with torch.no_grad():
        ref = mixer(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert relative_error(low.float(), ref) < 0.05


def test_bad_arguments_name_themselves():
    for kwargs, word in [
        (dict(head_dim=3), "head_dim"),
        (dict(num_features=0), "num_features"),
        (dict(redraw="yes"), "redraw"),
        (dict(eps=-1.0), "eps"),
    ]:
        with pytest.raises(ValueError, match=word):
            create_mixer("favor", 16, **kwargs)
    assert [default_num_features(d) for d in (4, 8)] == [5, 16]


# ------------------------------------------------------------------------------------------
# Inside the U-Net
def _unet(spatial_dims: int, **mixer_args) -> UNet:
    torch.manual_seed(0)
    return UNet(
        spatial_dims, in_channels=2, out_channels=1, channels=(8, 16, 32, 64),
        block_args={"mixer": "favor", "mixer_args": {"head_dim": 4, **mixer_args}},
        pos_embed_grid=2,
    )  # fmt: skip


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (19, 13)), (3, (11, 9, 13))])
def test_unet_odd_sizes(spatial_dims, size):
    """(The fused path against the plain one is a row of test_routes.py.)"""
    net = _unet(spatial_dims).double()
    x = torch.randn(1, 2, *size, dtype=torch.float64)
    with torch.no_grad():
        y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 1, *size)
    outs = net.train()(x)
    sum(o.square().sum() for o in outs).backward()
    assert [tuple(o.shape[2:]) for o in outs] == [
        size, tuple(math.ceil(s / 2) for s in size), tuple(math.ceil(s / 4) for s in size)
    ]  # fmt: skip
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_gradient_checkpointing_recomputes_the_same_redrawn_features():
    x = torch.randn(1, 2, 12, 10, 8)
    grads = []
    for checkpointing in (False, True):
        net = _unet(3, redraw=True).train()
        net.set_grad_checkpointing(checkpointing)
        torch.manual_seed(7)
        sum(o.square().sum() for o in net(x)).backward()
        grads.append([p.grad for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------
# The presets
PINNED = {"performer_brats": 6_727_689, "performer_isles": 8_243_971}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_presets_have_the_factorizer_skeleton_and_the_paper_params(name):
    dataset = name.split("_")[1]
    factorizer = model_info(f"global_factorizer_{dataset}").kwargs
    kwargs = model_info(name).kwargs
    for key in ("spatial_dims", "in_channels", "out_channels", "channels", "pos_embed_grid"):
        assert kwargs[key] == factorizer[key], key
    assert kwargs["dropout"] == 0.1
    assert kwargs["block_args"]["mlp_ratio"] == factorizer["mlp_ratio"]
    assert kwargs["block_args"]["mixer_args"]["head_dim"] == factorizer["head_dim"]
    with torch.device("meta"):
        net = create_model(name)
        reference = create_model(f"global_factorizer_{dataset}")
    params = count_params(net)
    assert params == PINNED[name]
    squares = sum(c * c for c in factorizer["channels"][:-1]) * 2 + factorizer["channels"][-1] ** 2
    assert params == count_params(reference) + 2 * squares  # q, k, v: C → 3C instead of C → C
    assert abs(params - model_info(name).paper_params) / model_info(name).paper_params < 0.02


@pytest.mark.parametrize("name", sorted(PINNED))
def test_presets_flops_on_the_meta_device(name):
    c = model_complexity(name)
    assert c.params == PINNED[name] and c.breakdown["nmf"] == 0
    assert abs(c.flops / 1e9 - c.paper_gflops) / c.paper_gflops < 0.01
    with torch.device("meta"):
        net = create_model(name, channels=(8, 16, 32, 64, 128), spatial_dims=2)
    assert net.encoder[0].block.mixer.projection.device.type == "meta"
    flops = count_flops(net, (1, net.in_channels, 24, 40))
    assert flops["total"] > flops["matmul"] > 0


def test_reduced_widths_run_forward_and_backward():
    torch.manual_seed(0)
    net = create_model("performer_brats", channels=(8, 16, 32, 64, 128)).train()
    outs = net(torch.randn(1, 4, 20, 18, 21))
    assert [tuple(o.shape[2:]) for o in outs] == [(20, 18, 21), (10, 9, 11), (5, 5, 6)]
    sum(o.square().mean() for o in outs).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
