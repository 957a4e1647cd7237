"""Semi-NMF and Convex-NMF (issue #24): the solvers against an independent float64 NumPy
transcription of Ding, Li & Jordan's (2010) updates, the objective, the sign invariants,
gradients (gradcheck, truncation, finiteness), degenerate inputs, and the mixers and presets
that use them."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from nmfseg.blocks import MixerBlock
from nmfseg.mixers import create_mixer
from nmfseg.models import create_model, list_models, model_info
from nmfseg.models.complexity import count_params
from nmfseg.nmf import default_init
from nmfseg.nmf.semi import (
    ConvexNMF,
    SemiNMF,
    convex_nmf,
    convex_nmf_reconstruct,
    semi_nmf,
    semi_nmf_reconstruct,
)
from nmfseg.routes import use_routes

TINY = np.finfo(np.float64).tiny
EPS = np.finfo(np.float64).eps


# --- An independent float64 reference, in Ding et al.'s notation (points as columns). ------


def np_pos(a: np.ndarray) -> np.ndarray:
    return (np.abs(a) + a) / 2


def np_neg(a: np.ndarray) -> np.ndarray:
    return (np.abs(a) - a) / 2


def np_mu(g: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``g * sqrt(num / den)`` with nmfseg's documented guards: ``tiny`` added to both
    (``0 / 0 = 1``), the ratio clipped to ``[eps², 1/eps²]``, the result floored at ``eps``
    times its column's largest."""
    ratio = (num + TINY) / (den + TINY)
    out = g * np.sqrt(np.clip(ratio, EPS**2, EPS**-2))
    return np.maximum(out, EPS * out.max(axis=0, keepdims=True))


