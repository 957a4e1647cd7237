"""NMF core: agreement with an independent NumPy transcription of Algorithms 1 and 2, truncated
gradients (the rank-1 fast path against the loop is a row of test_routes.py),
dtypes, batching and degenerate inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from nmfseg.mixers import create_mixer
from nmfseg.mixers.nmf import WrappedNMF, set_nmf
from nmfseg.mixers.wrapped import WrappedMixer
from nmfseg.nmf import NMF, default_init, nmf, nmf_reconstruct

TINY = np.finfo(np.float64).tiny


# --- An independent float64 reference: the paper's pseudocode, column by column. ---------


def _product(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The low-rank approximation ``u @ v.mT`` of an NMF."""
    return u @ v.mT


def np_mu(x: np.ndarray, f: np.ndarray, g: np.ndarray, iters: int):
    """Algorithm 1 (multiplicative updates)."""
    f, g = f.copy(), g.copy()
    for _ in range(iters):
        f = f * (x @ g) / np.maximum(f @ (g.T @ g), TINY)
        g = g * (x.T @ f) / np.maximum(g @ (f.T @ f), TINY)
    return f, g


def np_hals(x: np.ndarray, f: np.ndarray, g: np.ndarray, iters: int):
    """Algorithm 2 (HALS), Gauss–Seidel over the columns, F first, then G."""
    f, g = f.copy(), g.copy()
    rank = f.shape[1]
    for _ in range(iters):
        a, b = x @ g, g.T @ g
        for r in range(rank):
            num = a[:, r] - sum(b[ell, r] * f[:, ell] for ell in range(rank) if ell != r)
            f[:, r] = np.maximum(0.0, num / max(np.sum(g[:, r] ** 2), TINY))
        a, b = x.T @ f, f.T @ f
        for r in range(rank):
            num = a[:, r] - sum(b[ell, r] * g[:, ell] for ell in range(rank) if ell != r)
            g[:, r] = np.maximum(0.0, num / max(np.sum(f[:, r] ** 2), TINY))
    return f, g


NP_SOLVERS = {"mu": np_mu, "hals": np_hals}


def _rand(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=dtype)


