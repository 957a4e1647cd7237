"""nnFormer (nmfseg.models.nnformer, nmfseg.models.nnformer_blocks): window attention against a
naive reference, the network contract at reduced width, and the full presets on the meta device."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nmfseg.blocks import MixerBlock
from nmfseg.errors import ConfigError
from nmfseg.layers import LayerNorm
from nmfseg.mixers.attention import VolumeAttention, from_windows, to_windows
from nmfseg.models import create_model, model_info
from nmfseg.models.complexity import count_flops, count_params, model_complexity
from nmfseg.models.nnformer import NNFormer
from nmfseg.models.nnformer_blocks import SkipAttentionLayer

SMALL = dict(feature_size=12, num_heads=(1, 2, 4, 8))


def small(seed: int = 0, **kwargs) -> NNFormer:
    torch.manual_seed(seed)
    return NNFormer(**{"in_channels": 4, "out_channels": 3, **SMALL, **kwargs})


def naive_attention(attn: VolumeAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Attention over all voxel pairs with an explicit (L, L) mask: two voxels see each other
    iff ``floor((p - shift) / window)`` is the same in every dim (Swin's shifted windows
    without the roll), with the bias of their offset ``p - q``."""
    b, c, *size = q.shape
    heads, d = attn.num_heads, c // attn.num_heads
    window, shift = attn.geometry(size)
    points = list(itertools.product(*(range(s) for s in size)))
    mask = torch.full((heads, len(points), len(points)), float("-inf"), dtype=q.dtype)
    for i, p in enumerate(points):
        for j, r in enumerate(points):
            groups = [
                ((a - s) // w, (e - s) // w) for a, e, s, w in zip(p, r, shift, window, strict=True)
            ]
            if any(g != h for g, h in groups):
                continue
            if attn.relative_position_bias_table is None:
                mask[:, i, j] = 0.0
                continue
            index = 0
            for a, e, w in zip(p, r, window, strict=True):
                index = index * (2 * w - 1) + (a - e) + (w - 1)
            mask[:, i, j] = attn.relative_position_bias_table[index].to(q.dtype)
    queries = q.reshape(b, heads, d, -1).transpose(2, 3)
    keys, values = kv.reshape(b, 2, heads, d, -1).transpose(3, 4).unbind(1)
    weights = torch.softmax(queries @ keys.transpose(2, 3) / math.sqrt(d) + mask, dim=-1)
    return (weights @ values).transpose(2, 3).reshape(b, c, *size)


@pytest.mark.parametrize(
    ("size", "window", "shifted"),
    [
        ((4, 6, 4), (2, 2, 2), False),
        ((4, 6, 4), (2, 2, 2), True),
        ((4, 2, 6), (2, 2, 3), True),  # no shift along the dim the window covers
        ((6, 4), (3, 2), True),
        ((3, 2, 3), None, False),  # GV-MSA: global, no bias
    ],
)
def test_window_attention_matches_the_naive_reference(size, window, shifted):
    torch.manual_seed(0)
    attn = VolumeAttention(8, num_heads=2, window_size=window, shifted=shifted).double()
    if attn.relative_position_bias_table is not None:
        torch.nn.init.normal_(attn.relative_position_bias_table)  # make the bias matter
    q = torch.randn(2, 8, *size, dtype=torch.float64)
    kv = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(attn.attention(q, kv), naive_attention(attn, q, kv))


def test_windows_round_trip_and_shift_geometry():
    x = torch.randn(2, 24, 4, 6, 8)
    w = to_windows(x, (2, 3, 4), 3, 2)
    assert w.shape == (3, 2 * 8, 2, 24, 4)
    for g in range(3):
        torch.testing.assert_close(
            from_windows(w[g], (4, 6, 8), (2, 3, 4)), x[:, 8 * g : 8 * g + 8]
        )
    attn = VolumeAttention(8, 2, window_size=(4, 4, 4), shifted=True)
    assert attn.geometry((8, 4, 12)) == ((4, 4, 4), (2, 0, 2))
    with pytest.raises(ValueError, match=r"not a multiple of window_size \(4, 4, 4\)"):
        attn.geometry((8, 6, 8))
    assert VolumeAttention(8, 2).geometry((3, 5, 7)) == ((3, 5, 7), (0, 0, 0))


def test_layers_are_the_residual_formulas():
    torch.manual_seed(0)
    x, skip = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 4, 4, 4)
    args = {"num_heads": 2, "window_size": (2, 2, 2), "shifted": True}
    layer = MixerBlock(8, mixer="volume_attention", mixer_args=args, mlp_ratio=4).eval()
    a = layer.mixer
    y = x + a.out_proj(a.attention(*a.in_proj(layer.norm1(x)).split([8, 16], 1)))
    torch.testing.assert_close(layer(x), y + layer.mlp(layer.norm2(y)), rtol=1e-5, atol=1e-5)
    skip_layer = SkipAttentionLayer(8, 2, window_size=(2, 2, 2)).eval()
    assert skip_layer.attn.in_proj.out_channels == 16  # keys and values only
    n, a = skip_layer.norm1, skip_layer.attn
    y = x + skip + a.out_proj(a.attention(n(x), a.in_proj(n(skip))))
    expected = y + skip_layer.mlp(skip_layer.norm2(y))
    torch.testing.assert_close(skip_layer(x, skip), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(20, 18, 17), (33, 16, 9)])
