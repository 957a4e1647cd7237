"""Greedy-rank NMF and the local + global NMF (#24, paper §5): the solvers against an
independent float64 NumPy transcription, the stopping rule, gradients, the mixers in a block,
the presets, and the ranks ``explain`` shows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from nmfseg.blocks import MixerBlock
from nmfseg.mixers import create_mixer
from nmfseg.mixers import local_global as lg
from nmfseg.mixers.greedy_nmf import GreedyWrappedNMF
from nmfseg.mixers.nmf import WrappedNMF, factor_maps, nmf_state, restore_nmf, set_nmf
from nmfseg.models import Factorizer, create_model
from nmfseg.models.complexity import count_flops
from nmfseg.nmf import NMF, default_init
from nmfseg.nmf.greedy import GreedyNMF, greedy_nmf

TINY = np.finfo(np.float64).tiny
PRESETS = ["local_greedy_factorizer_brats", "local_global_factorizer_brats"]
SMALL = dict(channels=(8, 16, 32, 64, 128))


def _rand(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- An independent float64 reference: the residual formed, one HALS column at a time. ----


def np_greedy(x: np.ndarray, v0: np.ndarray, max_rank: int, tol: float, iters: int):
    """Components fitted to the explicit residual ``E`` (``u = [E v]₊/‖v‖²``, ``v = [Eᵀu]₊/‖u‖²``),
    each matrix stopping at ``‖E‖ <= tol ‖X‖``, at ``max_rank`` or at a zero component."""
    m, n = x.shape
    norm = np.linalg.norm(x)
    e = x.copy()
    us, vs = np.zeros((m, max_rank)), np.zeros((n, max_rank))
    residual, rank, active = norm, 0, norm > tol * norm
    history = [norm]
    for k in range(max_rank):
        if active:
            v = v0.copy()
            for _ in range(iters):
                u = np.maximum(e @ v, 0) / max(v @ v, TINY)
                v = np.maximum(e.T @ u, 0) / max(u @ u, TINY)
            if (u @ u) * (v @ v) > 0:
                e = e - np.outer(u, v)
                residual = np.linalg.norm(e)
                us[:, k], vs[:, k], rank = u, v, rank + 1
                active = residual > tol * norm
            else:
                active = False
        history.append(residual)
    return us, vs, rank, np.array(history) / max(norm, TINY)


def _batch() -> torch.Tensor:
    """Random matrices, an all-zero one, an exact rank one and two blocks (rank 2)."""
    x = _rand(6, 5, 24, seed=1)
    x[1] = 0
    x[2] = torch.outer(_rand(5, seed=2) + 0.1, _rand(24, seed=3))
    x[3] = 0
    x[3, :2, :10] = torch.outer(_rand(2, seed=4) + 1, _rand(10, seed=5) + 1)
    x[3, 2:, 10:] = torch.outer(_rand(3, seed=6) + 0.1, _rand(14, seed=7) + 0.1)
    return x


@pytest.mark.parametrize(("max_rank", "tol", "iters"), [(4, 0.3, 5), (3, 1e-3, 40), (5, 1e-9, 2)])
def test_matches_numpy_reference(max_rank, tol, iters):
    x = _batch()
    u, v, ranks, residuals = greedy_nmf(x, max_rank, tol, iters)
    v0 = default_init(x[0], 1)[1][:, 0].numpy()
    for i in range(len(x)):
        f, g, rank, hist = np_greedy(x[i].numpy(), v0, max_rank, tol, iters)
        np.testing.assert_allclose(u[i].numpy(), f, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(v[i].numpy(), g, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(residuals[i].numpy(), hist, rtol=1e-7, atol=1e-7)
        assert int(ranks[i]) == rank


def test_residual_never_increases_and_is_the_outputs_error():
    for dtype in (torch.float32, torch.float64):
        x = torch.relu(torch.randn(64, 8, 50, generator=torch.Generator().manual_seed(8)))
        u, v, ranks, residuals = greedy_nmf(x.to(dtype), max_rank=6, tol=0.0)
        assert (residuals[:, 1:] <= residuals[:, :-1] * (1 + 1e-6)).all()
        assert residuals[:, 0].eq(1).all()
        error = torch.linalg.matrix_norm(x.to(dtype) - u @ v.mT) / torch.linalg.matrix_norm(x)
        taken = residuals.gather(1, ranks[:, None])[:, 0]
        torch.testing.assert_close(taken, error.to(dtype), rtol=1e-4, atol=1e-5)
        assert ranks.float().mean() > 2  # random content needs several components


def test_rank_stops_at_the_threshold_zero_matrix_rank_zero():
    x = _batch()
    u, v, ranks, residuals = greedy_nmf(x, max_rank=4, tol=1e-3, iters=40)
    assert int(ranks[1]) == 0 and (u[1] == 0).all() and (v[1] == 0).all()  # all zeros
    assert int(ranks[2]) == 1  # exactly rank one
    assert int(ranks[3]) == 2  # two parts on disjoint rows and columns
    assert residuals[3, 2] < 1e-3 and torch.isfinite(residuals).all()
    torch.testing.assert_close(u[3] @ v[3].mT, x[3], rtol=0, atol=1e-6)
    assert (u[:, :, 2:][[1, 2, 3]] == 0).all()  # components after the stop are zero


def test_max_rank_is_respected_and_settable():
    x = torch.relu(torch.randn(10, 8, 64, generator=torch.Generator().manual_seed(9)))
    for max_rank in (1, 2, 5):
        u, v, ranks, _ = greedy_nmf(x, max_rank=max_rank, tol=0.0)
        assert u.shape == (10, 8, max_rank) and v.shape == (10, 64, max_rank)
        assert int(ranks.max()) == max_rank
    layer = GreedyNMF(max_rank=4, tol=0.0)
    layer.rank = 2  # what set_nmf(rank=...) does
    layer(x)
    assert layer.last_ranks.shape == (10,) and int(layer.last_ranks.max()) == 2
    with pytest.raises(ValueError, match="rank=9 is above min"):
        greedy_nmf(x, max_rank=9)
    with pytest.raises(ValueError, match="tol should be a number in"):
        greedy_nmf(x, tol=1.0)
    with pytest.raises(ValueError, match="nonnegative"):
        greedy_nmf(x - 1)


def test_max_rank_one_is_the_rank_one_nmf():
    x = _rand(4, 8, 30, seed=10)
    torch.testing.assert_close(GreedyNMF(1, tol=0.0)(x), NMF(rank=1)(x), rtol=1e-12, atol=0)


@pytest.mark.parametrize("grad_iters", [None, 2])
def test_gradients_finite_and_gradcheck(grad_iters):
    x = (_rand(2, 4, 7, seed=11) + 0.05).requires_grad_()
    if grad_iters is None:  # the exact derivative of the unrolled solver
        assert gradcheck(lambda t: GreedyNMF(3, tol=0.05, iters=3)(t), (x,))
    batch = _batch().requires_grad_()
    u, v, _, _ = greedy_nmf(batch, 4, 0.2, 4, grad_iters)
    (grad,) = torch.autograd.grad((u @ v.mT).sum() + u.sum() + v.sum(), batch)
    assert torch.isfinite(grad).all() and (grad[1] == 0).all()
    if grad_iters == 2:  # grad_iters = iters differentiates every iteration, as None does
        grads = []
        for g in (None, 2):
            u, v, _, _ = greedy_nmf(batch, 4, 0.2, 2, grad_iters=g)
            grads.append(torch.autograd.grad((u @ v.mT).square().sum(), batch)[0])
        torch.testing.assert_close(*grads)


# --- The local + global NMF. ---------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_joint_objective_never_increases(rank):
    x = _rand(3, 5, 4, 16, seed=12)
    x[1, 2] = 0  # an empty window
    f, previous = lg._init(x, rank - 1), None
    for _ in range(15):
        f = lg._iteration(x, f)
        value = lg.joint_objective(x, f)
        assert previous is None or (value <= previous * (1 + 1e-12)).all()
        previous = value
    assert all(torch.isfinite(t).all() and (t >= 0).all() for t in f)
    # the global term helps: better than the windows' own rank-(rank - 1) terms alone
    if rank > 1:
        local = lg.joint_factorize(x, rank, 15)
        alone = lg.JointFactors(local.g * 0, local.h * 0, local.a, local.b)
        assert (lg.joint_objective(x, local) < lg.joint_objective(x, alone)).all()


def test_joint_gradcheck_and_truncated_gradient():
    x = (_rand(2, 3, 3, 5, seed=13) + 0.1).requires_grad_()
    assert gradcheck(lambda t: lg.joint_factorize(t, 2, iters=3).reconstruct(), (x,))
    y = lg.joint_factorize(x, 2, iters=4, grad_iters=1).reconstruct()
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="one of \\('local', 'swin'\\)"):
        lg.LocalGlobalNMF(8, matricize="global", head_dim=4)


def test_local_global_records_the_global_term_first():
    layer = lg.LocalGlobalNMF(8, spatial_dims=2, head_dim=4, window_size=4).double()
    layer.recorder = []
    layer(torch.randn(1, 8, 9, 11, dtype=torch.float64))
    record = layer.recorder[0]
    u = record.u.reshape(*record.geometry.batch_shape, 4, 2)  # (views, B, heads, 3, 3, 4, 2)
    first = u[..., 0].flatten(3, 4)
    assert torch.equal(first, first[..., :1, :].expand_as(first))  # g shared by the windows
    assert factor_maps(record).shape == (4, 9, 11)  # 2 heads x (global, local)


# --- The mixers in a block, on odd sizes, 2D and 3D. -----------------------------------------


MIXERS = [
    ("greedy_nmf", {"matricize": "local", "max_rank": 3, "tol": 0.3}),
    ("greedy_nmf", {"matricize": "swin", "max_rank": 2, "tol": 0.5}),
    ("greedy_nmf", {"matricize": "global", "max_rank": 3, "tol": 0.3}),
    ("local_global_nmf", {"matricize": "local"}),
    ("local_global_nmf", {"matricize": "swin", "rank": 3}),
]


@pytest.mark.parametrize("shape", [(2, 8, 9, 7), (1, 8, 7, 9, 5)])
@pytest.mark.parametrize(("name", "args"), MIXERS)
def test_mixers_in_a_block_forward_backward(name, args, shape):
    torch.manual_seed(0)
    dims = len(shape) - 2
    block = MixerBlock(8, dims, mixer=name, mixer_args={"head_dim": 4, "window_size": 4, **args})
    x = torch.randn(*shape, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())
    if name == "greedy_nmf":
        geometry = block.mixer.matricize.geometry(shape)
        ranks = block.mixer.last_ranks
        assert ranks.shape == geometry.batch_shape
        assert int(ranks.min()) >= 0 and int(ranks.max()) <= args["max_rank"]
        block.mixer.enabled = False
        block(x)
        assert block.mixer.last_ranks is None


def test_mixers_by_name_with_defaults_and_the_common_nmf_arguments():
    x = torch.randn(1, 32, 10, 9, 8)
    common = dict(matricize="swin", head_dim=8, window_size=8, rank=1, iters=5)
    for name in ("greedy_nmf", "local_global_nmf"):
        for args in ({}, common):  # what benchmarks/bench_mixers.py gives every mixer
            mixer = create_mixer(name, 32, **args)
            assert isinstance(mixer, WrappedNMF) and mixer(x).shape == x.shape
    assert create_mixer("greedy_nmf", 32, **common).nmf.rank == 4  # rank: chosen, at most 4


@pytest.mark.parametrize("kind", ["local", "swin"])
def test_greedy_mixer_at_rank_one_is_the_wrapped_nmf(kind):
    torch.manual_seed(0)
    paper = WrappedNMF(8, 3, kind, head_dim=4, window_size=4).double()
    greedy = GreedyWrappedNMF(8, 3, kind, head_dim=4, window_size=4, max_rank=1, tol=0.0)
    greedy.double().load_state_dict(paper.state_dict())
    x = torch.randn(1, 8, 9, 6, 7, dtype=torch.float64, requires_grad=True)
    a, b = paper(x), greedy(x)
    torch.testing.assert_close(a, b)
    (ga,) = torch.autograd.grad(a.square().sum(), x)
    (gb,) = torch.autograd.grad(b.square().sum(), x)
    torch.testing.assert_close(ga, gb)


# --- The presets. ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_run_and_take_the_nmf_controls(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL)
    assert isinstance(model, Factorizer)
    local = create_model("local_factorizer_brats", **SMALL)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(local)  # another NMF, the same parameters
    layers = model.nmf_layers()
    assert len(layers) == 9 and [layer.layer_index for layer in layers] == list(range(9))
    assert [layer.level for layer in layers] == [0, 1, 2, 3, 4, 3, 2, 1, 0]
    x = torch.randn(1, 4, 19, 24, 21)
    outs = model.train()(x)
    assert outs[0].shape[2:] == x.shape[2:]
    sum(o.sum() for o in outs).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        base = model(x)
        state = nmf_state(model)
        set_nmf(model, rank=1, iters=2)
        assert not torch.allclose(base, model(x))
        restore_nmf(model, state)
        torch.testing.assert_close(model(x), base)
    assert count_flops(model, (1, 4, 16, 16, 16))["nmf"] > 0  # on the meta device


# --- explain shows the ranks. -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_greedy(tmp_path_factory):
    """A toy ISLES'22 case and an untrained reduced local_greedy_factorizer_brats checkpoint."""
    from nmfseg.data.formats import open_dataset
    from nmfseg.phantoms.toy import make_toy_dataset
    from nmfseg.training.checkpoint import atomic_save

    root = tmp_path_factory.mktemp("greedy_explain")
    data = make_toy_dataset(root / "Toy", "isles22", n_cases=1, shape=(14, 12, 10), seed=1)
    name = "local_greedy_factorizer_brats"
    kwargs = dict(
        in_channels=2, out_channels=1, channels=[4, 8, 16], head_dim=4, window_size=4,
        deep_supr_num=1, mixer_args={"max_rank": 3, "tol": 0.4},
    )  # fmt: skip
    torch.manual_seed(0)
    net = create_model(name, **kwargs)
    scheme = open_dataset(data).scheme.to_dict()
    config = {"patch_size": [8, 8, 8], "dataset": {"scheme": scheme}}
    ckpt = {"model_name": name, "model_kwargs": kwargs, "config": config}
    atomic_save({**ckpt, "model": net.state_dict()}, root / "run" / "checkpoint_final.pt")
    return data, root / "run" / "checkpoint_final.pt", net


