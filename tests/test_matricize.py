"""Matricize: exact round trips at any size, the paper's einops equations (eq. 7–8,
Algorithm 3), SW averaging, padding policy, geometry and factor maps."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch.autograd import gradcheck

from helpers import MATRICIZE_SHAPES
from nmfseg.nmf import (
    GlobalMatricize,
    LocalMatricize,
    MatricizeGeometry,
    SWMatricize,
    build_matricize,
    default_init,
    nmf,
    nmf_reconstruct,
)
from nmfseg.nmf.windows import fold_partition, partition_to_windows

SHAPES = MATRICIZE_SHAPES
MODULES = [
    GlobalMatricize(head_dim=4),
    LocalMatricize(head_dim=4, window_size=8),
    SWMatricize(head_dim=4, window_size=8),
    LocalMatricize(head_dim=2, window_size=3),
    SWMatricize(head_dim=2, window_size=5),
]


def _randn(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("module", MODULES, ids=repr)
def test_round_trip_is_exact(module, shape):
    x = _randn(*shape)
    z = module(x)
    geom = module.geometry(x.shape)
    assert z.shape == geom.matrix_shape
    assert torch.equal(module.inverse(z, x.shape), x)
    assert torch.equal(module.inverse(z, geom), x)


@pytest.mark.parametrize("kind", ["global", "local", "swin"])
def test_round_trip_bfloat16_and_tuple_patch(kind):
    m = build_matricize(kind, head_dim=3, window_size=(4, 2, 6))
    x = _randn(2, 6, 9, 5, 13).to(torch.bfloat16)
    assert torch.equal(m.inverse(m(x), x.shape), x)


def test_shapes_and_clamping():
    x = _randn(2, 16, 20, 24, 8)
    g = SWMatricize(8, 8).geometry(x.shape)
    assert (g.window, g.padded_size, g.grid, g.shifts) == (
        (8, 8, 8),
        (24, 24, 8),
        (3, 3, 1),
        (4,) * 3,
    )
    assert g.matrix_shape == (2 * 2 * 2 * 9, 8, 512) and g.batch_shape == (2, 2, 2, 3, 3, 1)
    # The 4^3 bridge of a 64^3 input with patch 8 is one 4^3 window, not 7/8 padding.
    bridge = SWMatricize(8, 8).geometry((1, 512, 4, 4, 4))
    assert bridge.window == bridge.padded_size == (4, 4, 4) and bridge.shifts == (2, 2, 2)
    assert bridge.matrix_shape == (2 * 64, 8, 64)
    assert GlobalMatricize(8)(x).shape == (4, 8, 20 * 24 * 8)
    local = LocalMatricize(4, (8, 3)).geometry((1, 4, 5, 7))
    assert (local.window, local.padded_size, local.grid) == ((5, 3), (5, 9), (1, 3))
    assert local.padded_size != local.spatial_size and local.padded


def test_global_and_single_window_are_views():
    x = _randn(2, 8, 6, 10)
    assert GlobalMatricize(4)(x).data_ptr() == x.data_ptr()
    z = GlobalMatricize(4)(x)
    assert GlobalMatricize(4).inverse(z, x.shape).data_ptr() == x.data_ptr()
    assert LocalMatricize(4, 16)(x).data_ptr() == x.data_ptr()  # clamped to one window


# --- The paper's equations. -------------------------------------------------------------

EQ3 = "b (c1 c2) (h1 h2) (w1 w2) (d1 d2) -> (b c1 h1 w1 d1) c2 (h2 w2 d2)"
EQ2 = "b (c1 c2) (h1 h2) (w1 w2) -> (b c1 h1 w1) c2 (h2 w2)"


def _inverse_eq(eq: str) -> str:
    left, right = eq.split("->")
    return f"{right.strip()} -> {left.strip()}"


def _paper_local(x, e, p, eq):
    sizes = dict(c2=e, h2=p, w2=p) | ({"d2": p} if x.dim() == 5 else {})
    return rearrange(x, eq, **sizes), sizes


@pytest.mark.parametrize(("shape", "eq"), [((2, 16, 16, 8, 24), EQ3), ((2, 8, 16, 24), EQ2)])
def test_matches_algorithm_3_on_divisible_sizes(shape, eq):
    e, p = 4, 8
    x = _randn(*shape, seed=1)
    dims = tuple(range(2, x.dim()))
    shifts = (p // 2,) * len(dims)
    paper_local, sizes = _paper_local(x, e, p, eq)
    sizes |= {"c1": shape[1] // e, "h1": shape[2] // p, "w1": shape[3] // p}
    if x.dim() == 5:
        sizes["d1"] = shape[4] // p
    assert torch.equal(LocalMatricize(e, p)(x), paper_local)
    paper_sw = torch.cat((paper_local, _paper_local(torch.roll(x, shifts, dims), e, p, eq)[0]))
    assert torch.equal(SWMatricize(e, p)(x), paper_sw)
    # Inverses on arbitrary matrices (not only on the forward's output).
    z = _randn(*paper_sw.shape, seed=2)
    fold = _inverse_eq(eq)
    half = z.shape[0] // 2
    assert torch.equal(
        LocalMatricize(e, p).inverse(z[:half], x.shape), rearrange(z[:half], fold, **sizes)
    )
    # Algorithm 3 rolls back by -patch_size, which is not the inverse of rolling by
    # patch_size // 2 (a typo); the inverse of the roll is -shift.
    a = rearrange(z[:half], fold, **sizes)
    b = torch.roll(rearrange(z[half:], fold, **sizes), tuple(-s for s in shifts), dims)
    assert torch.equal(SWMatricize(e, p).inverse(z, x.shape), 0.5 * (a + b))


def test_sw_inverse_averages_the_two_views():
    m = SWMatricize(head_dim=2, window_size=4)
    x, y = _randn(2, 4, 10, 7, seed=3), _randn(2, 4, 10, 7, seed=4)
    zx, zy = m(x), m(y)
    half = zx.shape[0] // 2
    assert torch.equal(m.inverse(torch.cat((zx[:half], zx[half:])), x.shape), x)
    mixed = torch.cat((zx[:half], zy[half:]))  # regular windows of x, shifted windows of y
    assert torch.equal(m.inverse(mixed, x.shape), 0.5 * (x + y))
    assert not torch.equal(m.inverse(mixed, x.shape), x)


@pytest.mark.parametrize("module", MODULES[1:], ids=repr)
def test_inverse_crops_the_padding(module):
    x = _randn(2, 4, 11, 6, 13, seed=5)
    z = module(x)
    padding = module(torch.ones_like(x)) == 0
    assert padding.any()  # the size is not divisible: there are padded columns
    assert torch.all(z[padding] == 0)  # padding is zeros
    z = z.masked_fill(padding, 1e6)
    assert torch.equal(module.inverse(z, x.shape), x)


def test_padding_does_not_change_rank1_nmf_of_real_voxels():
    # Each window of a padded size, factorized with its zero columns, reconstructs its
    # real voxels as the real voxels alone do from the same initial values (the default
    # init depends on a voxel's position in the window).
    m = LocalMatricize(head_dim=4, window_size=4)
    x = torch.relu(_randn(1, 4, 6, 5, seed=6, dtype=torch.float64))
    y = m.inverse(nmf_reconstruct(m(x)), x.shape)
    u0, v0 = default_init(m(x)[0], rank=1)
    positions = torch.arange(16).view(4, 4)
    for i0 in (0, 4):
        for j0 in (0, 4):
            block = x[0, :, i0 : i0 + 4, j0 : j0 + 4]
            h, w = block.shape[1:]
            init = (u0, v0[positions[:h, :w].reshape(-1)])
            expected = nmf_reconstruct(block.reshape(4, -1), init=init).view(block.shape)
            got = y[0, :, i0 : i0 + 4, j0 : j0 + 4]
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


# --- Geometry and factor maps. ----------------------------------------------------------


def test_batch_shape_orders_views_batch_heads_grid():
    m = SWMatricize(head_dim=2, window_size=(4, 2))
    x = _randn(2, 6, 8, 6, seed=7)
    g = m.geometry(x.shape)
    z = m(x).reshape(*g.batch_shape, g.head_dim, *g.window)
    b, h, i, j = 1, 2, 1, 2
    block = x[b, 2 * h : 2 * h + 2, 4 * i : 4 * i + 4, 2 * j : 2 * j + 2]
    assert torch.equal(z[0, b, h, i, j], block)
    rolled = torch.roll(x, g.shifts, (2, 3))
    assert torch.equal(
        z[1, b, h, i, j], rolled[b, 2 * h : 2 * h + 2, 4 * i : 4 * i + 4, 2 * j : 2 * j + 2]
    )


@pytest.mark.parametrize("module", MODULES, ids=repr)
def test_dematricize_factor_places_columns_at_their_voxels(module):
    x = _randn(2, 8, 9, 6, 10, seed=8)
    z = module(x)
    # The matrices' own rows, read as E factor columns, map back to the input.
    maps = module.dematricize_factor(z.mT, x.shape)
    e = module.head_dim
    assert torch.equal(maps, x.view(2, 8 // e, e, 9, 6, 10))


def test_dematricize_rank1_factor_of_global_nmf():
    m = GlobalMatricize(head_dim=4)
    x = torch.relu(_randn(1, 8, 5, 6, seed=9))
    g = m.geometry(x.shape)
    u, v = nmf(m(x), rank=1)
    maps = m.dematricize_factor(v, g)
    assert maps.shape == (1, 2, 1, 5, 6)
    assert torch.equal(maps[0, 1, 0], v[1, :, 0].view(5, 6))
    assert u.reshape(*g.batch_shape, 4, 1).shape == (1, 1, 2, 1, 1, 4, 1)


def test_gradient_flows_through_both_directions():
    m = SWMatricize(head_dim=2, window_size=3)
    x = _randn(1, 2, 5, 4, seed=10, dtype=torch.float64).requires_grad_()
    w = _randn(*m.geometry(x.shape).matrix_shape, seed=11, dtype=torch.float64)
    assert gradcheck(lambda t: m.inverse(m(t) * w, t.shape), (x,))


# --- Errors. ----------------------------------------------------------------------------


def test_head_dim_must_divide_channels():
    with pytest.raises(
        ValueError, match=r"head_dim=8 should divide the number of channels, got 12"
    ):
        SWMatricize(8, 4)(torch.zeros(1, 12, 8, 8, 8))
    with pytest.raises(ValueError, match="head_dim"):
        GlobalMatricize(3).geometry((1, 4, 5, 5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="head_dim"):
        LocalMatricize(0, 4)
    with pytest.raises(ValueError, match="window_size"):
        LocalMatricize(4, 0)
    with pytest.raises(ValueError, match="window_size"):
        SWMatricize(4, (4, 4), spatial_dims=3)
    with pytest.raises(ValueError, match="5D input"):
        SWMatricize(4, 8, spatial_dims=3)(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="4D input"):
        LocalMatricize(4, (4, 4))(torch.zeros(1, 4, 8, 8, 8))
    with pytest.raises(ValueError, match="matricize should be one of"):
        build_matricize("grid", 4, 8)
    m = LocalMatricize(4, 4)
    with pytest.raises(ValueError, match="expected matrices of shape"):
        m.inverse(torch.zeros(3, 4, 16), (1, 4, 8, 8))


def test_factory_and_geometry_type():
    for kind, cls in (
        ("global", GlobalMatricize),
        ("local", LocalMatricize),
        ("swin", SWMatricize),
    ):
        m = build_matricize(kind, head_dim=4, window_size=4, spatial_dims=2)
        assert type(m) is cls and m.spatial_dims == 2
        g = m.geometry((1, 8, 6, 6))
        assert isinstance(g, MatricizeGeometry) and g.kind == kind
        assert list(m.parameters()) == [] and list(m.buffers()) == []


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("module", MODULES[1:], ids=repr)
def test_partition_copy_with_relu_and_fold_with_scale_are_exact(module, shape):
    """``partition_to_windows(relu=True)`` is ``relu`` of the copy and ``fold_partition(scale=)``
    the fold of ``scale * z``, bit for bit (the rank-1 node's two passes saved)."""
    x = _randn(*shape, seed=3)
    geom = module.geometry(x.shape)
    folded = {s: torch.empty_like(x) for s in (1.0, 0.5)}
    scaled = torch.empty_like(x)
    for p in range(geom.partitions):
        copy = partition_to_windows(x, geom, p)
        assert torch.equal(partition_to_windows(x, geom, p, relu=True), torch.relu(copy))
        for s, out in folded.items():
            fold_partition(out, copy, geom, p, scale=s)
        fold_partition(scaled, copy * 0.5, geom, p)
    assert torch.equal(folded[0.5], scaled)
    assert torch.equal(folded[0.5] * 2, folded[1.0])
