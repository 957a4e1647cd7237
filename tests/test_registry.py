"""The registries (models, blocks, mixers), presets as data, and checkpoints of older versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import nmfseg
from nmfseg.blocks import create_block, list_blocks, temporarily_registered_block
from nmfseg.errors import ConfigError, DataError
from nmfseg.layers import PointwiseConv
from nmfseg.mixers import create_mixer, list_mixers, temporarily_registered_mixer
from nmfseg.mixers.base import ProjectedMixer
from nmfseg.models import (
    Factorizer,
    ModelConfig,
    UNet,
    create_model,
    list_models,
    load_model,
    model_info,
    temporarily_registered_model,
)
from nmfseg.models.checkpoint import read_checkpoint, upgrade_checkpoint
from nmfseg.routes import Route, use_routes

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "legacy_0.1.0_swin_factorizer.pt"


class DepthwiseMixer(ProjectedMixer):
    """A throw-away token mixer: a depthwise 3×3×3 convolution between the projections."""

    def __init__(self, channels: int, spatial_dims: int = 3, dropout: float = 0.0) -> None:
        super().__init__(dropout)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.in_proj = PointwiseConv(channels, channels, bias=False)
        self.conv = conv(channels, channels, 3, padding=1, groups=channels)
        self.out_proj = PointwiseConv(channels, channels)

    def mix(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(z)


def test_presets_are_data_carried_by_the_model():
    info = model_info("global_factorizer_brats")
    assert info.builder is Factorizer and info.kwargs["matricize"] == "global"
    assert info.dataset == "BraTS" and info.patch_size == (128, 128, 128)
    net = create_model("global_factorizer_brats", channels=[8, 16, 32, 64, 128], rank=2)
    assert net.model_config.name == "global_factorizer_brats"
    assert net.model_config.kwargs["rank"] == 2 and net.model_config.kwargs["head_dim"] == 8
    assert info.kwargs["channels"] == [32, 64, 128, 256, 512]  # the preset is not changed


def test_a_new_mixer_is_one_registration_and_a_preset(tmp_path):
    with (
        temporarily_registered_mixer("depthwise", DepthwiseMixer),
        temporarily_registered_model(
            ModelConfig(
                "depthwise_unet",
                UNet,
                dict(in_channels=2, out_channels=1, channels=[8, 16, 32, 64],
                     block_args={"mixer": "depthwise", "mlp_ratio": 2.0}),
            )
        ),
    ):  # fmt: skip
        assert "depthwise" in list_mixers() and "depthwise_unet" in list_models()
        torch.manual_seed(0)
        net = create_model("depthwise_unet", block_args={"mlp_ratio": 1.0}).double()
        assert net.model_config.kwargs["block_args"] == {"mixer": "depthwise", "mlp_ratio": 1.0}
        x = torch.randn(1, 2, 9, 12, 10, dtype=torch.float64)
        outs = net.train()(x)
        assert [tuple(o.shape[2:]) for o in outs] == [(9, 12, 10), (5, 6, 5), (3, 3, 3)]
        grads = []
        for route in (Route.CPU_FUSED, Route.PLAIN):  # the block fuses any ProjectedMixer
            net.zero_grad()
            with use_routes(net, {route}):
                sum(o.square().sum() for o in net(x)).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b)
        torch.save(
            {"model_name": "depthwise_unet", "model_kwargs": net.model_config.kwargs,
             "model": net.float().state_dict(), "config": {}},
            tmp_path / "checkpoint_final.pt",
        )  # fmt: skip
        loaded, _ = load_model(tmp_path)
        torch.testing.assert_close(loaded(x.float()), net.eval()(x.float()))
    assert "depthwise" not in list_mixers() and "depthwise_unet" not in list_models()


def test_unknown_names_list_the_registered_ones():
    listed = ", ".join(list_mixers())
    with pytest.raises(ConfigError, match=rf"unknown mixer 'attn'; registered mixers: {listed}$"):
        create_mixer("attn", 8)
    with pytest.raises(ConfigError, match=r"unknown block 'nosuch'; registered blocks: .*mixer"):
        create_block("nosuch", 8)
    with pytest.raises(ConfigError, match="unknown mixer"):
        UNet(3, 1, 2, channels=(8, 16, 32, 64), block_args={"mixer": "attn"})
    with (
        pytest.raises(ValueError, match="already registered"),
        temporarily_registered_block("mixer", lambda c, **kw: nn.Identity()),
    ):
        pass
    assert "mixer" in list_blocks()


def test_mlp_only_block_and_no_mixer_norm():
    block = create_block("mixer", 8, mixer="none")
    assert block.mixer is None and block.norm1 is None
    x = torch.randn(1, 8, 3, 4, 5)
    torch.testing.assert_close(block(x), x + block.mlp(block.norm2(x)))


def test_top_level_api_builds_and_loads(tmp_path):
    torch.manual_seed(0)
    net = nmfseg.create_model("swin_factorizer_isles", channels=[8, 16, 32, 64, 128])
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    torch.manual_seed(1)
    again = nmfseg.create_model(
        "swin_factorizer_isles",
        channels=[8, 16, 32, 64, 128],
        checkpoint_path=tmp_path / "weights.pt",
    )
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(DataError, match=r"weights\.pt: weights do not fit network"):
        nmfseg.create_model("swin_factorizer_isles", checkpoint_path=tmp_path / "weights.pt")


def test_a_checkpoint_of_nmfseg_0_1_loads_and_predicts_as_it_did():
    """The file was written by nmfseg 0.1.0's trainer (matricize window as ``patch_size``,
    ``deep_supervision=2`` heads, mixer weights under ``block.nmf``); its output on a fixed
    input was recorded by 0.1.0 too."""
    raw = torch.load(LEGACY, weights_only=True)
    assert "patch_size" in raw["model_kwargs"] and "checkpoint_format" not in raw
    ckpt = read_checkpoint(LEGACY)
    assert ckpt["model_kwargs"]["window_size"] == 4 and "patch_size" not in ckpt["model_kwargs"]
    assert ckpt["model_kwargs"]["deep_supervision"] is True
    assert ckpt["model_kwargs"]["deep_supr_num"] == 1
    assert ckpt["config"]["model"]["kwargs"] == ckpt["model_kwargs"]
    assert not any(".block.nmf." in k for k in ckpt["model"])
    model, config = load_model(LEGACY)
    io = torch.load(DATA / "legacy_0.1.0_swin_factorizer_io.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], rtol=1e-5, atol=1e-6)
    assert config["patch_size"] == [16, 16, 16]  # the training patch keeps its name
    assert upgrade_checkpoint(ckpt) == ckpt  # upgrading is idempotent
