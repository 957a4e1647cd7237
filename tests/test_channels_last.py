"""The channels-last export form of the Factorizer block (issue #22): the same function as the
block it replaces, on every view, size and NMF setting it covers, and not used where it does
not cover a block."""

from __future__ import annotations

import pytest
import torch

from helpers import small_model
from nmfseg.blocks import MixerBlock
from nmfseg.export.channels_last import ChannelsLastBlock, covers, from_windows, roll, to_windows
from nmfseg.export.traceable import export_form
from nmfseg.mixers.nmf import set_nmf


def _block(kind: str, spatial_dims: int, **nmf) -> MixerBlock:
    torch.manual_seed(0)
    args = {"head_dim": 4, "window_size": (4, 2, 4)[:spatial_dims], "matricize": kind, **nmf}
    return MixerBlock(16, spatial_dims=spatial_dims, mixer="nmf", mixer_args=args).eval()


SHAPES = [(1, 16, 6, 9, 8), (2, 16, 8, 4, 8), (1, 16, 3, 1, 5), (1, 16, 5, 7)]


@pytest.mark.parametrize("kind", ["swin", "local", "global"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iters", [1, 2, 4])
def test_block_equals_the_plain_block(kind, shape, iters):
    block = _block(kind, len(shape) - 2, iters=iters)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ChannelsLastBlock(block)(x), block(x), rtol=1e-5, atol=1e-5)


def test_an_nmf_layer_switched_off_and_blocks_without_a_subblock():
    x = torch.randn(1, 16, 5, 6, 7)
    block = _block("swin", 3)
    block.mixer.enabled = False
    no_mlp = MixerBlock(16, mixer="nmf", mlp=False, mixer_args={"head_dim": 4, "window_size": 4})
    no_mixer = MixerBlock(16, mixer="none")
    with torch.no_grad():
        for b in (block, no_mlp.eval(), no_mixer.eval()):
            torch.testing.assert_close(ChannelsLastBlock(b)(x), b(x), rtol=1e-5, atol=1e-5)


def test_blocks_it_does_not_cover_keep_their_forward():
    assert not covers(_block("swin", 3, rank=2))
    assert not covers(_block("swin", 3, iters=0))  # the loop, not the rank-1 path
    assert not covers(MixerBlock(16, mixer="favor"))
    for mixer in ("greedy_nmf", "local_global_nmf", "semi_nmf"):  # Wrapped NMF subclasses too
        assert not covers(MixerBlock(16, mixer=mixer, mixer_args={"head_dim": 4, "window_size": 4}))
    with pytest.raises(TypeError, match="does not cover"):
        ChannelsLastBlock(_block("local", 3, rank=2))
    net = small_model("swin_factorizer_isles").eval()
    set_nmf(net, rank=2)
    form = export_form(net)
    assert not any(isinstance(m, ChannelsLastBlock) for m in form.modules())
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(form(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [(2, 3, 4), (1, 1, 1), (4, 2, 8)])
def test_windows_are_matricize_s_windows_and_fold_back(window):
    x = torch.randn(2, *(w * g for w, g in zip(window, (2, 3, 1), strict=True)), 5)
    w = to_windows(x, window)
    b, d, h, ww, c = x.shape
    gd, gh, gw = d // window[0], h // window[1], ww // window[2]
    ref = (
        x.reshape(b, gd, window[0], gh, window[1], gw, window[2], c)
        .permute(0, 1, 3, 5, 2, 4, 6, 7)
        .reshape(-1, window[0] * window[1] * window[2], c)
    )
    assert torch.equal(w, ref)
    assert torch.equal(from_windows(w, tuple(x.shape), window), x)


@pytest.mark.parametrize(
    ("shape", "shifts", "dims"),
    [((2, 5, 7, 3), (2, 0, 1), (1, 2, 3)), ((1, 3, 4, 6, 5, 2), (-1, 7, 3), (2, 3, 4)),
     ((2, 3, 9, 4), (4, 2), (2, 3)), ((3, 8, 2), (5,), (1,))],
)  # fmt: skip
def test_roll_is_torch_roll(shape, shifts, dims):
    x = torch.randn(*shape)
    assert torch.equal(roll(x, list(shifts), list(dims)), torch.roll(x, shifts, dims))


def test_roll_refuses_axes_that_are_not_consecutive():
    with pytest.raises(ValueError, match="consecutive"):
        roll(torch.randn(2, 3, 4, 5), [1, 1], [1, 3])


def test_a_batch_of_one_traces_to_a_graph_of_its_input():
    ort = pytest.importorskip("onnxruntime")
    from nmfseg.export.onnx import network_to_onnx

    net = small_model("swin_factorizer_isles").eval()
    model, _ = network_to_onnx(net, torch.randn(1, 2, 16, 16, 16))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 2, 16, 24, 8)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), net(x), rtol=1e-4, atol=1e-4)