# --- Agreement with the reference. ------------------------------------------------------


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2, 4])
@pytest.mark.parametrize("fast", [True, False])
def test_matches_numpy_reference_with_given_init(solver, rank, fast):
    x = _rand(3, 6, 40, seed=1)
    u0, v0 = 0.1 + _rand(3, 6, rank, seed=2), 0.1 + _rand(3, 40, rank, seed=3)
    u, v = nmf(x, rank, iters=7, solver=solver, init=(u0, v0), fast=fast)
    for i in range(3):
        f, g = NP_SOLVERS[solver](x[i].numpy(), u0[i].numpy(), v0[i].numpy(), 7)
        np.testing.assert_allclose(u[i].numpy(), f, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(v[i].numpy(), g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_matches_numpy_reference_with_default_init(solver, rank):
    x = _rand(8, 30, seed=4)
    u0, v0 = default_init(x, rank)
    f, g = NP_SOLVERS[solver](x.numpy(), u0.numpy(), v0.numpy(), 5)
    u, v = nmf(x, rank, iters=5, solver=solver)
    np.testing.assert_allclose(u.numpy(), f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v.numpy(), g, rtol=1e-10, atol=1e-12)
    recon = nmf_reconstruct(x, rank, iters=5, solver=solver)
    np.testing.assert_allclose(recon.numpy(), f @ g.T, rtol=1e-10, atol=1e-12)


def test_reference_is_not_trivially_satisfied():
    # Different solvers and ranks give different factors: the agreement above means something.
    x = _rand(8, 30, seed=4)
    u_h, _ = nmf(x, 2, solver="hals")
    u_m, _ = nmf(x, 2, solver="mu")
    assert (u_h - u_m).abs().max() > 1e-3


# --- Properties of the iterations. ------------------------------------------------------


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_objective_non_increasing(solver, rank):
    x = torch.relu(torch.randn(4, 8, 60, generator=torch.Generator().manual_seed(5))).double()
    errors = [
        torch.linalg.matrix_norm(x - _product(*nmf(x, rank, iters=t, solver=solver)))
        for t in range(0, 12)
    ]
    for before, after in itertools.pairwise(errors):
        assert torch.all(after <= before * (1 + 1e-12) + 1e-12)
    assert torch.all(errors[-1] < errors[0])


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_factors_nonnegative(solver, rank):
    x = torch.relu(torch.randn(5, 8, 50, generator=torch.Generator().manual_seed(6)))
    u, v = nmf(x, rank, iters=5, solver=solver)
    assert u.min() >= 0 and v.min() >= 0
    assert nmf_reconstruct(x, rank, solver=solver).min() >= 0


# --- Gradients. -------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("fast", [True, False])
def test_gradcheck(solver, rank, fast):
    x = (0.1 + _rand(2, 3, 7, seed=19)).requires_grad_()
    assert gradcheck(lambda z: nmf(z, rank, 3, solver, fast=fast), (x,))
    assert gradcheck(lambda z: nmf_reconstruct(z, rank, 3, solver, fast=fast), (x,))


def test_gradcheck_with_respect_to_init():
    x = (0.1 + _rand(2, 3, 7, seed=20)).requires_grad_()
    v0 = (0.1 + _rand(2, 7, 1, seed=21)).requires_grad_()
    u0 = torch.ones(2, 3, 1, dtype=torch.float64)
    assert gradcheck(lambda z, g: nmf_reconstruct(z, 1, 3, init=(u0, g)), (x, v0))
    shared = (0.1 + _rand(7, 1, seed=22)).requires_grad_()  # broadcast over the batch
    assert gradcheck(lambda z, g: nmf_reconstruct(z, 1, 3, init=(u0, g)), (x, shared))


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("grad_iters", [1, 2])
def test_grad_iters_is_the_gradient_of_the_last_iterations(solver, rank, fast, grad_iters):
    # The truncated gradient is the exact gradient of "run the last k iterations from the
    # state reached after T - k iterations, held constant": gradcheck that function, and
    # check that grad_iters=k reproduces its gradient.
    iters = 4
    x = (0.1 + _rand(2, 4, 9, seed=23)).requires_grad_()
    with torch.no_grad():
        state = nmf(x, rank, iters - grad_iters, solver)

    def last_k(z):
        return nmf_reconstruct(z, rank, grad_iters, solver, init=state, fast=fast)

    assert gradcheck(last_k, (x,))
    dy = _rand(2, 4, 9, seed=24)
    (expected,) = torch.autograd.grad((last_k(x) * dy).sum(), x)
    for fn in (nmf_reconstruct, lambda *a, **k: _product(*nmf(*a, **k))):
        y = fn(x, rank, iters, solver, grad_iters=grad_iters, fast=fast)
        (got,) = torch.autograd.grad((y * dy).sum(), x)
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12)
    (full,) = torch.autograd.grad((nmf_reconstruct(x, rank, iters, solver) * dy).sum(), x)
    assert (full - expected).abs().max() > 1e-6  # truncation really changes the gradient


@pytest.mark.parametrize("fast", [True, False])
def test_grad_iters_bounds(fast):
    x = _rand(2, 4, 9, seed=25).requires_grad_()
    dy = _rand(2, 4, 9, seed=26)
    grads = [
        torch.autograd.grad((nmf_reconstruct(x, 1, 3, grad_iters=k, fast=fast) * dy).sum(), x)[0]
        for k in (None, 3, 10)
    ]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=0)
    y0 = nmf_reconstruct(x, 1, 3, grad_iters=0, fast=fast)
    assert not y0.requires_grad
    torch.testing.assert_close(y0, nmf_reconstruct(x, 1, 3, fast=fast).detach())


