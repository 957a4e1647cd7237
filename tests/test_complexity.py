"""Parameter and FLOP counts against the paper (Tables 1–2) and an independent counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from nmfseg.cli import app
from nmfseg.models import create_model, list_models, model_info
from nmfseg.models.complexity import count_flops, count_params, model_complexity
from nmfseg.nmf import nmf_flops

PAPER = {
    # name: (#params, GFLOPs) from Table 1 (BraTS, 1×4×128³) and Table 2 (ISLES, 1×2×64³)
    "global_factorizer_brats": (5.9e6, 170.0),
    "local_factorizer_brats": (5.9e6, 170.0),
    "swin_factorizer_brats": (5.9e6, 174.2),
    "global_factorizer_isles": (7.4e6, 28.5),
    "local_factorizer_isles": (7.4e6, 28.5),
    "swin_factorizer_isles": (7.4e6, 29.1),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_presets_reproduce_the_paper(name):
    params, gflops = PAPER[name]
    c = model_complexity(name)
    assert c.input_shape == ((1, 4, 128, 128, 128) if "brats" in name else (1, 2, 64, 64, 64))
    assert abs(c.params - params) / params < 0.01
    assert abs(c.flops / 1e9 - gflops) / gflops < 0.03
    assert c.paper_params == params and c.paper_gflops == gflops
    # the exact counts follow from the architecture (see the paper's §3.2–3.4)
    assert c.params == (5_855_241 if "brats" in name else 7_371_523)


def test_swin_costs_more_than_local_by_its_second_view():
    local = model_complexity("local_factorizer_brats")
    swin = model_complexity("swin_factorizer_brats")
    assert swin.breakdown["matmul"] == local.breakdown["matmul"]
    assert swin.breakdown["nmf"] == 2 * local.breakdown["nmf"]


@pytest.mark.parametrize("name", ["swin_factorizer_isles", "segresnet_brats"])
def test_conv_flops_agree_with_torch_flop_counter(name):
    """With the NMF layers off, everything FlopCounterMode sees is a conv or a matmul."""
    overrides = dict(nmf=False) if name != "segresnet_brats" else {}
    with torch.device("meta"):
        model = create_model(name, **overrides).eval()
    shape = (1, model.in_channels, 32, 48, 40)
    ours = count_flops(model, shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(shape, device="meta"))
    assert ours["matmul"] == counter.get_total_flops()
    assert ours["nmf"] == 0


def test_nmf_flops_counts_algorithm_2():
    # rank 1, T = 5, one 8 × 512 matrix: per iteration 4MN + 4(M + N), plus 2MN
    assert nmf_flops(1, 8, 512, 1, 5) == 5 * (4 * 8 * 512 + 4 * 520) + 2 * 8 * 512
    assert nmf_flops(3, 4, 10, 2, 1) == 3 * ((4 * 4 * 10 * 2 + 4 * 14 * 4) + 2 * 4 * 10 * 2)
    with torch.device("meta"):
        model = create_model("global_factorizer_isles")
    ours = count_flops(model, (1, 2, 64, 64, 64))
    model.set_nmf(iters=2)
    fewer = count_flops(model, (1, 2, 64, 64, 64))
    assert fewer["nmf"] < ours["nmf"] and fewer["matmul"] == ours["matmul"]
    model.set_nmf(enabled=[])
    assert count_flops(model, (1, 2, 64, 64, 64))["nmf"] == 0


def test_count_params_matches_the_module_and_cpu_models_are_counted_on_meta():
    model = create_model("local_factorizer_isles", channels=(8, 16, 32, 64, 128))
    assert count_params(model) == sum(p.numel() for p in model.state_dict().values())
    on_cpu = count_flops(model, (1, 2, 512, 512, 512))  # instant: counted on the meta device
    with torch.device("meta"):
        on_meta = count_flops(
            create_model("local_factorizer_isles", channels=(8, 16, 32, 64, 128)),
            (1, 2, 512, 512, 512),
        )
    assert on_cpu == on_meta
    assert next(model.parameters()).device.type == "cpu" and model.training


def test_cli_prints_ours_beside_the_paper():
    result = CliRunner().invoke(app, ["complexity", "--model", "swin_factorizer_isles"])
    assert result.exit_code == 0, result.output
    assert "2 x multiply-adds" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("swin_"))
    assert "7.37M" in row and "7.4M" in row and "29.1" in row and "1x2x64x64x64" in row


@pytest.mark.slow
def test_cli_input_size_and_all_models():
    result = CliRunner().invoke(
        app, ["complexity", "-m", "global_factorizer_brats", "--input-size", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "1x4x64x64x64" in result.output
    result = CliRunner().invoke(app, ["complexity", "--input-size", "96x128x64"])
    assert result.exit_code == 0, result.output
    first_words = {line.split()[0] for line in result.output.splitlines()[2:] if line.strip()}
    in_3d = {n for n in list_models() if model_info(n).spatial_dims == 3}
    assert first_words == in_3d  # one row each (the 3D networks), the name apart from the input
    args = ["complexity", "-m", "swin_factorizer_2d", "--input-size", "64"]  # a square
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1x4x64x64 " in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "unet"], "unknown model 'unet'"),
        (["--input-size", "12,a"], "--input-size '12,a'"),
        (["-m", "swin_factorizer_brats", "--input-size", "64,64"], "should be 3 positive ints"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    result = CliRunner().invoke(app, ["complexity", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_ablation_presets_leave_out_exactly_their_part():
    """Tables 3-4: the MLP-only, NMF-only and no-position-embedding Factorizers."""
    full = model_complexity("swin_factorizer_brats")
    no_nmf = model_complexity("factorizer_brats_no_nmf")
    no_mlp = model_complexity("swin_factorizer_brats_no_mlp")
    no_pos = model_complexity("swin_factorizer_brats_no_pos")
    assert (no_nmf.params, no_mlp.params, no_pos.params) == (4_978_377, 4_102_985, 5_593_097)
    assert full.params - no_pos.params == 512 * 8**3  # the bridge embedding
    assert no_nmf.breakdown["nmf"] == 0 and no_mlp.breakdown["nmf"] == full.breakdown["nmf"]
    assert no_pos.flops == full.flops - 512 * 8**3  # one addition per bridge element less
    assert no_nmf.paper_gflops is None and no_mlp.input_shape == (1, 4, 128, 128, 128)