def test_odd_sizes_3d_eval_tensor_and_train_list(size):
    model = small().eval()
    assert model.size_multiple == 32
    x = torch.randn(1, 4, *size)
    with torch.no_grad():
        y = model(x)
        assert isinstance(y, torch.Tensor) and y.shape == (1, 3, *size)
        outs = model.train()(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape[2:]) for o in outs] == [
        tuple(math.ceil(s / 2**i) for s in size) for i in range(3)
    ]
    torch.testing.assert_close(outs[0], y)  # dropout 0: the same full-resolution logits
    no_ds = small(deep_supervision=False).train()
    with torch.no_grad():
        assert len(no_ds(x)) == 1


def test_2d_any_size():
    model = small(spatial_dims=2, window_size=(4, 2)).eval()
    assert model.size_multiple == 32
    with torch.no_grad():
        y = model(torch.randn(2, 4, 50, 37))
    assert y.shape == (2, 3, 50, 37) and torch.isfinite(y).all()


def test_backward_gives_finite_grads_on_every_parameter():
    model = small(dropout=0.1).train()
    outs = model(torch.randn(1, 4, 20, 24, 18))
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_checkpointing_gives_the_same_gradients():
    """(The fused path against the plain one is a row of test_routes.py.)"""
    model = small().double().train()
    x = torch.randn(1, 4, 17, 20, 16, dtype=torch.float64)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        sum(o.square().sum() for o in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        for g, h in zip(grads[0], other, strict=True):
            torch.testing.assert_close(g, h)


def test_state_dict_round_trip():
    model, clone = small().eval(), small(seed=1).eval()
    x = torch.randn(1, 4, 17, 16, 20)
    with torch.no_grad():
        before = model(x)
        assert not torch.equal(before, clone(x))
        clone.load_state_dict(model.state_dict())
        assert torch.equal(clone(x), before)
    assert not any("relative_position_index" in k for k in model.state_dict())


def test_full_presets_on_the_meta_device():
    for name, params, paper in (
        ("nnformer_brats", 149_360_961, 149.4e6),
        ("nnformer_isles", 149_183_739, 149.2e6),
    ):
        info = model_info(name)
        assert info.builder is NNFormer and info.paper_params == paper
        with torch.device("meta"):
            model = create_model(name)
        assert count_params(model) == params
        assert abs(params / paper - 1) < 0.02
    isles = model_complexity("nnformer_isles")
    assert isles.input_shape == (1, 2, 64, 64, 64)
    assert round(isles.flops / 1e9, 1) == 60.6 and isles.paper_gflops == 60.6
    assert isles.breakdown["matmul"] > 0.99 * isles.flops


def test_count_flops_at_reduced_width():
    with torch.device("meta"):
        model = small()
    flops = count_flops(model, (1, 4, 32, 32, 32))
    assert flops["total"] > flops["matmul"] > 0 and flops["norm"] > 0
    # the heads count once in eval (one output), at every size a multiple of 32
    assert count_flops(model, (1, 4, 64, 32, 32))["total"] > flops["total"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_heads=(5, 2, 4, 8)), "num_heads"),
        (dict(num_heads=(1, 2, 4)), "num_heads"),
        (dict(feature_size=7), "feature_size"),
        (dict(depths=(2,)), "depths"),
        (dict(window_size=(4, 4)), "window_size"),
        (dict(local_stages=5), "local_stages"),
        (dict(deep_supr_num=3), "deep_supr_num"),
        (dict(dropout=1.0), "dropout"),
        (dict(mlp_ratio=0), "mlp_ratio"),
        (dict(out_channels=0), "out_channels"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)
    with pytest.raises(ConfigError, match=match):
        create_model("nnformer_brats", **{**SMALL, **kwargs})


def test_size_multiple_follows_windows_and_stages():
    assert small(window_size=8).size_multiple == 64
    assert small(window_size=(4, 4, 2), local_stages=1).size_multiple == 32
    assert small(local_stages=0).size_multiple == 32
    model = small(local_stages=0).eval()  # GV-MSA everywhere
    with torch.no_grad():
        assert model(torch.randn(1, 4, 9, 10, 11)).shape == (1, 3, 9, 10, 11)
    assert isinstance(small().skip_norms[0], LayerNorm)