def np_semi(x: np.ndarray, g: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Semi-NMF: ``F = X G (GᵀG)⁻¹``, then the update of ``G`` (Ding et al., eq. 7–8)."""

    def least_squares(g):
        return np.linalg.solve(g.T @ g, (x @ g).T).T

    for _ in range(iters):
        f = least_squares(g)
        xtf, ftf = x.T @ f, f.T @ f
        g = np_mu(g, np_pos(xtf) + g @ np_neg(ftf), np_neg(xtf) + g @ np_pos(ftf))
    return least_squares(g), g


def np_convex(x: np.ndarray, w: np.ndarray, g: np.ndarray, iters: int):
    """Convex-NMF ``X ≈ X W Gᵀ`` of ``X = xᵀ`` (the channels as the points), ``G`` then
    ``W`` (Ding et al., eq. 19–20); returns ``(W, G, X W Gᵀ)ᵀ``."""
    data = x.T
    a = data.T @ data
    ap, an = np_pos(a), np_neg(a)
    for _ in range(iters):
        g = np_mu(g, ap @ w + g @ (w.T @ an @ w), an @ w + g @ (w.T @ ap @ w))
        w = np_mu(w, ap @ g + an @ w @ (g.T @ g), an @ g + ap @ w @ (g.T @ g))
    return w, g, (data @ w @ g.T).T


def _randn(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rand(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _convex_default_init(m: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    g0 = default_init(torch.zeros(m, 1, dtype=torch.float64), rank)[0].numpy()
    return g0 / g0.sum(axis=0), g0


# --- Agreement with the reference. --------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("iters", [0, 1, 7])
def test_semi_nmf_matches_numpy_reference_with_given_init(rank, iters):
    x = _randn(3, 6, 40, seed=1)
    g0 = 0.1 + _rand(3, 40, rank, seed=2)
    f, g = semi_nmf(x, rank, iters, init=g0)
    y = semi_nmf_reconstruct(x, rank, iters, init=g0)
    for i in range(3):
        f_ref, g_ref = np_semi(x[i].numpy(), g0[i].numpy(), iters)
        np.testing.assert_allclose(f[i].numpy(), f_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(g[i].numpy(), g_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(y[i].numpy(), f_ref @ g_ref.T, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("iters", [0, 1, 7])
def test_convex_nmf_matches_numpy_reference_with_given_init(rank, iters):
    x = _randn(3, 6, 40, seed=3)
    w0, g0 = 0.1 + _rand(3, 6, rank, seed=4), 0.1 + _rand(3, 6, rank, seed=5)
    w, g = convex_nmf(x, rank, iters, init=(w0, g0))
    y = convex_nmf_reconstruct(x, rank, iters, init=(w0, g0))
    for i in range(3):
        w_ref, g_ref, y_ref = np_convex(x[i].numpy(), w0[i].numpy(), g0[i].numpy(), iters)
        np.testing.assert_allclose(w[i].numpy(), w_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(g[i].numpy(), g_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(y[i].numpy(), y_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_default_init_matches_the_reference(rank):
    # Semi-NMF starts from NMF's v0; Convex-NMF from the Weyl values of the rows, W0 = G0 D⁻¹.
    x = _randn(8, 30, seed=6)
    f_ref, g_ref = np_semi(x.numpy(), default_init(x, rank)[1].numpy(), 5)
    f, g = semi_nmf(x, rank)
    np.testing.assert_allclose(f.numpy(), f_ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(g.numpy(), g_ref, rtol=1e-9, atol=1e-11)
    w_ref, g_ref, y_ref = np_convex(x.numpy(), *_convex_default_init(8, rank), 5)
    w, g = convex_nmf(x, rank)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(g.numpy(), g_ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(convex_nmf_reconstruct(x, rank).numpy(), y_ref, rtol=1e-9)


def test_the_guards_bind_and_the_reference_follows_them():
    # Rank 1: every voxel with xᵀf < 0 has a zero numerator, so the floor decides its g; the
    # agreement above is not only on inputs where the guards are idle.
    x = _randn(6, 40, seed=7)
    _, g = semi_nmf(x, 1, 3)
    floor = EPS * g.max().item()
    assert (g == floor).sum() > 5 and (g > floor).sum() > 5


# --- Properties of the iterations. ------------------------------------------------------


def _semi_error(x, rank, iters):
    f, g = semi_nmf(x, rank, iters)
    return torch.linalg.matrix_norm(x - f @ g.mT)


def _convex_error(x, rank, iters):
    return torch.linalg.matrix_norm(x - convex_nmf_reconstruct(x, rank, iters))


@pytest.mark.parametrize("error", [_semi_error, _convex_error], ids=["semi", "convex"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_objective_non_increasing(error, rank):
    x = _randn(4, 8, 60, seed=8)
    errors = [error(x, rank, t) for t in range(12)]
    for before, after in itertools.pairwise(errors):
        assert torch.all(after <= before * (1 + 1e-10) + 1e-12)
    assert torch.all(errors[-1] < errors[0] * 0.99)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_sign_invariants(rank):
    x = _randn(5, 8, 50, seed=9, dtype=torch.float32)
    f, g = semi_nmf(x, rank)
    assert g.min() >= 0 and f.min() < 0 < f.max()  # F mixed-sign, G nonnegative
    w, g = convex_nmf(x, rank)
    assert w.min() >= 0 and g.min() >= 0
    spatial = x.mT @ w  # Convex-NMF's spatial factor: mixed-sign combinations of channels
    assert spatial.min() < 0 < spatial.max()


def test_no_relu_needed_a_negated_input_is_reconstructed_negated():
    # Semi-NMF: -X = (-F) Gᵀ with the same G; the updates of G see (XᵀF) unchanged.
    # Convex-NMF: A = XXᵀ is unchanged, so W and G are, and the reconstruction is negated.
    x = _randn(3, 8, 40, seed=10)
    for reconstruct in (semi_nmf_reconstruct, convex_nmf_reconstruct):
        torch.testing.assert_close(reconstruct(-x, 2), -reconstruct(x, 2))


# --- Gradients. ---------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2])
def test_gradcheck(rank):
    x = _randn(2, 3, 7, seed=11).requires_grad_()
    assert gradcheck(lambda z: semi_nmf(z, rank, 3), (x,))
    assert gradcheck(lambda z: semi_nmf_reconstruct(z, rank, 3), (x,))
    assert gradcheck(lambda z: convex_nmf(z, rank, 3), (x,))
    assert gradcheck(lambda z: convex_nmf_reconstruct(z, rank, 3), (x,))


def test_gradcheck_with_respect_to_init():
    x = _randn(2, 3, 7, seed=12).requires_grad_()
    g0 = (0.1 + _rand(7, 2, seed=13)).requires_grad_()  # shared by the batch
    assert gradcheck(lambda z, g: semi_nmf_reconstruct(z, 2, 2, init=g), (x, g0))
    w0 = (0.1 + _rand(2, 3, 2, seed=14)).requires_grad_()
    h0 = (0.1 + _rand(2, 3, 2, seed=15)).requires_grad_()
    assert gradcheck(lambda z, w, g: convex_nmf_reconstruct(z, 2, 2, init=(w, g)), (x, w0, h0))


@pytest.mark.parametrize("kind", ["semi", "convex"])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("grad_iters", [1, 2])
def test_grad_iters_is_the_gradient_of_the_last_iterations(kind, rank, grad_iters):
    # As for NMF (test_nmf.py): the truncated gradient is the exact gradient of "the last k
    # iterations from the state after T - k iterations, held constant".
    iters = 4
    factorize, reconstruct = {
        "semi": (semi_nmf, semi_nmf_reconstruct),
        "convex": (convex_nmf, convex_nmf_reconstruct),
    }[kind]
    x = _randn(2, 4, 9, seed=16).requires_grad_()
    with torch.no_grad():
        state = factorize(x, rank, iters - grad_iters)
    init = state[1] if kind == "semi" else state

    def last_k(z):
        return reconstruct(z, rank, grad_iters, init=init)

    assert gradcheck(last_k, (x,))
    dy = _randn(2, 4, 9, seed=17)
    (expected,) = torch.autograd.grad((last_k(x) * dy).sum(), x)
    y = reconstruct(x, rank, iters, grad_iters=grad_iters)
    (got,) = torch.autograd.grad((y * dy).sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    (full,) = torch.autograd.grad((reconstruct(x, rank, iters) * dy).sum(), x)
    assert (full - expected).abs().max() > 1e-6  # truncation really changes the gradient
    y0 = reconstruct(x, rank, iters, grad_iters=0)
    assert not y0.requires_grad
    torch.testing.assert_close(y0, y.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("reconstruct", [semi_nmf_reconstruct, convex_nmf_reconstruct])
@pytest.mark.parametrize("rank", [1, 2, 4])
@pytest.mark.parametrize("iters", [5, 30])
def test_float32_gradients_stay_finite_over_many_iterations(reconstruct, rank, iters):
    # Entries that shrink and grow back: without the floor on the factors the gradient of
    # Semi-NMF overflows in float32 from about 20 iterations on.
    scale = 3 * _rand(16, 1, 1, seed=18, dtype=torch.float32)
    x = (_randn(16, 8, 256, seed=19, dtype=torch.float32) * scale).requires_grad_()
    y = reconstruct(x, rank, iters)
    (grad,) = torch.autograd.grad((y * _randn(*y.shape, seed=20, dtype=torch.float32)).sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()


# --- Degenerate inputs, dtypes, arguments. -----------------------------------------------


@pytest.mark.parametrize("reconstruct", [semi_nmf_reconstruct, convex_nmf_reconstruct])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_and_constant_matrices_give_no_nan(reconstruct, rank, dtype):
    x = _randn(4, 4, 10, seed=21, dtype=dtype)
    x[1] = 0.0
    x[2] = 3.0
    x[3] = -1e-3
    x.requires_grad_()
    y = reconstruct(x, rank, 5)
    assert torch.isfinite(y).all() and torch.all(y[1] == 0)
    torch.testing.assert_close(y[2], x[2].detach(), rtol=0.05, atol=0.05 * 3)
    torch.testing.assert_close(y[3], x[3].detach(), rtol=0.05, atol=0.05 * 1e-3)
    (grad,) = torch.autograd.grad((y * _randn(*y.shape, seed=22, dtype=dtype)).sum(), x)
    assert torch.isfinite(grad).all()
    # A zero matrix does not disturb its neighbours in the batch.
    rest = reconstruct(x.detach()[[0, 2, 3]], rank, 5)
    torch.testing.assert_close(y.detach()[[0, 2, 3]], rest, rtol=0, atol=0)


def test_convex_nmf_reconstructs_zero_columns_as_exactly_zero():
    # What zero-padded windows rely on: padding adds nothing to A = x xᵀ.
    x = _randn(4, 6, 20, seed=23)
    padded = torch.cat([x, torch.zeros(4, 6, 7, dtype=x.dtype)], dim=-1)
    y = convex_nmf_reconstruct(padded, 2)
    assert torch.all(y[..., 20:] == 0)
    torch.testing.assert_close(y[..., :20], convex_nmf_reconstruct(x, 2), rtol=1e-12, atol=0)


@pytest.mark.parametrize("layer", [SemiNMF(2), ConvexNMF(2)], ids=["semi", "convex"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(layer, dtype):
    x = _randn(4, 8, 64, seed=24, dtype=torch.float32).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and torch.equal(y, layer(x.float()).to(dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x.float())
    assert z.dtype == torch.float32 and torch.equal(z, layer(x.float()))


def test_modules_match_the_functions_and_are_mutable():
    x = _randn(3, 8, 50, seed=25)
    semi, convex = SemiNMF(), ConvexNMF()
    assert list(semi.parameters()) == [] and list(convex.buffers()) == []
    torch.testing.assert_close(semi(x), semi_nmf_reconstruct(x), rtol=0, atol=0)
    torch.testing.assert_close(convex(x), convex_nmf_reconstruct(x), rtol=0, atol=0)
    semi.rank, semi.iters, convex.rank = 2, 1, 3
    torch.testing.assert_close(semi(x), semi_nmf_reconstruct(x, 2, 1), rtol=0, atol=0)
    f, g = semi.factorize(x)
    torch.testing.assert_close(semi(x), f @ g.mT)
    w, g = convex.factorize(x)
    torch.testing.assert_close(convex(x), g @ (w.mT @ x))
    assert "rank=3" in repr(convex)


@pytest.mark.parametrize("fn", [semi_nmf, convex_nmf_reconstruct], ids=lambda f: f.__name__)
def test_invalid_arguments(fn):
    x = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match="rank should be a positive int"):
        fn(x, rank=0)
    with pytest.raises(ValueError, match="iters should be a non-negative int"):
        fn(x, iters=-1)
    with pytest.raises(ValueError, match="grad_iters"):
        fn(x, grad_iters=-1)
    with pytest.raises(ValueError, match=r"\(\.\.\., M, N\)"):
        fn(torch.rand(5))
    with pytest.raises(ValueError, match=r"rank=5 is above min\(M, N\) = 4"):
        fn(x, rank=5)
    with pytest.raises(ValueError, match="iters"):
        SemiNMF(iters=-2)


# --- The mixers. --------------------------------------------------------------------------

MIXERS = {"semi_nmf": semi_nmf_reconstruct, "convex_nmf": convex_nmf_reconstruct}
PRESETS = {"factorizer_brats_semi_nmf": "semi_nmf", "factorizer_brats_convex_nmf": "convex_nmf"}
# (input shape, matricize): 3D and 2D, padded along every dim, a stage smaller than a window
BLOCK_CASES = [
    ((2, 16, 5, 7, 9), "swin"),
    ((1, 16, 5, 7, 9), "local"),
    ((2, 16, 9, 14), "swin"),
    ((1, 16, 7, 5), "global"),
    ((1, 16, 3, 1, 2), "swin"),
]


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("kind", ["global", "local", "swin"])
def test_mix_is_the_reconstruction_of_the_matricized_input_without_relu(name, kind):
    mixer = create_mixer(name, 8, spatial_dims=3, matricize=kind, head_dim=4, window_size=4)
    z = _randn(1, 8, 5, 7, 9, seed=30, dtype=torch.float32)  # padded along every dim
    matrices = mixer.matricize(z)
    expected = mixer.matricize.inverse(MIXERS[name](matrices, 1, 5), z.shape)
    torch.testing.assert_close(mixer.mix(z), expected, rtol=0, atol=0)
    # No ReLU in front: both reconstructions are odd functions of their input.
    torch.testing.assert_close(mixer.mix(-z), -mixer.mix(z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize(("shape", "kind"), BLOCK_CASES)
def test_mixer_block_forward_backward_2d_3d_odd_sizes(name, shape, kind):
    torch.manual_seed(0)
    args = {"matricize": kind, "head_dim": 8, "window_size": 4, "rank": 2}
    if kind == "swin" and shape[2:] == (3, 1, 2):
        args["rank"] = 1  # a 3x1x2 stage is one window of 6 voxels
    block = MixerBlock(16, spatial_dims=len(shape) - 2, mixer=name, mixer_args=args)
    x = torch.randn(*shape, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with use_routes(block, {"plain"}):  # the plain modules, not the fused CPU kernels
        torch.testing.assert_close(block(x), y, rtol=1e-4, atol=1e-5)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert block.mixer.in_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_is_deterministic_given_a_seed(name):
    def build():
        torch.manual_seed(3)
        return create_mixer(name, 16, spatial_dims=3, head_dim=8, window_size=4, dropout=0.1)

    x = _randn(1, 16, 6, 6, 6, seed=31, dtype=torch.float32)
    a, b = build().eval(), build().eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), a(x))
    assert torch.equal(a.train().mix(x), a.eval().mix(x))  # no state, no randomness


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_settings_and_errors(name):
    mixer = create_mixer(name, 16, head_dim=8, window_size=4, rank=2, iters=3, grad_iters=1)
    assert (mixer.factorization.rank, mixer.factorization.iters) == (2, 3)
    assert mixer.factorization.grad_iters == 1 and mixer.max_rank == 8
    assert create_mixer(name, 16, head_dim=8, window_size=(2, 1, 2)).max_rank == 4
    with pytest.raises(ValueError, match=r"rank=5 is above 4: its matrices have head_dim=8"):
        create_mixer(name, 16, head_dim=8, window_size=(2, 1, 2), rank=5)
    with pytest.raises(ValueError, match="matricize should be one of"):
        create_mixer(name, 16, matricize="diagonal")
    with pytest.raises(ValueError, match=r"channels \(12\) should be a positive multiple"):
        create_mixer(name, 12, head_dim=8)
    with pytest.raises(ValueError, match="iters"):
        create_mixer(name, 16, iters=-1)


# --- The presets. -------------------------------------------------------------------------


def test_presets_are_the_swin_factorizer_with_the_mixer_swapped():
    assert set(PRESETS) <= set(list_models())
    assert not set(PRESETS) & set(list_models("*_factorizer_*"))  # those are Factorizers
    base = create_model("swin_factorizer_brats")
    for name, mixer in PRESETS.items():
        info = model_info(name)
        assert (info.dataset, info.in_channels, info.out_channels) == ("BraTS", 4, 3)
        net = create_model(name)
        assert count_params(net) == count_params(base) == 5855241
        mixers = [m for m in net.modules() if type(m).__name__.startswith("Wrapped")]
        assert len(mixers) == 9 and {m.kind for m in mixers} == {"swin"}
        assert all(type(m) is type(create_mixer(mixer, 8, head_dim=8)) for m in mixers)
        assert [tuple(p.shape) for p in net.parameters()] == [
            tuple(p.shape) for p in base.parameters()
        ]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_run_at_reduced_width(name):
    torch.manual_seed(0)
    net = create_model(name, channels=(8, 16, 32, 64, 128))
    x = torch.randn(1, 4, 19, 18, 17)
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == (1, 3, 19, 18, 17) and torch.isfinite(y).all()
    outs = net.train()(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(19, 18, 17), (10, 9, 9), (5, 5, 5)]
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    tuned = create_model(name, channels=(8, 16, 32), deep_supr_num=1, iters=2)
    assert tuned.encoder[0].block.mixer.factorization.iters == 2


def test_the_mixer_benchmark_runs(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_mixers")
    tiny = ["--size", "4", "--channels", "16", "--window-size", "4", "--repeats", "1"]
    bench.main([*tiny, "--mixers", "nmf,semi_nmf,convex_nmf,none", "--rank", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["nmf", "semi_nmf", "convex_nmf", "none"]
    assert rows[0].count("1.00x") == 2
