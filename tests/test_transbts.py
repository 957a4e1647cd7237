"""TransBTS (nmfseg.models.transbts): any-size contract, gradients, state_dict, the attention
kernel against the textbook formula, the position embedding's resampling, and the presets'
#params and FLOPs against the paper (Tables 1–2), counted on the meta device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import small_kwargs, small_model
from nmfseg.blocks import MixerBlock
from nmfseg.mixers.attention import SelfAttention
from nmfseg.models import create_model, list_models, model_info
from nmfseg.models.complexity import count_flops, count_params
from nmfseg.models.transbts import TransBTS
from nmfseg.routes import use_routes

SMALL = small_kwargs("transbts_brats")[0]  # reduced widths (tests/helpers.py)
PRESETS = ["transbts_brats", "transbts_isles"]


def small(name: str = "transbts_brats", seed: int = 0, **kwargs) -> TransBTS:
    return small_model(name, seed, **kwargs)


def test_presets_are_registered_as_data():
    assert set(PRESETS) <= set(list_models("transbts_*"))
    brats, isles = model_info("transbts_brats"), model_info("transbts_isles")
    assert brats.builder is TransBTS and brats.patch_size == (128, 128, 128)
    assert (brats.in_channels, brats.out_channels, brats.dataset) == (4, 3, "BraTS")
    assert (isles.in_channels, isles.out_channels, isles.dataset) == (2, 1, "ISLES22")
    assert brats.kwargs["pos_embed_grid"] == 16 and isles.kwargs["pos_embed_grid"] == 8
    for info in (brats, isles):
        assert info.kwargs["hidden_size"] == 512 and info.kwargs["mlp_dim"] == 4096
        assert info.kwargs["num_layers"] == 4 and info.kwargs["num_heads"] == 8


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("size", [(17, 20, 23), (9, 8, 15)])
def test_odd_sizes_eval_tensor_train_list(name, size):
    model = small(name).eval()
    x = torch.randn(1, model.in_channels, *size)
    with torch.no_grad():
        y = model(x)
        assert isinstance(y, torch.Tensor)
        assert y.shape == (1, model.out_channels, *size)
        assert torch.isfinite(y).all()
        outs = model.train()(x)
    assert isinstance(outs, list) and len(outs) == 1
    assert outs[0].shape == (1, model.out_channels, *size)
    assert model.size_multiple == 8


def test_region_logits_without_softmax():
    model = small(out_channels=3).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 4, 16, 16, 16))
    assert (y < 0).any() and (y > 0).any()
    assert not torch.allclose(y.sum(1), torch.ones(()))


def test_2d_any_size_and_batch():
    model = small(spatial_dims=2, pos_embed_grid=4).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 4, 21, 30))
    assert y.shape == (2, 3, 21, 30) and torch.isfinite(y).all()


def test_backward_gives_finite_grads_on_every_parameter():
    model = small().train()  # dropouts on
    outs = model(torch.randn(1, 4, 20, 18, 21))
    sum(o.square().mean() for o in outs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_state_dict_round_trip():
    model, clone = small(seed=0).eval(), small(seed=1).eval()
    x = torch.randn(1, 4, 17, 16, 19)
    with torch.no_grad():
        assert not torch.equal(model(x), clone(x))
        clone.load_state_dict(model.state_dict())
        assert torch.equal(model(x), clone(x))


def test_attention_is_multi_head_softmax_attention_over_voxels():
    torch.manual_seed(0)
    attn = SelfAttention(12, num_heads=3).eval()
    x = torch.randn(2, 12, 3, 4, 2)
    with torch.no_grad():
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = F.linear(tokens, attn.in_proj.weight).chunk(3, dim=-1)
        heads = [
            torch.softmax(_head(q, h) @ _head(k, h).mT / 2, dim=-1) @ _head(v, h)  # 1/sqrt(4)
            for h in range(3)
        ]
        expected = F.linear(torch.cat(heads, -1), attn.out_proj.weight, attn.out_proj.bias)
        got = attn(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _head(t: torch.Tensor, h: int, head_dim: int = 4) -> torch.Tensor:
    return t[..., h * head_dim : (h + 1) * head_dim]


def test_transformer_layer_is_pre_norm_attention_then_mlp():
    torch.manual_seed(0)
    layer = MixerBlock(8, mixer="attention", mixer_args={"num_heads": 2}, mlp_ratio=2).eval()
    x = torch.randn(1, 8, 2, 3, 4)
    with torch.no_grad(), use_routes(layer, {"plain"}):
        y = x + layer.mixer(layer.norm1(x))
        expected = y + layer.mlp(layer.norm2(y))
        torch.testing.assert_close(layer(x), expected)
    assert layer.mlp.fc1.out_channels == 16


def _embedding_added(model: TransBTS, size: tuple[int, ...]) -> torch.Tensor:
    """What the network adds to its tokens for an input of ``size`` (eval: no dropout)."""
    seen = {}

    def hook(module, inputs, output):
        seen["added"] = output - inputs[0]

    handle = model.pos_embed.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.randn(1, model.in_channels, *size))
    handle.remove()
    return seen["added"][0]


def test_position_embedding_is_exact_at_the_training_grid_and_smooth_elsewhere():
    model = small(pos_embed_grid=4)
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"))
    with torch.no_grad():  # a linear ramp along each axis, one channel per axis
        model.pos_embed.pos.zero_()
        model.pos_embed.pos[0, :3] = grid
        model.pos_embed.pos[0, 3:] = torch.randn(29, 4, 4, 4)
    # the training patch (32³ → 4³ tokens): the stored embedding itself
    torch.testing.assert_close(_embedding_added(model, (32, 32, 32)), model.pos_embed.pos[0])
    # a larger patch (64³ → 8³ tokens): trilinear resampling, token centres aligned
    added = _embedding_added(model, (64, 64, 64))
    assert added.shape == (32, 8, 8, 8)
    centres = (torch.arange(8.0) + 0.5) / 2 - 0.5  # align_corners=False
    ramp = centres.clamp(0, 3)
    torch.testing.assert_close(added[0, :, 0, 0], ramp)  # linear inside, clamped at the ends
    torch.testing.assert_close(added[1, 0, :, 0], ramp)
    assert (added[0, 1:] - added[0, :-1]).abs().max() <= 0.5 + 1e-6  # no jumps
    stored = model.pos_embed.pos[0, 3:]
    for d in (1, 2, 3):  # resampling never makes a neighbour step larger than stored ones
        assert added[3:].diff(dim=d).abs().max() <= stored.diff(dim=d).abs().max() + 1e-6
    assert added[3:].abs().max() <= stored.abs().max() + 1e-6


@pytest.mark.parametrize(
    ("name", "params", "paper_params", "paper_gflops"),
    [
        ("transbts_brats", 32_724_915, 33.0e6, 653.0),
        ("transbts_isles", 30_889_009, 31.0e6, 66.1),
    ],
)
def test_presets_match_the_paper_on_the_meta_device(name, params, paper_params, paper_gflops):
    info = model_info(name)
    assert (info.paper_params, info.paper_gflops) == (paper_params, paper_gflops)
    with torch.device("meta"):
        model = create_model(name)
    assert count_params(model) == params
    assert abs(params - paper_params) / paper_params < 0.02
    flops = count_flops(model, (1, info.in_channels, *info.patch_size))
    assert abs(flops["total"] / 1e9 - paper_gflops) / paper_gflops < 0.05
    assert flops["matmul"] > 0.99 * flops["total"] - flops["norm"] - flops["elementwise"]


def test_count_flops_scales_with_the_input_and_counts_the_attention():
    with torch.device("meta"):
        model = create_model("transbts_isles")
    small_flops = count_flops(model, (1, 2, 32, 32, 32))["matmul"]
    large_flops = count_flops(model, (1, 2, 64, 64, 64))["matmul"]
    # convolutions and projections scale with the voxels (×8), attention with their square
    assert 8 * small_flops < large_flops < 9 * small_flops


@pytest.mark.parametrize("norm", ["batch", "instance", ("group", {"num_groups": 4})])
def test_other_norms(norm):
    model = small(norm=norm).train()
    outs = model(torch.randn(2, 4, 16, 16, 8))
    assert outs[0].shape == (2, 3, 16, 16, 8)
    expected = {"batch": torch.nn.BatchNorm3d, "instance": torch.nn.InstanceNorm3d}
    kind = expected.get(norm, torch.nn.GroupNorm) if isinstance(norm, str) else torch.nn.GroupNorm
    norms = [m for m in model.modules() if isinstance(m, kind)]
    assert len(norms) == 2 * 4 + 1 + 2 + 2 + 2 * 3  # encoder, embed, mapping (2 + block), decoder
    if norm == ("group", {"num_groups": 4}):
        assert all(m.num_groups == 4 for m in norms)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(feature_size=12), "num_groups.*12 channels"),
        (dict(blocks_down=[1]), "blocks_down"),
        (dict(num_heads=3), "num_heads"),
        (dict(mlp_dim=48), "mlp_dim"),
        (dict(num_layers=0), "num_layers"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(stem_dropout=-0.1), "stem_dropout"),
        (dict(pos_embed_grid=[4, 4]), "pos_embed_grid"),
        (dict(norm="layer"), "norm"),
        (dict(feature_size=0), "feature_size"),
        (dict(spatial_dims=1), "spatial_dims"),
        (dict(out_channels=0), "out_channels"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransBTS(**{**SMALL, **kwargs})
