"""The small layers: channel LayerNorm, pointwise conv, dropout, and the fused CPU kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nmfseg.layers import LayerNorm, PointwiseConv


def test_layers_match_their_references():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 4, 3)
    conv = nn.Conv3d(6, 5, kernel_size=1)
    pw = PointwiseConv(6, 5)
    pw.weight.data.copy_(conv.weight.view(5, 6))
    pw.bias.data.copy_(conv.bias)
    torch.testing.assert_close(pw(x), conv(x))
    xcl = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(pw(xcl), conv(x))
    norm = LayerNorm(6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 4, 1), (6,), norm.weight, norm.bias)
    torch.testing.assert_close(norm(x), ref.permute(0, 4, 1, 2, 3))


def test_fused_cpu_kernels_have_correct_gradients():
    from nmfseg.layers import fused

    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, requires_grad=True)
    x, g, b = torch.randn(2, 5, 7, **kw), torch.randn(5, **kw), torch.randn(5, **kw)
    w, bias = torch.randn(3, 5, **kw), torch.randn(3, **kw)
    assert torch.autograd.gradcheck(
        lambda *a: fused.LayerNormPointwiseFn.apply(*a, 1e-5), (x, g, b, w, bias)
    )
    assert torch.autograd.gradcheck(
        lambda *a: fused.LayerNormPointwiseFn.apply(*a, None, 1e-5), (x, g, b, w)
    )
    w1, b1 = torch.randn(8, 5, **kw), torch.randn(8, **kw)
    w2, b2 = torch.randn(5, 8, **kw), torch.randn(5, **kw)

    def mlp(*args, residual=True):
        torch.manual_seed(3)  # the same dropout masks in every evaluation
        return fused.MLPFn.apply(*args, 1e-5, 0.4, 0.3, residual)

    assert torch.autograd.gradcheck(mlp, (x, g, b, w1, b1, w2, b2))
    assert torch.autograd.gradcheck(lambda *a: mlp(*a, residual=False), (x, g, b, w1, b1, w2, b2))
    z, w3 = torch.randn(2, 5, 7, **kw), torch.randn(5, 5, **kw)

    def project(*args):
        torch.manual_seed(4)
        return fused.ProjectAddDropoutFn.apply(*args, 0.3)

    assert torch.autograd.gradcheck(project, (x, z, w3, g))
    assert torch.autograd.gradcheck(project, (x, z, w3, None))


def test_dropout_masks_at_the_requested_rate_and_scale(monkeypatch):
    import nmfseg.layers.dropout as module
    from nmfseg.layers import Dropout

    monkeypatch.setattr(module, "_CHUNK", 7777)  # masks drawn and replayed in many chunks
    torch.manual_seed(0)
    drop = Dropout(0.1)
    x = torch.ones(200, 1000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
    # in place on a fresh tensor: backward replays the same mask
    base = torch.randn(300, 100, requires_grad=True)
    out = Dropout(0.3, inplace=True).train()(base * 2.0)
    dy = torch.randn_like(out)
    out.backward(dy)
    kept = out != 0
    torch.testing.assert_close(base.grad, torch.where(kept, dy * 2.0 / 0.7, 0.0))
