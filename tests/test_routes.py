"""The execution routes (:mod:`nmfseg.routes`): one equivalence test, parametrized over routes ×
operations. Each row runs one operation on its route and on the plain route (module by
module) and asserts the same values and gradients: bit for bit where the route promises it,
to float64 round-off where the current code computes in float64."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from helpers import MATRICIZE_SHAPES, preset_size, small_model
from nmfseg.export.traceable import export_form
from nmfseg.layers import LayerNorm, PointwiseConv, fused, fused_kernels
from nmfseg.layers.fused import project_add_dropout
from nmfseg.layers.mlp import MLP, norm_mlp_residual
from nmfseg.layers.norm import layer_norm_pointwise
from nmfseg.mixers.nmf import nmf_layers
from nmfseg.models import UNet, list_models
from nmfseg.models.nnformer import NNFormer
from nmfseg.models.unet import _DecoderStage
from nmfseg.nmf import build_matricize, matricized_rank1, nmf, nmf_reconstruct, recompute
from nmfseg.routes import Route, set_routes, use_routes

F64 = torch.float64
EXACT: dict[str, float] | None = None  # torch.equal
CLOSE: dict[str, float] = {}  # torch.testing.assert_close's defaults
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _rand(*shape: int, seed: int = 0) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _values_and_grads(y: Tensor | list[Tensor], inputs: list[Tensor]) -> list[Tensor]:
    """``y`` and the gradients of a fixed weighting of it with respect to ``inputs``."""
    outs = y if isinstance(y, list) else [y]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, inputs))


def _network_step(net: nn.Module, x: Tensor, route: Route) -> list[Tensor]:
    """A network's training outputs and its parameters' gradients, on ``route`` or plain."""
    with use_routes(net, set(Route) if route is not Route.PLAIN else {Route.PLAIN, Route.RANK1}):
        outs = net(x)
        return _values_and_grads(outs, list(net.parameters()))


# --- cpu_fused: the chunked CPU kernels --------------------------------------------------


def _layer_norm_pointwise(route: Route) -> list[Tensor]:
    torch.manual_seed(0)
    norm, conv = LayerNorm(6).double(), PointwiseConv(6, 5).double()
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 5, 4, 3, dtype=F64, requires_grad=True)
    y = layer_norm_pointwise(x, norm, conv) if route is Route.CPU_FUSED else conv(norm(x))
    return _values_and_grads(y, [x, *norm.parameters(), *conv.parameters()])


def _mlp_subblock(route: Route) -> list[Tensor]:
    torch.manual_seed(0)
    norm, mlp = LayerNorm(6).double(), MLP(6).double()
    x = torch.randn(1, 6, 7, 5, 3, dtype=F64, requires_grad=True)
    y = norm_mlp_residual(x, norm, mlp) if route is Route.CPU_FUSED else x + mlp(norm(x))
    return _values_and_grads(y, [x, *norm.parameters(), *mlp.parameters()])


def _project_add_dropout(route: Route) -> list[Tensor]:
    torch.manual_seed(0)
    conv = PointwiseConv(4, 6).double()
    x = torch.randn(2, 6, 5, 4, 3, dtype=F64, requires_grad=True)
    z = torch.randn(2, 4, 5, 4, 3, dtype=F64, requires_grad=True)
    y = project_add_dropout(x, z, conv, 0.0) if route is Route.CPU_FUSED else x + conv(z)
    return _values_and_grads(y, [x, z, *conv.parameters()])


def _decoder_projection(route: Route) -> list[Tensor]:
    torch.manual_seed(0)
    stage = _DecoderStage(nn.Identity(), 6, 0.0, nn.Identity()).double()
    up = torch.randn(1, 6, 5, 4, 7, dtype=F64, requires_grad=True)
    skip = torch.randn(1, 6, 5, 4, 7, dtype=F64, requires_grad=True)
    with use_routes(stage, {route}):
        y = stage(up, skip)
    return _values_and_grads(y, [up, skip, *stage.parameters()])


def _swin_factorizer_train(route: Route) -> list[Tensor]:
    """Every level in several chunks (from test_models)."""
    model = small_model("swin_factorizer_isles", dropout=0.0).double().train()
    with _patched(fused, "CHUNK_ELEMENTS", 1000):
        return _network_step(model, torch.randn(1, 2, 18, 16, 20, dtype=F64), route)


def _nnformer_train(route: Route) -> list[Tensor]:
    torch.manual_seed(0)
    model = (
        NNFormer(in_channels=4, out_channels=3, feature_size=12, num_heads=(1, 2, 4, 8))
        .double()
        .train()
    )
    return _network_step(model, torch.randn(1, 4, 17, 20, 16, dtype=F64), route)


def _favor_unet(spatial_dims: int, size: tuple[int, ...]) -> Callable[[Route], list[Tensor]]:
    def run(route: Route) -> list[Tensor]:
        torch.manual_seed(0)
        net = UNet(
            spatial_dims, in_channels=2, out_channels=1, channels=(8, 16, 32, 64),
            block_args={"mixer": "favor", "mixer_args": {"head_dim": 4}}, pos_embed_grid=2,
        ).double().train()  # fmt: skip
        return _network_step(net, torch.randn(1, 2, *size, dtype=F64), route)

    return run


def _transbts_eval(route: Route) -> list[Tensor]:
    model = small_model("transbts_brats", num_layers=2).eval()
    with torch.no_grad(), use_routes(model, {route, Route.RANK1}):
        torch.nn.init.normal_(model.pos_embed.pos)
        return [model(torch.randn(1, 4, 16, 24, 16))]


# --- recompute: the one-node Swin and Local rank-1 NMF -------------------------------------


def _matricized_rank1(kind, shape, iters, grad_iters, pieces) -> Callable[[Route], list[Tensor]]:
    """Saves z, recomputes the matrices in backward, works on pieces of heads or slabs of
    windows, against relu -> matricize -> NMF -> dematricize built from the parts."""

    def run(route: Route) -> list[Tensor]:
        torch.manual_seed(0)
        dims = len(shape) - 2
        mat = build_matricize(kind, head_dim=4, window_size=(4,) * dims, spatial_dims=dims)
        g = mat.geometry(shape)
        head = g.batch_size * g.num_windows * g.head_dim * g.window_numel * 8
        piece = {"two heads": 2 * head, "half a head": head // 2, "one window row": 1}
        z = torch.randn(*shape, dtype=F64)
        z[0, 0] = -1.0  # a dead channel: ReLU zeros a whole row of some matrices
        z.requires_grad_()
        with _patched(recompute, "_PIECE_BYTES", piece.get(pieces, recompute._PIECE_BYTES)):
            if route is Route.RECOMPUTE:
                y = matricized_rank1(z, g, iters, grad_iters)
            else:
                y = mat.inverse(nmf_reconstruct(torch.relu(mat(z)), iters=iters,
                                                grad_iters=grad_iters), g)  # fmt: skip
        out = _values_and_grads(y, [z])
        assert out[1].abs().sum() > 0
        return out

    return run


def _factorizer_inference(name: str) -> Callable[[Route], list[Tensor]]:
    """Without autograd the plain NMF layers apply their ReLU before matricize (once per
    voxel), with it after (once per view), and the one-node layers in both modes; within a
    route inference and autograd agree bit for bit (from test_models)."""

    def run(route: Route) -> list[Tensor]:
        torch.manual_seed(0)
        model = small_model(name).eval()
        x = torch.randn(1, model.in_channels, *preset_size(name, (19, 24, 21)))
        for layer in nmf_layers(model):
            set_routes(layer, {route, Route.RANK1})
        with _patched(recompute, "_PIECE_BYTES", 2000):  # several pieces at every level
            with torch.inference_mode():
                inference = model(x)
            with torch.enable_grad():
                autograd = model(x).detach()
        assert torch.equal(inference, autograd)
        return [inference.clone()]

    return run


# --- rank1: the exact rank-1 NMF in Gram space against the loop ----------------------------


def _rank1(solver: str, grad_iters: int | None, output: str) -> Callable[[Route], list[Tensor]]:
    def run(route: Route) -> list[Tensor]:
        fn = nmf if output == "factors" else nmf_reconstruct
        x = _rand(2, 3, 8, 64, seed=9).requires_grad_()
        y = fn(x, 1, 5, solver, grad_iters=grad_iters, fast=route is Route.RANK1)
        out = _values_and_grads(list(y) if isinstance(y, tuple) else y, [x])
        assert out[-1].abs().max() > 1e-3
        return out

    return run


def _rank1_batched_init(solver: str) -> Callable[[Route], list[Tensor]]:
    def run(route: Route) -> list[Tensor]:
        x = _rand(3, 5, 20, seed=10).requires_grad_()
        u0 = (0.2 + _rand(3, 5, 1, seed=11)).requires_grad_()
        v0 = (0.2 + _rand(3, 20, 1, seed=12)).requires_grad_()
        y = nmf_reconstruct(x, 1, 4, solver, init=(u0, v0), fast=route is Route.RANK1)
        return [y.detach(), *torch.autograd.grad((y * _rand(3, 5, 20, seed=13)).sum(), (x, v0))]

    return run


def _rank1_zero_init(route: Route) -> list[Tensor]:
    """MU keeps a zero entry at zero forever; the power iteration would not, so the fast path
    is not taken."""
    u0, v0 = _rand(4, 1, seed=15) + 0.1, _rand(12, 1, seed=16) + 0.1
    v0[3] = 0.0
    u, v = nmf(_rand(4, 12, seed=14), 1, 5, "mu", init=(u0, v0), fast=route is Route.RANK1)
    assert v[3, 0] == 0
    return [u, v]


def _rank1_zero_rows(route: Route) -> list[Tensor]:
    """At a zero row HALS sits at the kink of max(0, .); through the ReLU that makes the
    matrix nonnegative (as in the network) both paths give the same gradient."""
    z = _rand(2, 6, 30, seed=17) - 0.3
    z[0, 2] = -1.0  # a whole row killed by the ReLU
    z.requires_grad_()
    y = nmf_reconstruct(torch.relu(z), fast=route is Route.RANK1)
    return list(torch.autograd.grad((y * _rand(2, 6, 30, seed=18)).sum(), z))


# --- traced: the export form against the eager network -------------------------------------


def _export_form(kind: str) -> Callable[[Route], list[Tensor]]:
    def run(route: Route) -> list[Tensor]:
        net = small_model(f"{kind}_factorizer_isles").eval()
        form = export_form(net) if route is Route.TRACED else net
        torch.manual_seed(1)
        sizes = [(1, 16, 16, 16), (2, 12, 9, 20), (1, 5, 7, 3), (1, 32, 24, 8), (1, 48, 32, 40)]
        with use_routes(net, {Route.PLAIN, Route.RANK1}), torch.no_grad():
            return [form(torch.randn(batch, 2, *spatial)) for batch, *spatial in sizes]

    return run


ROWS = [
    pytest.param(Route.CPU_FUSED, _layer_norm_pointwise, CLOSE, id="cpu_fused-layernorm_pointwise"),
    pytest.param(Route.CPU_FUSED, _mlp_subblock, CLOSE, id="cpu_fused-mlp_subblock"),
    pytest.param(Route.CPU_FUSED, _project_add_dropout, CLOSE, id="cpu_fused-project_add_dropout"),
    pytest.param(Route.CPU_FUSED, _decoder_projection, CLOSE, id="cpu_fused-decoder_projection"),
    pytest.param(Route.CPU_FUSED, _swin_factorizer_train, CLOSE, id="cpu_fused-swin_factorizer"),
    pytest.param(Route.CPU_FUSED, _nnformer_train, CLOSE, id="cpu_fused-nnformer"),
    pytest.param(Route.CPU_FUSED, _favor_unet(2, (19, 13)), CLOSE, id="cpu_fused-favor_unet_2d"),
    pytest.param(Route.CPU_FUSED, _favor_unet(3, (11, 9, 13)), CLOSE, id="cpu_fused-favor_unet_3d"),
    pytest.param(
        Route.CPU_FUSED, _transbts_eval, {"rtol": 1e-4, "atol": 1e-5}, id="cpu_fused-transbts"
    ),
    *(
        pytest.param(
            Route.RECOMPUTE,
            _matricized_rank1(kind, shape, iters, grad_iters, pieces),
            CLOSE,
            id=f"recompute-{kind}-{pieces}-{iters}-{grad_iters}-{shape}",
        )
        for kind, pieces, (iters, grad_iters), shape in itertools.product(
            ["swin", "local"],
            ["default", "two heads", "half a head", "one window row"],
            [(1, None), (4, None), (4, 2)],
            MATRICIZE_SHAPES,
        )
    ),
    *(
        pytest.param(Route.RECOMPUTE, _factorizer_inference(name), CLOSE, id=f"recompute-{name}")
        for name in list_models("*_factorizer_*")
    ),
    *(
        pytest.param(
            Route.RANK1,
            _rank1(solver, grad_iters, output),
            TIGHT,
            id=f"rank1-{solver}-{grad_iters}-{output}",
        )
        for solver, grad_iters, output in itertools.product(
            ["hals", "mu"], [None, 1, 3, 9], ["factors", "reconstruction"]
        )
    ),
    pytest.param(Route.RANK1, _rank1_batched_init("hals"), TIGHT, id="rank1-init-hals"),
    pytest.param(Route.RANK1, _rank1_batched_init("mu"), TIGHT, id="rank1-init-mu"),
    pytest.param(Route.RANK1, _rank1_zero_init, EXACT, id="rank1-mu-zero-init-loop"),
    pytest.param(Route.RANK1, _rank1_zero_rows, TIGHT, id="rank1-zero-rows"),
    *(
        pytest.param(Route.TRACED, _export_form(kind), CLOSE, id=f"traced-{kind}_factorizer")
        for kind in ("swin", "local", "global")
    ),
]


@pytest.mark.parametrize(("route", "run", "tolerance"), ROWS)
def test_a_route_computes_what_the_plain_route_computes(route, run, tolerance):
    got, plain = run(route), run(Route.PLAIN)
    assert len(got) == len(plain)
    for a, b in zip(got, plain, strict=True):
        if tolerance is EXACT:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, **tolerance)


def test_the_switch_and_its_deprecated_alias():
    net = small_model("swin_factorizer_isles")
    defaults = {id(m): m.routes for m in net.modules() if hasattr(m, "routes")}
    with use_routes(net, {"plain"}):
        assert all(m.routes == frozenset() for m in net.modules() if hasattr(m, "routes"))
    with fused_kernels(net, False):  # leaves rank1 on
        assert {r for m in net.modules() if hasattr(m, "routes") for r in m.routes} == {Route.RANK1}
    assert {id(m): m.routes for m in net.modules() if hasattr(m, "routes")} == defaults


def test_the_old_fused_flag_still_switches_the_fused_routes():
    """``module.fused = False`` (nmfseg 0.1) switches the fused routes off, with a warning."""
    from nmfseg.blocks import MixerBlock
    from nmfseg.routes import Route

    block = MixerBlock(16, mixer="nmf", mixer_args={"head_dim": 8, "window_size": 4})
    assert block.fused and block.mixer.fused
    with pytest.warns(DeprecationWarning, match="use nmfseg.routes.use_routes"):
        block.fused = False
    assert Route.CPU_FUSED not in block.routes and not block.fused
    with pytest.warns(DeprecationWarning):
        block.fused = True
    assert block.routes == type(block).ROUTES
