"""The CNN baselines on the paper's skeleton (nnU-Net, Res-U-Net: blocks "conv", "resconv")
and MONAI's UNETR and Swin UNETR under the model contract (issue #9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nmfseg.models.convnets  # noqa: F401  (registers the CNN presets)
from helpers import small_kwargs, small_model
from nmfseg.blocks import create_block
from nmfseg.blocks.conv import ConvBlock, ResConvBlock
from nmfseg.errors import ConfigError
from nmfseg.layers import PointwiseConv
from nmfseg.layers.factories import make_act, make_norm
from nmfseg.models import create_model, model_info
from nmfseg.models.complexity import count_flops, count_params, model_complexity
from nmfseg.models.monai_nets import UNETR, SwinUNETR

CONV_PRESETS = ["nnunet_brats", "nnunet_isles", "resunet_brats", "resunet_isles"]
MONAI_PRESETS = ["unetr_brats", "unetr_isles", "swin_unetr_brats", "swin_unetr_isles"]
SMALL_UNETR = small_kwargs("unetr_brats")[0]
SMALL_SWIN = small_kwargs("swin_unetr_brats")[0]


small = small_model


# ------------------------------------------------------------------------------------------
# Blocks
def reference_conv_block(block: ConvBlock, x: torch.Tensor, residual: bool) -> torch.Tensor:
    """The block from functional ops: conv -> GroupNorm(C/8 groups) -> LeakyReLU(0.01), twice,
    the residual added after the second norm."""
    groups = block.channels // 8
    y = F.conv3d(x, block.conv1.weight, block.conv1.bias, padding=1)
    y = F.leaky_relu(F.group_norm(y, groups, block.norm1.weight, block.norm1.bias), 0.01)
    y = F.conv3d(y, block.conv2.weight, block.conv2.bias, padding=1)
    y = F.group_norm(y, groups, block.norm2.weight, block.norm2.bias)
    if residual:
        y = y + (x if block.in_channels == block.channels else block.shortcut(x))
    return F.leaky_relu(y, 0.01)


@pytest.mark.parametrize("cls", [ConvBlock, ResConvBlock])
@pytest.mark.parametrize("in_channels", [None, 32])
def test_conv_blocks_match_their_definition(cls, in_channels):
    torch.manual_seed(0)
    block = cls(16, in_channels=in_channels)
    for norm in (block.norm1, block.norm2):
        assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 2  # 8 channels a group
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(2, in_channels or 16, 5, 7, 6)
    y = block(x)
    assert y.shape == (2, 16, 5, 7, 6)
    torch.testing.assert_close(y, reference_conv_block(block, x, cls is ResConvBlock))


def test_residual_path_identity_and_projection():
    torch.manual_seed(0)
    block = ResConvBlock(8)
    assert isinstance(block.shortcut, nn.Identity)
    nn.init.zeros_(block.norm2.weight)  # the residual branch outputs 0: y = act(x)
    x = torch.randn(1, 8, 4, 5, 6)
    torch.testing.assert_close(block(x), F.leaky_relu(x, 0.01))
    wide = ResConvBlock(8, in_channels=16)
    assert isinstance(wide.shortcut, PointwiseConv) and wide.shortcut.bias is None
    nn.init.zeros_(wide.norm2.weight)
    x = torch.randn(1, 16, 4, 5, 6)
    torch.testing.assert_close(wide(x), F.leaky_relu(wide.shortcut(x), 0.01))
    assert count_params(wide) - count_params(ConvBlock(8, in_channels=16)) == 16 * 8


def test_blocks_are_registered_and_take_norm_act_dropout():
    block = create_block("conv", 16, spatial_dims=2, dropout=0.2, norm="instance", act="relu")
    assert isinstance(block.norm1, nn.InstanceNorm2d) and isinstance(block.act1, nn.ReLU)
    assert block.drop1.p == 0.2 and block.conv1.kernel_size == (3, 3)
    block.eval()
    assert block(torch.randn(1, 16, 7, 9)).shape == (1, 16, 7, 9)
    res = create_block("resconv", 16, norm=["group", {"num_groups": 8}], kernel_size=5)
    assert res.norm2.num_groups == 8 and res.conv2.kernel_size == (5, 5, 5)
    assert make_norm(("group", {"group_size": 4}), 32).num_groups == 8
    assert make_act(("leakyrelu", {"negative_slope": 0.2})).negative_slope == 0.2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(norm="group", channels=12), "norm group_size"),
        (dict(norm=("group", {"num_groups": 5})), "norm num_groups"),
        (dict(norm=("group", {"num_groups": 2, "group_size": 8})), "not both"),
        (dict(norm="layer"), "norm should be one of"),
        (dict(norm=("group", 8)), r"norm should be a name or a \(name"),
        (dict(act="swish"), "act should be one of"),
        (dict(kernel_size=2), "kernel_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(in_channels=0), "in_channels"),
        (dict(spatial_dims=1), "spatial_dims"),
    ],
)
def test_bad_block_arguments_raise_value_errors(kwargs, match):
    kwargs = {"channels": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        ResConvBlock(**kwargs)


def test_group_norm_of_every_level_has_groups_of_8_channels():
    with torch.device("meta"):
        net = create_model("resunet_brats")
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 2 * 9  # two per block, 5 encoder + 4 decoder levels
    assert all(n.num_groups == n.num_channels // 8 for n in norms)
    assert {n.num_channels for n in norms} == {32, 64, 128, 256, 512}
    convs = [stage.block.conv1 for stage in net.decoder]  # fed the 2C concatenation
    assert (
        [c.in_channels for c in convs] == [2 * c.out_channels for c in convs] == [512, 256, 128, 64]
    )
    assert all(isinstance(stage.block.shortcut, PointwiseConv) for stage in net.decoder)


# ------------------------------------------------------------------------------------------
# Presets: counts on the meta device
# The paper's counts (Tables 1-2) are met when the decoder feeds the 2C concatenation to the
# block (decoder_proj=False; see nmfseg.models.convnets).
PINNED_PARAMS = {
    "nnunet_brats": 28_704_905,
    "nnunet_isles": 28_702_723,
    "resunet_brats": 28_878_985,
    "resunet_isles": 28_876_803,
    "unetr_brats": 111_454_051,  # MONAI's, less the 12 unused cross-attention LayerNorms
    "unetr_isles": 104_816_673,
    "swin_unetr_brats": 62_191_941,
    "swin_unetr_isles": 62_188_387,
}


@pytest.mark.parametrize("name", CONV_PRESETS + MONAI_PRESETS)
def test_preset_parameter_counts_are_pinned(name):
    with torch.device("meta"):
        net = create_model(name)
    assert next(net.parameters()).device.type == "meta"
    assert count_params(net) == PINNED_PARAMS[name]
    info = model_info(name)
    assert (net.in_channels, net.out_channels) == (info.in_channels, info.out_channels)


@pytest.mark.parametrize("name", ["unetr_brats", "unetr_isles", "swin_unetr_isles"])
def test_transformer_presets_match_the_paper(name):
    c = model_complexity(name)
    assert abs(c.params / c.paper_params - 1) < 0.02
    assert abs(c.flops / 1e9 / c.paper_gflops - 1) < 0.05


def test_swin_unetr_brats_builds_on_meta_and_counts_flops_at_the_paper_size():
    with torch.device("meta"):
        net = create_model("swin_unetr_brats")
    assert abs(count_params(net) / 62.2e6 - 1) < 0.02
    flops = count_flops(net, (1, 4, 128, 128, 128))
    assert abs(flops["total"] / 1e9 / 1549.8 - 1) < 0.05


@pytest.mark.parametrize("name", CONV_PRESETS)
def test_cnn_presets_match_the_paper(name):
    c = model_complexity(name)
    assert abs(c.params / c.paper_params - 1) < 0.02
    assert abs(c.flops / 1e9 / c.paper_gflops - 1) < 0.05


# The registry-wide contract (any size, eval tensor, train list, backward, state_dict, 2D) is
# tested for these presets in test_models.py.


# ------------------------------------------------------------------------------------------
# UNETR: any size through a resampled position embedding
def test_unetr_at_img_size_is_monais_unetr():
    torch.manual_seed(0)
    net = UNETR(3, 2, 1, img_size=32, **SMALL_UNETR).eval()
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.net(x))
    assert net.position_embedding((2, 2, 2)) is net.net.vit.patch_embedding.position_embeddings


def test_unetr_resamples_the_position_embedding_to_the_token_grid():
    torch.manual_seed(0)
    net = UNETR(3, 2, 1, img_size=(32, 64, 32), **SMALL_UNETR).eval()
    pos = net.net.vit.patch_embedding.position_embeddings  # (1, 2*4*2, 24)
    grid = pos.transpose(1, 2).reshape(1, 24, 2, 4, 2)
    ref = F.interpolate(grid, size=(3, 1, 5), mode="trilinear", align_corners=False)
    torch.testing.assert_close(net.position_embedding((3, 1, 5)), ref.flatten(2).transpose(1, 2))
    x = torch.randn(1, 2, 33, 16, 70)  # token grid (3, 1, 5) after padding to (48, 16, 80)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 1, 33, 16, 70) and torch.isfinite(y).all()
    with pytest.raises(RuntimeError):
        net.net(torch.randn(1, 2, 48, 16, 80))  # MONAI's own forward: img_size only


def test_swin_unetr_pads_to_32_and_trains_on_small_inputs():
    torch.manual_seed(0)
    net = SwinUNETR(3, 1, 2, **SMALL_SWIN)
    assert net.size_multiple == 32
    outs = net.train()(torch.randn(1, 1, 9, 31, 32))  # one-voxel bottleneck: padded further
    assert len(outs) == 1 and outs[0].shape == (1, 2, 9, 31, 32)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (UNETR, dict(img_size=100), "img_size should be multiples of 16"),
        (UNETR, dict(img_size=(32, 32)), "img_size"),
        (UNETR, dict(hidden_size=30, num_heads=4), "divisible by num_heads"),
        (UNETR, dict(feature_size=0), "feature_size"),
        (UNETR, dict(dropout=1.0), "dropout"),
        (SwinUNETR, dict(feature_size=40), "multiple of 12"),
        (SwinUNETR, dict(depths=(2, 2, 2)), "depths"),
        (SwinUNETR, dict(num_heads=(5, 6, 12, 24)), r"num_heads\[0\]"),
        (SwinUNETR, dict(window_size=(7, 7)), "window_size"),
        (SwinUNETR, dict(drop_path=-0.1), "drop_path"),
        (SwinUNETR, dict(spatial_dims=4), "spatial_dims"),
    ],
)
def test_bad_transformer_arguments_raise_value_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**{"in_channels": 2, "out_channels": 1, **kwargs})


def test_create_model_reports_bad_overrides():
    with pytest.raises(ConfigError, match="unetr_isles: img_size"):
        create_model("unetr_isles", img_size=40)
    with pytest.raises(ConfigError, match="nnunet_brats: norm group_size"):
        create_model("nnunet_brats", channels=(4, 8, 16, 32, 64))