# --- Degenerate inputs, dtypes, batching. ----------------------------------------------


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("fast", [True, False])
def test_all_zero_matrices_give_zeros_without_nan(solver, rank, fast):
    x = _rand(3, 4, 10, seed=27)
    x[1] = 0.0
    x.requires_grad_()
    u, v = nmf(x, rank, 5, solver, fast=fast)
    y = nmf_reconstruct(x, rank, 5, solver, fast=fast)
    assert torch.all(u[1] == 0) and torch.all(v[1] == 0) and torch.all(y[1] == 0)
    (grad,) = torch.autograd.grad(y.sum() + u.sum() + v.sum(), x)
    assert torch.isfinite(grad).all() and torch.all(grad[1] == 0)
    # The zero matrix does not disturb its neighbours in the batch.
    rest = nmf_reconstruct(x.detach()[[0, 2]], rank, 5, solver, fast=fast)
    torch.testing.assert_close(y.detach()[[0, 2]], rest, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(dtype):
    x = torch.rand(4, 8, 64, generator=torch.Generator().manual_seed(28)).to(dtype)
    u, v = nmf(x)
    y = NMF()(x)
    assert u.dtype == v.dtype == y.dtype == dtype
    u32, v32 = nmf(x.float())
    assert torch.equal(u, u32.to(dtype)) and torch.equal(v, v32.to(dtype))
    assert torch.equal(y, nmf_reconstruct(x.float()).to(dtype))
    leaf = x.clone().requires_grad_()
    NMF()(leaf).float().sum().backward()
    assert leaf.grad.dtype == dtype and torch.isfinite(leaf.grad.float()).all()


def test_autocast_is_disabled_inside():
    x = torch.rand(4, 8, 64, generator=torch.Generator().manual_seed(29))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = NMF()(x)
        u, _ = nmf(x, rank=2)
    assert y.dtype == u.dtype == torch.float32
    assert torch.equal(y, NMF()(x)) and torch.equal(u, nmf(x, rank=2)[0])


@pytest.mark.parametrize("rank", [1, 2])
def test_leading_batch_dims(rank):
    x = _rand(2, 3, 5, 17, seed=30)
    u, v = nmf(x, rank)
    y = nmf_reconstruct(x, rank)
    assert u.shape == (2, 3, 5, rank) and v.shape == (2, 3, 17, rank) and y.shape == x.shape
    for i in range(2):
        for j in range(3):
            ui, vi = nmf(x[i, j], rank)
            torch.testing.assert_close(u[i, j], ui, rtol=1e-13, atol=1e-14)
            torch.testing.assert_close(v[i, j], vi, rtol=1e-13, atol=1e-14)
    assert nmf(x[0, 0], rank)[0].shape == (5, rank)  # a single matrix, no batch


def test_zero_columns_leave_rank1_reconstruction_of_other_columns_unchanged():
    # What zero-padded windows rely on (nmfseg.nmf.matricize): padding only rescales f and g.
    x = _rand(4, 6, 20, seed=31)
    padded = torch.cat([x, torch.zeros(4, 6, 7, dtype=x.dtype)], dim=-1)
    for solver in ("hals", "mu"):
        y = nmf_reconstruct(padded, 1, 5, solver)
        torch.testing.assert_close(
            y[..., :20], nmf_reconstruct(x, 1, 5, solver), rtol=1e-12, atol=0
        )
        assert torch.all(y[..., 20:] == 0)


def test_default_init_depends_only_on_index_and_rank():
    # No size fixed at construction: a longer matrix extends the same sequence.
    u_small, v_small = default_init(torch.zeros(2, 4, 10), rank=3)
    u_big, v_big = default_init(torch.zeros(5, 8, 30), rank=3)
    assert torch.equal(v_big[0, :10], v_small[1]) and torch.equal(u_big[3, :4], u_small[0])
    assert v_big.min() > 0 and len(set(v_big[0, :, 0].tolist())) == 30
    assert not torch.equal(v_big[0, :, 0], v_big[0, :, 1])  # components differ


# --- The module and the arguments. -------------------------------------------------------


def test_module_settings_are_mutable_and_deterministic():
    x = _rand(3, 8, 50, seed=32)
    layer = NMF()
    assert list(layer.parameters()) == [] and list(layer.buffers()) == []
    y5 = layer(x)
    assert torch.equal(layer.train()(x), layer.eval()(x))
    torch.testing.assert_close(y5, _product(*layer.factorize(x)), rtol=1e-12, atol=1e-12)
    layer.iters = 1
    assert not torch.allclose(layer(x), y5)
    layer.rank, layer.solver = 2, "mu"
    torch.testing.assert_close(layer(x), _product(*nmf(x, 2, 1, "mu")))
    assert "rank=2" in repr(layer) and "solver='mu'" in repr(layer)


def test_invalid_arguments():
    x = torch.rand(2, 4, 5)
    with pytest.raises(ValueError, match="solver"):
        nmf(x, solver="als")
    with pytest.raises(ValueError, match="rank"):
        nmf(x, rank=0)
    with pytest.raises(ValueError, match="grad_iters"):
        nmf_reconstruct(x, grad_iters=-1)
    with pytest.raises(ValueError, match=r"\(\.\.\., M, N\)"):
        nmf(torch.rand(5))
    with pytest.raises(ValueError, match="solver"):
        NMF(solver="svd")


# --- issue 21: the documented precondition of the public functions. ----------------------

PRECONDITION_CASES = [
    # (x, rank, the message): one amin for the values, the shape for the rank
    (torch.rand(2, 4, 5) - 0.5, 1, r"x should be nonnegative \(NMF's precondition\), but its "),
    (torch.tensor([[0.0, -3.0], [1.0, 2.0]]), 1, "its minimum is -3; apply torch.relu"),
    (torch.full((2, 4, 5), float("nan")), 1, "x holds NaN; NMF needs nonnegative numbers"),
    (torch.rand(2, 4, 5), 5, r"rank=5 is above min\(M, N\) = 4 of x's 4 x 5 matrices"),
    (torch.rand(3, 8, 2), 5000, r"rank=5000 is above min\(M, N\) = 2 of x's 8 x 2 matrices"),
]


@pytest.mark.parametrize("fn", [nmf, nmf_reconstruct], ids=lambda f: f.__name__)
@pytest.mark.parametrize(("x", "rank", "message"), PRECONDITION_CASES)
def test_public_functions_refuse_what_breaks_their_precondition(fn, x, rank, message):
    with pytest.raises(ValueError, match=message):
        fn(x, rank=rank)


def test_the_module_skips_the_value_check_and_zeros_or_empty_inputs_pass():
    # The networks feed the NMF module ReLU'd matrices: no extra pass over them per forward.
    x = torch.rand(2, 4, 5) - 0.5
    assert NMF()(x).shape == x.shape and NMF(rank=2).factorize(x)[0].shape == (2, 4, 2)
    assert nmf(torch.zeros(2, 4, 5))[0].shape == (2, 4, 1)
    assert nmf(torch.zeros(0, 4, 5))[0].shape == (0, 4, 1)
    assert nmf(torch.rand(2, 4, 5), rank=4)[1].shape == (2, 5, 4)  # rank = min(M, N) is fine


# --- issue 21: the rank of a Wrapped NMF layer is bounded by its matrices. ---------------

RANK_CASES = [
    # (what is built or changed, the ValueError's text)
    (
        lambda: WrappedNMF(16, head_dim=8, window_size=8, rank=9),
        r"^rank=9 is above 8: its matrices have head_dim=8 rows and 512 columns \(a 8x8x8 ",
    ),
    (
        lambda: WrappedNMF(16, matricize="local", head_dim=8, window_size=(2, 1, 2), rank=5),
        r"^rank=5 is above 4: its matrices have head_dim=8 rows and 4 columns \(a 2x1x2 window",
    ),
    (
        lambda: WrappedNMF(16, matricize="global", head_dim=4, rank=5),
        r"^rank=5 is above 4: its matrices have head_dim=4 rows, and a rank above min\(rows, ",
    ),
    (
        lambda: _tiny_factorizer().set_nmf(rank=5000),
        r"^rank=5000 is too large for this network's NMF layers: at most 4: its matrices have "
        r"head_dim=4 rows and 8 columns \(a 2x2x2 window\), and a rank above min\(rows, "
        r"columns\) of a matrix cannot describe it better\.$",
    ),
    (
        lambda: set_nmf(
            nn.Sequential(WrappedNMF(4, head_dim=2), WrappedNMF(8, head_dim=8)), rank=3
        ),
        r"^rank=3 is too large .*: at most 2 for NMF layer 0 \(head_dim=2 rows, 8x8x8 windows\), "
        r"8 for NMF layer 1 \(head_dim=8 rows, 8x8x8 windows\); a rank above",
    ),
]


def _tiny_factorizer():
    from nmfseg.models import create_model

    kwargs = dict(channels=(4, 8), head_dim=4, window_size=2, deep_supervision=False)
    return create_model("swin_factorizer_isles", **kwargs)


@pytest.mark.parametrize(("build", "message"), RANK_CASES)
def test_a_rank_above_what_the_matrices_allow_is_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_set_nmf_with_a_too_large_rank_changes_nothing():
    net = _tiny_factorizer()
    net.set_nmf(rank=4, iters=2)  # the limit itself
    with pytest.raises(ValueError, match="at most 4"):
        net.set_nmf(rank=5, iters=7, enabled=[0])
    assert {(m.nmf.rank, m.nmf.iters, m.enabled) for m in net.nmf_layers()} == {(4, 2, True)}


# --- The NMF-family mixers share one wrapping; their checkpoints keep their keys. ---------

NMF_FAMILY = ["nmf", "semi_nmf", "convex_nmf", "greedy_nmf", "local_global_nmf"]


@pytest.mark.parametrize("name", NMF_FAMILY)
def test_nmf_family_mixers_share_the_wrapping_and_their_state_dicts_round_trip(name):
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        kwargs = dict(spatial_dims=2, matricize="local", head_dim=4, window_size=4)
        return create_mixer(name, 8, **kwargs).eval()

    mixer, other = build(0), build(1)
    assert isinstance(mixer, WrappedMixer) and mixer.max_rank == 4
    state = mixer.state_dict()
    # The keys of every checkpoint written so far: the two projections, nothing else.
    assert list(state) == ["in_proj.weight", "out_proj.weight", "out_proj.bias"]
    other.load_state_dict(state)  # strict
    x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(other(x), mixer(x))
    rank = {"max_rank": 17} if name == "greedy_nmf" else {"rank": 17}
    with pytest.raises(ValueError, match=r"^rank=17 is above 4: its matrices have head_dim=4"):
        create_mixer(name, 8, spatial_dims=2, matricize="local", head_dim=4, window_size=2, **rank)
