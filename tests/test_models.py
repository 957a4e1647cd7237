"""Every registered network: any input size, 2D/3D, the eval/train contract, gradients,
state_dict, the NMF controls and the recorded factors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nmfseg
from helpers import preset_size, small_kwargs, small_model
from nmfseg.errors import ConfigError
from nmfseg.layers import PositionEmbedding
from nmfseg.mixers.nmf import factor_maps, nmf_state, restore_nmf
from nmfseg.models import Factorizer, create_model, list_models, model_info

#: The Factorizer presets with the paper's rank-1 Wrapped NMF (the §5 variants of
#: models/factorizer_variants.py, other NMFs, are tested in test_greedy_nmf / test_semi_nmf).
FACTORIZERS = [
    n for n in list_models("*_factorizer_*") if model_info(n).kwargs.get("mixer", "nmf") == "nmf"
]
SMALL_FACTORIZER = dict(channels=(8, 16, 32, 64, 128))


small = small_model


def test_registry_lists_the_paper_presets_and_the_baseline():
    names = list_models()
    for variant in ("global", "local", "swin"):
        for dataset in ("brats", "isles"):
            assert f"{variant}_factorizer_{dataset}" in names
    assert "segresnet_brats" in names
    assert nmfseg.list_models() == names
    info = model_info("swin_factorizer_isles")
    assert info.kwargs["head_dim"] == 4 and info.kwargs["mlp_ratio"] == 4
    assert info.patch_size == (64, 64, 64) and info.paper_gflops == 29.1


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'unet'.*swin_factorizer_brats"):
        create_model("unet")
    with pytest.raises(ConfigError, match="unknown model"):
        model_info("unet")


def test_create_model_reports_bad_overrides_as_config_errors():
    with pytest.raises(ConfigError, match="head_dim"):
        create_model("swin_factorizer_brats", head_dim=7)
    with pytest.raises(ConfigError, match="no_such_option"):
        create_model("swin_factorizer_brats", no_such_option=1)


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).spatial_dims == 3])
def test_odd_size_3d_eval_and_train_contract(name):
    model = small(name)
    x = torch.randn(1, model.in_channels, 19, 24, 21)  # odd, and no multiple of any stride
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (1, model.out_channels, 19, 24, 21)
    model.train()
    with torch.no_grad():
        outs = model(x)
    assert isinstance(outs, list)
    assert len(outs) == small_kwargs(name)[1]
    for level, out in enumerate(outs):
        size = tuple(math.ceil(s / 2**level) for s in (19, 24, 21))
        assert out.shape == (1, model.out_channels, *size)


@pytest.mark.parametrize("name", list_models())
def test_2d_any_size(name):
    model = small(name, spatial_dims=2).eval()
    with torch.no_grad():
        y = model(torch.randn(2, model.in_channels, 50, 70))
    assert y.shape == (2, model.out_channels, 50, 70)
    assert torch.isfinite(y).all()
    outs = model.train()(torch.randn(1, model.in_channels, 50, 70))
    expected = [(50, 70), (25, 35), (13, 18)][: small_kwargs(name)[1]]
    assert [tuple(o.shape[2:]) for o in outs] == expected


@pytest.mark.parametrize("name", list_models())
def test_backward_gives_finite_grads_on_all_params(name):
    model = small(name).train()
    x = torch.randn(1, model.in_channels, *preset_size(name, (20, 24, 18)))
    outs = model(x)
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_state_dict_round_trip(name):
    model = small(name).eval()
    x = torch.randn(1, model.in_channels, *preset_size(name, (17, 16, 20)))
    clone = small(name, seed=1).eval()  # same preset, different weights
    with torch.no_grad():
        before = model(x)
        assert not torch.equal(before, clone(x))
        clone.load_state_dict(model.state_dict())
        assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize("name", FACTORIZERS)
def test_set_nmf_changes_the_output(name):
    model = small(name).eval()
    x = torch.randn(1, model.in_channels, *preset_size(name, (24, 20, 16)))
    state = nmf_state(model)
    with torch.no_grad():
        base = model(x)
        assert torch.equal(base, model(x))  # deterministic
        model.set_nmf(iters=1)
        fewer = model(x)
        model.set_nmf(iters=5, solver="mu", rank=2)
        rank2 = model(x)
        model.set_nmf(rank=1, solver="hals", enabled=[])
        off = model(x)
        model.set_nmf(iters=5)  # other settings leave the short-circuit as it is
        assert torch.equal(model(x), off)
        model.set_nmf(enabled="all")
        restore_nmf(model, state)  # the preset's own rank and solver
        back = model(x)
    assert not torch.allclose(base, fewer)
    assert not torch.allclose(base, rank2)
    assert not torch.allclose(base, off)
    torch.testing.assert_close(back, base)
    assert all(layer.nmf.iters == state[0][0] for layer in model.nmf_layers())


@pytest.mark.parametrize("name", ["global_factorizer_brats", "swin_factorizer_isles"])
def test_short_circuit_replaces_the_nmf_output_by_its_input(name):
    """enabled=[...] must equal running the full subblock with NMF = identity on matrices."""
    model = small(name).eval()
    x = torch.randn(1, model.in_channels, 20, 18, 17)
    keep = [0, 2, 5]
    with torch.no_grad():
        model.set_nmf(enabled=keep)
        short = model(x)
        model.set_nmf(enabled="all")
        for index, layer in enumerate(model.nmf_layers()):
            if index not in keep:
                layer.nmf = nn.Identity()  # matricize -> ReLU -> (identity) -> dematricize
        reference = model(x)
    torch.testing.assert_close(short, reference, rtol=1e-5, atol=1e-6)


def test_nmf_layers_are_in_network_order():
    model = small("swin_factorizer_brats")
    layers = model.nmf_layers()
    assert len(layers) == 9
    assert [layer.channels for layer in layers] == [8, 16, 32, 64, 128, 64, 32, 16, 8]
    assert [layer.layer_index for layer in layers] == list(range(9))
    model.set_nmf(enabled=[0, 1, 2, 3, 4])
    assert [layer.enabled for layer in layers] == [True] * 5 + [False] * 4


@pytest.mark.parametrize("name", FACTORIZERS)
def test_record_factors_shapes_and_maps(name):
    model = small(name).eval()
    size = preset_size(name, (20, 18, 17))
    x = torch.randn(1, model.in_channels, *size)
    head_dim = model_info(name).kwargs["head_dim"]
    model.set_nmf(enabled=[0, 1, 2, 3, 4, 5, 6, 8])
    with model.record_factors() as records, torch.no_grad():
        y = model(x)
    assert [r.layer for r in records] == [0, 1, 2, 3, 4, 5, 6, 8]
    assert all(layer.recorder is None for layer in model.nmf_layers())
    with torch.no_grad():
        # recording computes u @ v.mT instead of the fused projection: same up to rounding
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-5)
    channels = (8, 16, 32, 64, 128, 64, 32, 16, 8)
    levels = (0, 1, 2, 3, 4, 3, 2, 1, 0)
    for record in records:
        level = levels[record.layer]
        stage = tuple(math.ceil(s / 2**level) for s in size)
        assert record.size == stage
        rank = model.nmf_layers()[record.layer].nmf.rank
        assert record.u.shape[1:] == (head_dim, rank)
        assert record.v.shape[0] == record.u.shape[0] and record.v.shape[2] == rank
        assert (record.u >= 0).all() and (record.v >= 0).all()
        maps = factor_maps(record)
        assert maps.shape == (channels[record.layer] // head_dim, *stage)
        assert torch.isfinite(maps).all() and (maps >= 0).all()


@pytest.mark.parametrize("kind", ["global", "local"])
def test_factor_maps_are_the_per_head_norm_of_the_reconstruction(kind):
    """For rank 1 and non-overlapping matrices, ‖u‖·v at a voxel is the norm over the head's
    channels of the reconstruction ``u vᵀ`` there; for Global it is v reshaped."""
    model = small(f"{kind}_factorizer_brats").eval()
    x = torch.randn(1, 4, 24, 16, 20)
    with model.record_factors() as records, torch.no_grad():
        model(x)
    record = records[1]
    maps = factor_maps(record)
    recon = record.matricize.inverse(record.u @ record.v.mT, record.geometry)
    recon = recon[(0, ..., *(slice(0, s) for s in record.size))]
    norms = recon.unflatten(0, (record.heads, record.head_dim)).norm(dim=1)
    torch.testing.assert_close(maps, norms, rtol=1e-4, atol=1e-5)
    if kind == "global":
        direct = record.v[..., 0] * record.u.norm(dim=1)
        direct = direct.reshape(record.heads, *record.shape[2:])
        crop = (slice(None), *(slice(0, s) for s in record.size))
        torch.testing.assert_close(maps, direct[crop])


def test_ablations_and_position_embedding():
    full = small("swin_factorizer_brats")
    no_nmf = small("swin_factorizer_brats", nmf=False)
    no_mlp = small("swin_factorizer_brats", mlp=False)
    no_pos = small("swin_factorizer_brats", pos_embed=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    widths = SMALL_FACTORIZER["channels"]
    per_level = [*widths, *widths[:-1]]
    # NMF subblock: LN (2C) + C² (no bias) + C² + C; MLP (ratio 2): LN (2C) + 4C² + 3C.
    assert count(full) - count(no_nmf) == sum(2 * c * c + 3 * c for c in per_level)
    assert count(full) - count(no_mlp) == sum(4 * c * c + 5 * c for c in per_level)
    assert count(full) - count(no_pos) == 128 * 8**3
    assert no_nmf.nmf_layers() == []
    x = torch.randn(1, 4, 16, 16, 16)
    for model in (no_nmf, no_mlp, no_pos):
        assert model.eval()(x).shape == (1, 3, 16, 16, 16)
    pe = next(m for m in full.modules() if isinstance(m, PositionEmbedding))
    assert pe.embedding((8, 8, 8)) is pe.pos
    resized = pe.embedding((2, 3, 4))
    ref = nn.functional.interpolate(pe.pos, size=(2, 3, 4), mode="trilinear")
    torch.testing.assert_close(resized, ref)


def test_full_width_preset_and_deep_supervision_options():
    torch.manual_seed(0)
    model = create_model("swin_factorizer_brats").eval()
    with torch.no_grad():
        y = model(torch.randn(1, 4, 20, 16, 24))
    assert y.shape == (1, 3, 20, 16, 24) and torch.isfinite(y).all()
    one = small("local_factorizer_isles", deep_supervision=False).train()
    outs = one(torch.randn(1, 2, 16, 16, 16))
    assert len(outs) == 1 and outs[0].shape == (1, 1, 16, 16, 16)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_grad_checkpointing_gives_the_same_gradients(dropout):
    """Stages, and inside them the blocks' mixer subblocks, recomputed in backward: the same
    gradients, dropout masks included (the recomputation replays the random state)."""
    from nmfseg.blocks.mixer import MixerBlock

    model = small("swin_factorizer_isles", dropout=dropout).train()
    blocks = [m for m in model.modules() if isinstance(m, MixerBlock)]
    x = torch.randn(1, 2, 16, 16, 16)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        assert blocks and all(b.grad_checkpointing is enable for b in blocks)
        torch.manual_seed(1)
        sum(o.sum() for o in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(head_dim=7), "head_dim"),
        (dict(channels=(8,)), "channels"),
        (dict(matricize="axial"), "matricize"),
        (dict(window_size=(8, 8)), "window_size"),
        (dict(rank=0), "rank"),
        (dict(iters=-1), "iters"),
        (dict(solver="als"), "solver"),
        (dict(mlp_ratio=0), "mlp_ratio"),
        (dict(dropout=1.0), "dropout"),
        (dict(pos_embed_grid=(8, 8)), "pos_embed_grid"),
        (dict(deep_supr_num=4), "deep_supr_num"),
        (dict(deep_supervision=3), "deep_supervision"),
        (dict(in_channels=0), "in_channels"),
        (dict(grad_iters=-2), "grad_iters"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Factorizer(**{"in_channels": 4, "out_channels": 3, **SMALL_FACTORIZER, **kwargs})


def test_bad_inputs_and_nmf_settings_raise_value_errors():
    model = small("swin_factorizer_brats")
    with pytest.raises(ValueError, match=r"\(B, 4, \*3 spatial dims\), got \(1, 3, 8, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="enabled"):
        model.set_nmf(enabled=[9])
    with pytest.raises(ValueError, match="enabled should be 'all'"):
        model.set_nmf(enabled="none")
    with pytest.raises(ValueError, match="solver"):
        model.set_nmf(solver="als")
    with pytest.raises(ValueError, match="iters"):
        model.set_nmf(iters=-1)
    with pytest.raises(ConfigError, match="init_filters"):
        create_model("segresnet_brats", init_filters=12)


@pytest.mark.parametrize("train", [False, True])
def test_bf16_autocast_runs_in_train_and_eval(train: bool) -> None:
    """Mixed precision (``--amp bf16``) works for validation (eval, no grad) and training."""
    torch.manual_seed(0)
    model = create_model("swin_factorizer_isles", channels=(4, 8, 16, 32, 64)).train(train)
    x = torch.randn(1, 2, 20, 24, 18)
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    outs = out if isinstance(out, list) else [out]
    assert outs[0].shape[-3:] == x.shape[-3:]
    assert all(torch.isfinite(o.float()).all() for o in outs)


@pytest.mark.parametrize(
    ("mixer", "args"),
    [("nmf", {"head_dim": 8, "window_size": 4}), ("favor", {"head_dim": 8}), ("none", {})],
)
def test_blocks_mixing_in_float32_leave_cpu_autocast(mixer, args) -> None:
    """Under CPU bf16 autocast a block whose mixer computes in float32 anyway runs its fused
    float32 kernels: the same output as outside autocast, bit for bit, and gradients."""
    from nmfseg.blocks import MixerBlock

    torch.manual_seed(0)
    block = MixerBlock(16, spatial_dims=3, mixer=mixer, mixer_args=args).eval()
    x = torch.randn(1, 16, 8, 6, 5)
    with torch.no_grad():
        ref = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x.bfloat16())
            from_float = block(x)
    assert low.dtype == torch.float32 and torch.equal(from_float, ref)
    torch.testing.assert_close(low, block(x.bfloat16().float()).detach())
    block.train()
    grads = []
    for amp in (False, True):  # backward() inside the autocast region, as some loops do
        xg = x.clone().requires_grad_()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            block(xg).square().sum().backward()
        grads.append(xg.grad)
    if mixer != "favor":  # nmfseg's own autograd Functions: float32 backward, bit for bit
        assert torch.equal(grads[1], grads[0])
    else:  # PyTorch's own backward ops follow the autocast region they are called in
        torch.testing.assert_close(grads[1], grads[0], atol=0.05, rtol=0.05)


def test_attention_blocks_keep_bf16_under_cpu_autocast() -> None:
    """An attention mixer gains from bf16, so its block stays under autocast."""
    torch.manual_seed(0)
    block = nmfseg.blocks.MixerBlock(16, mixer="attention", mixer_args={"num_heads": 2}).eval()
    x = torch.randn(1, 16, 4, 4, 4)
    with torch.no_grad():
        ref = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not block._leaves_autocast(x)
            low = block(x)
    assert not torch.equal(low.float(), ref)
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)