def test_explain_writes_the_ranks_beside_the_maps(tiny_greedy, tmp_path):
    from nmfseg.analysis.explain import explain_case
    from nmfseg.analysis.ranks import RANKS_CSV, RANKS_JSON
    from nmfseg.inference import Ensemble, Predictor

    data, _, net = tiny_greedy
    predictor = Predictor(Ensemble([net], [], (8, 8, 8), 2, 1))
    result = explain_case(predictor, data, tmp_path, layers="0,2,4", max_maps=6)
    assert len(result.components) == (1 + 4 + 1) * 3  # heads x max_rank, layers 0, 2, 4
    entries = json.loads((tmp_path / RANKS_JSON).read_text())["layers"]
    assert [e["layer"] for e in entries] == [0, 2, 4] == [e["layer"] for e in result.ranks]
    assert [e["stage"] for e in entries] == ["encoder", "bridge", "decoder"]
    for entry in entries:
        assert entry["max_rank"] == 3 and len(entry["counts"]) == 4
        assert entry["matrices"] == sum(entry["counts"]) > 0
        assert 0 <= entry["mean"] <= 3
    rows = (tmp_path / RANKS_CSV).read_text().splitlines()
    assert (
        rows[0] == "layer,stage,level,matricize,max_rank,tol,matrices,mean,rank0,rank1,rank2,rank3"
    )
    assert len(rows) == 4
    # a rerun reuses every layer's maps (no pass): the ranks are read back
    again = explain_case(predictor, data, tmp_path, layers="0,2,4")
    assert again.reused == [0, 2, 4] and again.ranks == entries


def test_explain_cli_prints_the_ranks(tiny_greedy, tmp_path):
    from helpers import cli

    data, checkpoint, _ = tiny_greedy
    res = cli("explain", "-r", checkpoint, "-i", data, "-o", tmp_path, "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("greedy NMF ranks (share of windows x heads): layer 0 (encoder, ")
    assert "layer 4 (decoder, level 0) mean " in line and (tmp_path / "ranks.json").is_file()
